//! A count-min sketch of 4-bit counters that estimates how often a key was
//! seen recently; TinyLFU's admission filter.
//!
//! # Layout
//!
//! The table is a `Vec<u64>`; each word packs sixteen 4-bit counters, and
//! every eight consecutive words form a 64-byte *block* (one cache line). A
//! key's re-mixed hash picks one block with its high half (by multiply and
//! shift, so the number of blocks need not be a power of two and the table
//! is exactly as large as its budget allows), and its low half
//! picks one counter in each of four *rows*: row `r` owns words `2r` and
//! `2r + 1` of the block, one hash bit chooses the word and four more bits
//! the nibble. So the four counters of a key always share one cache line
//! (one miss per increment or estimate instead of four), while two keys that
//! land in the same block still only collide on all four rows with
//! probability about `(1/32)^4`.
//!
//! The table takes [`FrequencySketch::BYTES_PER_ENTRY`] bytes per entry it is
//! sized for ([`FrequencySketch::SMALL_BYTES_PER_ENTRY`] for a small shard),
//! fewer (down to [`FrequencySketch::MIN_BYTES_PER_ENTRY`]) where the
//! cache's budget for sketches would be exceeded.
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
//!
//! # Size from the start
//!
//! An entry-bounded cache's sketch is built at its full size (the table is
//! zeroed by the allocator, so untouched parts are not resident, but its
//! random accesses make it resident after a few thousand distinct keys: the
//! most a cache spends on sketches is 4 MiB). Measured on 5 December and
//! not kept: a sketch that starts small and doubles as entries arrive,
//! each block copied into the two blocks its keys map to afterwards (block
//! `i` of `n` becomes `2i` and `2i + 1` of `2n` under the multiply-shift
//! map, so no estimate changes at the split). The copies carry the counts
//! of the keys that moved to the sibling, so every block starts its new
//! life over-counted, and in the simulator (four hash seeds, baseline
//! 47.81) Zipf 0.8 at 100k lost 0.68 starting from 32 to 63 blocks
//! (47.73 with the full size's sample period, 47.75 with one scaled to
//! the current size), 0.42 from 512 (47.77) and still 0.21 from 2,048
//! (47.79), enough to flag the row.

use super::SKETCH_BUDGET;

/// Mask keeping the three low bits of every nibble after a one-bit right shift
/// of a whole word: halves all sixteen counters at once.
const HALVE_MASK: u64 = 0x7777_7777_7777_7777;

/// Largest value of a 4-bit counter.
const COUNTER_MAX: u8 = 15;

/// Increments per sized-for entry between two halvings.
const SAMPLE_PER_ENTRY: u64 = 10;

/// Increments per sized-for entry between two halvings in a small cache's
/// sketch ([`SketchBudget::is_small`]): 16. Measured on 7 December, once
/// every window candidate of a small cache was judged as a fresh key
/// (`TinyLfu::candidates_fresh`), in the simulator over eight hash seeds,
/// 8 shards as the cache shards: the comparison bench's 23 held-out rows
/// 52.56 against 52.43 at 10 (`backf`@500 +1.5, where the halvings were
/// what it still lost: 60.8 with none, against the 61.1 a cache keeping
/// any 500 of its 750 keys gets; `zigzag`@1000 +1.0, `multi2`@250 +0.3),
/// the 30 rows 48.36 against 48.34 (`zigzag`@500 +0.3, `loop 1.5x`
/// +0.26), the 47 small rows 25.13 against 25.07 (four seeds: OLTP@100
/// +1.2, `ps`@100 and @200 −0.4); 20 gave the same means (`backf`@500
/// +2.5, `sprite`@1000 −0.26), 13 less. Before that rule, 13 to 20 had
/// lost `zigzag`@500 up to 1.6 and gained nothing on `multi2`@1000 (see
/// the policy's module docs).
const SMALL_SAMPLE_PER_ENTRY: u64 = 16;

/// Words per block (one 64-byte cache line).
const BLOCK_WORDS: usize = 8;

/// Bytes of one block.
const BLOCK_BYTES: u64 = 64;

