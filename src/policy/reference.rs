//! A reference model of the policy for differential tests: the algorithm of
//! the [module documentation](super) written out plainly, over keys instead
//! of ids, with a `VecDeque` per queue (oldest key first), a `HashMap` of
//! each key's hash, weight and touches, and plain arithmetic. It is slow
//! and obvious where [`TinyLfu`](super::TinyLfu) is fast and intrusive, and
//! shares with it only the sketch, the ghosts and the readmissions (each
//! tested on its own).
//! The tests at the end drive both with the same operations and hold them
//! to the same decisions after every step.

use std::collections::{HashMap, VecDeque};

use super::TOUCH_MAX;
use super::ghost::{Ghosts, Side};
use super::returns::Returns;
use super::sketch::{FrequencySketch, SketchBudget};

// The documented constants, restated: `tinylfu/mod.rs` keeps its own private.

/// The protected segment's share of the main space, in percent.
const PROTECTED_PERCENT: u64 = 80;
/// The window and main ghosts remember this percentage of the capacity
/// (of the keys held, when weighted)...
const GHOST_PERCENT: u64 = 3;
/// ...and at least this many evictions.
const GHOST_MIN: u64 = 4;
/// The arrival ghost remembers one key per this many units of capacity...
const ARRIVAL_GHOST_DIVISOR: u64 = 256;
/// ...and at least this many.
const ARRIVAL_GHOST_MIN: u64 = 2;
/// A window below one unit per this many of the capacity (1%) is selective.
const SELECTIVE_DIVISOR: u64 = 100;
/// The estimate (its arrival counted) a new key needs to enter a selective
/// window.
const SELECTIVE_ENTRY: u8 = 3;
/// Steps a main-side ghost's return takes off the window (the other sides'
/// returns add one).
const MAIN_VOTE: u64 = 2;
/// A losing candidate this warm...
const WARM_CANDIDATE: u8 = 6;
/// ...against a victim this hot wins one duel in 128 anyway.
const SATURATED: u8 = 15;
/// The walk over protected starts within 1/80 of the sketch's sample period
/// of its halving...
const WALK_LEAD_DIVISOR: u64 = 80;
/// ...looks at this many protected keys per new key...
const WALK_STEPS: u32 = 16;
/// ...and demotes each untouched one estimated below this; not in a small
/// cache's shards.
const WALK_STALE: u8 = 5;
/// The first state of the xorshift coin behind those admissions.
const COIN_SEED: u64 = 0x2545_f491_4f6c_dd1d;

/// One of the three queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Window = 0,
    Probation = 1,
    Protected = 2,
    /// Weightless keys of a weighted cache: never evicted for size.
    Exempt = 3,
}

/// What the reference knows of a key it holds.
#[derive(Debug)]
struct Entry {
    hash: u64,
    weight: u32,
    /// Read hits since the policy last looked, at most [`TOUCH_MAX`].
    touches: u8,
    /// The queue the key is in.
    queue: Queue,
}

/// The reference policy.
#[derive(Debug)]
pub(super) struct Reference {
    capacity: u64,
    weighted: bool,
    /// The window, probation and protected queues, oldest key first.
    queues: [VecDeque<u64>; 4],
    /// The total weight of each queue.
    weights: [u64; 4],
    entries: HashMap<u64, Entry>,
    window_max: u64,
    protected_max: u64,
    sketch: FrequencySketch,
    budget: SketchBudget,
    ghosts: Ghosts,
    /// Readmissions (a small cache's budget only).
    returns: Returns,
    /// The xorshift64 state of the coin.
    coin: u64,
    /// Losing candidates the coin let in, so that a test can make sure it
    /// did.
    heads: u64,
    /// The key inserted last and its estimate then, until it leaves its
    /// place at the window's tail end (moved, or removed).
    newest: Option<(u64, u8)>,
    /// A key was inserted since the last `victim`.
    arriving: bool,
    /// `victim` has found the cache over its capacity since it was built or
    /// cleared: touches are counted in the sketch only from then on.
    filled: bool,
    /// The protected key the walk looks at next, if one is under way.
    walk: Option<u64>,
    /// Steps the walk may still take.
    walk_left: u64,
    /// A walk was started since the sketch last halved.
    walked: bool,
    /// Whether the reference walks at all (not with a small cache's budget).
    walks: bool,
    /// A key was inserted since the last `victim`, which takes its walk steps.
    walk_due: bool,
}

