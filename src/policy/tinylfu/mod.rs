//! Adaptive W-TinyLFU over dense `u32` ids, with CLOCK-style queues.
//!
//! See the [module documentation](super) for the algorithm; this file holds
//! the data structure: three intrusive doubly linked queues threaded through
//! one `[u32; 2]` per id, a queue tag byte per id, an atomic touch counter
//! per id, optional weights, the frequency sketch and the ghosts that size
//! the window, with the bookkeeping of ids coming and going. Eviction (the
//! duel, the admission rule, the walk over the protected segment) is in
//! [`evict`], the decision taken before a new key has an id in [`room`].

mod evict;
mod room;

use std::fmt;

use super::Entries;
use super::ghost::{Ghosts, Side};
use super::returns::Returns;
use super::sketch::{FrequencySketch, SketchBudget};

/// "No id": end of a queue.
const NIL: u32 = u32::MAX;

/// Queue tag: the admission window.
const WINDOW: u8 = 0;
/// Queue tag: main space, probation segment.
const PROBATION: u8 = 1;
/// Queue tag: main space, protected segment.
const PROTECTED: u8 = 2;
/// Queue tag: weightless ids of a weighted cache, which no eviction for
/// size visits (evicting one frees nothing). Caffeine and quick_cache
/// exempt them too. Until 7 December they were victims like any other: a
/// shard of 10 given 2,000 new keys alternating weights 0 and 1 evicted
/// 925 of the 1,000 weightless ones.
const EXEMPT: u8 = 3;
/// Tag of an id removed but not yet refilled by `relocate`.
const VACANT: u8 = 4;

/// Candidates at least this warm win a lost duel against a [`SATURATED`]
/// victim with probability 1/128, so an attacker who floods the sketch to make
/// one victim look hot cannot pin it.
const WARM_CANDIDATE: u8 = 6;

/// A victim frequency this high may be forged by hash flooding (see
/// [`WARM_CANDIDATE`]). Caffeine lets any warm candidate win 1 in 128 lost
/// duels; restricting that to saturated victims was measured to recover
/// about 2 points on loop traces, where the random admissions evict keys of
/// a stable resident set.
const SATURATED: u8 = 15;

/// Share of the main space given to the protected segment, in percent.
const PROTECTED_PERCENT: u64 = 80;

/// Evictions each side's ghost remembers, in percent of the capacity (at
/// least [`GHOST_MIN`]). Measured on the simulator over four hash seeds,
/// against the hill climber the ghosts replaced (mean of the 30 rows
/// 47.49): 1, 2, 3 and 5% gave +0.26, +0.32, +0.35 and +0.28 in a first
/// version, and 3, 8 and 25% +0.31, +0.28 and −0.18 in this one (at 25%
/// `gli`, `cs` and `zigzag` lose 2 to 6 points: the window grows on keys
/// that come back too late to be a window's business).
const GHOST_PERCENT: u64 = 3;
/// Fewest evictions a side's ghost remembers (4 measured +0.06 over 8, 16
/// cost `cpp`@100 0.7 points).
const GHOST_MIN: u64 = 4;
/// While the window is below one unit per this many units of capacity
/// (1%; `window_max < capacity / SELECTIVE_DIVISOR` in whole units, so a
/// cache of fewer than 100 units is never selective, and one of 150 is
/// only at a window of 0), it is *selective*: a new key enters it only if the sketch
/// already counts it at [`SELECTIVE_ENTRY`] or more (its arrival
/// included); any other new key duels on arrival, as it would with no
/// window. A window that takes every new key sends every cold miss into
/// the table and another entry out of it, where a duel on arrival turns
/// the cold key away at the cost of one look at the sketch. On Zipf
/// workloads the votes wander between 0 and about 1%: the first ghosts,
/// which let every key into a window of any size (and without sampling,
/// and before the shard's layout fix), took a third off the comparison
/// bench's mixed Zipf rate on two threads.
///
/// Until 5 December a window below 1% was none at all (a dead zone). But
/// on `P3`@50k the votes swing around 1% (0.2 to 1.5% in one run) and a
/// window of their size is worth 1 to 2 points there: the dead zone left
/// larder 0.8 to 1.5 points below moka in the comparison bench. Measured
/// in the simulator over four hash seeds and 3M accesses per trace (the
/// dead zone's mean 48.17), and for time on the bench's mixed Zipf stream
/// on two threads (both builds in one process, alternating rounds; a build
/// against itself reads 1.00–1.02x): no dead zone, every key entering
/// any window, 48.21 (`P3`@50k +1.0, Zipf at 100k +0.25 to +0.55) but
/// 1.31–1.35x the time; this selective window 48.20 (`P3`@50k +1.06, Zipf
/// 0.8 at 100k +0.44, `zigzag` −0.7) and 1.06–1.07x the time (1.01x on
/// one thread), and in the comparison bench `P3`@50k 27.7–27.9 against
/// 26.3–26.7 (moka 27.4–27.8). Also measured and not kept: a floor of
/// 0.3 to 1% under the window (47.96–47.99: the loops and `zigzag` lose
/// 1.5 to 2.7 points, a window lets the loop's keys in), a window that
/// shuts below 0.1% and opens again only at 1% (48.21, but `P3`@50k only
/// +0.3: once shut it seldom reopens), a dead zone of 0.25% (48.22,
/// `P3`@50k +0.4), and arrival ghosts 2 to 8 times longer (48.08–48.18,
/// `P3` within 0.2).
const SELECTIVE_DIVISOR: u64 = 100;
/// Estimate (after its arrival's increment) a new key needs to enter a
/// selective window; see [`SELECTIVE_DIVISOR`]. Measured as there: 2,
/// letting in keys seen once before, `P3`@50k +0.9 but `zigzag` −1.3 and
/// 1.34x the time on two threads (on Zipf most cold misses were seen
/// once before); 3, `P3`@50k +1.05 for 1.06–1.07x; 4, +0.7 (27.2–27.6 in
/// the comparison bench) for 1.04–1.06x; 5, +0.6 (27.4–27.5) for 1.02x.
const SELECTIVE_ENTRY: u8 = 3;
/// Units a main-side ghost's return takes off the votes (a window-side or
/// arrival ghost's adds one). Simulator, four hash seeds: 47.75 with 1,
/// 47.81 with 2.
const MAIN_VOTE: u64 = 2;
/// Keys turned away on arrival that their ghost remembers: one per this
/// many units of capacity, at least [`ARRIVAL_GHOST_MIN`]. Short, so that
/// loops a little larger than the cache do not count (see [`ghost`]);
/// without it an empty window could never grow again.
///
/// [`ghost`]: super::ghost
const ARRIVAL_GHOST_DIVISOR: u64 = 256;
/// Fewest keys turned away on arrival that their ghost remembers.
const ARRIVAL_GHOST_MIN: u64 = 2;

