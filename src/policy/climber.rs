//! The hill climber that sizes the admission window.
//!
//! A small window makes the cache behave like TinyLFU (frequency wins: good on
//! loops, scans and skewed popularity); a large one like LRU (recency wins:
//! good when new keys are hot at once). The climber treats the window size as
//! the one knob of a black box and follows the hit rate: every *sample*
//! (ten accesses per entry of capacity) it compares the sample's hit rate with
//! the previous one. If the rate improved it keeps moving the window in the
//! same direction, otherwise it turns around. The step starts at 6.25% of the
//! capacity and decays by 2% per sample so the window settles; a hit-rate
//! jump of 5 points or more means the workload changed, and restarts the
//! step at full size. (These are the constants Caffeine's simple climber is
//! described with; doubling or halving the sample did not help on the
//! simulator's traces.)
//!
//! Two additions, both measured: a sample is never shorter than
//! [`MIN_SAMPLE`] accesses, and a window *pinned* at a bound (0, or the whole
//! capacity) with the step pointing past it stays put unless the hit rate
//! drops by [`PIN_RELEASE`] (2 points). Without that rule noise turns the climber
//! around at the bound every few samples and it probes a 6% window on loop
//! workloads for nothing (1–3 points lost on the loop traces).

/// Initial step, as a fraction of capacity.
const STEP_FRACTION: f64 = 0.0625;
/// Multiplier applied to the step after every sample without a restart.
const STEP_DECAY: f64 = 0.98;
/// Hit-rate change (absolute, 0..1) that restarts the climb at a full step.
const RESTART_THRESHOLD: f64 = 0.05;
/// Accesses per unit of capacity in one sample.
const SAMPLE_PER_CAPACITY: u64 = 10;
/// Hit-rate drop (absolute, 0..1) that turns a window pinned at a bound
/// around. Lower than [`RESTART_THRESHOLD`]: measured on the simulator's 30
/// rows, 0.05 kept the window at 0 through real phase changes (`sprite` at
/// 500 entries −1.2 points, OLTP at 1000 −2.8), while 0.01 began probing on
/// loop noise; 0.015 to 0.02 gave the best mean (+0.14 over 0.05, no loop
/// row lower).
const PIN_RELEASE: f64 = 0.02;
/// Fewest accesses in one sample: below this the hit rate of a small cache
/// is mostly noise, and chasing it cost 4 points on `sprite` at 100 entries.
const MIN_SAMPLE: u64 = 3_000;

/// Hill-climbing state: the running sample and the current step.
#[derive(Debug, Clone)]
pub(crate) struct HillClimber {
    /// Accesses per sample.
    sample_size: u64,
    /// The cumulative (hits, misses) last reported by the shard.
    last_seen: (u64, u64),
    /// Hits and misses in the current sample.
    hits: u64,
    /// Misses in the current sample.
    misses: u64,
    /// Hit rate of the previous sample, `None` before the first one.
    previous_rate: Option<f64>,
    /// Signed step in weight units: positive grows the window.
    step: f64,
    /// Capacity the step is relative to.
    capacity: u64,
}

impl HillClimber {
    /// A climber for a cache of `capacity` weight units.
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            sample_size: capacity.saturating_mul(SAMPLE_PER_CAPACITY).max(MIN_SAMPLE),
            last_seen: (0, 0),
            hits: 0,
            misses: 0,
            previous_rate: None,
            // Start by shrinking: the 1% window is already small, so the
            // first move mostly confirms it; growing needs evidence.
            step: -STEP_FRACTION * capacity as f64,
            capacity,
        }
    }

    /// Takes the shard's cumulative counts and the current window size.
    /// When `warm` is false (the cache has not filled up yet) the accesses
    /// are not sampled: the hit rate of a filling cache says nothing about
    /// the window. Returns the new window size when a sample completes.
    pub(crate) fn record(
        &mut self,
        hits: u64,
        misses: u64,
        warm: bool,
        window: u64,
    ) -> Option<u64> {
        let new_hits = hits.saturating_sub(self.last_seen.0);
        let new_misses = misses.saturating_sub(self.last_seen.1);
        self.last_seen = (hits, misses);
        if !warm {
            return None;
        }
        self.hits += new_hits;
        self.misses += new_misses;
        let total = self.hits + self.misses;
        if total < self.sample_size {
            return None;
        }
        let rate = self.hits as f64 / total as f64;
        self.hits = 0;
        self.misses = 0;
        let change = rate - self.previous_rate.unwrap_or(0.0);
        self.previous_rate = Some(rate);
        let pinned =
            (window == 0 && self.step < 0.0) || (window >= self.capacity && self.step > 0.0);
        let amount = if change >= 0.0 || (pinned && change > -PIN_RELEASE) {
            self.step
        } else {
            -self.step
        };
        self.step = if change.abs() >= RESTART_THRESHOLD {
            STEP_FRACTION * self.capacity as f64 * amount.signum()
        } else {
            STEP_DECAY * amount
        };
        Some(
            window
                .saturating_add_signed(amount as i64)
                .min(self.capacity),
        )
    }

    /// Forgets the sample and the climb (the window is reset separately).
    pub(crate) fn clear(&mut self) {
        *self = Self {
            last_seen: self.last_seen,
            ..Self::new(self.capacity)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn climbs_toward_better_hit_rate() {
        let mut c = HillClimber::new(1000);
        let (mut h, mut m) = (0, 0);
        // First sample: 50% hit rate, an improvement over nothing: keep the
        // initial (shrinking) direction.
        h += 5000;
        m += 5000;
        assert_eq!(c.record(h, m, true, 100), Some(38));
        // Worse: turn around.
        h += 4000;
        m += 6000;
        let window = c.record(h, m, true, 38).unwrap();
        assert!(window > 38, "{window}");
        // Not warm: nothing sampled.
        assert_eq!(c.record(h + 10_000, m, false, 100), None);
        assert_eq!(c.record(h + 10_000, m + 1, true, 100), None);
    }

    #[test]
    fn a_window_pinned_at_zero_turns_only_on_a_real_drop() {
        let mut c = HillClimber::new(1000);
        let (mut h, mut m) = (0, 0);
        let mut sample = |c: &mut HillClimber, hits: u64, window: u64| {
            h += hits;
            m += 10_000 - hits;
            c.record(h, m, true, window)
        };
        // 50%, then better: the shrinking step runs into 0 and stays there.
        assert_eq!(sample(&mut c, 5_000, 10), Some(0));
        assert_eq!(sample(&mut c, 5_500, 0), Some(0));
        // A drop of 1.5 points is noise at the bound: still pinned.
        assert_eq!(sample(&mut c, 5_350, 0), Some(0));
        // A drop of 3 points turns the climb around: the window grows.
        let grown = sample(&mut c, 5_050, 0).unwrap();
        assert!(grown > 0, "{grown}");
    }
}
