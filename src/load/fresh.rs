//! Freshness: how old a loaded value is and what a read of it should do.
//!
//! Pure arithmetic on nanosecond timestamps, no locks and no threads; the
//! [`LoadingCache`](crate::LoadingCache) asks [`Freshness::state`] on every
//! read and acts on the answer.
//!
//! A value loaded at `loaded_at` with time to live `T` *expires* at
//! `expires_at = loaded_at + T`. Around that instant:
//!
//! ```text
//! loaded_at        +refresh_after        expires_at       +stale_while_revalidate   +stale_if_error
//!    | Fresh             | RefreshDue         | Stale              | Fallback                 | Expired
//! ```
//!
//! Early expiry (XFetch, Vattani, Chierichetti and Lowenstein, VLDB 2015)
//! turns a fresh read into `RefreshDue` with a probability that rises as
//! `expires_at` nears: a read at `now` refreshes when
//! `now + δ·β·(−ln u) ≥ expires_at`, with `δ` the time the value took to
//! load, `β` the configured eagerness and `u` uniform in (0, 1]. So the
//! probability is `exp(−(expires_at − now) / (δ·β))`: negligible many load
//! times before expiry, certain at it.

use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use crate::{expiry::NEVER, shard::representable};

/// A stamp no other call returns, in this process. Each thread takes a
/// block of [`STAMP_BLOCK`] from a shared counter and counts through it, so
/// writers on many threads do not fight over one counter's cache line.
pub(crate) fn new_stamp() -> u64 {
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        /// The next stamp of this thread's block, and the block's end.
        static BLOCK: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    BLOCK.with(|block| {
        let (mut next, mut end) = block.get();
        if next == end {
            next = NEXT_BLOCK.fetch_add(STAMP_BLOCK, Relaxed);
            end = next + STAMP_BLOCK;
        }
        block.set((next + 1, end));
        next
    })
}

/// Stamps a thread takes at once (2^64 / 2^16 blocks: never exhausted).
const STAMP_BLOCK: u64 = 1 << 16;

/// A value as a [`LoadingCache`](crate::LoadingCache) stores it: the value
/// (`None` for a cached "absent"), when it was loaded and how long that took.
#[derive(Clone, Debug)]
pub(crate) struct Loaded<V> {
    pub(crate) value: Option<V>,
    /// Clock nanoseconds when the value was stored.
    pub(crate) loaded_at: u64,
    /// When the value stops being fresh; [`NEVER`] without a time to live.
    pub(crate) expires_at: u64,
    /// How long the load took, in clock nanoseconds (0 for an `insert`).
    pub(crate) load_nanos: u64,
    /// Unique per store, so a background reload replaces only the value it
    /// was started for.
    pub(crate) stamp: u64,
}

impl<V> Loaded<V> {
    /// Whether the value is still fresh (or due for refresh) at `now`: not
    /// past its time to live. A value past it is never handed to a caller
    /// that did not ask for a stale one.
    pub(crate) fn unexpired_at(&self, now: u64) -> bool {
        self.expires_at == NEVER || now < self.expires_at
    }

    /// Whether this is a cached "absent" (`negative_ttl`), not a value: no
    /// entry of the user's, so its removal is neither heard by the
    /// listener nor counted in the stats.
    pub(crate) fn is_absence(&self) -> bool {
        self.value.is_none()
    }

    /// When a value stored at `now` with time to live `ttl` (nanoseconds)
    /// stops being fresh; [`NEVER`] for none, or for one later than the
    /// cache's entries can hold (about 36 years after the clock's origin),
    /// as the cache counts such a deadline.
    pub(crate) fn expiry(now: u64, ttl: Option<u64>) -> u64 {
        ttl.map_or(NEVER, |ttl| representable(now.saturating_add(ttl)))
    }

    /// The deadline the value keeps for itself while it is fresh, for
    /// `Cache::expires_in`: its expiry ([`NEVER`] for none), or `None` if
    /// it is no value to give a caller that did not ask for a stale one
    /// (a cached absence, or a value past its time to live at `now`).
    pub(crate) fn fresh_until(&self, now: impl FnOnce() -> u64) -> Option<u64> {
        self.value.as_ref()?;
        (self.expires_at == NEVER || now() < self.expires_at).then_some(self.expires_at)
    }