/// The frequency sketch: 4-bit counters, block-local rows, periodic halving.
#[derive(Debug, Clone)]
pub(crate) struct FrequencySketch {
    /// Sixteen counters per word, eight words per block.
    table: Vec<u64>,
    /// The number of blocks.
    blocks: u64,
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

/// What one shard's sketch may take: bytes in all, and bytes per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SketchBudget {
    /// Most bytes of table, unless
    /// [`MIN_BYTES_PER_ENTRY`](FrequencySketch::MIN_BYTES_PER_ENTRY) per
    /// entry needs more.
    pub(crate) bytes: u64,
    /// Most bytes per entry.
    pub(crate) per_entry: u64,
}

impl SketchBudget {
    /// No sketch worth the name: one block, never grown, for a shard that
    /// never evicts. Without it an unbounded cache's sketch was sized for
    /// its 4 Mi reserved entries (16 MiB, resident after some 20,000
    /// distinct keys, each touching a random page) and grew past them.
    pub(crate) const NONE: Self = SketchBudget {
        bytes: 0,
        per_entry: 0,
    };

    /// The budget of each of the `shards` shards of a cache bounded at
    /// `capacity` (weight units when `weighted`): an equal part of
    /// [`SKETCH_BUDGET`], at [`FrequencySketch::BYTES_PER_ENTRY`] per
    /// entry, or [`FrequencySketch::SMALL_BYTES_PER_ENTRY`] for a small
    /// cache of entries.
    ///
    /// An unbounded cache (`u64::MAX`, the builder's default) never
    /// evicts, so it asks no admission question: its budget is
    /// [`NONE`](Self::NONE).
    pub(crate) fn of_shard(capacity: u64, weighted: bool, shards: u64) -> Self {
        if capacity == u64::MAX {
            return Self::NONE;
        }
        let small = !weighted && capacity <= FrequencySketch::SMALL_CACHE;
        SketchBudget {
            bytes: SKETCH_BUDGET / shards.max(1),
            per_entry: if small {
                FrequencySketch::SMALL_BYTES_PER_ENTRY
            } else {
                FrequencySketch::BYTES_PER_ENTRY
            },
        }
    }

    /// Whether this is the budget of a small cache's shard (its sketch
    /// gets [`FrequencySketch::SMALL_BYTES_PER_ENTRY`]).
    pub(crate) fn is_small(&self) -> bool {
        self.per_entry == FrequencySketch::SMALL_BYTES_PER_ENTRY
    }

    /// `bytes` in all at the usual bytes per entry.
    #[cfg(test)]
    pub(crate) fn bytes(bytes: u64) -> Self {
        SketchBudget {
            bytes,
            per_entry: FrequencySketch::BYTES_PER_ENTRY,
        }
    }
}

impl FrequencySketch {
    /// Bytes of table per entry the sketch is sized for while the budget
    /// allows: 16 counters per entry, as in Caffeine. Measured with the
    /// simulator over four hash seeds, with the arrival rule of
    /// [`TinyLfu::admit`](super::TinyLfu) that the loops need at this
    /// accuracy: the mean of the 30 rows 47.49 against 47.22 at 4 bytes
    /// (Zipf at s = 0.8 +0.3, `P6`@10k +1.2, `multi2`@500 +0.8, `sprite`@100
    /// and `cpp`@100 +0.5, the loops +0.7 to +0.8, no row more than 0.15
    /// lower); 12 and 16 bytes gave only +0.07 and +0.10 more.
    pub(crate) const BYTES_PER_ENTRY: u64 = 8;

    /// Fewest bytes per entry, whatever the budget: below that the
    /// estimates of hot and cold keys blur.
    pub(crate) const MIN_BYTES_PER_ENTRY: u64 = 4;

    /// Bytes per entry for the sketches of a cache bounded at
    /// [`SMALL_CACHE`](Self::SMALL_CACHE) entries or fewer: twice the
    /// usual, at most 32 KiB. In a few hundred entries a collision of two
    /// keys' counters decides more admissions. Simulator, four hash seeds
    /// (mean of the 30 rows 47.86 at 8 bytes): 47.94 (`sprite`@100 +0.6,
    /// `multi2`@500 +0.4 — +0.34 over eight seeds, which brings it within
    /// 0.5 of moka held to its capacity, from 0.7 —, `zigzag` +0.5,
    /// `cs`@500 +0.3, `gli`@1000 +0.25; no row lower by 0.2). Up to 20,000
    /// entries 47.98 (Zipf at 10k +0.2 to +0.4 as well), for 80 KiB more
    /// per cache of 10k: not taken, a cache of that size should keep its
    /// per-entry cost.
    pub(crate) const SMALL_BYTES_PER_ENTRY: u64 = 16;

