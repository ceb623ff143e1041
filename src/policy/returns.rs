//! Readmission: a key the TinyLFU duel turned away and that is asked for
//! again within a capacity's worth of requests may displace the victim
//! anyway, while readmissions have lately been worth more than they cost.
//!
//! # Why
//!
//! The duel judges a key by its count in the sketch, which a key seen twice
//! in quick succession has not yet built up; a victim with a few old
//! accesses beats it. On the `cpp` trace at 100 entries most of the hits
//! that S3-FIFO and `quick_cache` make and larder missed were such keys:
//! turned away, and back within 100 requests (a key whose reuse distance is
//! below the capacity, which even LRU would have kept). Those caches admit
//! a key straight into their main space when their ghost queue of recently
//! evicted keys remembers it. Doing that unconditionally gained `cpp`
//! 1.4 points in a model, but cost `multi2`@1000 2.9 and `sprite`@100 2.0,
//! and on loops, where every key comes back, it is LRU's failure.
//!
//! # How
//!
//! So a returning key is readmitted only while a **score** says
//! readmissions pay, and the score is kept from evidence on both sides, as
//! ARC's ghosts weigh its two lists:
//!
//! * a readmitted key that is read back before it leaves:
//!   **+1** (a hit the duel alone would not have made);
//! * the victim it displaced asked for again within the horizon: **−2**
//!   (a miss the duel alone would not have made; the main space's evidence
//!   counts double, as in the window's votes);
//! * while the score is not positive, no key is readmitted, but the duel
//!   is still scored as if it had been: the key passed over that comes
//!   back within the horizon **+1**, the victim spared that is read back
//!   **−2**.
//!
//! The score stays within ±[`SCORE_LIMIT`]; keys are readmitted while it
//! is above zero. Because the score also moves while none is, the policy
//! never has to readmit blindly: on `zigzag` a trial readmission in
//! eight (a first design) cost 4.6 points, one in thirty-two still 4.2 (the
//! displaced keys broke the stable resident set the sketch's ties hold).
//!
//! # The clock
//!
//! Ages are measured in the shard's **requests**: the read hits its lock
//! counted (told by the shard before each write, see
//! [`set_reads`](Returns::set_reads)) plus the new keys the policy counted.
//! The horizon is the capacity (plus the window for a candidate that
//! waited there). Measured in new keys alone, a key on a loop a tenth
//! larger than the cache comes back within a capacity's worth of misses,
//! and the loops lost 3 to 8 points; a horizon of the capacity times the
//! recent miss ratio kept most of the loops but half of `cpp`'s gain.
//!
//! # Where
//!
//! Only in the shards of caches of up to
//! [`SMALL_CACHE`](super::sketch::FrequencySketch::SMALL_CACHE) entries
//! (unweighted), the small caches whose sketches are sized apart and which
//! do not walk. In larger caches the same rule cost `P6`@50k 0.7 to 1.0
//! points (its score stayed positive on an even trade) and gained nothing.
//!
//! # Memory
//!
//! One direct-mapped table of `u64` slots, two per entry of capacity (at
//! least 256): a key's 20-bit tag, the kind of record and its request
//! stamp. A later record that lands in the same slot overwrites it; with
//! two slots per entry that measured as well as an exact map (`cpp`@100
//! 77.62 over sixteen hash seeds, against 77.49). 2 KiB at 100 entries,
//! 32 KiB at 2,048.
//!
//! # Measured
//!
//! Simulator, four hash seeds, against the policy without readmissions:
//! the 30 rows 48.34 against 48.30 (`cpp`@100 +0.86, OLTP@1000 +0.45, no
//! row lower by more than 0.06), the 47 small-cache rows 24.70 against 24.66
//! (`multi3`@200 +0.38, `sprite`@200 +0.31; OLTP@100 −0.21 the most lost);
//! `cpp`@100 over forty seeds 77.53 against 76.76. A debit of 1 for a
//! displaced or spared victim instead of 2 gave `cpp` +0.9 but OLTP@100
//! −1.0.

use super::sketch::remix;

/// The score's bound either way: about as many readmissions' worth of
/// evidence as it takes to turn it around.
pub(super) const SCORE_LIMIT: i32 = 8;
/// What a displaced (or spared) victim's return costs the score; a
/// readmitted key read back gains one.
const VICTIM_DEBIT: i32 = 2;
/// Slots per entry of capacity.
const SLOTS_PER_ENTRY: u64 = 2;
/// Fewest slots.
const MIN_SLOTS: u64 = 256;
/// Mixed into the hash before the re-mix, so that slots do not follow the
/// sketch's or the ghosts' placement of the same key.
const SALT: u64 = 0x6a09_e667_f3bc_c908;