/// The [walk](TinyLfu::walk) over the protected segment starts when the
/// sketch is this share of its sample period from halving: 1/80, an eighth
/// of the entries the sketch is sized for, in increments. Simulator, eight
/// hash seeds, sharded as the cache shards, small caches walking too
/// (baseline 48.27): over the period's last 1/80, 48.30; over its last
/// twentieth (divisor 20, four steps per key) 48.29 with `zigzag` −0.5
/// (−0.4 over 32 more seeds); the whole segment looked at in one go at
/// the halving itself 48.28 with `zigzag` −0.64 (−0.37 over 32 more), and
/// a pause of some milliseconds under the shard's lock in a cache of a
/// million entries, which the walk spreads over its new keys. Sixteen
/// steps per key instead of eight: `P6`@50k +0.04 more, `zigzag` −0.32
/// over the eight seeds (level over 32 more); see [`WALK_STEPS`] for
/// their measure since the walk is for large caches only.
const WALK_LEAD_DIVISOR: u64 = 80;
/// Protected ids the walk looks at per new key, over the last 1/80 of the
/// period (an eighth of the sized-for entries in increments, each new key
/// one or more of them); a walk that has not reached protected's tail by
/// the halving goes on after it, judging by the halved counts. Sixteen
/// since the night of 7 December, with [`WALK_STALE`] at 5 (measured
/// there): against eight, `P6`@50k +0.035 over sixteen hash seeds, within
/// their spread, and 88% of the steps taken before the halving against
/// 85% (`P6`, one seed).
const WALK_STEPS: u32 = 16;
/// An untouched protected id with an estimate below this when the walk
/// reaches it is demoted to probation: it was counted at most four times in
/// the sample period about to end (its touches are folded whenever its id
/// comes round, so an untouched id's count is all the sketch has of it).
/// Looking at the whole segment at each halving (eight seeds, sharded,
/// small caches too): ids counted at most three times, `P6`@50k +0.5 but
/// `zigzag` −0.74 and `P12`@10k −0.33; at most once, `P6`@50k +0.15.
///
/// 5 since the night of 7 December (ids counted at most four times), now
/// that the walk is for large caches only and `zigzag` (a small cache) no
/// longer has a say.
/// Simulator, sixteen hash seeds in four sets of four, 8 shards, the
/// fifteen rows of the tuned and held-out suites above 2,048 entries
/// (the only ones that walk), against 3 with eight steps: 5 with sixteen
/// steps `P6`@50k +0.30, +0.25, +0.24, +0.15 (the row nearest its target,
/// 0.15–0.6 behind moka held to its capacity in the comparison bench),
/// `P3`@50k +0.44 to +0.58, `P12`@10k −0.13 to −0.22, `P3`@10k −0.10 to
/// −0.19, the Zipf rows within 0.05; the sum of the fifteen rows'
/// changes +0.30 to +0.54. 5 with eight steps: `P6`@50k +0.15 to +0.30,
/// sums +0.18 to +0.62; 4 with eight steps `P6`@50k +0.12 (first four
/// seeds), 6 +0.12, 8 (with the selective window's entry at 4) +0.2.
/// Also measured and not kept: the selective window's entry at 4 in large
/// caches as well (`P6`@50k +0.23 to +0.37 and `P6`@10k +0.36 to +0.49,
/// but Zipf 0.8 at 100k −0.12 to −0.19, where larder is level with
/// quick_cache), a protected segment of 70% of the main space in large
/// caches (`P6`@50k +0.16 to +0.21, Zipf 0.8 at 10k −0.17 to −0.19,
/// `P12` −0.11 to −0.16), and sample periods of 8, 12 or 15 increments
/// per entry (`P6`@50k +0.24, −0.12, −0.35; `P12`@50k −0.34 at 8).
const WALK_STALE: u8 = 5;

