//! Hierarchical timing wheel: finds the ids of a shard whose deadlines have passed.
//!
//! This is the hierarchical scheme of Varghese & Lauck, "Hashed and
//! Hierarchical Timing Wheels: Data Structures for the Efficient
//! Implementation of a Timer Facility" (SOSP 1987), in the shape tokio's
//! timer uses: each level is 64 slots plus a `u64` bitmap of the occupied
//! ones, and the level of a deadline is read off the highest bit in which it
//! differs from the wheel's current time.
//!
//! # Time and levels
//!
//! Time is counted in ticks of 2^20 ns (about 1.05 ms). `elapsed` is the
//! tick up to which the wheel has been processed. Level `k` has slots
//! `64^k` ticks wide; one rotation of a level is one slot of the level
//! above.
//!
//! | level | slot width (ticks) | slot width (time) | span of the level |
//! |-------|--------------------|-------------------|-------------------|
//! | 0     | 1                  | 1.05 ms           | 67.1 ms           |
//! | 1     | 64                 | 67.1 ms           | 4.29 s            |
//! | 2     | 4 096              | 4.29 s            | 4.58 min          |
//! | 3     | 262 144            | 4.58 min          | 4.89 h            |
//! | 4     | 16 777 216         | 4.89 h            | 13.0 days         |
//! | 5     | 1 073 741 824      | 13.0 days         | 2.28 years        |
//!
//! An id scheduled for tick `when` goes to the lowest level whose current
//! rotation contains `when`. Levels 0 to 4 only ever hold slots ahead of
//! `elapsed`; the top level is a ring, so its slot that holds `elapsed` means
//! "one full rotation from now". A deadline beyond the top level's range is
//! clamped into the furthest slot and simply re-placed when that slot comes
//! due. When `elapsed` reaches a slot of level `k > 0`, its ids cascade to
//! lower levels (or pop, if already due). Every id thus sits in a slot that
//! starts no later than its deadline: the wheel is never late, only sometimes
//! early.
//!
//! # Lazy re-placement
//!
//! The wheel stores no deadlines; `advance` asks the shard through
//! `deadline_of`. Sliding expiry pushes a deadline later without telling the
//! wheel, so an id may pop from its slot before its current deadline: it is
//! then re-placed according to that deadline. Shortening a deadline must go
//! through [`TimerWheel::schedule`], since an id sitting in a later slot would
//! be found too late.
//!
//! Exactness: the slot of the tick containing `now` is scanned id by id, so an
//! id whose deadline is at or before `now` pops even inside a partly elapsed
//! tick, while its neighbours due later in that tick stay put.
//!
//! # Storage, and why there is no `unsafe`
//!
//! Slot lists are circular doubly-linked lists threaded through one
//! `Vec<[u32; 2]>` of `(prev, next)` indices. Its first `LEVELS * 64` entries
//! are the slot sentinels and id `i` lives at `LEVELS * 64 + i`, so an id
//! costs 8 bytes and nothing else. Because links are indices into a vector
//! rather than pointers into the entries, every operation is ordinary
//! bounds-checked indexing: there is no aliasing to reason about, and
//! moving an id (swap-remove compaction) is just copying its two links and
//! patching its neighbours. Sentinels make unlinking uniform: a node is
//! removed without knowing its slot, and a slot is empty exactly when a
//! removal leaves one sentinel pointing at itself.

/// The deadline of an id that never expires; scheduling it cancels the id.
pub(crate) const NEVER: u64 = u64::MAX;

/// Nanoseconds per tick, as a shift: a tick is 2^20 ns.
const TICK_SHIFT: u32 = 20;
/// Bits of tick number consumed by each level.
const SLOT_BITS: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << SLOT_BITS;
/// Number of levels.
const LEVELS: usize = 6;
/// The top level, which acts as a ring.
const TOP: usize = LEVELS - 1;
/// Number of sentinel nodes at the front of the link vector.
const SENTINELS: usize = LEVELS * SLOTS;
/// Ticks covered by one rotation of the top level.
const SPAN: u64 = 1 << (SLOT_BITS * LEVELS as u32);
/// Null link.
const NIL: u32 = u32::MAX;
/// Links of an id that is not scheduled.
const UNLINKED: [u32; 2] = [NIL, NIL];
/// Index of the `prev` link.
const PREV: usize = 0;
/// Index of the `next` link.
const NEXT: usize = 1;

/// Width in ticks of one slot of `level`.
const fn width(level: usize) -> u64 {
    1 << (SLOT_BITS as usize * level)
}

/// Level for an id due at tick `when`, seen from tick `elapsed <= when`.
fn level_for(elapsed: u64, when: u64) -> usize {
    let differing = ((elapsed ^ when) | (SLOTS as u64 - 1)).min(SPAN - 1);
    (differing.ilog2() / SLOT_BITS) as usize
}