    /// Largest entry bound of a cache whose sketches get
    /// [`SMALL_BYTES_PER_ENTRY`](Self::SMALL_BYTES_PER_ENTRY). Decided by
    /// the cache's bound rather than a shard's, so that the machine's
    /// number of CPUs (which sets the default shards) does not decide it.
    pub(crate) const SMALL_CACHE: u64 = 2048;

    /// A sketch for about `entries` distinct hot keys, within `budget`'s
    /// bytes if [`MIN_BYTES_PER_ENTRY`](Self::MIN_BYTES_PER_ENTRY) per entry
    /// fits in them, and at most its bytes per entry.
    pub(crate) fn new(entries: u64, budget: SketchBudget) -> Self {
        if budget == SketchBudget::NONE {
            // Halved as one sized for the 16 entries a block holds at 4
            // bytes each, and sized for every count of entries, so it is
            // never grown.
            return Self {
                table: vec![0; BLOCK_WORDS],
                blocks: 1,
                additions: 0,
                sample_period: 16 * SAMPLE_PER_ENTRY,
                sized_for: u64::MAX,
            };
        }
        let entries = entries.max(1);
        let per_entry = (budget.bytes / entries).clamp(Self::MIN_BYTES_PER_ENTRY, budget.per_entry);
        // At least one block; at most 2^28 blocks (16 GiB), far beyond use.
        let blocks = (entries.saturating_mul(per_entry) / BLOCK_BYTES).clamp(1, 1 << 28);
        Self {
            table: vec![0; blocks as usize * BLOCK_WORDS],
            blocks,
            additions: 0,
            sample_period: entries.saturating_mul(if budget.is_small() {
                SMALL_SAMPLE_PER_ENTRY
            } else {
                SAMPLE_PER_ENTRY
            }),
            sized_for: entries,
        }
    }