/// Slot of the previous id in a link pair.
const PREV: usize = 0;
/// Slot of the next id in a link pair.
const NEXT: usize = 1;

/// One queue: its ends (oldest at `head`) and its total weight.
#[derive(Debug, Clone, Copy)]
struct Queue {
    /// Oldest id, examined first; `NIL` when empty.
    head: u32,
    /// Newest id; `NIL` when empty.
    tail: u32,
    /// Sum of the weights of the ids in the queue.
    weight: u64,
}

impl Queue {
    /// An empty queue.
    const EMPTY: Queue = Queue {
        head: NIL,
        tail: NIL,
        weight: 0,
    };
}

/// What the arrival of a new key does, from [`TinyLfu::make_room`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Room {
    /// Add it with [`TinyLfu::insert_counted`], then evict as usual.
    Insert,
    /// Evict this id and give its place to the new key with
    /// [`TinyLfu::reuse`]; nothing else needs evicting. The last field is
    /// the evicted key's hash when the duel computed it (the shard needs it
    /// to unlink the id from its index, and a key's hash may be costly).
    Evict(u32, Placement, Option<u64>),
    /// The new key dueled on arrival (as the window's candidate, or kept
    /// out of a selective window) and lost: it is evicted on arrival, and
    /// the shard's table is not touched.
    Reject,
}

/// Where the new key goes: the window, or (a candidate that won its duel)
/// probation. Opaque outside the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement(u8);