/// Index of the slot of `level` that holds tick `when`.
fn slot_index(level: usize, when: u64) -> usize {
    ((when >> (SLOT_BITS as usize * level)) as usize) & (SLOTS - 1)
}

/// First tick of slot `idx` of `level`, seen from tick `elapsed`: the first
/// slot with that index from the one holding `elapsed` on (excluded on the
/// top level, where it means one full rotation ahead).
fn slot_start(elapsed: u64, level: usize, idx: usize) -> u64 {
    let current = slot_index(level, elapsed);
    let mut ahead = (idx + SLOTS - current) % SLOTS;
    if level == TOP && ahead == 0 {
        ahead = SLOTS;
    }
    (elapsed & !(width(level) - 1)) + ahead as u64 * width(level)
}

/// A hierarchical timing wheel over dense `u32` ids (see the module docs).
#[derive(Debug)]
pub(crate) struct TimerWheel {
    /// Tick up to which the wheel has been processed.
    elapsed: u64,
    /// Per level, bit `i` set iff slot `i` is non-empty.
    occupied: [u64; LEVELS],
    /// `(prev, next)` per node: slot sentinels, then one entry per id.
    links: Vec<[u32; 2]>,
    /// Number of scheduled ids.
    len: usize,
    /// `(tick, ns)`: no id in level 0's slot for `tick` is due before `ns`
    /// (a lower bound, kept while `tick` is `elapsed`: set by the scan of
    /// that slot, lowered by every id placed in it since), so that
    /// [`any_due`](Self::any_due) need not scan it again.
    quiet: (u64, u64),
}

impl TimerWheel {
    /// Creates an empty wheel whose clock starts at `now` (ns).
    pub(crate) fn new(now: u64) -> Self {
        Self {
            elapsed: now >> TICK_SHIFT,
            occupied: [0; LEVELS],
            links: (0..SENTINELS as u32).map(|s| [s, s]).collect(),
            len: 0,
            quiet: (NEVER, 0),
        }
    }

    /// Sizes the per-id storage for ids `0..ids` exactly, without slack.
    /// Only the capacity is taken: the links of an id are written when it
    /// is first scheduled (see `grow`), so a cache bounded far above what it
    /// holds keeps the untouched rest out of its resident memory (8 bytes
    /// per id of the bound: 32 MiB for the most a cache reserves).
    pub(crate) fn reserve(&mut self, ids: usize) {
        let want = SENTINELS + ids;
        if want > self.links.len() {
            assert!(want <= NIL as usize, "timer wheel: id space exhausted");
            self.links.reserve_exact(want - self.links.len());
        }
    }

    /// Schedules `id` to pop once `deadline` (ns) has passed, replacing any
    /// previous schedule; `NEVER` cancels. A past deadline pops at the next
    /// `advance`.
    pub(crate) fn schedule(&mut self, id: u32, deadline: u64) {
        if deadline == NEVER {
            return self.cancel(id);
        }
        let node = Self::node(id);
        self.grow(node);
        if self.links[node] == UNLINKED {
            self.len += 1;
        } else {
            self.unlink(node);
        }
        self.place(node, deadline);
    }

    /// Unschedules `id`; a no-op if it is not scheduled.
    pub(crate) fn cancel(&mut self, id: u32) {
        if self.is_scheduled(id) {
            self.unlink(Self::node(id));
            self.len -= 1;
        }
    }

    /// Moves `from`'s schedule to `to` (swap-remove compaction): `to` takes
    /// `from`'s place in its slot list and `from` ends unscheduled. `to`
    /// should be unscheduled; if not, its schedule is dropped first.
    pub(crate) fn relocate(&mut self, from: u32, to: u32) {
        if from == to {
            return;
        }
        self.cancel(to);
        if !self.is_scheduled(from) {
            return;
        }
        let (src, dst) = (Self::node(from), Self::node(to));
        self.grow(dst);
        let [prev, next] = self.links[src];
        self.links[dst] = [prev, next];
        self.links[prev as usize][NEXT] = dst as u32;
        self.links[next as usize][PREV] = dst as u32;
        self.links[src] = UNLINKED;
    }

    /// Whether `id` is scheduled.
    pub(crate) fn is_scheduled(&self, id: u32) -> bool {
        self.links
            .get(Self::node(id))
            .is_some_and(|link| *link != UNLINKED)
    }

