//! A count-min sketch of 4-bit counters that estimates how often a key was
//! seen recently; TinyLFU's admission filter.
//!
//! # Layout
//!
//! The table is a `Vec<u64>`; each word packs sixteen 4-bit counters, and
//! every eight consecutive words form a 64-byte *block* (one cache line). A
//! key's re-mixed hash picks one block with its high half, and its low half
//! picks one counter in each of four *rows*: row `r` owns words `2r` and
//! `2r + 1` of the block, one hash bit chooses the word and four more bits
//! the nibble. So the four counters of a key always share one cache line
//! (one miss per increment or estimate instead of four), while two keys that
//! land in the same block still only collide on all four rows with
//! probability about `(1/32)^4`.
//!
//! # Updates and aging
//!
//! [`FrequencySketch::increment`] adds `n` to all four counters (saturating
//! at 15); the estimate is their minimum. *Conservative update* (raising only
//! the minimal counters) was measured too: it estimates more exactly but
//! loses up to 6 points on loop traces, where TinyLFU's ties between equally
//! frequent keys are what keeps the resident set stable, so it is not used.
//! Once the number of increments reaches
//! the sample period (ten times the number of entries the sketch is sized
//! for) every counter is halved, so the sketch forgets old popularity and the
//! cache can follow a changing workload (TinyLFU's "reset").

/// Mask keeping the three low bits of every nibble after a one-bit right shift
/// of a whole word: halves all sixteen counters at once.
const HALVE_MASK: u64 = 0x7777_7777_7777_7777;

/// Largest value of a 4-bit counter.
const COUNTER_MAX: u8 = 15;

/// Increments per sized-for entry between two halvings.
const SAMPLE_PER_ENTRY: u64 = 10;

/// Words per block (one 64-byte cache line).
const BLOCK_WORDS: usize = 8;

/// The frequency sketch: 4-bit counters, block-local rows, periodic halving.
#[derive(Debug, Clone)]
pub(crate) struct FrequencySketch {
    /// Sixteen counters per word, eight words per block.
    table: Vec<u64>,
    /// `blocks - 1`; the number of blocks is a power of two.
    block_mask: usize,
    /// Increments since the last halving.
    additions: u64,
    /// Increments between two halvings.
    sample_period: u64,
    /// The number of distinct entries the table was sized for.
    sized_for: u64,
}

