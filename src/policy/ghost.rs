//! Ghosts: fingerprints of the keys the policy evicted lately, kept by where
//! they were evicted from, which size the admission window.
//!
//! A key that misses soon after the policy evicted it tells which part of
//! the cache would have kept it: evicted from the window (it lost its duel
//! there), a larger window would have; evicted from the main space, a larger
//! main space would have. [`TinyLfu`](super::TinyLfu) moves the window one
//! step toward whichever side the returning key names — ARC's adaptation
//! (Megiddo and Modha), applied to W-TinyLFU's window. Unlike a hill
//! climber, which compares the hit rate of one sample with the next, this
//! compares the two sides on the same requests, so a workload's phases
//! (whose hit rates swing by tens of points on traces such as `sprite`)
//! cannot fool it.
//!
//! Each side remembers about its last few evictions (see
//! [`TinyLfu`](super::TinyLfu) for the lengths, and [`Ghosts`] for how).
//! A key that lost its duel on arrival, without ever being read in the
//! window, goes to a much shorter FIFO of its own: on a loop a little
//! larger than the cache every key comes back one pass after it was turned
//! away, and taking that as a vote for the window would let the loop in
//! (LRU's failure); only a key turned away and asked for again at once
//! counts. In large caches only a hashed sample of the keys has ghosts
//! (see [`MIN_SAMPLED_LEN`]).
//!
//! The returns are votes: the window follows them, and below 1% of the
//! capacity it takes only keys the sketch already knows (see
//! `SELECTIVE_DIVISOR` in [`TinyLfu`](super::TinyLfu)'s file).

/// Where an evicted key left from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The window's candidate lost its duel.
    Window = 0,
    /// The new key lost its duel on arrival, unread.
    Arrival = 1,
    /// The main space's victim lost its duel, or was evicted to make room.
    Main = 2,
}

/// Bits of a slot's eviction stamp.
const STAMP_BITS: u32 = 18;
/// Mask of a slot's eviction stamp.
const STAMP_MASK: u32 = (1 << STAMP_BITS) - 1;
/// Bits of a slot's tag (the rest of the slot).
const TAG_SHIFT: u32 = STAMP_BITS + 2;
/// Most evictions a side remembers: an entry older than 2^18 of its side's
/// evictions would look young again, so lengths stay far below that (and
/// the table, overwritten at random, keeps almost no entry that long).
const MAX_LEN: u64 = 1 << 16;
/// Slots per remembered eviction: a quarter of the slots or fewer are
/// live, so a collision rarely overwrites one.
const SLOTS_PER_LEN: u64 = 4;
/// Fewest slots, so that the few ghosts of a small cache do not collide
/// (at 2 slots per eviction `sprite`@100 lost 6 points).
const MIN_SLOTS: u64 = 256;
/// Fewest evictions a sampled side remembers. Large caches give ghosts
/// only to a sample of the keys, picked by hash bits (one in 2, 4, 8 or
/// 16, the most that leaves each side at least this many), and count each
/// sampled return as that many votes: the spatial sampling of SHARDS
/// (Waldspurger et al.), which estimates a miss ratio curve from a hashed
/// sample of keys. The other keys cost one remix and one test (with every
/// key remembered, the ghosts cost a new key 85 instructions more than the
/// hill climber did). Sampling left the simulator's mean where it was
/// (47.74 unsampled, 47.75 sampled, four hash seeds).
const MIN_SAMPLED_LEN: u64 = 32;
/// Most keys per sampled key (a power of two, at most 16: the sampling bits
/// sit between the index and the tag).
const MAX_RATE_SHIFT: u32 = 4;

/// The fingerprints of the keys evicted lately, per [`Side`], in one
/// direct-mapped table: a slot holds a key's 12-bit tag, its side and the
/// side's eviction count when it was evicted, and the entry counts while
/// fewer than that side's length of evictions have followed it. A later
/// eviction that lands in the same slot overwrites it, so a ghost holds a
/// little less than its length. 4 bytes per slot, [`SLOTS_PER_LEN`] slots
/// per remembered eviction; a `HashMap` and three `VecDeque`s cost a new
/// key about 300 instructions more than this does.
#[derive(Debug, Default)]
pub(crate) struct Ghosts {
    /// `tag << 20 | side << 18 | stamp`, or 0 for an empty slot; a power of
    /// two long.
    slots: Vec<u32>,
    /// Evictions so far, per side (modulo 2^18).
    evictions: [u32; 3],
    /// Sampled evictions each side remembers.
    lens: [u64; 3],
    /// One key in `1 << rate_shift` (by hash) has a ghost; the others are
    /// neither remembered nor recalled.
    rate_shift: u32,
}

