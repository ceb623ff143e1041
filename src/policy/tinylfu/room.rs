//! Admitting a new key without moving ids: [`TinyLfu::make_room`] decides,
//! before the key has an id, what its arrival evicts, so that the shard can
//! give the new key the evicted entry's id ([`TinyLfu::reuse`]).

use super::evict::Expired;
use super::*;

impl TinyLfu {
    /// Decides, before a new key with `hash` is added to an unweighted
    /// cache, what its arrival evicts: the decision [`insert`] and then
    /// [`victim`] would make, taken with the new key counted at the
    /// window's tail but not yet given an id, so that the caller can give
    /// it the evicted id's place (no swap-remove, no id to relocate). Counts
    /// the key in the sketch. Window heads given a second chance on the way
    /// go behind the new key, as they would have: it joins the window
    /// ahead of them.
    ///
    /// Where the new key would move on from the window without a duel, or
    /// nothing but it could be evicted, the answer is [`Room::Insert`]: add
    /// it with [`insert_counted`](Self::insert_counted) and run [`victim`]
    /// as usual.
    ///
    /// [`insert`]: Self::insert
    /// [`victim`]: Self::victim
    pub(crate) fn make_room(&mut self, entries: &impl Entries, hash: u64) -> Room {
        debug_assert!(!self.weighted, "make_room is for unit weights");
        self.behind_new = NIL;
        // The new key, not yet an id, is the newest now.
        self.newest = NIL;
        if self.unbounded {
            return Room::Insert;
        }
        self.adapt(hash);
        self.returns.arrive(hash);
        // The sketch is sized for the ids held with the new one among them.
        self.grow_sketch_for(self.len() as u64 + 1);
        self.newest_freq = self.sketch.increment(hash, 1);
        self.walk(entries);
        // Over capacity with the new key, as `victim` sees it.
        let over = self.weighted_size() >= self.capacity;
        self.filled |= over;
        if over && self.duels_on_arrival() {
            // A selective window's duel on arrival, after the rebalancing
            // `victim` does first.
            self.shrink_protected(entries);
            self.drain_window(entries);
            if let Some(room) = self.duel_on_arrival(entries, hash) {
                return room;
            }
        }
        self.shrink_protected(entries);
        let candidate = match self.drain_window_before_new(entries) {
            Drained::NewKeyMovesOn => return Room::Insert,
            Drained::Stopped { candidate } => candidate,
        };
        if self.weighted_size() < self.capacity {
            return Room::Insert;
        }
        self.evict_for_new(entries, hash, candidate)
    }

    /// `drain_window`, with the new key's unit in the window: moves the
    /// window's untouched heads ahead of the new key to probation while the
    /// window is over target and the main space has room. The new key
    /// itself may move on (the usual path, [`Room::Insert`]); otherwise
    /// the window's candidate ahead of it, if the drain looked it up, is
    /// handed on to [`evict_for_new`](Self::evict_for_new), which would
    /// look it up again (a window path of the comparison bench's insert
    /// stream took 38 instructions fewer without the second look).
    fn drain_window_before_new(&mut self, entries: &impl Entries) -> Drained {
        let main_max = self.capacity - self.window_max;
        while self.queues[WINDOW as usize].weight + 1 > self.window_max {
            let head = self.window_head_before_new(entries);
            let main =
                self.queues[PROBATION as usize].weight + self.queues[PROTECTED as usize].weight;
            if main + 1 > main_max {
                return Drained::Stopped {
                    candidate: Some(head),
                };
            }
            match head {
                Some(head) => self.move_to(PROBATION, head),
                None => return Drained::NewKeyMovesOn,
            }
        }
        Drained::Stopped { candidate: None }
    }