    /// Number of scheduled ids.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Pops expired ids: pushes onto `expired`, and unschedules, every
    /// scheduled id with `deadline_of(id) <= now`, pushing at most `budget`.
    ///
    /// Returns `true` when no scheduled id is due at `now` any more, `false`
    /// when the budget ran out with at least one still due (call again).
    /// Ids found before their current deadline are re-placed; ids whose
    /// current deadline is `NEVER` are unscheduled without being pushed.
    pub(crate) fn advance(
        &mut self,
        now: u64,
        mut budget: usize,
        deadline_of: impl Fn(u32) -> u64,
        expired: &mut Vec<u32>,
    ) -> bool {
        let now_tick = now >> TICK_SHIFT;
        while let Some((level, idx, start)) = self.next_slot() {
            if start > now_tick {
                break;
            }
            self.elapsed = start;
            let sentinel = level * SLOTS + idx;
            if !self.drain(sentinel, now, &mut budget, &deadline_of, expired) {
                return false;
            }
            if self.occupied[level] & (1 << idx) != 0 {
                // Only level 0 can keep ids: those due later in this very
                // tick (the earliest noted in `quiet`).
                break;
            }
        }
        self.elapsed = self.elapsed.max(now_tick);
        true
    }

    /// Whether some scheduled id may be due at `now` (ns): false only if
    /// none is, so that an `advance` would pop nothing. Exact but for the
    /// slot of the tick holding `now`, which is taken as due until an
    /// `advance` has scanned it (and then, until its earliest id is due).
    /// A few bit operations: no slot is walked.
    pub(crate) fn any_due(&self, now: u64) -> bool {
        let Some((level, _, start)) = self.next_slot() else {
            return false;
        };
        let now_tick = now >> TICK_SHIFT;
        if start > now_tick {
            return false;
        }
        // The current tick's slot, scanned by `advance`, holds nothing due
        // before `quiet.1`; any slot that starts earlier is due outright.
        !(level == 0 && start == now_tick && self.quiet.0 == start && self.quiet.1 > now)
    }

    /// Earliest time (ns) at which some scheduled id may need attention: the
    /// start of the next occupied slot (a lower bound), or `None` if empty.
    pub(crate) fn next_wakeup(&self) -> Option<u64> {
        self.next_slot()
            .map(|(_, _, start)| start.saturating_mul(1 << TICK_SHIFT))
    }

    /// Unschedules every id, keeping the storage and the clock.
    pub(crate) fn clear(&mut self) {
        if self.len == 0 {
            return;
        }
        for (i, link) in self.links.iter_mut().enumerate() {
            *link = if i < SENTINELS {
                [i as u32; 2]
            } else {
                UNLINKED
            };
        }
        self.occupied = [0; LEVELS];
        self.len = 0;
        self.quiet = (NEVER, 0);
    }

    /// Makes room for `node` in the link vector (amortized growth).
    fn grow(&mut self, node: usize) {
        if node >= self.links.len() {
            assert!(node < NIL as usize, "timer wheel: id space exhausted");
            self.links.resize(node + 1, UNLINKED);
        }
    }

    /// Node index of `id` in the link vector.
    fn node(id: u32) -> usize {
        SENTINELS + id as usize
    }

    /// Links the unlinked `node` into the slot for `deadline` (ns), seen from
    /// `elapsed`; past deadlines go to the current tick's slot and deadlines
    /// beyond the top level's range to its furthest slot.
    fn place(&mut self, node: usize, deadline: u64) {
        let when = (deadline >> TICK_SHIFT).clamp(self.elapsed, self.elapsed + SPAN - 1);
        let level = level_for(self.elapsed, when);
        let idx = slot_index(level, when);
        let sentinel = level * SLOTS + idx;
        if level == 0 && when == self.quiet.0 {
            self.quiet.1 = self.quiet.1.min(deadline);
        }
        let prev = self.links[sentinel][PREV];
        self.links[node] = [prev, sentinel as u32];
        self.links[prev as usize][NEXT] = node as u32;
        self.links[sentinel][PREV] = node as u32;
        self.occupied[level] |= 1 << idx;
    }

    /// Unlinks the linked `node`, clearing its slot's bit if it was the last.
    fn unlink(&mut self, node: usize) {
        let [prev, next] = self.links[node];
        self.links[prev as usize][NEXT] = next;
        self.links[next as usize][PREV] = prev;
        self.links[node] = UNLINKED;
        if prev == next && (prev as usize) < SENTINELS {
            let sentinel = prev as usize;
            self.occupied[sentinel / SLOTS] &= !(1 << (sentinel % SLOTS));
        }
    }