    /// Gives a fresh value (see [`fresh_until`](Self::fresh_until)) a new
    /// time to live at `now`: `ttl` nanoseconds, `None` for none. Returns
    /// the lifetime its entry must then have, the time to live plus
    /// `grace` (the windows past it in which reads may still use it), or
    /// `None` if the value is not fresh, and is left as it is.
    pub(crate) fn retime(&mut self, now: u64, ttl: Option<u64>, grace: u64) -> Option<Option<u64>> {
        self.fresh_until(|| now)?;
        self.expires_at = Self::expiry(now, ttl);
        Some(ttl.map(|ttl| ttl.saturating_add(grace)))
    }
}

/// What a read should do with a stored value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Return it.
    Fresh,
    /// Return it and start one background reload.
    RefreshDue,
    /// Past its time to live, inside the stale-while-revalidate window:
    /// return it, count a stale hit, start one background reload.
    Stale,
    /// Past both windows except stale-if-error: load now, and return this
    /// value only if the load fails.
    Fallback,
    /// Unusable: load now.
    Expired,
}

/// The loading cache's timing settings, in nanoseconds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Freshness {
    pub(crate) refresh_after: Option<u64>,
    pub(crate) stale_while_revalidate: u64,
    pub(crate) stale_if_error: u64,
    /// XFetch's β; `None` turns early expiry off.
    pub(crate) beta: Option<f64>,
}

impl Freshness {
    /// How long past `expires_at` the cache must keep a value around.
    pub(crate) fn grace(&self) -> u64 {
        self.stale_while_revalidate.max(self.stale_if_error)
    }

    /// True if reads may start background reloads.
    pub(crate) fn reloads_in_background(&self) -> bool {
        self.refresh_after.is_some() || self.stale_while_revalidate > 0 || self.beta.is_some()
    }

    /// Whether [`state`](Self::state) looks at the time for `entry`: only
    /// for a value with a time to live, or with refresh on.
    pub(crate) fn needs_clock<V>(&self, entry: &Loaded<V>) -> bool {
        entry.expires_at != NEVER || self.refresh_after.is_some()
    }

    /// The state of `entry` at `now`. `draw` gives 64 random bits; it is
    /// called only when early expiry has to decide.
    #[inline]
    pub(crate) fn state<V>(
        &self,
        entry: &Loaded<V>,
        now: u64,
        draw: impl FnOnce() -> u64,
    ) -> State {
        if entry.expires_at != NEVER && now >= entry.expires_at {
            let late = now - entry.expires_at;
            return if late < self.stale_while_revalidate {
                State::Stale
            } else if late < self.stale_if_error {
                State::Fallback
            } else {
                State::Expired
            };
        }
        if self
            .refresh_after
            .is_some_and(|r| now >= entry.loaded_at.saturating_add(r))
        {
            return State::RefreshDue;
        }
        if let Some(beta) = self.beta {
            if entry.expires_at != NEVER && entry.load_nanos > 0 {
                let (gap, scale) = (entry.expires_at - now, nanos_f64(entry.load_nanos) * beta);
                // Far from expiry the chance is below e^-40 (4e-18): skip the
                // draw, which most reads would pay for.
                if nanos_f64(gap) < scale * FAR && xfetch_fires(gap, scale, draw()) {
                    return State::RefreshDue;
                }
            }
        }
        State::Fresh
    }
}

/// Nanoseconds as a float: through `i64`, one instruction on x86-64 where
/// `u64` takes five; clock nanoseconds stay below 2^63 (292 years).
#[inline]
fn nanos_f64(nanos: u64) -> f64 {
    nanos.min(i64::MAX as u64) as i64 as f64
}

/// How many `load time × β` before expiry early expiry starts drawing.
const FAR: f64 = 40.0;

/// `ln 2`, a hair larger, so that float rounding cannot make the bound of
/// [`xfetch_fires`]'s first test smaller than it is.
const LN_2_UP: f64 = std::f64::consts::LN_2 * (1.0 + 1e-9);