/// Bits of a slot's request stamp.
const STAMP_BITS: u32 = 41;
const STAMP_MASK: u64 = (1 << STAMP_BITS) - 1;
/// A slot's kind sits above its stamp...
const KIND_SHIFT: u32 = STAMP_BITS;
const KIND_MASK: u64 = 0b111;
/// ...and its tag above that (the re-mixed hash's top 20 bits).
const TAG_SHIFT: u32 = 44;

/// What a slot records of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Turned away by a duel.
    Turned = 1,
    /// Readmitted: now in probation.
    Given = 2,
    /// Displaced by a readmitted key.
    Displaced = 3,
    /// Came back in time, but the score did not readmit it: turned away
    /// again, and scored as if it had been readmitted.
    PassedOver = 4,
    /// The victim a readmission would have displaced, kept because none
    /// was made.
    Spared = 5,
}

impl Kind {
    fn of(bits: u64) -> Option<Kind> {
        Some(match bits {
            1 => Kind::Turned,
            2 => Kind::Given,
            3 => Kind::Displaced,
            4 => Kind::PassedOver,
            5 => Kind::Spared,
            _ => return None,
        })
    }
}

/// The readmissions of one policy (see the module documentation); off
/// (no table, every call a test of its length) outside small caches.
#[derive(Debug, Default)]
pub(crate) struct Returns {
    /// `tag << 44 | kind << 41 | stamp`, or 0; a power of two long, or
    /// empty when off.
    slots: Vec<u64>,
    /// The shard's read hits, as last told.
    reads: u64,
    /// New keys counted.
    arrivals: u64,
    /// The horizon in requests: the capacity.
    horizon: u64,
    /// What readmissions have been worth lately, within ±[`SCORE_LIMIT`].
    score: i32,
    /// Readmissions given and passed over, for tests that must know.
    #[cfg(test)]
    readmitted: (u64, u64),
}

impl Returns {
    /// Readmissions for a policy of `capacity` entries.
    pub(crate) fn new(capacity: u64) -> Self {
        let slots = (capacity.saturating_mul(SLOTS_PER_ENTRY))
            .next_power_of_two()
            .max(MIN_SLOTS);
        Returns {
            slots: vec![0; slots as usize],
            horizon: capacity,
            ..Self::default()
        }
    }

    /// No readmissions.
    pub(crate) fn off() -> Self {
        Self::default()
    }

    /// Whether readmissions are on (the shard then tells its reads).
    #[inline]
    pub(crate) fn is_on(&self) -> bool {
        !self.slots.is_empty()
    }

    /// The shard's read hits so far (a count that only grows).
    #[inline]
    pub(crate) fn set_reads(&mut self, reads: u64) {
        self.reads = reads;
    }

    /// The shard's read hits as last told.
    #[cfg(test)]
    pub(crate) fn reads(&self) -> u64 {
        self.reads
    }

    /// Keys readmitted and passed over so far.
    #[cfg(test)]
    pub(crate) fn readmitted(&self) -> (u64, u64) {
        self.readmitted
    }

    /// Forgets every record and the score (the cache was cleared).
    pub(crate) fn clear(&mut self) {
        self.slots.fill(0);
        self.score = 0;
    }

    /// The request clock.
    #[inline]
    fn now(&self) -> u64 {
        self.reads.wrapping_add(self.arrivals) & STAMP_MASK
    }

    /// The slot and tag of the key with `hash`.
    #[inline]
    fn place(&self, hash: u64) -> (usize, u64) {
        let h = remix(hash ^ SALT);
        (h as usize & (self.slots.len() - 1), h >> TAG_SHIFT)
    }

    /// The record of the key with `hash`, if its slot holds one: its slot,
    /// kind and age in requests.
    #[inline]
    fn find(&self, hash: u64) -> Option<(usize, Kind, u64)> {
        let (index, tag) = self.place(hash);
        let slot = self.slots[index];
        if slot >> TAG_SHIFT != tag {
            return None;
        }
        let kind = Kind::of(slot >> KIND_SHIFT & KIND_MASK)?;
        let age = self.now().wrapping_sub(slot & STAMP_MASK) & STAMP_MASK;
        Some((index, kind, age))
    }