impl Reference {
    /// A reference for `capacity` weight units (keys when not `weighted`),
    /// whose sketch starts at the size the policy's does for `expected_keys`:
    /// sized for the capacity when counting keys (at most the larger of
    /// `expected_keys` and 1,024), else for `expected_keys` (at least 64).
    pub(super) fn new(
        capacity: u64,
        weighted: bool,
        expected_keys: usize,
        budget: SketchBudget,
    ) -> Self {
        let guess = (expected_keys as u64).max(64);
        let sketch_keys = if weighted {
            guess
        } else {
            capacity.min(guess.max(1024))
        };
        let mut reference = Reference {
            capacity,
            weighted,
            queues: Default::default(),
            weights: [0; 4],
            entries: HashMap::new(),
            window_max: 0,
            protected_max: 0,
            sketch: FrequencySketch::new(sketch_keys, budget),
            budget,
            ghosts: Ghosts::default(),
            returns: if budget.is_small() {
                Returns::new(capacity)
            } else {
                Returns::off()
            },
            coin: COIN_SEED,
            heads: 0,
            newest: None,
            arriving: false,
            filled: false,
            walk: None,
            walk_left: 0,
            walked: false,
            walks: !budget.is_small(),
            walk_due: false,
        };
        reference.set_window(capacity.div_ceil(100));
        reference
    }

    /// Sets the window's target (at most the capacity), and the protected
    /// segment's from what is left.
    pub(super) fn set_window(&mut self, window: u64) {
        self.window_max = window.min(self.capacity);
        self.protected_max = (self.capacity - self.window_max) * PROTECTED_PERCENT / 100;
    }

    pub(super) fn window_max(&self) -> u64 {
        self.window_max
    }

    pub(super) fn protected_max(&self) -> u64 {
        self.protected_max
    }

    /// The keys of the window, probation and protected queues, oldest first.
    pub(super) fn queues(&self) -> [Vec<u64>; 3] {
        [Queue::Window, Queue::Probation, Queue::Protected]
            .map(|q| Vec::from(self.queues[q as usize].clone()))
    }

    /// Losing candidates the coin let in so far.
    pub(super) fn heads(&self) -> u64 {
        self.heads
    }

    pub(super) fn holds(&self, key: u64) -> bool {
        self.entries.contains_key(&key)
    }

    pub(super) fn weighted_size(&self) -> u64 {
        self.weights.iter().sum()
    }

    /// The total weight of queue `q`.
    fn weight(&self, q: Queue) -> u64 {
        self.weights[q as usize]
    }

    fn selective(&self) -> bool {
        self.window_max < self.capacity / SELECTIVE_DIVISOR
    }

    // ----- the operations -----

    /// A new key: the ghosts vote if they recall it, it joins the window's
    /// tail, and its arrival is counted in the sketch.
    pub(super) fn insert(&mut self, key: u64, hash: u64, weight: u32) {
        assert!(!self.holds(key), "{key} inserted twice");
        self.adapt(hash);
        self.returns.arrive(hash);
        let weight = if self.weighted { weight } else { 1 };
        let queue = if weight == 0 {
            Queue::Exempt
        } else {
            Queue::Window
        };
        let entry = Entry {
            hash,
            weight,
            touches: 0,
            queue,
        };
        self.entries.insert(key, entry);
        self.link(key, queue);
        self.grow_sketch();
        let freq = self.sketch.increment(hash, 1);
        if queue == Queue::Window {
            self.newest = Some((key, freq));
            self.arriving = true;
        }
        self.walk_due = true;
    }

    /// Readmissions given and passed over so far.
    pub(super) fn readmitted(&self) -> (u64, u64) {
        self.returns.readmitted()
    }

    /// The read hits the shard's lock has counted so far.
    pub(super) fn set_reads(&mut self, reads: u64) {
        self.returns.set_reads(reads);
    }

    /// A read hit on `key` (a write hit is one too).
    pub(super) fn touch(&mut self, key: u64) {
        let entry = self.entries.get_mut(&key).expect("touching a held key");
        entry.touches = (entry.touches + 1).min(TOUCH_MAX);
    }