    /// The next occupied slot as `(level, index, first tick)`. The lowest
    /// occupied level always holds the earliest slot.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        let level = self.occupied.iter().position(|&bits| bits != 0)?;
        // Scan from the current slot; on the top level, from the one after it.
        let from = (slot_index(level, self.elapsed) + usize::from(level == TOP)) % SLOTS;
        let ahead = self.occupied[level]
            .rotate_right(from as u32)
            .trailing_zeros();
        let idx = (from + ahead as usize) % SLOTS;
        Some((level, idx, slot_start(self.elapsed, level, idx)))
    }

    /// Walks the slot list of `sentinel` (whose slot starts at `elapsed`):
    /// pops due ids while budget lasts, re-places ids due in a later tick and
    /// leaves those due later within this tick, noting the first of their
    /// deadlines in `quiet`. On level 0 it stops at the first due id once
    /// the budget is spent; on higher levels it always empties the slot,
    /// cascading due ids it cannot pop. Returns `false` if a due id was
    /// left for lack of budget.
    fn drain(
        &mut self,
        sentinel: usize,
        now: u64,
        budget: &mut usize,
        deadline_of: &impl Fn(u32) -> u64,
        expired: &mut Vec<u32>,
    ) -> bool {
        // A due id cascaded for lack of budget would only stop the next slot's
        // walk; returning early saves cascading further slots for nothing.
        let mut starved = false;
        // The first deadline among the ids left in this tick's slot.
        let mut earliest = NEVER;
        let mut node = self.links[sentinel][NEXT] as usize;
        while node != sentinel {
            let next = self.links[node][NEXT] as usize;
            let id = (node - SENTINELS) as u32;
            let deadline = deadline_of(id);
            if deadline == NEVER || (deadline <= now && *budget > 0) {
                self.unlink(node);
                self.len -= 1;
                if deadline != NEVER {
                    *budget -= 1;
                    expired.push(id);
                }
            } else if deadline <= now && sentinel < SLOTS {
                return false;
            } else if sentinel >= SLOTS || deadline >> TICK_SHIFT > self.elapsed {
                starved |= deadline <= now;
                self.unlink(node);
                self.place(node, deadline);
            } else {
                earliest = earliest.min(deadline);
            }
            node = next;
        }
        if earliest != NEVER {
            // Level 0's slot for `elapsed`: the only one that keeps ids.
            self.quiet = (self.elapsed, earliest);
        }
        !starved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// One tick in ns.
    const TICK: u64 = 1 << TICK_SHIFT;
    /// One second in ns.
    const SEC: u64 = 1_000_000_000;
    /// One (Julian) year in ns.
    const YEAR: u64 = 31_557_600 * SEC;

    impl TimerWheel {
        /// Asserts the structural invariants: links consistent, each slot's
        /// bit set iff its list is non-empty, `len` equal to the ids linked,
        /// and no id in a slot behind `elapsed` on levels 0 to 4.
        fn check_invariants(&self) {
            let mut linked = 0;
            for sentinel in 0..SENTINELS {
                let (level, idx) = (sentinel / SLOTS, sentinel % SLOTS);
                let (mut prev, mut node, mut count) = (sentinel, self.links[sentinel][NEXT], 0);
                loop {
                    assert_eq!(self.links[node as usize][PREV] as usize, prev);
                    if node as usize == sentinel {
                        break;
                    }
                    assert!(node as usize >= SENTINELS, "sentinel inside a list");
                    count += 1;
                    assert!(count <= self.links.len(), "cycle without sentinel");
                    prev = node as usize;
                    node = self.links[prev][NEXT];
                }
                assert_eq!(self.occupied[level] & (1 << idx) != 0, count > 0);
                let current = slot_index(level, self.elapsed);
                if count > 0 && level == 0 {
                    assert!(idx >= current, "level 0 slot behind elapsed");
                } else if count > 0 && level < TOP {
                    assert!(idx > current, "level {level} slot not ahead");
                }
                linked += count;
            }
            assert_eq!(linked, self.len);
            let unlinked = self.links[SENTINELS..].iter().filter(|l| **l == UNLINKED);
            assert_eq!(self.links.len() - SENTINELS - unlinked.count(), self.len);
        }

        /// Level and index of the slot holding `id`, if scheduled.
        fn slot_of(&self, id: u32) -> Option<(usize, usize)> {
            let mut node = self.links.get(Self::node(id)).filter(|l| **l != UNLINKED)?[NEXT];
            while node as usize >= SENTINELS {
                node = self.links[node as usize][NEXT];
            }
            Some((node as usize / SLOTS, node as usize % SLOTS))
        }
    }

    /// Reference level: the lowest level whose current rotation holds `when`.
    fn brute_level(elapsed: u64, when: u64) -> usize {
        (0..TOP)
            .find(|&l| when / width(l + 1) == elapsed / width(l + 1))
            .unwrap_or(TOP)
    }

    /// Reference slot start: step slot by slot from `elapsed`'s slot.
    fn brute_start(elapsed: u64, level: usize, idx: usize) -> u64 {
        let w = width(level);
        let mut t = elapsed / w * w + if level == TOP { w } else { 0 };
        while (t / w) % SLOTS as u64 != idx as u64 {
            t += w;
        }
        t
    }

    /// Checks placement of tick `when` seen from `elapsed` against the
    /// references, and that the chosen slot contains the (clamped) tick.
    fn check_placement(elapsed: u64, when: u64) {
        let when = when.clamp(elapsed, elapsed + SPAN - 1);
        let level = level_for(elapsed, when);
        assert_eq!(level, brute_level(elapsed, when), "e={elapsed} w={when}");
        let idx = slot_index(level, when);
        assert_eq!(idx as u64, when / width(level) % SLOTS as u64);
        let start = slot_start(elapsed, level, idx);
        assert_eq!(
            start,
            brute_start(elapsed, level, idx),
            "e={elapsed} w={when}"
        );
        assert!(
            start <= when && when < start + width(level),
            "e={elapsed} w={when}"
        );
        assert!(start >= elapsed || (level == 0 && start == elapsed));
    }

    /// Exhaustive placement over a small dense square of (elapsed, when).
    #[test]
    fn placement_dense_small() {
        for elapsed in 0..140 {
            for when in elapsed..elapsed + 4_200 {
                check_placement(elapsed, when);
            }
        }
    }

    /// Placement around every level boundary, from elapsed values near them.
    #[test]
    fn placement_boundaries() {
        let mut points = vec![0, 1, 62, 63, 64, 65];
        for level in 1..=LEVELS + 2 {
            let w = 1u64 << (SLOT_BITS as usize * level);
            for m in [1, 2, 63, 64, 65] {
                for d in [-2i64, -1, 0, 1, 2] {
                    points.push((m * w).wrapping_add_signed(d));
                }
            }
        }
        let mut deltas = vec![SPAN * 3, u64::MAX >> TICK_SHIFT];
        for level in 0..=LEVELS {
            let w = width(level);
            deltas.extend([w - 1, w, w + 1, 63 * w, 64 * w - 1, 64 * w, 64 * w + 1]);
        }
        for &elapsed in &points {
            for &delta in deltas.iter().chain(&points) {
                check_placement(elapsed, elapsed + delta);
                check_placement(elapsed, delta.max(elapsed));
            }
        }
    }

    /// Placement over pseudo-random pairs at every scale.
    #[test]
    fn placement_random_scales() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let elapsed = (x >> 20) >> (x % 24);
            let delta = (x.rotate_left(29) >> 24) >> (x % 41);
            check_placement(elapsed, elapsed + delta);
        }
    }

    /// The bitmap rotation finds the same slot as a brute-force minimum.
    #[test]
    fn next_slot_matches_brute_minimum() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for round in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut wheel = TimerWheel::new(0);
            wheel.elapsed = x >> 24;
            let level = round % LEVELS;
            let bits = x.rotate_left(17) & x.rotate_left(41) | 1 << (x % 64);
            wheel.occupied[level] = bits;
            let (_, idx, start) = wheel.next_slot().unwrap();
            let best = (0..SLOTS)
                .filter(|i| bits & (1 << i) != 0)
                .map(|i| (slot_start(wheel.elapsed, level, i), i))
                .min()
                .unwrap();
            assert_eq!((start, idx), best);
        }
    }

    /// Collects everything due at `now` with an unlimited budget.
    fn pop_all(wheel: &mut TimerWheel, now: u64, deadline_of: impl Fn(u32) -> u64) -> Vec<u32> {
        let mut out = Vec::new();
        assert!(wheel.advance(now, usize::MAX, deadline_of, &mut out));
        wheel.check_invariants();
        out.sort_unstable();
        out
    }

    /// A deadline before the wheel's clock pops at the next advance.
    #[test]
    fn past_deadline_pops_next_advance() {
        let now = 5 * SEC + 123;
        let mut wheel = TimerWheel::new(now);
        wheel.schedule(3, 1);
        wheel.schedule(4, now - 3 * SEC);
        assert_eq!(wheel.len(), 2);
        assert_eq!(wheel.next_wakeup(), Some(now >> TICK_SHIFT << TICK_SHIFT));
        let deadlines = |id| if id == 3 { 1 } else { now - 3 * SEC };
        assert_eq!(pop_all(&mut wheel, now, deadlines), [3, 4]);
        assert_eq!(wheel.len(), 0);
        assert_eq!(wheel.next_wakeup(), None);
    }

    /// Within the current tick, only ids due at or before `now` pop.
    #[test]
    fn exact_now_and_partial_tick() {
        let base = 1000 * TICK;
        let mut wheel = TimerWheel::new(base);
        let deadlines = |id: u32| base + 10 + u64::from(id % 9);
        for id in 0..6 {
            wheel.schedule(id, deadlines(id));
        }
        assert_eq!(pop_all(&mut wheel, base + 9, deadlines), [] as [u32; 0]);
        assert_eq!(pop_all(&mut wheel, base + 12, deadlines), [0, 1, 2]);
        // Scheduling into the current tick after an advance still works.
        wheel.schedule(9, base + 10);
        assert_eq!(pop_all(&mut wheel, base + 12, deadlines), [9]);
        assert_eq!(pop_all(&mut wheel, base + 13, deadlines), [3]);
        assert_eq!(pop_all(&mut wheel, base + TICK - 1, deadlines), [4, 5]);
    }

    /// Deadlines beyond the top level's span keep being re-placed until due.
    #[test]
    fn far_future_beyond_top_level() {
        let now = 7 * YEAR;
        let mut wheel = TimerWheel::new(now);
        let far = now + 10 * YEAR + 17;
        wheel.schedule(0, far);
        wheel.schedule(1, NEVER - 1);
        let deadlines = |id| if id == 0 { far } else { NEVER - 1 };
        for step in 1..=40u64 {
            let t = now + step * YEAR / 4;
            assert_eq!(
                pop_all(&mut wheel, t.min(far - 1), deadlines),
                [] as [u32; 0]
            );
            assert!(wheel.next_wakeup().unwrap() <= far);
        }
        assert_eq!(pop_all(&mut wheel, far, deadlines), [0]);
        assert!(wheel.is_scheduled(1));
        assert_eq!(pop_all(&mut wheel, NEVER - 1, deadlines), [1]);
    }

    /// A slot holding more ids than the budget is drained across calls.
    #[test]
    fn budget_smaller_than_slot() {
        for deadline in [3 * TICK, 3 * TICK + 5, 90 * SEC, 40 * 24 * 3600 * SEC] {
            let mut wheel = TimerWheel::new(0);
            for id in 0..100 {
                wheel.schedule(id, deadline);
            }
            let (mut out, mut calls) = (Vec::new(), 0);
            while !wheel.advance(deadline, 7, |_| deadline, &mut out) {
                wheel.check_invariants();
                calls += 1;
                assert_eq!(out.len(), 7 * calls);
            }
            assert_eq!(calls, 14);
            out.sort_unstable();
            assert_eq!(out, (0..100).collect::<Vec<_>>());
            assert_eq!(wheel.len(), 0);
            wheel.check_invariants();
        }
    }

    /// A zero budget pops nothing and reports whether anything is due.
    #[test]
    fn zero_budget() {
        let mut wheel = TimerWheel::new(0);
        let mut out = Vec::new();
        assert!(wheel.advance(SEC, 0, |_| 0, &mut out));
        wheel.schedule(1, 2 * SEC);
        assert!(wheel.advance(SEC, 0, |_| 2 * SEC, &mut out));
        assert!(!wheel.advance(2 * SEC, 0, |_| 2 * SEC, &mut out));
        wheel.check_invariants();
        assert!(out.is_empty() && wheel.is_scheduled(1));
        assert!(wheel.advance(2 * SEC, 1, |_| 2 * SEC, &mut out));
        assert_eq!(out, [1]);
    }

    /// Relocation moves a schedule; from an unscheduled id it clears `to`.
    #[test]
    fn relocate_cases() {
        let mut wheel = TimerWheel::new(0);
        wheel.relocate(5, 1_000);
        assert!(!wheel.is_scheduled(5) && !wheel.is_scheduled(1_000));
        wheel.schedule(2, SEC);
        wheel.relocate(5, 2);
        assert!(!wheel.is_scheduled(2), "`to` must end unscheduled");
        wheel.schedule(7, SEC);
        wheel.schedule(8, SEC);
        wheel.relocate(7, 1 << 20);
        wheel.check_invariants();
        assert!(!wheel.is_scheduled(7) && wheel.is_scheduled(1 << 20));
        assert_eq!(wheel.len(), 2);
        wheel.relocate(8, 8);
        assert!(wheel.is_scheduled(8));
        assert_eq!(pop_all(&mut wheel, SEC, |_| SEC), [8, 1 << 20]);
    }

    /// `relocate` keeps the moved id's position in its slot list.
    #[test]
    fn relocate_keeps_list_position() {
        let mut wheel = TimerWheel::new(0);
        for id in 1..=3 {
            wheel.schedule(id, SEC);
        }
        wheel.relocate(2, 0);
        wheel.relocate(3, 2);
        let mut out = Vec::new();
        assert!(wheel.advance(SEC, usize::MAX, |_| SEC, &mut out));
        assert_eq!(out, [1, 0, 2]);
    }

    /// Implicit growth by `schedule` is amortized, not exact.
    #[test]
    fn schedule_grows_amortized() {
        let mut wheel = TimerWheel::new(0);
        let mut reallocations = 0;
        for id in 0..10_000 {
            let capacity = wheel.links.capacity();
            wheel.schedule(id, SEC);
            reallocations += usize::from(wheel.links.capacity() != capacity);
        }
        assert!(reallocations < 20, "{reallocations} reallocations");
        assert_eq!(wheel.len(), 10_000);
    }

    /// An id whose deadline slid later is re-placed, not popped.
    #[test]
    fn sliding_deadline_is_replaced() {
        let mut wheel = TimerWheel::new(0);
        wheel.schedule(0, SEC);
        wheel.schedule(1, SEC);
        let slid = |id| if id == 0 { 6 * SEC } else { SEC };
        assert_eq!(pop_all(&mut wheel, SEC, slid), [1]);
        assert!(wheel.is_scheduled(0));
        assert!(wheel.next_wakeup().unwrap() > SEC);
        assert!(wheel.next_wakeup().unwrap() <= 6 * SEC);
        assert_eq!(pop_all(&mut wheel, 6 * SEC - 1, slid), [] as [u32; 0]);
        assert_eq!(pop_all(&mut wheel, 6 * SEC, slid), [0]);
    }

    /// `any_due` inside a tick: unknown (true) until an advance scans the
    /// tick's slot, then false until its earliest id is due; an id placed
    /// in the scanned slot since, due earlier, counts.
    #[test]
    fn any_due_inside_a_scanned_tick() {
        let base = 10 * TICK;
        let mut wheel = TimerWheel::new(base);
        assert!(!wheel.any_due(base));
        wheel.schedule(0, base + TICK / 2);
        wheel.schedule(1, base + TICK / 2 + 10);
        assert!(
            wheel.any_due(base + 1),
            "the tick's slot is not scanned yet"
        );
        let deadline_of = |id| base + TICK / 2 + if id == 0 { 0 } else { 10 };
        assert_eq!(pop_all(&mut wheel, base + 1, deadline_of), [] as [u32; 0]);
        assert!(!wheel.any_due(base + 1));
        assert!(!wheel.any_due(base + TICK / 2 - 1));
        assert!(wheel.any_due(base + TICK / 2));
        // Placed in the scanned slot, due before the others.
        wheel.schedule(2, base + 5);
        assert!(wheel.any_due(base + 5));
        assert!(!wheel.any_due(base + 4));
        // A later tick is due outright, scanned or not.
        wheel.cancel(2);
        assert!(wheel.any_due(base + TICK));
        assert!(!TimerWheel::new(base).any_due(u64::MAX - 1));
    }

    /// Cancel, `NEVER` and the `NEVER` returned by `deadline_of`.
    #[test]
    fn cancel_and_never() {
        let mut wheel = TimerWheel::new(0);
        wheel.cancel(1 << 30);
        assert!(!wheel.is_scheduled(1 << 30));
        wheel.schedule(1 << 16, SEC);
        assert!(wheel.is_scheduled(1 << 16));
        wheel.schedule(1 << 16, NEVER);
        assert!(!wheel.is_scheduled(1 << 16));
        wheel.schedule(3, SEC);
        wheel.schedule(3, 2 * SEC);
        assert_eq!(wheel.len(), 1);
        wheel.schedule(4, SEC);
        wheel.cancel(4);
        wheel.cancel(4);
        assert_eq!(wheel.len(), 1);
        assert_eq!(pop_all(&mut wheel, 3 * SEC, |_| NEVER), [] as [u32; 0]);
        assert_eq!(wheel.len(), 0);
    }

    /// `reserve` sizes exactly and writes nothing; `clear` empties but keeps
    /// working.
    #[test]
    fn reserve_and_clear() {
        let mut wheel = TimerWheel::new(0);
        wheel.reserve(1_000);
        assert_eq!(wheel.links.capacity(), SENTINELS + 1_000);
        // Only the capacity: an id's links are written when it is scheduled.
        assert_eq!(wheel.links.len(), SENTINELS);
        for id in 0..1_000 {
            wheel.schedule(id, u64::from(id) * SEC);
        }
        assert_eq!(wheel.links.capacity(), SENTINELS + 1_000);
        wheel.clear();
        wheel.check_invariants();
        assert_eq!((wheel.len(), wheel.next_wakeup()), (0, None));
        wheel.schedule(9, SEC);
        assert_eq!(pop_all(&mut wheel, SEC, |_| SEC), [9]);
    }

    /// A deadline relative to the model's clock.
    #[derive(Debug, Clone)]
    enum When {
        /// `NEVER`, i.e. cancel.
        Never,
        /// This many ns before now.
        Past(u64),
        /// This many ns after now.
        Ahead(u64),
    }

    /// One step of the model test.
    #[derive(Debug, Clone)]
    enum Op {
        /// `schedule(id, when)`.
        Schedule(u32, When),
        /// Push the id's current deadline later without telling the wheel.
        Slide(u32, u64),
        /// `cancel(id)`.
        Cancel(u32),
        /// `relocate(from, to)`.
        Relocate(u32, u32),
        /// Move the clock forward, then `advance` with a budget.
        Advance(u64, usize),
        /// `clear()`: the quiet bound does not outlive it.
        Clear,
    }

    /// Durations from sub-tick to beyond the top level's span.
    fn duration() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..4 * TICK,
            0..SEC,
            0..600 * SEC,
            0..40 * 86_400 * SEC,
            0..5 * YEAR
        ]
    }

    /// Random operations over a small id space.
    fn op() -> impl Strategy<Value = Op> {
        let id = 0..24u32;
        let when = prop_oneof![
            1 => Just(When::Never),
            1 => duration().prop_map(When::Past),
            6 => duration().prop_map(When::Ahead),
        ];
        let budget = prop_oneof![0..5usize, Just(usize::MAX)];
        prop_oneof![
            6 => (id.clone(), when).prop_map(|(i, w)| Op::Schedule(i, w)),
            2 => (id.clone(), duration()).prop_map(|(i, d)| Op::Slide(i, d)),
            1 => id.clone().prop_map(Op::Cancel),
            2 => (id.clone(), id).prop_map(|(f, t)| Op::Relocate(f, t)),
            4 => (duration(), budget).prop_map(|(d, b)| Op::Advance(d, b)),
            1 => Just(Op::Clear),
        ]
    }

    /// Applies one advance and checks its output against the model.
    fn model_advance(
        wheel: &mut TimerWheel,
        model: &mut BTreeMap<u32, u64>,
        now: u64,
        budget: usize,
    ) {
        let mut out = Vec::new();
        let done = wheel.advance(now, budget, |id| model[&id], &mut out);
        let popped: BTreeSet<u32> = out.iter().copied().collect();
        assert_eq!(popped.len(), out.len(), "duplicate pops");
        assert!(out.len() <= budget);
        for id in &popped {
            assert!(
                model.remove(id).is_some_and(|d| d <= now),
                "popped {id} early"
            );
        }
        let still_due = model.values().any(|&d| d <= now);
        assert_eq!(done, !still_due, "done={done} popped={out:?}");
        if !done {
            assert_eq!(out.len(), budget);
        }
        // Once an advance has found nothing left due, the slot it scanned
        // is known quiet: no advance is asked for again at the same time.
        if done {
            assert!(!wheel.any_due(now), "any_due right after a full advance");
        }
    }

    /// `any_due` is never false while an id is due: at `now`, at times
    /// ahead of it within and past the current tick, and at each deadline.
    fn check_any_due(wheel: &TimerWheel, model: &BTreeMap<u32, u64>, now: u64) {
        let ahead = [0, 1, TICK / 3, TICK - 1, TICK, 3 * TICK, SEC, 100 * SEC];
        let probes = ahead.iter().map(|&a| now.saturating_add(a));
        let deadlines = model.values().map(|&d| d.max(now));
        for at in probes.chain(deadlines) {
            if !wheel.any_due(at) {
                let due: Vec<_> = model.iter().filter(|&(_, &d)| d <= at).collect();
                assert!(due.is_empty(), "any_due({at}) false with {due:?} due");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// Random operations agree with a map of current deadlines.
        #[test]
        fn model(start in 0..20 * YEAR, ops in proptest::collection::vec(op(), 1..80)) {
            let mut now = start;
            let mut wheel = TimerWheel::new(now);
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Schedule(id, When::Never) => {
                        wheel.schedule(id, NEVER);
                        model.remove(&id);
                    }
                    Op::Schedule(id, When::Past(d)) => {
                        wheel.schedule(id, now.saturating_sub(d));
                        model.insert(id, now.saturating_sub(d));
                    }
                    Op::Schedule(id, When::Ahead(d)) => {
                        wheel.schedule(id, now + d);
                        model.insert(id, now + d);
                    }
                    Op::Slide(id, d) => {
                        if let Some(deadline) = model.get_mut(&id) {
                            *deadline += d;
                        }
                    }
                    Op::Cancel(id) => {
                        wheel.cancel(id);
                        model.remove(&id);
                    }
                    Op::Relocate(from, to) => {
                        wheel.relocate(from, to);
                        if from != to {
                            model.remove(&to);
                            if let Some(deadline) = model.remove(&from) {
                                model.insert(to, deadline);
                            }
                        }
                    }
                    Op::Advance(d, budget) => {
                        now += d;
                        model_advance(&mut wheel, &mut model, now, budget);
                    }
                    Op::Clear => {
                        wheel.clear();
                        model.clear();
                    }
                }
                wheel.check_invariants();
                check_any_due(&wheel, &model, now);
                prop_assert_eq!(wheel.len(), model.len());
                for id in 0..24 {
                    prop_assert_eq!(wheel.is_scheduled(id), model.contains_key(&id));
                }
                for (&id, &deadline) in &model {
                    let (level, idx) = wheel.slot_of(id).unwrap();
                    let start = slot_start(wheel.elapsed, level, idx);
                    prop_assert!(start <= (deadline >> TICK_SHIFT).max(wheel.elapsed));
                }
                if let Some(wakeup) = wheel.next_wakeup() {
                    let first = model.values().min().unwrap();
                    prop_assert!(wakeup <= (*first).max(wheel.elapsed << TICK_SHIFT));
                }
            }
            // Finally everything comes out, in budgeted rounds if need be.
            now = now.max(model.values().copied().max().unwrap_or(0));
            for _ in 0..200 {
                if model.is_empty() {
                    break;
                }
                model_advance(&mut wheel, &mut model, now, 3);
                wheel.check_invariants();
            }
            prop_assert!(model.is_empty() && wheel.len() == 0);
        }
    }
}