    /// Heap bytes of the table.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.table.len() * 8
    }

    /// The number of distinct entries the sketch was sized for.
    #[inline]
    pub(crate) fn sized_for(&self) -> u64 {
        self.sized_for
    }

    /// Whether the sketch is within `1 / divisor` of its sample period of
    /// its next halving.
    #[inline]
    pub(crate) fn halving_near(&self, divisor: u64) -> bool {
        self.additions + self.sample_period / divisor >= self.sample_period
    }

    /// The first word of the block of a key whose re-mixed hash is `h`.
    #[inline]
    fn block_base(&self, h: u64) -> usize {
        // Maps the high 32 bits onto 0..blocks without a division.
        (((h >> 32) * self.blocks) >> 32) as usize * BLOCK_WORDS
    }

    /// The block starting at word `base`: one bounds check for all four
    /// counters (the word offsets are below 8 by construction).
    #[inline]
    fn block(&mut self, base: usize) -> &mut [u64; BLOCK_WORDS] {
        (&mut self.table[base..base + BLOCK_WORDS])
            .try_into()
            .expect("the table is whole blocks")
    }

    /// The first word of the key's block: the cache line
    /// [`increment`](Self::increment) and [`estimate`](Self::estimate)
    /// will read, for a prefetch.
    #[inline]
    pub(crate) fn line_of(&self, hash: u64) -> &u64 {
        &self.table[self.block_base(remix(hash))]
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
    /// period is reached. Returns the key's [`estimate`](Self::estimate)
    /// after the increment (the least of its four counters, as the loop
    /// has them at hand), which spares the admission duel of a new key a
    /// second look at the table. Inlined, so that the common `n` of 1 (a
    /// new key) compiles to a compare per counter.
    #[inline]
    pub(crate) fn increment(&mut self, hash: u64, n: u8) -> u8 {
        let h = remix(hash);
        let block = self.block(self.block_base(h));
        let max = u64::from(COUNTER_MAX);
        let n = u64::from(n).min(max);
        let mut added = 0;
        let mut least = max;
        for row in 0..4 {
            let (w, s) = counter(h, row);
            let old = (block[w] >> s) & max;
            let add = (max - old).min(n);
            block[w] += add << s;
            added = added.max(add);
            least = least.min(old + add);
        }
        self.additions += added;
        if self.additions >= self.sample_period {
            self.halve();
            // Halving halves each counter, and so their least.
            least >>= 1;
        }
        least as u8
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
        let mut s = FrequencySketch::new(1024, SketchBudget::bytes(u64::MAX));
        for i in 0..20u8 {
            assert_eq!(s.estimate(42), i.min(15));
            s.increment(42, 1);
        }
        s.increment(7, 200);
        assert_eq!(s.estimate(7), 15);
    }

    #[test]
    fn increment_returns_the_estimate_it_leaves() {
        // Small enough that collisions happen and halvings come often.
        let mut s = FrequencySketch::new(16, SketchBudget::bytes(u64::MAX));
        let mut halvings = 0;
        for k in 0..5_000u64 {
            let key = k % 97;
            let before = s.additions;
            let returned = s.increment(key, 1 + (k % 3) as u8);
            halvings += usize::from(s.additions < before);
            assert_eq!(returned, s.estimate(key), "key {key} at step {k}");
        }
        assert!(halvings > 10, "{halvings} halvings");
    }

    #[test]
    fn halving_ages_counts() {
        let mut s = FrequencySketch::new(16, SketchBudget::bytes(u64::MAX));
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
    fn table_follows_entries_and_budget() {
        // 8 bytes per entry while the budget allows, whole 64-byte blocks.
        assert_eq!(
            FrequencySketch::new(1000, SketchBudget::bytes(u64::MAX)).bytes(),
            8000
        );
        assert_eq!(
            FrequencySketch::new(1001, SketchBudget::bytes(u64::MAX)).bytes(),
            8000
        );
        assert_eq!(
            FrequencySketch::new(1, SketchBudget::bytes(u64::MAX)).bytes(),
            64
        );
        // 16 for a cache of up to 2,048 entries, whatever its shards; not
        // for a weighted one, whose entries are not its bound.
        let small = SketchBudget::of_shard(2048, false, 4);
        assert_eq!(FrequencySketch::new(512, small).bytes(), 8192);
        let large = SketchBudget::of_shard(2049, false, 4);
        assert_eq!(FrequencySketch::new(512, large).bytes(), 4096);
        let weighted = SketchBudget::of_shard(2048, true, 1);
        assert_eq!(FrequencySketch::new(512, weighted).bytes(), 4096);
        assert_eq!(large.bytes * 4, SKETCH_BUDGET);
        // A tighter budget, down to 4 bytes per entry and no further.
        assert_eq!(
            FrequencySketch::new(1000, SketchBudget::bytes(6000)).bytes(),
            5952
        );
        assert_eq!(
            FrequencySketch::new(1000, SketchBudget::bytes(100)).bytes(),
            3968
        );
        // Every block is reachable: all keys' counters land in the table.
        let s = FrequencySketch::new(100, SketchBudget::bytes(600));
        let mut used = vec![0u32; s.blocks as usize];
        for k in 0..10_000u64 {
            used[s.block_base(remix(k)) / BLOCK_WORDS] += 1;
        }
        // 9 blocks, about 1111 keys each.
        assert_eq!(used.len(), 9);
        assert!(used.iter().all(|&n| (900..1300).contains(&n)), "{used:?}");
    }

    #[test]
    fn distinguishes_hot_from_cold() {
        let mut s = FrequencySketch::new(1000, SketchBudget::bytes(u64::MAX));
        for k in 0..1000u64 {
            s.increment(k, if k < 10 { 8 } else { 1 });
        }
        let hot = (0..10).filter(|&k| s.estimate(k) >= 8).count();
        let cold = (10..1000).filter(|&k| s.estimate(k) >= 4).count();
        assert_eq!(hot, 10);
        assert!(cold < 20, "{cold} cold keys look warm");
    }
}