/// The adaptive W-TinyLFU policy of one shard.
pub(crate) struct TinyLfu {
    /// `[prev, next]` per id, within the id's queue; empty when
    /// `unbounded`.
    links: Vec<[u32; 2]>,
    /// Queue tag per id (`WINDOW`, `PROBATION`, `PROTECTED`, `VACANT`);
    /// empty when `unbounded`.
    tags: Vec<u8>,
    /// Ids given out, vacant ones included: the length of `tags` (and
    /// `links`, and `weights` when weighted), kept apart for the unbounded
    /// policy, which has no tags.
    slots: usize,
    /// Weight per id; empty (every weight is 1) when not weighted.
    weights: Vec<u32>,
    /// Whether the cache is weighted.
    weighted: bool,
    /// A shard of an unbounded cache (its sketch budget is
    /// [`SketchBudget::NONE`]): it never evicts, so nothing is counted,
    /// voted or rebalanced, and ids are not even linked: the policy keeps
    /// their number and weight (the window's), and the weights of a
    /// weighted cache. Nothing ever reads an unbounded shard's order, and
    /// the links and tags cost 9 bytes per entry.
    unbounded: bool,
    /// Window, probation and protected queues, indexed by tag.
    queues: [Queue; 4],
    /// Maximum total weight.
    capacity: u64,
    /// Target weight of the window: what the ghosts' votes ask for.
    window_max: u64,
    /// The window is below [`SELECTIVE_DIVISOR`]'s share of the capacity:
    /// new keys the sketch barely knows duel on arrival instead.
    selective: bool,
    /// Target weight of the protected segment.
    protected_max: u64,
    /// Ids removed but not yet refilled by `relocate`.
    vacant: usize,
    /// Frequency estimates for admission.
    sketch: FrequencySketch,
    /// What the sketch may take, in all and per entry, unless its minimum
    /// of [`FrequencySketch::MIN_BYTES_PER_ENTRY`] per entry needs more.
    sketch_budget: SketchBudget,
    /// Keys evicted lately, by side: they size the window.
    ghosts: Ghosts,
    /// Readmissions of keys turned away that return soon (small caches
    /// only; see [`Returns`]).
    returns: Returns,
    /// The ids or capacity the ghosts' lengths were last set for.
    ghost_base: u64,
    /// State of the xorshift generator behind the anti-flooding admissions.
    rng: u64,
    /// The first window id [`make_room`](Self::make_room) moved to the
    /// window's tail for a second chance (`NIL` if none): the new key
    /// belongs just ahead of it, where it would have been at the tail.
    /// Kept through removals and relocations made between `make_room` and
    /// the new key's arrival (a reap that makes room instead of its
    /// verdict, see `Shard::reap_instead`).
    behind_new: u32,
    /// The id of the key added last while it is still where it arrived,
    /// at the window's tail end (`NIL` once it has moved or been removed):
    /// when it is the window's candidate, the duel is for a key that has
    /// not yet been read back (see [`admit`](Self::admit)). The policy
    /// learns of reads only by folding touches, and a duel on arrival
    /// does not fold the newest key's: the shard adds a key and asks for
    /// victims under one exclusive lock, so none can have been read in
    /// between.
    newest: u32,
    /// The sketch's estimate of the newest key, taken when it was counted
    /// on arrival and not looked at again: the key has not been read or
    /// moved since, or it would not be the newest, but other keys' touches
    /// folded before its duel may have moved counters it shares, or halved
    /// them all. The duel takes the arrival's figure anyway, one look at
    /// the sketch fewer (see [`admit`](Self::admit)).
    newest_freq: u8,
    /// An id was added since the last [`victim`](Self::victim) (which the
    /// shard calls right after adding one): the newest, if it must
    /// [duel on arrival](Self::duels_on_arrival), duels in that call.
    arriving: bool,
    /// The protected id the [walk](Self::walk) looks at next; `NIL` when no
    /// walk is under way. An id that leaves its place (moved, demoted,
    /// removed) hands the walk on to the id after it (see `unlink`).
    walk: u32,
    /// Steps the walk under way may still take: at most the capacity, so
    /// that ids promoted behind it cannot keep it going for long (both
    /// admission protocols count the same capacity, where one has the new
    /// id among those held and the other not yet).
    walk_left: usize,
    /// A walk was started since the sketch last halved.
    walked: bool,
    /// Whether the policy walks at all: not in the shards of a cache of up
    /// to 2,048 entries, whose sketches are sized apart too (the module
    /// docs give the measurements).
    walks: bool,
    /// Ids the walk has demoted, for tests that must know it did.
    #[cfg(test)]
    walk_demoted: u64,
    /// A key was added by [`insert`](Self::insert) since the last
    /// [`victim`](Self::victim): its walk steps are taken there, where
    /// [`make_room`](Self::make_room) takes them, so the two protocols
    /// agree.
    walk_due: bool,
    /// The cache has had to evict (a key arrived while it was full) since
    /// it was built or cleared; both admission protocols set it before
    /// they look at any queue, so they agree. Until then
    /// [`fold`](Self::fold) takes touches without counting them in the
    /// sketch. While the cache fills, the only folds are of window heads
    /// draining into a main space with room (a touched head goes round
    /// again), so what goes uncounted is the hits keys take in the window
    /// during the fill, before any duel has been fought; the main space's
    /// touches wait in their slots and are counted when their ids come
    /// round after it. A choice for the per-row target rather than the
    /// mean. Simulator, four hash seeds (mean 47.94 without): 47.94
    /// (`multi2`@500 +0.7, `multi2`@1000 +0.3, `P3`@50k +0.2; `cs`@500
    /// −0.6, `P6`@50k −0.4, `sprite`@500 −0.3). In the comparison bench,
    /// two full runs and six of the rows near the line: `multi2`@500
    /// 49.8–50.2 (was 48.9–49.5), more than half a point below moka held
    /// to its capacity in none of the eight (in seven of eight before);
    /// `multi2`@1000 56.9–57.3 (below held in 4 of 8, as before);
    /// `cs`@500 28.3–29.3 (was 28.7–29.6: below moka, which holds up to
    /// 64 entries more, in 5 of 6 instead of 4, never below moka held). Also
    /// measured: until the cache is half full 47.90 (`cs` −1.0); and
    /// clearing every slot's touches when it first fills, so that no hit
    /// of the fill counts, 47.94 (`multi2`@500 +0.9, but Zipf at 100k
    /// −0.35 and `P6`@50k −1.1). Moka and Caffeine leave their sketch off
    /// until the cache is half full, which costs `gli` 9 points here (see
    /// the module docs).
    filled: bool,
}

impl fmt::Debug for TinyLfu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TinyLfu")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("weighted_size", &self.weighted_size())
            .field("window", &(self.queues[0].weight, self.window_max))
            .field("probation", &self.queues[1].weight)
            .field("protected", &(self.queues[2].weight, self.protected_max))
            .finish_non_exhaustive()
    }
}