    /// What the new key with `hash` evicts from a full cache: the main
    /// space's victim if the window fits the new key, else the loser of
    /// the window's candidate and the victim (the new key itself when it
    /// is the candidate, on arrival). `candidate`, if given, is what
    /// [`window_head_before_new`](Self::window_head_before_new) answered
    /// just before, with nothing changed since.
    fn evict_for_new(
        &mut self,
        entries: &impl Entries,
        hash: u64,
        mut candidate: Option<Option<u32>>,
    ) -> Room {
        loop {
            if self.queues[WINDOW as usize].weight < self.window_max {
                // The window fits the new key: the main space is over its share.
                return match self.main_victim(entries) {
                    Some(victim) => {
                        let victim_hash = entries.hash(victim);
                        if !entries.expired(victim) {
                            self.remember(Side::Main, victim_hash);
                        }
                        Room::Evict(victim, Placement(WINDOW), Some(victim_hash))
                    }
                    None => Room::Insert,
                };
            }
            let candidate = candidate
                .take()
                .unwrap_or_else(|| self.window_head_before_new(entries));
            let Some(candidate) = candidate else {
                // The new key heads the window: it is the candidate.
                return self.duel_on_arrival(entries, hash).unwrap_or(Room::Insert);
            };
            let Some(victim) = self.main_victim(entries) else {
                // Empty main space: the candidate goes in without a duel.
                self.move_to(PROBATION, candidate);
                continue;
            };
            let (evicted, evicted_hash) = self.duel_before_new(entries, candidate, victim);
            return Room::Evict(evicted, Placement(WINDOW), Some(evicted_hash));
        }
    }

    /// The duel of the window's `candidate`, ahead of the new key, against
    /// the main space's `victim`: the winner stays (a winning candidate
    /// moves to probation); the loser, returned with its hash, is evicted.
    fn duel_before_new(
        &mut self,
        entries: &impl Entries,
        candidate: u32,
        victim: u32,
    ) -> (u32, u64) {
        let (candidate_hash, victim_hash) = (entries.hash(candidate), entries.hash(victim));
        match Expired::of(entries, candidate, victim) {
            // An expired id leaves without a duel, and no ghost
            // remembers it: the policy did not choose it.
            Expired::Candidate => (candidate, candidate_hash),
            Expired::Victim => {
                self.move_to(PROBATION, candidate);
                (victim, victim_hash)
            }
            Expired::Neither => {
                if self.window_candidate_wins(candidate, candidate_hash, victim_hash) {
                    (victim, victim_hash)
                } else {
                    (candidate, candidate_hash)
                }
            }
        }
    }

    /// Whether the key just counted must duel on arrival rather than join
    /// the window: the window is selective and the sketch barely knows the
    /// key (see [`SELECTIVE_DIVISOR`]).
    pub(super) fn duels_on_arrival(&self) -> bool {
        self.selective && self.newest_freq < SELECTIVE_ENTRY
    }

    /// [`make_room`](Self::make_room)'s duel of the new key, with `hash`,
    /// against the main space's victim: the victim is evicted and the key
    /// takes its place in probation, or the key is turned away. `None`
    /// when the main space is empty.
    fn duel_on_arrival(&mut self, entries: &impl Entries, hash: u64) -> Option<Room> {
        let victim = self.main_victim(entries)?;
        // Whatever the duel's outcome, the new key leaves the window.
        self.behind_new = NIL;
        let victim_hash = entries.hash(victim);
        // An expired victim leaves without a duel (the new key is live).
        Some(
            if entries.expired(victim) || self.admit_arrival(hash, victim_hash) {
                Room::Evict(victim, Placement(PROBATION), Some(victim_hash))
            } else {
                Room::Reject
            },
        )
    }

    /// The duel of a key on arrival (with `hash`, its estimate
    /// [`newest_freq`](Self::newest_freq)) against the victim with
    /// `victim_hash`: whether the key wins. The loser is remembered by its
    /// side's ghost.
    pub(super) fn admit_arrival(&mut self, hash: u64, victim_hash: u64) -> bool {
        let admitted = self.admit(self.newest_freq, hash, victim_hash, true);
        if admitted {
            self.remember(Side::Main, victim_hash);
        } else {
            self.remember(Side::Arrival, hash);
        }
        admitted
    }