    /// Gives `key` a new weight (weighted only); whether it grew.
    pub(super) fn reweigh(&mut self, key: u64, weight: u32) -> bool {
        if !self.weighted {
            return false;
        }
        let entry = self.entries.get_mut(&key).expect("reweighing a held key");
        let (old, queue) = (entry.weight, entry.queue);
        if (weight == 0) != (queue == Queue::Exempt) {
            // Into the exempt queue, or out of it to the window's tail.
            self.unlink(key);
            self.entries.get_mut(&key).expect("held").weight = weight;
            let q = if weight == 0 {
                Queue::Exempt
            } else {
                Queue::Window
            };
            self.link(key, q);
            return weight > old;
        }
        entry.weight = weight;
        let total = &mut self.weights[queue as usize];
        *total = *total - u64::from(old) + u64::from(weight);
        weight > old
    }

    pub(super) fn remove(&mut self, key: u64) {
        self.unlink(key);
        self.entries.remove(&key);
    }

    /// Forgets every key, the counts and the ghosts; the window starts again
    /// at 1% of the capacity. The coin goes on.
    pub(super) fn clear(&mut self) {
        self.queues = Default::default();
        self.weights = [0; 4];
        self.entries.clear();
        self.newest = None;
        self.arriving = false;
        self.filled = false;
        self.walk = None;
        self.walk_left = 0;
        self.walked = false;
        self.walk_due = false;
        self.sketch.clear();
        self.ghosts.clear();
        self.returns.clear();
        self.set_window(self.capacity.div_ceil(100));
    }

    /// The next key to evict, or `None` while the cache fits. The caller
    /// removes it.
    pub(super) fn victim(&mut self) -> Option<u64> {
        if std::mem::take(&mut self.walk_due) {
            self.walk();
        }
        let over = self.weighted_size() > self.capacity;
        if over {
            self.filled = true;
        }
        let arriving = std::mem::take(&mut self.arriving);
        if arriving && over {
            if let Some(evicted) = self.duel_on_arrival() {
                return Some(evicted);
            }
        }
        self.shrink_protected();
        self.drain_window();
        if self.weighted_size() <= self.capacity {
            return None;
        }
        loop {
            if self.weight(Queue::Window) <= self.window_max {
                // The window fits, so the main space is over its share.
                if let Some(victim) = self.main_victim() {
                    self.remember(Side::Main, victim);
                    return Some(victim);
                }
                let head = self.untouched_head(Queue::Window)?;
                self.remember(Side::Window, head);
                return Some(head);
            }
            let candidate = self.untouched_head(Queue::Window)?;
            match self.main_victim() {
                Some(victim) => return Some(self.duel(candidate, victim)),
                // No main space to duel: the candidate goes in.
                None => self.move_to(candidate, Queue::Probation),
            }
        }
    }

    // ----- window size -----

    /// If the ghosts recall the new key with `hash`, moves the window one
    /// step toward the side that evicted it (two away from the main space).
    /// A step is one unit (the mean weight held, when weighted) for each
    /// key a sampled ghost stands for.
    fn adapt(&mut self, hash: u64) {
        let Some(side) = self.ghosts.recall(hash) else {
            return;
        };
        let unit = if self.weighted {
            let held = (self.entries.len() as u64).max(1);
            (self.weighted_size() / held).max(1)
        } else {
            1
        };
        let step = unit * self.ghosts.rate();
        let window = match side {
            Side::Window | Side::Arrival => self.window_max + step,
            Side::Main => self.window_max.saturating_sub(MAIN_VOTE * step),
        };
        self.set_window(window);
    }

    /// The ghost of `side` remembers `key`, which is being evicted. Their
    /// lengths follow the capacity (the keys held, when weighted).
    fn remember(&mut self, side: Side, key: u64) {
        let base = if self.weighted {
            self.entries.len() as u64
        } else {
            self.capacity
        };
        self.ghosts.set_lens(
            (base * GHOST_PERCENT / 100).max(GHOST_MIN),
            (base / ARRIVAL_GHOST_DIVISOR).max(ARRIVAL_GHOST_MIN),
        );
        self.ghosts.remember(side, self.entries[&key].hash);
    }

    // ----- counting -----

    /// A sketch sized for fewer keys than are held is replaced by one twice
    /// its size (up to the capacity, when it counts keys), counts lost.
    fn grow_sketch(&mut self) {
        let sized = self.sketch.sized_for();
        let limit = if self.weighted {
            u64::MAX
        } else {
            self.capacity
        };
        if self.entries.len() as u64 > sized && sized < limit {
            self.sketch = FrequencySketch::new((sized * 2).min(limit), self.budget);
        }
    }

    fn estimate(&self, key: u64) -> u8 {
        self.sketch.estimate(self.entries[&key].hash)
    }