impl Ghosts {
    /// Sets how many evictions the window and main sides stand for (`len`
    /// each) and the arrival side (`arrival`), and from that the sampling
    /// rate: each side remembers its length divided by the rate, of the
    /// sampled keys. A table that must grow for them forgets everything.
    #[inline]
    pub(crate) fn set_lens(&mut self, len: u64, arrival: u64) {
        let rate_shift = (len / MIN_SAMPLED_LEN).max(1).ilog2().min(MAX_RATE_SHIFT);
        let lens = [len, arrival, len].map(|l| (l >> rate_shift).clamp(1, MAX_LEN));
        if lens == self.lens && rate_shift == self.rate_shift {
            return;
        }
        self.lens = lens;
        self.rate_shift = rate_shift;
        let wanted = (SLOTS_PER_LEN * lens.iter().sum::<u64>())
            .next_power_of_two()
            .max(MIN_SLOTS) as usize;
        if self.slots.len() < wanted {
            self.slots = vec![0; wanted];
        }
    }

    /// Keys per sampled key: what one recalled ghost stands for.
    #[inline]
    pub(crate) fn rate(&self) -> u64 {
        1 << self.rate_shift
    }

    /// The slot and tag of a sampled key's ghost, or `None` for a key
    /// outside the sample.
    #[inline]
    fn place(&self, hash: u64) -> Option<(usize, u32)> {
        let h = super::sketch::remix(hash);
        if (h >> 44) & ((1 << self.rate_shift) - 1) != 0 {
            return None;
        }
        let index = h as usize & (self.slots.len() - 1);
        Some((index, (h >> 52) as u32))
    }

    /// Remembers that the key with `hash` was evicted from `side`.
    pub(crate) fn remember(&mut self, side: Side, hash: u64) {
        if self.slots.is_empty() {
            return;
        }
        let s = side as usize;
        let Some((index, tag)) = self.place(hash) else {
            return;
        };
        self.slots[index] = tag << TAG_SHIFT | (s as u32) << STAMP_BITS | self.evictions[s];
        self.evictions[s] = (self.evictions[s] + 1) & STAMP_MASK;
    }

    /// The side the key with `hash` was evicted from lately, if any; it is
    /// forgotten (one miss, one vote).
    #[inline]
    pub(crate) fn recall(&mut self, hash: u64) -> Option<Side> {
        if self.slots.is_empty() {
            return None;
        }
        let (index, tag) = self.place(hash)?;
        let slot = self.slots[index];
        if slot == 0 || slot >> TAG_SHIFT != tag {
            return None;
        }
        self.slots[index] = 0;
        let s = (slot >> STAMP_BITS) as usize & 3;
        let age = self.evictions[s].wrapping_sub(slot) & STAMP_MASK;
        (u64::from(age) < self.lens[s]).then(|| [Side::Window, Side::Arrival, Side::Main][s])
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.slots.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_ghosts_sample_the_keys() {
        let mut g = Ghosts::default();
        // 320 evictions a side: one key in 8 has a ghost, 40 a side.
        g.set_lens(320, 40);
        assert_eq!(g.rate(), 8);
        for key in 0..2_000u64 {
            g.remember(Side::Window, key);
        }
        let recalled: Vec<u64> = (0..2_000u64).filter(|&k| g.recall(k).is_some()).collect();
        // About the last 40 sampled keys, out of about the last 320 keys.
        assert!(
            (28..=40).contains(&recalled.len()),
            "{} recalled",
            recalled.len()
        );
        assert!(recalled.iter().all(|&k| k >= 1_400), "{recalled:?}");
        g.set_lens(40, 4);
        assert_eq!(g.rate(), 1);
    }

    #[test]
    fn remembers_about_the_last_evictions_per_side() {
        let mut g = Ghosts::default();
        assert_eq!(g.recall(1), None, "nothing remembered yet");
        g.set_lens(4, 2);
        for key in 0..10u64 {
            g.remember(Side::Window, key);
        }
        g.remember(Side::Main, 100);
        // Only the window's last four count (a slot collision may have
        // overwritten one of them).
        assert!((0..6).all(|k| g.recall(k).is_none()));
        let recalled = (6..10)
            .filter(|&k| g.recall(k) == Some(Side::Window))
            .count();
        assert!(recalled >= 3, "{recalled} of the last 4 recalled");
        // A recalled key is forgotten.
        assert!((6..10).all(|k| g.recall(k).is_none()));
        assert_eq!(g.recall(100), Some(Side::Main));
        // Evicted again from another side: the later side counts.
        g.remember(Side::Window, 9);
        g.remember(Side::Arrival, 9);
        assert_eq!(g.recall(9), Some(Side::Arrival));
        // Other sides' evictions do not age a side (though they may land
        // in its slots).
        for key in 200..204u64 {
            g.remember(Side::Main, key);
        }
        for key in 20..30u64 {
            g.remember(Side::Window, key);
        }
        let recalled = (200..204)
            .filter(|&k| g.recall(k) == Some(Side::Main))
            .count();
        assert!(recalled >= 2, "{recalled} of 4 recalled");
        g.clear();
        assert!((20..30).all(|k| g.recall(k).is_none()));
    }
}