impl TinyLfu {
    /// A policy for `capacity` weight units (entries when not `weighted`),
    /// with per-id vectors sized for exactly `expected_ids` ids and a
    /// frequency sketch within `sketch_budget` (or
    /// [`FrequencySketch::MIN_BYTES_PER_ENTRY`] per entry, if more).
    pub(crate) fn new(
        capacity: u64,
        weighted: bool,
        expected_ids: usize,
        sketch_budget: SketchBudget,
    ) -> Self {
        let unbounded = sketch_budget == SketchBudget::NONE;
        let linked = if unbounded { 0 } else { expected_ids };
        let mut policy = Self {
            links: Vec::with_capacity(linked),
            tags: Vec::with_capacity(linked),
            slots: 0,
            weights: Vec::with_capacity(if weighted { expected_ids } else { 0 }),
            weighted,
            unbounded,
            queues: [Queue::EMPTY; 4],
            capacity,
            window_max: 0,
            selective: false,
            protected_max: 0,
            vacant: 0,
            sketch: FrequencySketch::new(
                Self::initial_sketch_size(capacity, weighted, expected_ids),
                sketch_budget,
            ),
            sketch_budget,
            ghosts: Ghosts::default(),
            returns: if !unbounded && sketch_budget.is_small() {
                Returns::new(capacity)
            } else {
                Returns::off()
            },
            ghost_base: 0,
            rng: 0x2545_f491_4f6c_dd1d,
            behind_new: NIL,
            newest: NIL,
            newest_freq: 0,
            arriving: false,
            walk: NIL,
            walk_left: 0,
            walked: false,
            walks: !sketch_budget.is_small(),
            #[cfg(test)]
            walk_demoted: 0,
            walk_due: false,
            filled: false,
        };
        policy.set_votes(capacity.div_ceil(100));
        policy
    }

    /// Entries the sketch starts sized for: the capacity when counting
    /// entries (capped by `expected_ids` when that is smaller but sensible,
    /// the sketch grows on demand), else a guess grown as the cache fills.
    fn initial_sketch_size(capacity: u64, weighted: bool, expected_ids: usize) -> u64 {
        let guess = (expected_ids as u64).max(64);
        if weighted {
            guess
        } else {
            capacity.min(guess.max(1024))
        }
    }

    /// Sets the window the votes ask for, whether it is selective, and the
    /// protected target from the rest.
    fn set_votes(&mut self, votes: u64) {
        self.window_max = votes.min(self.capacity);
        self.selective = self.window_max < self.capacity / SELECTIVE_DIVISOR;
        let main = self.capacity - self.window_max;
        self.protected_max = main / 100 * PROTECTED_PERCENT + main % 100 * PROTECTED_PERCENT / 100;
    }

    /// Adds the new id `id` (equal to the current number of ids) to the
    /// window, and counts the write in the sketch: first the ghosts vote if
    /// they remember the key (see [`adapt`](Self::adapt)), and the sketch
    /// is rebuilt larger if it holds more ids than it was sized for.
    pub(crate) fn insert(&mut self, id: u32, hash: u64, weight: u32) {
        if self.unbounded {
            self.insert_counted(id, weight);
            return;
        }
        self.adapt(hash);
        self.returns.arrive(hash);
        self.insert_counted(id, weight);
        self.grow_sketch_if_needed();
        let freq = self.sketch.increment(hash, 1);
        // A weightless id is exempt and never the newest.
        if self.newest == id {
            self.newest_freq = freq;
        }
        self.walk_due = true;
    }

    /// [`insert`](Self::insert) of a key [`make_room`](Self::make_room)
    /// has already counted.
    pub(crate) fn insert_counted(&mut self, id: u32, weight: u32) {
        debug_assert_eq!(id as usize, self.slots, "ids must stay dense");
        self.slots += 1;
        if self.weighted {
            self.weights.push(weight);
        }
        if self.unbounded {
            self.queues[WINDOW as usize].weight += u64::from(weight);
            return;
        }
        self.links.push([NIL, NIL]);
        self.tags.push(WINDOW);
        if self.weighted && weight == 0 {
            self.push_tail(EXEMPT, id);
            return;
        }
        self.join_window(id);
        self.newest = id;
        self.arriving = true;
    }

    /// Gives the existing id `id` a new weight. A write to an entry counts
    /// as an access, but the caller records it as a touch, as a read hit
    /// does, so it reaches the sketch and the queues when the entry comes up
    /// at a queue head: a write hit then costs no queue surgery. Returns
    /// whether the weight grew: if not, the cache cannot have gone over its
    /// capacity, and the caller may skip [`victim`](Self::victim).
    #[inline]
    pub(crate) fn reweigh(&mut self, id: u32, weight: u32) -> bool {
        if !self.weighted {
            return false;
        }
        self.reweigh_weighted(id, weight)
    }

