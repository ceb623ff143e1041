//! The shard's index from key hashes to slot ids, one cache line per chunk.
//!
//! # Layout
//!
//! A [`Chunk`] is 64 bytes: 12 one-byte tags, an overflow count, and 12 `u32`
//! slot ids. A lookup compares its tag with all of its home chunk's tags at
//! once (one SSE2 compare on x86-64, see `group`), and compares
//! the key of each such slot; the ids it needs sit in the same cache line as
//! the tags. So a hit costs two cache misses (the chunk, then the slot) where
//! a table keeping tags and ids in separate arrays costs three.
//!
//! The ideas are those of Folly's F14 tables: chunks probed linearly, and
//! per-chunk *overflow counts* instead of tombstones. When an insert finds a
//! chunk full it bumps that chunk's count and moves to the next; a removal
//! decrements the counts along the way back. A lookup stops at the first
//! chunk whose count is zero, so deletions leave no debris behind and probe
//! lengths stay what the load makes them. A count that reaches 255 sticks
//! (lookups past it stay correct, only longer) until the table is rebuilt.
//!
//! # Hash bits
//!
//! The home chunk comes from the low 32 bits (multiplied into the chunk
//! count, so the table need not be a power of two and can be sized to the
//! shard's capacity), the tag from the top 8 (0 marks an empty position).
//! Bits 32..48, which pick the shard, are the same for every key here and
//! take no part.
//!
//! The table holds at most 3/4 of its positions (at 7/8, linear probing
//! grows clusters that lookups of absent keys must walk, reading an entry
//! on a false tag match about three times as often). [`Table::with_capacity`]
//! computes the size a bounded shard needs but starts at one page
//! ([`FIRST_CHUNKS`]); the table doubles as entries arrive (rehashing every
//! entry from its key) and its last step lands on that size exactly, so a
//! full bounded shard carries no slack, and a cache bounded far above what
//! it holds keeps only what its entries need resident (a table written up
//! front at a bound of 4M entries was 29 MB resident for an empty cache).
//! An unbounded (weighted) shard keeps doubling.

use super::raw::group;

const WIDTH: usize = 12;
/// Index of the overflow count among the control bytes.
const OVERFLOW: usize = WIDTH;
const EMPTY: u8 = 0;
/// Chunks a table starts with when its bound needs more: one 4 KiB page,
/// room for 576 entries. Filling a shard to a bound of `n` entries then
/// rehashes fewer than `2n` entries in all, each from its key.
const FIRST_CHUNKS: usize = 64;

/// Twelve positions: tags (and the overflow count) first, then the ids.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Chunk {
    /// Bytes `0..12` are tags, byte 12 the overflow count, 13..16 unused.
    ctrl: [u8; 16],
    ids: [u32; WIDTH],
}

impl Chunk {
    /// Bit `i` set for each position `i` whose tag is `tag`.
    #[inline]
    fn matching(&self, tag: u8) -> u32 {
        group::matching(&self.ctrl, tag, WIDTH)
    }

    /// The position holding `tag` whose id satisfies `eq`, with that id.
    #[inline]
    fn position(&self, tag: u8, mut eq: impl FnMut(u32) -> bool) -> Option<(usize, u32)> {
        let mut bits = self.matching(tag);
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            let id = self.ids[i];
            if eq(id) {
                return Some((i, id));
            }
            bits &= bits - 1;
        }
        None
    }

    /// The first empty position.
    #[inline]
    fn vacancy(&self) -> Option<usize> {
        let bits = self.matching(EMPTY);
        (bits != 0).then(|| bits.trailing_zeros() as usize)
    }

    fn overflow(&self) -> u8 {
        self.ctrl[OVERFLOW]
    }
}

/// A map from 64-bit hashes to `u32` ids; the caller keeps the keys and
/// says which id holds a key (`eq`) or what an id's hash is (`rehash`).
#[derive(Debug, Default)]
pub(crate) struct Table {
    chunks: Vec<Chunk>,
    len: usize,
    /// The chunks the bound needs: growth stops there until the table
    /// outgrows it (an unbounded shard).
    sized: usize,
}

#[inline]
fn tag_of(hash: u64) -> u8 {
    ((hash >> 56) as u8).max(1)
}

impl Table {
    /// A table that grows to hold `entries` in exactly the chunks they need
    /// (starting at [`FIRST_CHUNKS`] if they need more).
    pub(crate) fn with_capacity(entries: usize) -> Self {
        let sized = entries.saturating_mul(4).div_ceil(3 * WIDTH);
        Table {
            chunks: vec![Chunk::default(); sized.min(FIRST_CHUNKS)],
            len: 0,
            sized,
        }
    }