/// XFetch's test for a value `gap` nanoseconds from expiry that took `δ` to
/// load, with `scale` = `δ·β`, on 64 random `bits`.
///
/// The draw is `u = 1 − (bits >> 11) / 2^53`, in `(0, 1]`, and the test
/// fires when `δ·β·(−ln u) ≥ gap`, that is when `u ≤ e^(−gap/(δ·β))`, with
/// that probability. If the top `k` bits are ones, `u > 2^−(k+1)`, so the
/// test can fire only if `gap < (k + 1)·δ·β·ln 2`: checked first, that
/// turns away all but about twice the draws that fire, on a bit count and
/// a multiplication, without a logarithm. Before, every read within 40
/// load times of expiry took the logarithm, and those reads were the
/// stampede bench's 99th percentile. The answer is the paper's in every
/// case.
#[inline]
pub(crate) fn xfetch_fires(gap: u64, scale: f64, bits: u64) -> bool {
    let gap = nanos_f64(gap);
    let ones = (!bits).leading_zeros();
    if gap >= f64::from(ones + 1) * scale * LN_2_UP {
        return false;
    }
    // u is in (0, 1], so the logarithm is finite and <= 0.
    let u = 1.0 - (bits >> 11) as f64 / (1u64 << 53) as f64;
    scale * -u.ln() >= gap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_unique_across_threads() {
        let per_thread: Vec<Vec<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..3 * STAMP_BLOCK).map(|_| new_stamp()).collect()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<u64> = per_thread.into_iter().flatten().collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a stamp was handed out twice");
    }

    fn entry(loaded_at: u64, expires_at: u64, load_nanos: u64) -> Loaded<u8> {
        Loaded {
            value: Some(1),
            loaded_at,
            expires_at,
            load_nanos,
            stamp: 0,
        }
    }

    #[test]
    fn timeline_runs_fresh_refresh_stale_fallback_expired() {
        let f = Freshness {
            refresh_after: Some(50),
            stale_while_revalidate: 20,
            stale_if_error: 60,
            beta: None,
        };
        let e = entry(0, 100, 0);
        let never = || -> u64 { unreachable!("no early expiry configured") };
        assert_eq!(f.state(&e, 0, never), State::Fresh);
        assert_eq!(f.state(&e, 49, never), State::Fresh);
        assert_eq!(f.state(&e, 50, never), State::RefreshDue);
        assert_eq!(f.state(&e, 99, never), State::RefreshDue);
        assert_eq!(f.state(&e, 100, never), State::Stale);
        assert_eq!(f.state(&e, 119, never), State::Stale);
        assert_eq!(f.state(&e, 120, never), State::Fallback);
        assert_eq!(f.state(&e, 159, never), State::Fallback);
        assert_eq!(f.state(&e, 160, never), State::Expired);
        assert_eq!(f.grace(), 60);
    }

    #[test]
    fn values_without_ttl_never_go_stale() {
        let f = Freshness {
            stale_while_revalidate: 10,
            beta: Some(1.0),
            ..Freshness::default()
        };
        let e = entry(0, NEVER, 1_000);
        assert_eq!(f.state(&e, u64::MAX - 1, || bits_of(0.999)), State::Fresh);
    }

    #[test]
    fn retime_changes_only_a_fresh_value_and_its_entry_keeps_the_grace() {
        let mut e = entry(0, 100, 0);
        assert_eq!(e.retime(50, Some(30), 20), Some(Some(50)), "ttl + grace");
        assert_eq!(e.expires_at, 80);
        assert_eq!(e.fresh_until(|| 79), Some(80));
        assert_eq!(e.fresh_until(|| 80), None, "past its new time to live");
        assert_eq!(e.retime(60, None, 20), Some(None), "persisted");
        assert_eq!(e.expires_at, NEVER);
        assert_eq!(e.fresh_until(|| u64::MAX - 1), Some(NEVER));
        assert_eq!(e.retime(70, Some(0), 0), Some(Some(0)), "zero: expired now");
        assert_eq!((e.expires_at, e.fresh_until(|| 70)), (70, None));

        // A stale value and a cached absence are left as they are.
        let mut stale = entry(0, 100, 0);
        assert_eq!(stale.retime(100, Some(30), 20), None);
        assert_eq!(stale.expires_at, 100);
        let mut absent = Loaded {
            value: None,
            ..entry(0, 100, 0)
        };
        assert_eq!(absent.fresh_until(|| 0), None);
        assert_eq!(absent.retime(10, Some(30), 0), None);
        assert_eq!(absent.expires_at, 100);
    }

    #[test]
    fn an_expiry_past_what_the_cache_can_hold_is_none() {
        assert_eq!(Loaded::<u8>::expiry(5, None), NEVER);
        assert_eq!(Loaded::<u8>::expiry(5, Some(10)), 15);
        assert_eq!(Loaded::<u8>::expiry(5, Some(u64::MAX)), NEVER);
        assert_eq!(Loaded::<u8>::expiry(1 << 61, Some(1)), NEVER);
    }

    /// A seeded xorshift, so the statistical tests are reproducible.
    fn draws(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// Random bits whose draw (`bits >> 11` over 2^53) is `d`.
    fn bits_of(d: f64) -> u64 {
        ((d * (1u64 << 53) as f64) as u64) << 11
    }

    /// The paper's test, on the draw the bits make.
    fn paper(gap: u64, delta: u64, beta: f64, bits: u64) -> bool {
        let draw = (bits >> 11) as f64 / (1u64 << 53) as f64;
        delta as f64 * beta * -(1.0 - draw).ln() >= gap as f64
    }

    #[test]
    fn xfetch_probability_rises_towards_expiry_as_the_paper_says() {
        let (delta, beta) = (1_000u64, 1.0);
        let f = Freshness {
            beta: Some(beta),
            ..Freshness::default()
        };
        let e = entry(0, 100_000, delta);
        let mut draw = draws(0x9E37_79B9_7F4A_7C15);
        let trials = 20_000;
        let mut last = -1.0;
        // Gaps of 8, 4, 2, 1, 0.5 and 0.25 load times before expiry.
        for gap in [8_000u64, 4_000, 2_000, 1_000, 500, 250] {
            let now = e.expires_at - gap;
            let fired = (0..trials)
                .filter(|_| f.state(&e, now, &mut draw) == State::RefreshDue)
                .count();
            let rate = fired as f64 / trials as f64;
            let expected = (-(gap as f64) / (delta as f64 * beta)).exp();
            // Binomial standard deviation, and a floor for tiny rates.
            let sd = (expected * (1.0 - expected) / trials as f64)
                .sqrt()
                .max(1e-3);
            assert!(
                (rate - expected).abs() < 5.0 * sd,
                "gap {gap}: rate {rate}, expected {expected}"
            );
            assert!(rate >= last, "rate fell from {last} to {rate} at gap {gap}");
            last = rate;
        }
        // A draw of 0 never leads; a draw near 1 leads by many load times.
        assert!(!xfetch_fires(1, 5.0, 0));
        assert!(xfetch_fires(20, 5.0, bits_of(0.999)));
        // Without a measured load time, early expiry never fires.
        assert_eq!(
            f.state(&entry(0, 100, 0), 99, || bits_of(0.999)),
            State::Fresh
        );
    }

    #[test]
    fn xfetch_integer_test_answers_as_the_paper_s_does() {
        let mut draw = draws(7);
        let mut fired = 0;
        let mut checked = 0;
        for gap in [1u64, 10, 250, 693, 694, 999, 1_000, 1_001, 4_000, 40_000] {
            for beta in [0.5, 1.0, 4.0] {
                // Random bits, and bits with 0 to 63 leading ones (the draws
                // near 1 that the integer test lets through or turns away
                // at its edge).
                for i in 0..20_000u64 {
                    let bits = draw();
                    let bits = if i < 64 {
                        bits >> i | !(u64::MAX >> i)
                    } else {
                        bits
                    };
                    let fires = xfetch_fires(gap, 1_000.0 * beta, bits);
                    assert_eq!(
                        fires,
                        paper(gap, 1_000, beta, bits),
                        "gap {gap}, β {beta}, bits {bits:#x}"
                    );
                    fired += usize::from(fires);
                    checked += 1;
                }
            }
        }
        // Both outcomes were exercised.
        assert!(
            fired > 1_000 && fired < checked - 1_000,
            "fired {fired} of {checked}"
        );
        for bits in [0, bits_of(0.5), u64::MAX] {
            assert_eq!(
                xfetch_fires(1_000, 1_000.0, bits),
                paper(1_000, 1_000, 1.0, bits)
            );
        }
    }

    #[test]
    fn larger_beta_refreshes_earlier() {
        let mut draw = draws(42);
        let rate = |beta: f64, draw: &mut dyn FnMut() -> u64| {
            (0..10_000)
                .filter(|_| xfetch_fires(2_000, 1_000.0 * beta, draw()))
                .count()
        };
        let low = rate(0.5, &mut draw);
        let high = rate(2.0, &mut draw);
        assert!(
            high > low * 3,
            "beta 2.0 fired {high} times, beta 0.5 {low}"
        );
    }
}