    /// [`reweigh`](Self::reweigh) in a weighted cache.
    fn reweigh_weighted(&mut self, id: u32, weight: u32) -> bool {
        let tag = if self.unbounded {
            WINDOW
        } else {
            self.tags[id as usize]
        };
        let old = self.weights[id as usize];
        if !self.unbounded && (weight == 0) != (tag == EXEMPT) {
            // Into the exempt queue, or out of it to the window's tail (as
            // a touched window id goes round).
            self.unlink(id);
            self.weights[id as usize] = weight;
            self.push_tail(if weight == 0 { EXEMPT } else { WINDOW }, id);
            return weight > old;
        }
        self.weights[id as usize] = weight;
        let queue = &mut self.queues[tag as usize];
        queue.weight = queue.weight - u64::from(old) + u64::from(weight);
        weight > old
    }

    /// Unlinks `id`. If it was the last id it is dropped at once; otherwise
    /// its slot waits for `relocate(last, id)`.
    pub(crate) fn remove(&mut self, id: u32) {
        let index = id as usize;
        if id == self.behind_new {
            // The ids behind the new key are those after it in the window.
            self.behind_new = self.links[index][NEXT];
        }
        if self.unbounded {
            self.queues[WINDOW as usize].weight -= self.weight_of(id);
        } else {
            self.unlink(id);
        }
        if index + 1 == self.slots {
            self.pop_last();
        } else {
            if !self.unbounded {
                self.tags[index] = VACANT;
            }
            self.vacant += 1;
        }
    }

    /// Moves the last id `from` into the vacant slot `to`.
    pub(crate) fn relocate(&mut self, from: u32, to: u32) {
        if from == to {
            return;
        }
        let (f, t) = (from as usize, to as usize);
        debug_assert_eq!(f + 1, self.slots, "only the last id moves");
        if self.unbounded {
            if self.weighted {
                self.weights[t] = self.weights[f];
            }
            self.vacant -= 1;
            self.pop_last();
            return;
        }
        if from == self.newest {
            self.newest = to;
        }
        if from == self.walk {
            self.walk = to;
        }
        if from == self.behind_new {
            self.behind_new = to;
        }
        debug_assert_eq!(self.tags[t], VACANT, "relocate into a removed id");
        let tag = self.tags[f];
        let [prev, next] = self.links[f];
        self.links[t] = [prev, next];
        self.tags[t] = tag;
        if self.weighted {
            self.weights[t] = self.weights[f];
        }
        if tag != VACANT {
            self.point_neighbours(tag, prev, next, to, to);
        }
        self.vacant -= 1;
        self.pop_last();
    }

    /// Drops the last slot of every per-id vector.
    fn pop_last(&mut self) {
        self.slots -= 1;
        self.links.pop();
        self.tags.pop();
        if self.weighted {
            self.weights.pop();
        }
    }

    /// Remembers an eviction from `side` in its ghost.
    fn remember(&mut self, side: Side, hash: u64) {
        // Weighted caches count ids, not weight units: their ghosts are
        // sized by the ids held.
        let base = if self.weighted {
            self.len() as u64
        } else {
            self.capacity
        };
        if base != self.ghost_base {
            self.ghost_base = base;
            self.ghosts.set_lens(
                (base * GHOST_PERCENT / 100).max(GHOST_MIN),
                (base / ARRIVAL_GHOST_DIVISOR).max(ARRIVAL_GHOST_MIN),
            );
        }
        self.ghosts.remember(side, hash);
    }

    /// A new key with `hash` arrives: if the policy evicted it lately, moves
    /// the votes toward the side that would have kept it, by one step (one
    /// unit, or one average entry's weight when weighted, times the keys
    /// each sampled ghost stands for), or [`MAIN_VOTE`] steps for the main
    /// space.
    fn adapt(&mut self, hash: u64) {
        let Some(side) = self.ghosts.recall(hash) else {
            return;
        };
        let unit = if self.weighted {
            (self.weighted_size() / (self.len() as u64).max(1)).max(1)
        } else {
            1
        };
        let step = unit * self.ghosts.rate();
        let window = match side {
            Side::Window | Side::Arrival => self.window_max.saturating_add(step),
            Side::Main => self.window_max.saturating_sub(MAIN_VOTE * step),
        };
        self.set_votes(window);
    }

    /// The cache line of the sketch a new key with `hash` would count
    /// itself in, for a prefetch; `None` when the policy counts nothing
    /// (an unbounded shard).
    #[inline]
    pub(crate) fn sketch_line(&self, hash: u64) -> Option<&u64> {
        (!self.unbounded).then(|| self.sketch.line_of(hash))
    }

    /// Whether the policy keeps [readmissions](Returns), and so wants
    /// the shard's read hits before each new key ([`set_reads`]).
    ///
    /// [`set_reads`]: Self::set_reads
    #[inline]
    pub(crate) fn counts_reads(&self) -> bool {
        self.returns.is_on()
    }

    /// The shard's read hits so far: with the new keys counted here, the
    /// clock of the readmissions' horizon.
    #[inline]
    pub(crate) fn set_reads(&mut self, reads: u64) {
        self.returns.set_reads(reads);
    }