    /// Number of ids held.
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Most ids held before the table grows.
    fn limit(&self) -> usize {
        self.chunks.len() * WIDTH * 3 / 4
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        ((u64::from(hash as u32) * self.chunks.len() as u64) >> 32) as usize
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.chunks.len() { 0 } else { i + 1 }
    }

    /// The chunk, position and id of the id with `hash` that satisfies `eq`.
    #[inline]
    fn locate(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<(usize, usize, u32)> {
        let tag = tag_of(hash);
        let mut i = self.home(hash);
        // Chunks still to visit after this one. An empty table has no home
        // chunk: `get` ends the lookup there with the one bounds check.
        let mut rest = self.chunks.len();
        loop {
            let chunk = self.chunks.get(i)?;
            if let Some((pos, id)) = chunk.position(tag, &mut eq) {
                return Some((i, pos, id));
            }
            rest -= 1;
            if chunk.overflow() == 0 || rest == 0 {
                return None;
            }
            i = self.next(i);
        }
    }

    /// The id with `hash` that satisfies `eq`.
    #[inline]
    pub(crate) fn find(&self, hash: u64, eq: impl FnMut(u32) -> bool) -> Option<u32> {
        self.locate(hash, eq).map(|(_, _, id)| id)
    }

    /// Adds `id` under `hash`; the caller knows no id with an equal key is
    /// present. `rehash` gives the hash of any held id, for growing.
    pub(crate) fn insert_unique(&mut self, hash: u64, id: u32, rehash: impl Fn(u32) -> u64) {
        if self.len >= self.limit() {
            self.grow(rehash);
        }
        self.place(hash, id);
        self.len += 1;
    }

    /// Puts `id` in the first vacancy from its home chunk on, counting the
    /// full chunks it passes. The load limit guarantees a vacancy.
    fn place(&mut self, hash: u64, id: u32) {
        let tag = tag_of(hash);
        let mut i = self.home(hash);
        loop {
            let chunk = &mut self.chunks[i];
            if let Some(pos) = chunk.vacancy() {
                chunk.ctrl[pos] = tag;
                chunk.ids[pos] = id;
                return;
            }
            chunk.ctrl[OVERFLOW] = chunk.ctrl[OVERFLOW].saturating_add(1);
            i = self.next(i);
        }
    }

    /// Doubles the chunks (at least one; no further than the size the bound
    /// needs while below it) and re-places every id.
    fn grow(&mut self, rehash: impl Fn(u32) -> u64) {
        let doubled = (self.chunks.len() * 2).max(1);
        let size = if self.chunks.len() < self.sized {
            doubled.min(self.sized)
        } else {
            doubled
        };
        // Every hash (user code, which may panic) before the table changes.
        let held: Vec<(u64, u32)> = self
            .chunks
            .iter()
            .flat_map(|chunk| {
                (0..WIDTH)
                    .filter(|&pos| chunk.ctrl[pos] != EMPTY)
                    .map(|pos| chunk.ids[pos])
            })
            .map(|id| (rehash(id), id))
            .collect();
        self.chunks = vec![Chunk::default(); size];
        for (hash, id) in held {
            self.place(hash, id);
        }
    }

    /// Removes `id`, held under `hash`. False if it is not there.
    pub(crate) fn remove(&mut self, hash: u64, id: u32) -> bool {
        if !self.vacate(hash, id) {
            return false;
        }
        self.len -= 1;
        true
    }

    /// Moves `id` from under `old_hash` to under `new_hash` (an evicted
    /// entry's id given to a new key), as [`remove`](Self::remove) then
    /// [`insert_unique`](Self::insert_unique) would, but without writing
    /// the length, which stays as it was: the length shares its cache line
    /// with the chunks' and the slots' addresses that every read loads, so
    /// each write of it sends the other cores' readers of the shard to
    /// fetch that line again (no difference measured on this project's
    /// 2-core host, where a mixed two-thread replay moved by more than a
    /// tenth from run to run either way). False if `id` was not under `old_hash` (a
    /// `Hash` that gave the key another hash before): it is then added
    /// under `new_hash` as `insert_unique` adds, `rehash` included.
    pub(crate) fn rekey(
        &mut self,
        old_hash: u64,
        id: u32,
        new_hash: u64,
        rehash: impl Fn(u32) -> u64,
    ) -> bool {
        if !self.vacate(old_hash, id) {
            self.insert_unique(new_hash, id, rehash);
            return false;
        }
        self.place(new_hash, id);
        true
    }

    /// Empties the position of `id`, held under `hash`, and takes it off
    /// the overflow counts of the chunks it passed; the length is the
    /// caller's. False if it is not there.
    fn vacate(&mut self, hash: u64, id: u32) -> bool {
        let Some((found, pos, _)) = self.locate(hash, |i| i == id) else {
            return false;
        };
        self.chunks[found].ctrl[pos] = EMPTY;
        let mut i = self.home(hash);
        while i != found {
            let count = &mut self.chunks[i].ctrl[OVERFLOW];
            if *count != u8::MAX {
                *count -= 1;
            }
            i = self.next(i);
        }
        true
    }

    /// Makes the entry for `old` (held under `hash`) point to `new`. False
    /// if `old` is not there.
    pub(crate) fn relocate(&mut self, hash: u64, old: u32, new: u32) -> bool {
        match self.locate(hash, |i| i == old) {
            Some((i, pos, _)) => {
                self.chunks[i].ids[pos] = new;
                true
            }
            None => false,
        }
    }

    /// Removes every id, keeping the storage.
    pub(crate) fn clear(&mut self) {
        self.chunks.fill(Chunk::default());
        self.len = 0;
    }

    /// Panics unless the length and every overflow count agree with where
    /// the ids sit (`rehash` gives each id's hash).
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    pub(crate) fn check_invariants(&self, rehash: impl Fn(u32) -> u64) {
        let n = self.chunks.len();
        let mut expected = vec![0usize; n];
        let mut held = 0;
        for (c, chunk) in self.chunks.iter().enumerate() {
            // The held positions as a mask, found the way lookups find
            // tags: a per-byte test here made this scan of a big table
            // most of a fuzz run's time (each compare is instrumented).
            let mut full = !chunk.matching(EMPTY) & ((1 << WIDTH) - 1);
            while full != 0 {
                let pos = full.trailing_zeros() as usize;
                full &= full - 1;
                held += 1;
                let hash = rehash(chunk.ids[pos]);
                assert_eq!(
                    chunk.ctrl[pos],
                    tag_of(hash),
                    "tag of chunk {c} position {pos}"
                );
                let mut i = self.home(hash);
                while i != c {
                    expected[i] += 1;
                    i = self.next(i);
                }
            }
        }
        assert_eq!(held, self.len, "table length");
        for (c, chunk) in self.chunks.iter().enumerate() {
            // A saturated count is sticky and may exceed what it counts.
            let count = chunk.overflow();
            if count != u8::MAX {
                assert_eq!(
                    usize::from(count),
                    expected[c],
                    "overflow count of chunk {c}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_chunk_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Chunk>(), 64);
        assert_eq!(std::mem::align_of::<Chunk>(), 64);
    }

    #[test]
    fn matching_finds_every_position_with_the_tag_and_no_other() {
        for tag in [0u8, 1, 2, 0x7f, 0x80, 0xfe, 0xff] {
            for layout in 0u32..(1 << WIDTH) {
                let mut chunk = Chunk::default();
                for pos in 0..WIDTH {
                    // Others get near misses (tag ^ 1, tag ^ 0x80) and empties.
                    chunk.ctrl[pos] = if layout & (1 << pos) != 0 {
                        tag
                    } else {
                        [tag ^ 1, tag ^ 0x80, EMPTY ^ (tag == EMPTY) as u8][pos % 3]
                    };
                }
                // Bytes past the tags never match.
                chunk.ctrl[OVERFLOW..].fill(tag);
                assert_eq!(chunk.matching(tag), layout, "tag {tag:#x}");
                chunk.ids = std::array::from_fn(|pos| pos as u32);
                let mut seen = 0;
                assert_eq!(
                    chunk.position(tag, |id| {
                        seen |= 1 << id;
                        false
                    }),
                    None
                );
                assert_eq!(seen, layout, "position visits every match");
            }
        }
    }

    #[test]
    fn vacancy_is_the_first_empty_position() {
        let mut chunk = Chunk::default();
        for pos in 0..WIDTH {
            assert_eq!(chunk.vacancy(), Some(pos));
            chunk.ctrl[pos] = 1;
        }
        assert_eq!(chunk.vacancy(), None);
        chunk.ctrl[5] = EMPTY;
        assert_eq!(chunk.vacancy(), Some(5));
    }

    #[test]
    fn an_empty_table_grows_on_first_insert() {
        let mut table = Table::with_capacity(0);
        assert_eq!(table.find(7, |_| true), None);
        assert!(!table.remove(7, 0));
        table.insert_unique(7, 0, |_| 7);
        assert_eq!(table.find(7, |id| id == 0), Some(0));
        table.check_invariants(|_| 7);
    }

    #[test]
    fn a_bounded_table_grows_to_exactly_the_size_it_needs() {
        let hash = |id: u32| u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let entries = 10_000;
        let mut table = Table::with_capacity(entries);
        let sized = table.sized;
        assert_eq!(table.chunks.len(), FIRST_CHUNKS);
        let mut sizes = vec![table.chunks.len()];
        for id in 0..entries as u32 {
            table.insert_unique(hash(id), id, hash);
            if sizes.last() != Some(&table.chunks.len()) {
                sizes.push(table.chunks.len());
            }
        }
        table.check_invariants(hash);
        assert_eq!(
            sizes,
            [64, 128, 256, 512, 1024, sized],
            "doubling, then the bound's size"
        );
        assert_eq!(table.chunks.capacity(), sized, "no slack in a full table");
        for id in 0..entries as u32 {
            assert_eq!(table.find(hash(id), |i| i == id), Some(id));
        }
        // Past its bound (an unbounded shard) it doubles again.
        let more = table.limit() as u32 + 1;
        for id in entries as u32..more {
            table.insert_unique(hash(id), id, hash);
        }
        assert_eq!(table.chunks.len(), 2 * sized);
        table.check_invariants(hash);
    }

    #[test]
    fn counts_saturate_and_stay_correct() {
        // 300 ids all homed in chunk 0 of a table too small to hold them
        // without growing: counts pass 255 and stick, lookups still work.
        let hash = |id: u32| u64::from(id) << 56 | 0x1234;
        let mut table = Table::with_capacity(400);
        for id in 0..300 {
            table.insert_unique(hash(id), id, hash);
        }
        table.check_invariants(hash);
        assert_eq!(table.chunks[0].overflow(), u8::MAX);
        for id in (0..300).step_by(2) {
            assert!(table.remove(hash(id), id));
        }
        table.check_invariants(hash);
        for id in 0..300 {
            let found = table.find(hash(id), |i| i == id);
            assert_eq!(found, (id % 2 == 1).then_some(id));
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u16),
        Remove(u16),
        Relocate(u16, u16),
        Rekey(u16, u16),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => any::<u16>().prop_map(Op::Insert),
            3 => any::<u16>().prop_map(Op::Remove),
            2 => (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Op::Relocate(a, b)),
            2 => (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Op::Rekey(a, b)),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Keys are `u16`s whose hash keeps only `bits` bits, so chunks fill,
        /// overflow and wrap around. Ids are keys' positions in a dense list
        /// with swap-removal, as in the shard.
        #[test]
        fn model(bits in 1u32..12, reserve in 0usize..64, ops in proptest::collection::vec(op(), 1..300)) {
            let mask = (1u64 << bits) - 1;
            let hash_of = |key: u16| {
                let h = u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15) & mask;
                h | h << 56
            };
            let mut table = Table::with_capacity(reserve);
            let mut keys: Vec<u16> = Vec::new();
            let mut ids: HashMap<u16, u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(key) => {
                        let found = table.find(hash_of(key), |id| keys[id as usize] == key);
                        prop_assert_eq!(found, ids.get(&key).copied());
                        if found.is_none() {
                            let id = keys.len() as u32;
                            keys.push(key);
                            ids.insert(key, id);
                            table.insert_unique(hash_of(key), id, |id| hash_of(keys[id as usize]));
                        }
                    }
                    Op::Remove(key) => {
                        let Some(id) = ids.remove(&key) else {
                            prop_assert_eq!(table.find(hash_of(key), |id| keys[id as usize] == key), None);
                            continue;
                        };
                        prop_assert!(table.remove(hash_of(key), id));
                        let last = keys.len() as u32 - 1;
                        if id != last {
                            let moved = keys[last as usize];
                            prop_assert!(table.relocate(hash_of(moved), last, id));
                            ids.insert(moved, id);
                        }
                        keys.swap_remove(id as usize);
                    }
                    Op::Relocate(a, b) => {
                        // Swap two held keys' ids, as two relocations.
                        let (Some(&ia), Some(&ib)) = (ids.get(&a), ids.get(&b)) else { continue };
                        if ia == ib { continue }
                        prop_assert!(table.relocate(hash_of(a), ia, u32::MAX));
                        prop_assert!(table.relocate(hash_of(b), ib, ia));
                        prop_assert!(table.relocate(hash_of(a), u32::MAX, ib));
                        keys.swap(ia as usize, ib as usize);
                        ids.insert(a, ib);
                        ids.insert(b, ia);
                    }
                    Op::Rekey(old, new) => {
                        // The id of held key `old` given to absent key
                        // `new`, as an eviction's refill does.
                        let Some(&id) = ids.get(&old) else { continue };
                        if ids.contains_key(&new) { continue }
                        prop_assert!(table.rekey(hash_of(old), id, hash_of(new), |i| hash_of(keys[i as usize])));
                        ids.remove(&old);
                        ids.insert(new, id);
                        keys[id as usize] = new;
                        prop_assert_eq!(table.find(hash_of(old), |i| keys[i as usize] == old), None);
                    }
                    Op::Clear => {
                        table.clear();
                        keys.clear();
                        ids.clear();
                    }
                }
                table.check_invariants(|id| hash_of(keys[id as usize]));
            }
            for (&key, &id) in &ids {
                prop_assert_eq!(table.find(hash_of(key), |i| keys[i as usize] == key), Some(id));
            }
        }
    }
}