    /// Takes `key`'s touches, counting them in the sketch once the cache has
    /// filled; whether it had any.
    fn fold(&mut self, key: u64) -> bool {
        let entry = self.entries.get_mut(&key).expect("queued keys are held");
        let touches = std::mem::take(&mut entry.touches);
        if touches > 0 && self.filled {
            self.sketch.increment(entry.hash, touches);
            self.returns.read_back(entry.hash);
        }
        touches > 0
    }

    // ----- queues -----

    /// Takes `key` out of its queue.
    fn unlink(&mut self, key: u64) {
        let Entry { weight, queue, .. } = self.entries[&key];
        let keys = &mut self.queues[queue as usize];
        let at = keys
            .iter()
            .position(|&k| k == key)
            .expect("a held key is queued");
        keys.remove(at);
        if self.walk == Some(key) {
            // The walk goes on from the key that followed.
            self.walk = keys.get(at).copied();
        }
        self.weights[queue as usize] -= u64::from(weight);
        if self.newest.is_some_and(|(newest, _)| newest == key) {
            self.newest = None;
        }
    }

    /// Puts `key` (out of any queue) at the tail of `q`.
    fn link(&mut self, key: u64, q: Queue) {
        let entry = self.entries.get_mut(&key).expect("a held key");
        entry.queue = q;
        self.weights[q as usize] += u64::from(entry.weight);
        self.queues[q as usize].push_back(key);
    }

    fn move_to(&mut self, key: u64, q: Queue) {
        self.unlink(key);
        self.link(key, q);
    }

    /// The untouched head of `q` (the window or protected), touched heads
    /// sent round to its tail: CLOCK's second chance.
    fn untouched_head(&mut self, q: Queue) -> Option<u64> {
        loop {
            let head = *self.queues[q as usize].front()?;
            if !self.fold(head) {
                return Some(head);
            }
            self.move_to(head, q);
        }
    }

    /// The untouched probation head: touched heads are promoted to
    /// protected (which may then demote its own), and an empty probation
    /// takes the protected segment's untouched head.
    fn main_victim(&mut self) -> Option<u64> {
        loop {
            let Some(&head) = self.queues[Queue::Probation as usize].front() else {
                let demoted = self.untouched_head(Queue::Protected)?;
                self.move_to(demoted, Queue::Probation);
                continue;
            };
            if !self.fold(head) {
                return Some(head);
            }
            self.move_to(head, Queue::Protected);
            self.shrink_protected();
        }
    }

    /// Near the end of the sketch's sample period, a walk from protected's
    /// oldest key toward its newest demotes each untouched key estimated
    /// below [`WALK_STALE`] to probation's tail, [`WALK_STEPS`] keys per
    /// new key.
    fn walk(&mut self) {
        if !self.walks {
            return;
        }
        if self.sketch.halving_near(WALK_LEAD_DIVISOR) {
            if !self.walked {
                self.walked = true;
                self.walk = self.queues[Queue::Protected as usize].front().copied();
                self.walk_left = self.capacity;
            }
        } else {
            self.walked = false;
        }
        for _ in 0..WALK_STEPS {
            let Some(key) = self.walk.filter(|_| self.walk_left > 0) else {
                self.walk = None;
                return;
            };
            let keys = &self.queues[Queue::Protected as usize];
            let at = keys
                .iter()
                .position(|&k| k == key)
                .expect("the walk is in protected");
            self.walk = keys.get(at + 1).copied();
            self.walk_left -= 1;
            let entry = &self.entries[&key];
            if entry.touches == 0 && self.sketch.estimate(entry.hash) < WALK_STALE {
                self.move_to(key, Queue::Probation);
            }
        }
    }

    /// Demotes protected heads to probation while protected is over target.
    fn shrink_protected(&mut self) {
        while self.weight(Queue::Protected) > self.protected_max {
            let Some(head) = self.untouched_head(Queue::Protected) else {
                return;
            };
            self.move_to(head, Queue::Probation);
        }
    }

    /// Moves window heads to probation while the window is over target and
    /// the main space (the capacity less the window's target) has room.
    fn drain_window(&mut self) {
        let main_max = self.capacity - self.window_max;
        while self.weight(Queue::Window) > self.window_max {
            let Some(head) = self.untouched_head(Queue::Window) else {
                return;
            };
            let main = self.weight(Queue::Probation) + self.weight(Queue::Protected);
            if main + u64::from(self.entries[&head].weight) > main_max {
                return;
            }
            self.move_to(head, Queue::Probation);
        }
    }

    // ----- duels -----