    /// The window's untouched head among the ids ahead of a new key at its
    /// tail, touched heads moved on behind it as [`window_head`] does;
    /// `None` when the new key itself is the head (every id ahead of it
    /// was moved on, or there were none).
    ///
    /// [`window_head`]: Self::window_head
    fn window_head_before_new(&mut self, entries: &impl Entries) -> Option<u32> {
        loop {
            let head = self.queues[WINDOW as usize].head;
            if head == NIL || head == self.behind_new {
                return None;
            }
            if !self.fold(head, entries) {
                return Some(head);
            }
            self.move_to(WINDOW, head);
            if self.behind_new == NIL {
                self.behind_new = head;
            }
        }
    }

    /// Gives the id [`make_room`](Self::make_room) chose to evict to the
    /// new key: in probation (a candidate that won its duel), or at the
    /// window's tail, just ahead of any ids moved there behind it.
    pub(crate) fn reuse(&mut self, id: u32, placement: Placement) {
        if placement.0 == WINDOW
            && self.behind_new == NIL
            && id == self.queues[WINDOW as usize].head
        {
            // The window's head (its candidate, which lost its duel) goes
            // to the window's tail for the new key: one rotation instead of
            // an unlink and a push.
            self.rotate_window();
            self.newest = id;
            return;
        }
        self.unlink(id);
        if placement.0 == WINDOW {
            self.join_window(id);
            self.newest = id;
        } else {
            // `make_room` has already reset `newest`: nothing to undo.
            self.push_tail(placement.0, id);
        }
    }

    /// Moves the window's head to its tail, as an unlink and a push to
    /// the tail would (its weight stays that of the unit it had).
    fn rotate_window(&mut self) {
        let queue = self.queues[WINDOW as usize];
        let (head, tail) = (queue.head, queue.tail);
        if head == tail {
            // A window of one (or none) is its own rotation.
            return;
        }
        if head == self.walk {
            self.walk = self.links[head as usize][NEXT];
        }
        let next = self.links[head as usize][NEXT];
        self.links[next as usize][PREV] = NIL;
        self.links[tail as usize][NEXT] = head;
        self.links[head as usize] = [tail, NIL];
        let queue = &mut self.queues[WINDOW as usize];
        queue.head = next;
        queue.tail = head;
    }

    /// Puts the new key's id `id` (unlinked) where `make_room` saw it: at
    /// the window's tail, but ahead of any ids it moved there since.
    pub(super) fn join_window(&mut self, id: u32) {
        let behind = std::mem::replace(&mut self.behind_new, NIL);
        if behind == NIL {
            self.push_tail(WINDOW, id);
        } else {
            self.push_before(WINDOW, id, behind);
        }
    }

    /// Links `id` (unlinked) into queue `tag` just ahead of `next`, a
    /// member of that queue.
    fn push_before(&mut self, tag: u8, id: u32, next: u32) {
        let weight = self.weight_of(id);
        let prev = self.links[next as usize][PREV];
        self.links[id as usize] = [prev, next];
        self.links[next as usize][PREV] = id;
        let queue = &mut self.queues[tag as usize];
        queue.weight += weight;
        if prev == NIL {
            queue.head = id;
        } else {
            self.links[prev as usize][NEXT] = id;
        }
        self.tags[id as usize] = tag;
    }
}

/// How [`TinyLfu::drain_window_before_new`] ended.
enum Drained {
    /// The new key itself would move on from the window.
    NewKeyMovesOn,
    /// The window fits the new key, or the main space is full: the
    /// window's candidate ahead of the new key, if the drain looked it up.
    Stopped { candidate: Option<Option<u32>> },
}