    /// Records `kind` for the key with `hash`, stamped `stamp`.
    #[inline]
    fn record(&mut self, hash: u64, kind: Kind, stamp: u64) {
        let (index, tag) = self.place(hash);
        self.slots[index] = tag << TAG_SHIFT | (kind as u64) << KIND_SHIFT | stamp & STAMP_MASK;
    }

    fn credit(&mut self, points: i32) {
        self.score = (self.score + points).clamp(-SCORE_LIMIT, SCORE_LIMIT);
    }

    /// A new key with `hash` arrives (a miss): counts it on the clock; a
    /// key passed over that is back within the horizon credits the score,
    /// a displaced victim back within it debits the score.
    pub(crate) fn arrive(&mut self, hash: u64) {
        if !self.is_on() {
            return;
        }
        self.arrivals += 1;
        let Some((index, kind, age)) = self.find(hash) else {
            return;
        };
        match kind {
            Kind::PassedOver => {
                if age <= self.horizon {
                    self.credit(1);
                }
                // Still turned away as of the same request, for its duel.
                self.slots[index] = self.slots[index] & !(KIND_MASK << KIND_SHIFT)
                    | (Kind::Turned as u64) << KIND_SHIFT;
            }
            Kind::Displaced => {
                if age <= self.horizon {
                    self.credit(-VICTIM_DEBIT);
                }
                self.slots[index] = 0;
            }
            Kind::Turned | Kind::Given | Kind::Spared => {}
        }
    }

    /// The key with `hash` was read since the policy last looked at it (its
    /// touches were folded): a readmission paid, or a spared victim
    /// would have been missed.
    pub(crate) fn read_back(&mut self, hash: u64) {
        if !self.is_on() {
            return;
        }
        let Some((index, kind, _)) = self.find(hash) else {
            return;
        };
        match kind {
            Kind::Given => self.credit(1),
            Kind::Spared => self.credit(-VICTIM_DEBIT),
            Kind::Turned | Kind::Displaced | Kind::PassedOver => return,
        }
        self.slots[index] = 0;
    }

    /// A duel's candidate with `candidate` hash won against the victim: it
    /// no longer counts as turned away.
    pub(crate) fn admitted(&mut self, candidate: u64) {
        if !self.is_on() {
            return;
        }
        if let Some((index, Kind::Turned, _)) = self.find(candidate) {
            self.slots[index] = 0;
        }
    }