    /// The shard's read hits as last told.
    #[cfg(test)]
    pub(crate) fn reads(&self) -> u64 {
        self.returns.reads()
    }

    /// Ids the [walk](Self::walk) has demoted so far.
    #[cfg(test)]
    pub(crate) fn walk_demoted(&self) -> u64 {
        self.walk_demoted
    }

    /// Turns the [walk](Self::walk) on or off, whatever the cache's size.
    #[cfg(test)]
    pub(crate) fn set_walks(&mut self, walks: bool) {
        self.walks = walks;
    }

    /// The window's target weight.
    #[cfg(test)]
    pub(crate) fn window_max(&self) -> u64 {
        self.window_max
    }

    /// The protected segment's target weight.
    #[cfg(test)]
    pub(crate) fn protected_max(&self) -> u64 {
        self.protected_max
    }

    /// The ids of the window, probation and protected queues, each oldest
    /// first.
    #[cfg(test)]
    pub(crate) fn queue_ids(&self) -> [Vec<u32>; 3] {
        [WINDOW, PROBATION, PROTECTED].map(|tag| {
            let queue = self.queues[tag as usize];
            let mut ids = Vec::new();
            let mut id = queue.head;
            while id != NIL {
                ids.push(id);
                id = self.links[id as usize][NEXT];
            }
            ids
        })
    }

    /// Ids the links and tags have room for, together.
    #[cfg(test)]
    pub(crate) fn linked_capacity(&self) -> usize {
        self.links.capacity() + self.tags.capacity()
    }

    /// The sketch's estimate for a key with `hash`.
    #[cfg(test)]
    pub(crate) fn estimate(&self, hash: u64) -> u8 {
        self.sketch.estimate(hash)
    }

    /// Heap bytes of the sketch's table.
    #[cfg(test)]
    pub(crate) fn sketch_bytes(&self) -> usize {
        self.sketch.bytes()
    }

    /// Sets the window's target as the ghosts' votes would.
    #[cfg(test)]
    pub(crate) fn set_window(&mut self, window: u64) {
        self.set_votes(window);
    }

    /// Total weight of the ids held.
    pub(crate) fn weighted_size(&self) -> u64 {
        self.queues.iter().map(|q| q.weight).sum()
    }

    /// Whether ids carry weights (else every weight is 1).
    pub(crate) fn is_weighted(&self) -> bool {
        self.weighted
    }

    /// Maximum total weight.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Number of ids held.
    pub(crate) fn len(&self) -> usize {
        self.slots - self.vacant
    }

    /// Weight of `id` (1 when the cache is not weighted).
    pub(crate) fn weight(&self, id: u32) -> u32 {
        if self.weighted {
            self.weights[id as usize]
        } else {
            1
        }
    }

    /// Forgets all ids, frequencies and ghosts, and resets the window.
    pub(crate) fn clear(&mut self) {
        self.links.clear();
        self.tags.clear();
        self.slots = 0;
        self.weights.clear();
        self.queues = [Queue::EMPTY; 4];
        self.vacant = 0;
        self.newest = NIL;
        self.arriving = false;
        self.walk = NIL;
        self.walk_left = 0;
        self.walked = false;
        self.walk_due = false;
        self.filled = false;
        self.sketch.clear();
        self.ghosts.clear();
        self.returns.clear();
        self.set_votes(self.capacity.div_ceil(100));
    }

    /// Rebuilds a larger sketch when more ids are held than it was sized
    /// for (weighted caches, or a capacity larger than the first guess). The
    /// counts restart from zero, which costs a little accuracy once per
    /// doubling.
    fn grow_sketch_if_needed(&mut self) {
        self.grow_sketch_for(self.len() as u64);
    }

    /// [`grow_sketch_if_needed`](Self::grow_sketch_if_needed) with `held`
    /// ids. Every new key asks, and the answer is nearly always no: the
    /// test is inlined, the growth is not.
    #[inline]
    fn grow_sketch_for(&mut self, held: u64) {
        let sized = self.sketch.sized_for();
        let limit = if self.weighted {
            u64::MAX
        } else {
            self.capacity
        };
        if held > sized && sized < limit {
            self.grow_sketch(sized.saturating_mul(2).min(limit));
        }
    }

    /// Replaces the sketch with one sized for `entries`.
    #[cold]
    #[inline(never)]
    fn grow_sketch(&mut self, entries: u64) {
        self.sketch = FrequencySketch::new(entries, self.sketch_budget);
    }

    // ----- queues -----

    /// Weight of `id`, widened.
    #[inline]
    fn weight_of(&self, id: u32) -> u64 {
        u64::from(self.weight(id))
    }