    /// A selective window's duel on arrival, for a new key the sketch
    /// counts below [`SELECTIVE_ENTRY`]: it stands aside while the queues
    /// settle, then duels the main space's victim, and goes to probation or
    /// is evicted. `None` (the key back at the window's tail) when the duel
    /// is not for it, or there is no main space to duel.
    fn duel_on_arrival(&mut self) -> Option<u64> {
        let (key, freq) = self.newest?;
        if !self.selective() || freq >= SELECTIVE_ENTRY {
            return None;
        }
        self.unlink(key);
        self.shrink_protected();
        self.drain_window();
        let Some(victim) = self.main_victim() else {
            self.link(key, Queue::Window);
            self.newest = Some((key, freq));
            return None;
        };
        if self.admits(freq, key, victim, true) {
            self.link(key, Queue::Probation);
            self.remember(Side::Main, victim);
            Some(victim)
        } else {
            self.link(key, Queue::Window);
            self.remember(Side::Arrival, key);
            Some(key)
        }
    }

    /// The window's `candidate` against the main space's `victim`: the
    /// loser is evicted and remembered by its side's ghost, a winning
    /// candidate moves to probation. The newest key, still where it
    /// arrived, duels with its estimate of then (fresh), and if it loses
    /// the arrival ghost remembers it. An unweighted window of one entry
    /// that takes every new key holds its candidate for a single miss: that
    /// candidate must lead as a fresh one must, though it is remembered as
    /// the window's; so must every candidate of a small cache's window, and
    /// there one that loses by the margin alone is not remembered.
    fn duel(&mut self, candidate: u64, victim: u64) -> u64 {
        let fresh = self.newest.filter(|&(newest, _)| newest == candidate);
        let candidate_freq = match fresh {
            Some((_, freq)) => freq,
            None => self.estimate(candidate),
        };
        let window_of_one = !self.weighted && self.window_max <= 1 && !self.selective();
        let judged_fresh = window_of_one || self.budget.is_small();
        if self.admits(
            candidate_freq,
            candidate,
            victim,
            fresh.is_some() || judged_fresh,
        ) {
            self.move_to(candidate, Queue::Probation);
            self.remember(Side::Main, victim);
            victim
        } else {
            if fresh.is_some() {
                self.remember(Side::Arrival, candidate);
            } else if !(self.budget.is_small() && candidate_freq == self.estimate(victim) + 1) {
                self.remember(Side::Window, candidate);
            }
            candidate
        }
    }

    /// Whether `candidate`, with estimate `candidate_freq`, beats `victim`:
    /// it must lead, by more than one if `fresh`; a warm loser against a
    /// saturated victim wins when the coin says so; a loser may still win
    /// on a readmission.
    fn admits(&mut self, candidate_freq: u8, candidate: u64, victim: u64, fresh: bool) -> bool {
        let victim_freq = self.estimate(victim);
        let margin = u8::from(fresh);
        let (candidate, victim) = (self.entries[&candidate].hash, self.entries[&victim].hash);
        let wins = candidate_freq > victim_freq + margin
            || candidate_freq >= WARM_CANDIDATE && victim_freq >= SATURATED && self.flip();
        if wins {
            self.returns.admitted(candidate);
            return true;
        }
        self.returns.readmit(candidate, victim, self.window_max)
    }

    /// One flip of the xorshift64 coin: heads one time in 128.
    fn flip(&mut self) -> bool {
        let mut x = self.coin;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.coin = x;
        let heads = x % 128 == 0;
        self.heads += u64::from(heads);
        heads
    }
}

mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::Reference;
    use crate::policy::sim::{Rng, hash_key, window_phases};
    use crate::policy::{SketchBudget, TestEntries, TinyLfu};

    /// The policy, driven through dense ids as the shard drives it (a
    /// removed id refilled by the last), beside the reference, driven
    /// through keys. Every step that decides something is checked against
    /// the reference.
    struct Pair {
        policy: TinyLfu,
        entries: TestEntries,
        /// The key at each id.
        keys: Vec<u64>,
        /// The weight at each id.
        weights: Vec<u32>,
        /// The id of each key.
        ids: HashMap<u64, u32>,
        reference: Reference,
        /// Keys evicted and not inserted again since.
        gone: Vec<u64>,
        /// Read hits so far, as a shard's lock counts them.
        reads: u64,
    }

    impl Pair {
        /// Both policies at `capacity`, the policy's per-id vectors and
        /// sketch sized for `expected` ids, and both windows set to
        /// `window` if given.
        fn new(capacity: u64, weighted: bool, expected: usize, window: Option<u64>) -> Self {
            let budget = SketchBudget::of_shard(capacity, weighted, 1);
            Self::with_budget(capacity, weighted, expected, window, budget)
        }

        /// [`new`](Self::new) with the sketches' budget given: a small
        /// cache's (as `of_shard` gives caches of up to 2,048 entries)
        /// turns the walk over protected off.
        fn with_budget(
            capacity: u64,
            weighted: bool,
            expected: usize,
            window: Option<u64>,
            budget: SketchBudget,
        ) -> Self {
            let mut pair = Pair {
                policy: TinyLfu::new(capacity, weighted, expected, budget),
                entries: TestEntries::default(),
                keys: Vec::new(),
                weights: Vec::new(),
                ids: HashMap::new(),
                reference: Reference::new(capacity, weighted, expected, budget),
                gone: Vec::new(),
                reads: 0,
            };
            if let Some(window) = window {
                pair.policy.set_window(window);
                pair.reference.set_window(window);
            }
            pair
        }

        fn len(&self) -> usize {
            self.keys.len()
        }

        /// The weight the policy gives `weight` (1 unless weighted).
        fn weight(&self, weight: u32) -> u32 {
            if self.policy.is_weighted() { weight } else { 1 }
        }

        fn insert(&mut self, key: u64, weight: u32) {
            let (id, hash, weight) = (self.len() as u32, hash_key(key), self.weight(weight));
            self.policy.set_reads(self.reads);
            self.reference.set_reads(self.reads);
            self.policy.insert(id, hash, weight);
            self.entries.push(hash);
            self.keys.push(key);
            self.weights.push(weight);
            self.ids.insert(key, id);
            self.reference.insert(key, hash, weight);
        }

        /// A read hit on the key at `id`.
        fn touch(&mut self, id: u32) {
            self.reads += 1;
            self.entries.touch(id);
            self.reference.touch(self.keys[id as usize]);
        }

        /// A write hit on the key at `id`: a touch and a new weight.
        fn reweigh(&mut self, id: u32, weight: u32) {
            let weight = self.weight(weight);
            self.touch(id);
            let grew = self.policy.reweigh(id, weight);
            let key = self.keys[id as usize];
            assert_eq!(grew, self.reference.reweigh(key, weight), "{key} grew");
            self.weights[id as usize] = weight;
        }

        /// Removes the key at `id` from both, the last id moving into it.
        fn remove(&mut self, id: u32) {
            let key = self.keys[id as usize];
            self.policy.remove(id);
            self.reference.remove(key);
            let last = self.len() as u32 - 1;
            self.entries.swap_remove(id);
            self.keys.swap_remove(id as usize);
            self.weights.swap_remove(id as usize);
            self.ids.remove(&key);
            if id != last {
                self.ids.insert(self.keys[id as usize], id);
                self.policy.relocate(last, id);
            }
        }

        /// Asks both for a victim and evicts it; whether there was one.
        fn victim(&mut self) -> bool {
            let chosen = self.policy.victim(&self.entries);
            let key = chosen.map(|id| self.keys[id as usize]);
            assert_eq!(key, self.reference.victim(), "the victim");
            if let Some(id) = chosen {
                self.remove(id);
                self.gone.push(key.expect("a victim has a key"));
            }
            key.is_some()
        }

        /// Victims until the cache fits, checked after each.
        fn evict(&mut self, check: fn(&Self)) {
            while self.victim() {
                check(self);
            }
            check(self);
        }

        /// A get, and on a miss an insert and its evictions.
        fn access(&mut self, key: u64) {
            let held = self.ids.get(&key).copied();
            assert_eq!(held.is_some(), self.reference.holds(key), "{key} held");
            match held {
                Some(id) => self.touch(id),
                None => {
                    self.insert(key, 1);
                    self.evict(Self::check_targets);
                }
            }
        }

        fn clear(&mut self) {
            self.policy.clear();
            self.reference.clear();
            self.entries = TestEntries::default();
            self.keys.clear();
            self.weights.clear();
            self.ids.clear();
        }

        /// The targets and total weights agree.
        fn check_targets(&self) {
            assert_eq!(
                self.policy.window_max(),
                self.reference.window_max(),
                "window target"
            );
            assert_eq!(
                self.policy.protected_max(),
                self.reference.protected_max(),
                "protected target"
            );
            assert_eq!(
                self.policy.weighted_size(),
                self.reference.weighted_size(),
                "weighted size"
            );
        }

        /// Everything agrees: the targets, the total weight, and each queue's
        /// keys in order.
        fn check(&self) {
            self.check_targets();
            let total: u64 = self.weights.iter().map(|&w| u64::from(w)).sum();
            assert_eq!(self.policy.weighted_size(), total, "weight held");
            let queues: [Vec<u64>; 3] = self
                .policy
                .queue_ids()
                .map(|ids| ids.iter().map(|&id| self.keys[id as usize]).collect());
            let names = ["window", "probation", "protected"];
            for ((name, policy), reference) in names.iter().zip(queues).zip(self.reference.queues())
            {
                assert_eq!(policy, reference, "the {name} queue");
            }
        }
    }

    /// One step of the differential test.
    #[derive(Debug, Clone)]
    enum Op {
        /// A new key with this weight, then victims until none if `true`.
        Insert(u32, bool),
        /// The key at this index (mod their number) of those evicted so far,
        /// which the ghosts may recall, again: as `Insert`.
        Return(usize, u32, bool),
        /// This many read hits on the key at this id (mod the number held).
        Touch(usize, u8),
        /// A write hit giving the key at this id (mod len) this weight.
        Reweigh(usize, u32),
        /// Removes the key at this id (mod len).
        Remove(usize),
        /// Victims until none.
        Victims,
        Clear,
    }

    /// Mostly light weights, so that a weighted cache of 100 units holds
    /// more keys than its first sketch is sized for (64) and grows it.
    fn weight() -> impl Strategy<Value = u32> {
        prop_oneof![2 => 0u32..2, 1 => 0u32..8]
    }

    fn op() -> impl Strategy<Value = Op> {
        let evict = || prop::bool::weighted(0.75);
        prop_oneof![
            6 => (weight(), evict()).prop_map(|(w, e)| Op::Insert(w, e)),
            3 => (any::<usize>(), weight(), evict()).prop_map(|(i, w, e)| Op::Return(i, w, e)),
            4 => (any::<usize>(), 1u8..20).prop_map(|(i, n)| Op::Touch(i, n)),
            2 => (any::<usize>(), weight()).prop_map(|(i, w)| Op::Reweigh(i, w)),
            2 => any::<usize>().prop_map(Op::Remove),
            3 => Just(Op::Victims),
            1 => Just(Op::Clear),
        ]
    }

    /// Runs `ops` through both policies at `capacity` (their windows set to
    /// `window` first, if given), checking that they agree after each step.
    fn run(capacity: u64, weighted: bool, window: Option<u64>, ops: Vec<Op>) {
        let budget = SketchBudget::of_shard(capacity, weighted, 1);
        run_with(capacity, weighted, window, budget, ops);
    }

    /// [`run`] with the sketches' budget given.
    fn run_with(
        capacity: u64,
        weighted: bool,
        window: Option<u64>,
        budget: SketchBudget,
        ops: Vec<Op>,
    ) {
        let mut pair = Pair::with_budget(capacity, weighted, 8, window, budget);
        let mut next_key = 0;
        for op in ops {
            let len = pair.len();
            match op {
                Op::Insert(w, evict) => {
                    pair.insert(next_key, w.min(capacity as u32));
                    next_key += 1;
                    if evict {
                        pair.evict(Pair::check);
                    }
                }
                Op::Return(i, w, evict) if !pair.gone.is_empty() => {
                    let key = pair.gone.swap_remove(i % pair.gone.len());
                    pair.insert(key, w.min(capacity as u32));
                    if evict {
                        pair.evict(Pair::check);
                    }
                }
                Op::Touch(i, n) if len > 0 => (0..n).for_each(|_| pair.touch((i % len) as u32)),
                Op::Reweigh(i, w) if len > 0 => {
                    pair.reweigh((i % len) as u32, w.min(capacity as u32));
                }
                Op::Remove(i) if len > 0 => pair.remove((i % len) as u32),
                Op::Victims => pair.evict(Pair::check),
                Op::Clear => pair.clear(),
                _ => {}
            }
            pair.check();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Small caches, unweighted and weighted, through every operation.
        #[test]
        fn policy_decides_as_the_reference(
            capacity in 1u64..64,
            weighted: bool,
            ops in prop::collection::vec(op(), 1..300),
        ) {
            run(capacity, weighted, None, ops);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// The same with a large cache's budget, so that the policy walks
        /// the protected segment near each halving of the sketch, unweighted
        /// too (`of_shard` gives these capacities a small cache's budget).
        #[test]
        fn policy_decides_as_the_reference_with_the_walk(
            capacity in 4u64..32,
            weighted: bool,
            ops in prop::collection::vec(
                op().prop_filter("no clear", |o| !matches!(o, Op::Clear)),
                300..1_500,
            ),
        ) {
            run_with(capacity, weighted, None, SketchBudget::bytes(1 << 20), ops);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Caches of 100 to 130 units with a window of 0, selective (a new
        /// key the sketch barely knows duels on arrival), filled and churned.
        #[test]
        fn policy_decides_as_the_reference_with_a_selective_window(
            capacity in 100u64..=130,
            weighted: bool,
            ops in prop::collection::vec(
                op().prop_filter("no clear", |o| !matches!(o, Op::Clear)),
                200..1_500,
            ),
        ) {
            run(capacity, weighted, Some(0), ops);
        }
    }

    /// Hot keys read in bursts of 30 and new keys read 4 to 9 times: hot
    /// keys that went cold sit saturated at probation's head when warm
    /// candidates (and some just below warm) come to duel them, so the coin
    /// is flipped often (about 1,200 times) and now and then lets a
    /// candidate in.
    #[test]
    fn policy_decides_as_the_reference_when_the_coin_admits() {
        let mut pair = Pair::new(64, false, 65, None);
        let mut rng = Rng::new(5);
        let mut next = 1_000;
        for round in 0..20_000 {
            let (key, reads) = if rng.below(10) < 3 {
                (rng.below(50), 30)
            } else {
                next += 1;
                (next, 4 + rng.below(6))
            };
            (0..reads).for_each(|_| pair.access(key));
            if round % 64 == 0 {
                pair.check();
            }
        }
        let heads = pair.reference.heads();
        assert!(heads >= 10, "the coin admitted {heads} candidates");
    }

    /// A small cache (readmissions on) under a hot set and new keys that
    /// come back three times, each 10 to 80 requests after the last: many
    /// come back within the horizon after losing their duel, and are
    /// passed over or readmitted as the score moves. Every
    /// victim agrees, the targets after every access, the queues every 500.
    #[test]
    fn policy_decides_as_the_reference_with_readmissions() {
        let mut pair = Pair::new(100, false, 101, None);
        let mut rng = Rng::new(11);
        // (due at, key, returns left)
        let mut due: Vec<(u64, u64, u64)> = Vec::new();
        let mut next = 1_000;
        for step in 0..40_000u64 {
            let key = if let Some(i) = due.iter().position(|&(at, _, _)| at <= step) {
                let (_, key, left) = due.swap_remove(i);
                if left > 1 {
                    due.push((step + 10 + rng.below(70), key, left - 1));
                }
                key
            } else if rng.below(10) < 6 {
                rng.below(80)
            } else {
                next += 1;
                due.push((step + 10 + rng.below(70), next, 3));
                next
            };
            pair.access(key);
            if step % 500 == 0 {
                pair.check();
            }
        }
        let (given, passed) = pair.reference.readmitted();
        assert!(
            given >= 50 && passed >= 50,
            "{given} readmitted, {passed} passed over"
        );
    }

    /// A cache large enough that only a sample of the keys has ghosts (one
    /// in 4 at 5,000), and whose sketch, first sized for 1,024 keys, grows
    /// twice as it fills: a recency phase grows the window, a loop a little
    /// larger than the cache takes it back below 1% (selective), and a Zipf
    /// phase follows. Every victim agrees, the targets after every access,
    /// the queues every 5,000 accesses.
    #[test]
    fn policy_decides_as_the_reference_when_ghosts_are_sampled() {
        let capacity = 5_000;
        let mut pair = Pair::new(capacity, false, 1_000, None);
        let (trace, grown) = window_phases(15_000, 10, 100_000);
        let (mut largest, mut selective) = (0, 0);
        for (step, &key) in trace.iter().enumerate() {
            pair.access(key);
            if step % 5_000 == 0 {
                pair.check();
            }
            let window = pair.policy.window_max();
            if step < grown {
                largest = largest.max(window);
            } else {
                selective += usize::from(window < capacity / 100);
            }
        }
        pair.check();
        assert!(largest > 50, "window {largest} after the recency phase");
        let walked = pair.policy.walk_demoted();
        assert!(walked > 100, "the walk demoted {walked} ids");
        assert!(selective > 30_000, "selective for {selective} accesses");
    }
}