    /// A duel's candidate with `candidate` hash lost to the victim with
    /// `victim` hash; `waited` is how long a candidate may have waited in
    /// the window (its target size). Whether the candidate is readmitted
    /// and displaces the victim instead: it was turned away within the
    /// horizon (plus `waited`) and the score is positive. Records the
    /// outcome either way.
    pub(crate) fn readmit(&mut self, candidate: u64, victim: u64, waited: u64) -> bool {
        if !self.is_on() {
            return false;
        }
        let now = self.now();
        let returning = matches!(
            self.find(candidate),
            Some((_, Kind::Turned | Kind::PassedOver, age)) if age <= self.horizon.saturating_add(waited)
        );
        if !returning {
            self.record(candidate, Kind::Turned, now);
            return false;
        }
        if self.score > 0 {
            #[cfg(test)]
            {
                self.readmitted.0 += 1;
            }
            self.record(candidate, Kind::Given, now);
            self.record(victim, Kind::Displaced, now);
            return true;
        }
        #[cfg(test)]
        {
            self.readmitted.1 += 1;
        }
        self.record(candidate, Kind::PassedOver, now);
        // A victim that was readmitted itself keeps that record: its read
        // back is that readmission's credit.
        if !matches!(self.find(victim), Some((_, Kind::Given, _))) {
            self.record(victim, Kind::Spared, now);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// Hashes far apart, so that their slots differ (checked).
    const A: u64 = 0x1111;
    const B: u64 = 0x2222;
    const C: u64 = 0x3333;

    fn returns() -> Returns {
        let r = Returns::new(100);
        let places: Vec<usize> = [A, B, C].iter().map(|&h| r.place(h).0).collect();
        assert!(places[0] != places[1] && places[1] != places[2] && places[0] != places[2]);
        r
    }

    #[test]
    fn off_gives_nothing_and_records_nothing() {
        let mut r = Returns::off();
        assert!(!r.is_on());
        r.arrive(A);
        assert!(!r.readmit(A, B, 0));
        assert!(!r.readmit(A, B, 0), "no record was kept");
        r.read_back(A);
        assert_eq!(r.score, 0);
    }

    #[test]
    fn a_first_loser_is_only_remembered() {
        let mut r = returns();
        r.score = SCORE_LIMIT;
        r.arrive(A);
        assert!(!r.readmit(A, B, 0), "never turned away before");
        assert_eq!(r.find(A).map(|(_, k, _)| k), Some(Kind::Turned));
        assert_eq!(
            r.find(B),
            None,
            "a plain duel records nothing of its victim"
        );
    }

    #[test]
    fn a_returning_loser_is_passed_over_until_the_score_is_positive() {
        let mut r = returns();
        r.arrive(A);
        assert!(!r.readmit(A, B, 0));
        r.arrive(A);
        // Score 0: passed over, and its victim spared.
        assert!(!r.readmit(A, B, 0));
        assert_eq!(r.find(A).map(|(_, k, _)| k), Some(Kind::PassedOver));
        assert_eq!(r.find(B).map(|(_, k, _)| k), Some(Kind::Spared));
        // Back again in time: it would have been a hit, so the score rises
        // and its next loss is a readmission.
        r.arrive(A);
        assert_eq!(r.score, 1);
        assert!(r.readmit(A, C, 0));
        assert_eq!(r.find(A).map(|(_, k, _)| k), Some(Kind::Given));
        assert_eq!(r.find(C).map(|(_, k, _)| k), Some(Kind::Displaced));
        // The readmitted key read back pays one more.
        r.read_back(A);
        assert_eq!(r.score, 2);
        assert_eq!(r.find(A), None, "credited once");
        r.read_back(A);
        assert_eq!(r.score, 2);
    }

    #[test]
    fn victims_missed_or_read_back_cost_two() {
        let mut r = returns();
        r.arrive(A);
        assert!(!r.readmit(A, B, 0));
        r.arrive(A);
        assert!(!r.readmit(A, B, 0));
        // The spared victim was read: a readmission would have cost that hit.
        r.read_back(B);
        assert_eq!(r.score, -VICTIM_DEBIT);
        r.score = 3;
        r.arrive(C);
        assert!(!r.readmit(C, B, 0));
        r.arrive(C);
        assert!(r.readmit(C, B, 0));
        // The displaced victim comes back: a miss the readmission caused.
        r.arrive(B);
        assert_eq!(r.score, 3 - VICTIM_DEBIT);
        assert_eq!(r.find(B), None);
    }

    #[test]
    fn the_horizon_is_the_capacity_in_requests() {
        let mut r = returns();
        r.score = 1;
        r.arrive(A);
        assert!(!r.readmit(A, B, 0));
        // 100 requests later (reads and new keys): still within.
        r.set_reads(99);
        r.arrive(A);
        assert!(r.readmit(A, B, 0));
        // One request past the horizon: turned away as new.
        r.score = 1;
        r.arrive(C);
        assert!(!r.readmit(C, B, 0));
        r.set_reads(99 + 100);
        r.arrive(C);
        assert!(!r.readmit(C, B, 0), "101 requests later");
        // A candidate that waited in a window of 5 gets 5 more.
        r.set_reads(99 + 100 + 104);
        r.arrive(C);
        assert!(r.readmit(C, B, 5));
    }

    #[test]
    fn the_score_is_bounded() {
        let mut r = returns();
        for _ in 0..20 {
            r.credit(1);
        }
        assert_eq!(r.score, SCORE_LIMIT);
        for _ in 0..20 {
            r.credit(-VICTIM_DEBIT);
        }
        assert_eq!(r.score, -SCORE_LIMIT);
        r.clear();
        assert_eq!((r.score, r.find(A)), (0, None));
    }

    /// The rules of the module docs over an exact map of key to (kind,
    /// stamp), with ages in plain arithmetic.
    #[derive(Default)]
    struct Model {
        records: HashMap<u64, (Kind, u64)>,
        reads: u64,
        arrivals: u64,
        score: i32,
    }

    impl Model {
        fn now(&self) -> u64 {
            self.reads + self.arrivals
        }

        fn credit(&mut self, points: i32) {
            self.score = (self.score + points).clamp(-SCORE_LIMIT, SCORE_LIMIT);
        }

        fn arrive(&mut self, key: u64, horizon: u64) {
            self.arrivals += 1;
            let now = self.now();
            match self.records.get(&key).copied() {
                Some((Kind::PassedOver, at)) => {
                    if now - at <= horizon {
                        self.credit(1);
                    }
                    self.records.insert(key, (Kind::Turned, at));
                }
                Some((Kind::Displaced, at)) => {
                    if now - at <= horizon {
                        self.credit(-VICTIM_DEBIT);
                    }
                    self.records.remove(&key);
                }
                _ => {}
            }
        }

        fn read_back(&mut self, key: u64) {
            match self.records.get(&key) {
                Some((Kind::Given, _)) => self.credit(1),
                Some((Kind::Spared, _)) => self.credit(-VICTIM_DEBIT),
                _ => return,
            }
            self.records.remove(&key);
        }

        fn admitted(&mut self, key: u64) {
            if let Some((Kind::Turned, _)) = self.records.get(&key) {
                self.records.remove(&key);
            }
        }

        fn readmit(&mut self, candidate: u64, victim: u64, waited: u64, horizon: u64) -> bool {
            let now = self.now();
            let returning = matches!(
                self.records.get(&candidate),
                Some(&(Kind::Turned | Kind::PassedOver, at)) if now - at <= horizon + waited
            );
            if !returning {
                self.records.insert(candidate, (Kind::Turned, now));
                return false;
            }
            if self.score > 0 {
                self.records.insert(candidate, (Kind::Given, now));
                self.records.insert(victim, (Kind::Displaced, now));
                return true;
            }
            self.records.insert(candidate, (Kind::PassedOver, now));
            if !matches!(self.records.get(&victim), Some((Kind::Given, _))) {
                self.records.insert(victim, (Kind::Spared, now));
            }
            false
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reads(u64),
        Arrive(usize),
        ReadBack(usize),
        Duel {
            candidate: usize,
            victim: usize,
            won: bool,
            waited: u64,
        },
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (0u64..40).prop_map(Op::Reads),
            4 => (0usize..24).prop_map(Op::Arrive),
            3 => (0usize..24).prop_map(Op::ReadBack),
            6 => (0usize..24, 0usize..24, any::<bool>(), 0u64..4).prop_map(
                |(candidate, victim, won, waited)| Op::Duel { candidate, victim, won, waited }
            ),
            1 => Just(Op::Clear),
        ]
    }

    /// 24 hashes whose slots (and tags) in a table for `capacity` all
    /// differ, so the table keeps every record as the exact map does.
    fn keys(returns: &Returns) -> Vec<u64> {
        let mut keys = Vec::new();
        let (mut slots, mut tags) = (Vec::new(), Vec::new());
        let mut h = 1u64;
        while keys.len() < 24 {
            h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(7);
            let (slot, tag) = returns.place(h);
            if !slots.contains(&slot) && !tags.contains(&tag) {
                slots.push(slot);
                tags.push(tag);
                keys.push(h);
            }
        }
        keys
    }

    proptest! {
        /// Random arrivals, read backs, duels won and lost, reads and
        /// clears: every readmission decision and the score agree with the
        /// exact model, at capacities whose horizon the reads cross often.
        #[test]
        fn readmissions_follow_the_model(
            capacity in 1u64..60,
            ops in prop::collection::vec(op(), 1..400),
        ) {
            let mut returns = Returns::new(capacity);
            let keys = keys(&returns);
            let mut model = Model::default();
            for op in ops {
                match op {
                    Op::Reads(n) => {
                        model.reads += n;
                        returns.set_reads(model.reads);
                    }
                    Op::Arrive(k) => {
                        model.arrive(keys[k], capacity);
                        returns.arrive(keys[k]);
                    }
                    Op::ReadBack(k) => {
                        model.read_back(keys[k]);
                        returns.read_back(keys[k]);
                    }
                    Op::Duel { candidate, victim, won, waited } => {
                        if candidate == victim {
                            continue;
                        }
                        let (c, v) = (keys[candidate], keys[victim]);
                        if won {
                            model.admitted(c);
                            returns.admitted(c);
                        } else {
                            let expected = model.readmit(c, v, waited, capacity);
                            prop_assert_eq!(returns.readmit(c, v, waited), expected);
                        }
                    }
                    Op::Clear => {
                        model.records.clear();
                        model.score = 0;
                        returns.clear();
                    }
                }
                prop_assert_eq!(returns.score, model.score);
            }
        }
    }
}