    /// Appends `id` (unlinked) to queue `tag`.
    fn push_tail(&mut self, tag: u8, id: u32) {
        let weight = self.weight_of(id);
        let queue = &mut self.queues[tag as usize];
        let old_tail = queue.tail;
        queue.tail = id;
        queue.weight += weight;
        if old_tail == NIL {
            queue.head = id;
        }
        self.links[id as usize] = [old_tail, NIL];
        if old_tail != NIL {
            self.links[old_tail as usize][NEXT] = id;
        }
        self.tags[id as usize] = tag;
    }

    /// Removes `id` from its queue (its tag is left as is).
    fn unlink(&mut self, id: u32) {
        if id == self.newest {
            self.newest = NIL;
        }
        if id == self.walk {
            self.walk = self.links[id as usize][NEXT];
        }
        let weight = self.weight_of(id);
        let [prev, next] = self.links[id as usize];
        let tag = self.tags[id as usize];
        debug_assert!(tag < VACANT, "unlinking a vacant id");
        self.queues[tag as usize].weight -= weight;
        self.point_neighbours(tag, prev, next, next, prev);
        self.links[id as usize] = [NIL, NIL];
    }

    /// Points the neighbours an id had in queue `tag`, `prev` and `next`,
    /// (or the queue's ends where it had none) past it: `prev` forward to
    /// `forward`, `next` back to `back`. An id that leaves passes its
    /// neighbours to each other; one that moves to a new slot, its slot.
    #[inline]
    fn point_neighbours(&mut self, tag: u8, prev: u32, next: u32, forward: u32, back: u32) {
        if prev == NIL {
            self.queues[tag as usize].head = forward
        } else {
            self.links[prev as usize][NEXT] = forward
        }
        if next == NIL {
            self.queues[tag as usize].tail = back
        } else {
            self.links[next as usize][PREV] = back
        }
    }

    /// Moves `id` to the tail of queue `tag`.
    fn move_to(&mut self, tag: u8, id: u32) {
        self.unlink(id);
        self.push_tail(tag, id);
    }
}

impl TinyLfu {
    /// Checks every structural invariant against the shard's `len`; panics
    /// with a description of the first violation.
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    pub(crate) fn check_invariants(&self, len: usize) {
        assert_eq!(self.len(), len, "policy len disagrees with the shard");
        assert_eq!(self.vacant, 0, "a removed id was never relocated");
        let expected_weights = if self.weighted { self.slots } else { 0 };
        assert_eq!(self.weights.len(), expected_weights, "weights length");
        if self.unbounded {
            assert!(
                self.links.is_empty() && self.tags.is_empty(),
                "unbounded ids linked"
            );
            let weight = if self.weighted {
                self.weights.iter().map(|&w| u64::from(w)).sum()
            } else {
                self.slots as u64
            };
            assert_eq!(self.weighted_size(), weight, "unbounded weight");
            assert!(
                self.queues.iter().all(|q| q.head == NIL && q.tail == NIL),
                "unbounded queues hold ids"
            );
            return;
        }
        assert!(
            self.walk == NIL || self.tags.get(self.walk as usize) == Some(&PROTECTED),
            "the walk is at {}, not a protected id",
            self.walk
        );
        assert_eq!(self.links.len(), self.slots, "links length");
        assert_eq!(self.tags.len(), self.slots, "tags length");
        let mut seen = 0;
        for (tag, queue) in self.queues.iter().enumerate() {
            let (mut id, mut prev, mut weight) = (queue.head, NIL, 0);
            while id != NIL {
                let index = id as usize;
                assert!(index < self.tags.len(), "queue {tag} links to dead id {id}");
                assert_eq!(self.tags[index] as usize, tag, "id {id} tag vs queue {tag}");
                assert_eq!(self.links[index][PREV], prev, "id {id} prev link");
                weight += self.weight_of(id);
                seen += 1;
                assert!(seen <= self.tags.len(), "queue {tag} has a cycle");
                (prev, id) = (id, self.links[index][NEXT]);
            }
            assert_eq!(queue.tail, prev, "queue {tag} tail");
            assert_eq!(queue.weight, weight, "queue {tag} weight");
        }
        for (id, &tag) in self.tags.iter().enumerate() {
            let weightless = self.weighted && self.weights[id] == 0;
            assert_eq!(
                tag == EXEMPT,
                weightless,
                "id {id} in queue {tag} with weight {}",
                self.weight_of(id as u32)
            );
        }
        assert_eq!(seen, len, "ids linked vs held");
        assert!(
            self.newest == NIL || self.tags.get(self.newest as usize) == Some(&WINDOW),
            "the newest id {} has left the window",
            self.newest
        );
        assert!(self.window_max <= self.capacity, "window over capacity");
        assert_eq!(
            self.selective,
            self.window_max < self.capacity / SELECTIVE_DIVISOR,
            "window {} of {} selective or not",
            self.window_max,
            self.capacity
        );
    }
}
