//! A fixed-size log-linear latency histogram (nanoseconds): exact below
//! 64 ns, then 32 buckets per power of two (under 3.2% error), so millions
//! of samples cost 15 KB and no sorting. Used for per-request latencies by
//! the comparison bench and the tour.

/// Buckets between two powers of two, as a power of two.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this get a bucket each.
const EXACT: u64 = 2 * SUB;
const BUCKETS: usize = (EXACT + (64 - (SUB_BITS + 1) as u64) * SUB) as usize;

#[derive(Clone, Debug)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let sub = (v >> (exp - SUB_BITS)) & (SUB - 1);
    (EXACT + u64::from(exp - SUB_BITS - 1) * SUB + sub) as usize
}

/// The largest value that falls in bucket `i`.
fn bucket_high(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let exp = (i - EXACT) / SUB + u64::from(SUB_BITS) + 1;
    let sub = (i - EXACT) % SUB;
    let high = (u128::from(SUB + sub + 1) << (exp - u64::from(SUB_BITS))) - 1;
    u64::try_from(high).unwrap_or(u64::MAX)
}

impl Histogram {
    pub(crate) fn record(&mut self, nanos: u64) {
        self.counts[bucket(nanos)] += 1;
        self.total += 1;
        self.max = self.max.max(nanos);
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// Samples at or above `nanos` (to the bucket: a sample in the bucket
    /// holding `nanos` counts).
    pub(crate) fn count_at_least(&self, nanos: u64) -> u64 {
        self.counts[bucket(nanos)..].iter().sum()
    }

    /// The value at quantile `q` (0.0..=1.0), rounded up to its bucket's
    /// upper edge (never above the maximum seen); 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total.max(1));
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_high(i).min(self.max);
            }
        }
        0
    }
}

/// Nanoseconds as a short human string: `850 ns`, `12.3 µs`, `4.56 ms`.
pub(crate) fn fmt_nanos(nanos: u64) -> String {
    match nanos {
        0..1_000 => format!("{nanos} ns"),
        1_000..1_000_000 => format!("{:.1} µs", nanos as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} ms", nanos as f64 / 1e6),
        _ => format!("{:.2} s", nanos as f64 / 1e9),
    }
}