/// Re-mixes a hash so that every output bit depends on every input bit (the
/// shard derives its own shard index from some of the bits, so those may be
/// constant for all keys of one policy). A `splitmix64`-style finalizer.
#[inline]
pub(crate) fn remix(hash: u64) -> u64 {
    let mut h = hash ^ (hash >> 31);
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

/// For row `row` (0..4) of a key whose re-mixed hash is `h`: the word
/// within its block (`2 * row` or `2 * row + 1`, by one hash bit) and the
/// shift of its counter in that word (four more bits pick the nibble).
#[inline]
fn counter(h: u64, row: usize) -> (usize, u32) {
    let bits = (h >> (row * 8)) as u32;
    (2 * row + (bits & 1) as usize, ((bits >> 1) & 15) * 4)
}

impl FrequencySketch {
    /// Bytes of table per entry the sketch is sized for (before rounding the
    /// table up to a power of two, so 4 to 8 in effect). Measured with the
    /// simulator: 2, 4, 8, 16 and 64 bytes per entry are all within noise of
    /// each other on the traces (larger tables did not help anywhere, 2 was
    /// slightly worse on the small loop traces), so 4 it is.
    pub(crate) const BYTES_PER_ENTRY: u64 = 4;

    /// A sketch for about `entries` distinct hot keys.
    pub(crate) fn new(entries: u64) -> Self {
        let entries = entries.max(1);
        let bytes = entries.saturating_mul(Self::BYTES_PER_ENTRY);
        // At least one block; at most 2^31 words (16 GiB), far beyond use.
        let words = (bytes / 8)
            .clamp(BLOCK_WORDS as u64, 1 << 31)
            .next_power_of_two() as usize;
        Self {
            table: vec![0; words],
            block_mask: words / BLOCK_WORDS - 1,
            additions: 0,
            sample_period: entries.saturating_mul(SAMPLE_PER_ENTRY),
            sized_for: entries,
        }
    }

    /// The number of distinct entries the sketch was sized for.
    #[inline]
    pub(crate) fn sized_for(&self) -> u64 {
        self.sized_for
    }

    /// The first word of the block of a key whose re-mixed hash is `h`.
    #[inline]
    fn block_base(&self, h: u64) -> usize {
        ((h >> 32) as usize & self.block_mask) * BLOCK_WORDS
    }

    /// The block starting at word `base`: one bounds check for all four
    /// counters (the word offsets are below 8 by construction).
    #[inline]
    fn block(&mut self, base: usize) -> &mut [u64; BLOCK_WORDS] {
        (&mut self.table[base..base + BLOCK_WORDS])
            .try_into()
            .expect("the table is whole blocks")
    }

    /// The estimated recent frequency of the key, 0..=15.
    pub(crate) fn estimate(&self, hash: u64) -> u8 {
        let h = remix(hash);
        let base = self.block_base(h);
        let block: &[u64; BLOCK_WORDS] = self.table[base..base + BLOCK_WORDS]
            .try_into()
            .expect("the table is whole blocks");
        let mut min = u64::from(COUNTER_MAX);
        for row in 0..4 {
            let (w, s) = counter(h, row);
            min = min.min((block[w] >> s) & 15);
        }
        min as u8
    }

    /// Records `n` more occurrences of the key: each of its four counters
    /// grows by `n`, saturating at 15. Halves all counters when the sample
    /// period is reached. Inlined, so that the common `n` of 1 (a new
    /// key) compiles to a compare per counter.
    #[inline]
    pub(crate) fn increment(&mut self, hash: u64, n: u8) {
        let h = remix(hash);
        let block = self.block(self.block_base(h));
        let max = u64::from(COUNTER_MAX);
        let n = u64::from(n).min(max);
        let mut added = 0;
        for row in 0..4 {
            let (w, s) = counter(h, row);
            let add = (max - ((block[w] >> s) & max)).min(n);
            block[w] += add << s;
            added = added.max(add);
        }
        self.additions += added;
        if self.additions >= self.sample_period {
            self.halve();
        }
    }

    /// Halves every counter (the TinyLFU reset).
    #[cold]
    #[inline(never)]
    fn halve(&mut self) {
        for word in &mut self.table {
            *word = (*word >> 1) & HALVE_MASK;
        }
        self.additions /= 2;
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.table.fill(0);
        self.additions = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_saturate_at_fifteen() {
        let mut s = FrequencySketch::new(1024);
        for i in 0..20u8 {
            assert_eq!(s.estimate(42), i.min(15));
            s.increment(42, 1);
        }
        s.increment(7, 200);
        assert_eq!(s.estimate(7), 15);
    }

    #[test]
    fn halving_ages_counts() {
        let mut s = FrequencySketch::new(16);
        s.increment(1, 12);
        // 160 increments trigger a halving; spread them over other keys.
        for k in 0..148u64 {
            s.increment(k.wrapping_mul(0x1234_5678_9abc_def1) + 1000, 1);
        }
        assert!(s.estimate(1) <= 7, "estimate {}", s.estimate(1));
        s.clear();
        assert_eq!(s.estimate(1), 0);
    }

    #[test]
    fn distinguishes_hot_from_cold() {
        let mut s = FrequencySketch::new(1000);
        for k in 0..1000u64 {
            s.increment(k, if k < 10 { 8 } else { 1 });
        }
        let hot = (0..10).filter(|&k| s.estimate(k) >= 8).count();
        let cold = (10..1000).filter(|&k| s.estimate(k) >= 4).count();
        assert_eq!(hot, 10);
        assert!(cold < 20, "{cold} cold keys look warm");
    }
}
