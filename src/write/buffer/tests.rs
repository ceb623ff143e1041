//! The buffer's unit tests: coalescing, ordering within a drain, flights,
//! retries, dead letters, batch splits, flushes, and keys whose `Eq`
//! panics (the model test and the fuzz target drive it at random).

use super::*;

const MS: u64 = 1_000_000;

fn backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_millis(50),
        jitter: 0.0,
    }
}

fn buffer(max_attempts: u32) -> Buffer<&'static str, u32> {
    Buffer::new(max_attempts, backoff())
}

fn keys(batch: &[Taken<&'static str, u32>]) -> Vec<&'static str> {
    batch.iter().map(|t| *t.key()).collect()
}

#[test]
fn coalescing_keeps_the_latest_change_and_the_earliest_seq_and_time() {
    let mut b = buffer(3);
    let first = b.push("a", Change::Put(1), 5);
    b.push("b", Change::Put(9), 6);
    let last = b.push("a", Change::Delete, 7);
    assert_eq!((first, last), (1, 3));
    assert_eq!(b.len(), 2);
    assert_eq!(b.stats().coalesced, 1);
    // Age counts from the first write of "a", at 5.
    assert!(!b.ready(5 + 9, 10, 10));
    assert!(b.ready(5 + 10, 10, 10));
    let batch = b.take_batch(10, 20);
    assert_eq!(keys(&batch), ["a", "b"]);
    assert_eq!(batch[0].change(), &Change::Delete);
    assert_eq!((batch[0].first_seq(), batch[0].seq()), (1, 3));
    b.check_invariants();
}

#[test]
fn within_a_drain_a_key_keeps_its_latest_order_not_its_last_arrival() {
    let mut b = buffer(3);
    b.begin_drain();
    // Key "a": order 7 arrives, then the older 6 (from another lane).
    b.push_ordered("a", Change::Put(7), 0, 7);
    b.push_ordered("a", Change::Put(6), 0, 6);
    b.push_ordered("a", Change::Put(8), 0, 8);
    // Key "b" across the wrap of the counter: u32::MAX comes before 1.
    b.push_ordered("b", Change::Put(1), 0, 1);
    b.push_ordered("b", Change::Put(0), 0, u32::MAX);
    assert_eq!((b.len(), b.stats().coalesced), (2, 3));
    b.check_invariants();
    // A later drain's change replaces whatever order it carries.
    b.begin_drain();
    b.push_ordered("b", Change::Delete, 1, 0);
    let batch = b.take_batch(10, 2);
    assert_eq!(keys(&batch), ["a", "b"]);
    assert_eq!(batch[0].change(), &Change::Put(8));
    assert_eq!((batch[0].first_seq(), batch[0].seq()), (1, 3));
    assert_eq!(batch[1].change(), &Change::Delete);
    batch.into_iter().for_each(|t| b.succeeded(t));
    assert!(b.is_settled(b.flush_mark()), "superseded writes settle too");
    let s = b.stats();
    assert_eq!((s.queued, s.flushed, s.coalesced), (6, 2, 4));
    b.check_invariants();
}

#[test]
fn a_key_in_flight_is_not_sent_again_until_its_outcome_is_known() {
    let mut b = buffer(3);
    b.push("a", Change::Put(1), 0);
    let mut flight = b.take_batch(10, 0);
    b.push("a", Change::Put(2), 1);
    b.push("a", Change::Put(3), 2);
    assert_eq!((b.len(), b.in_flight()), (2, 1));
    assert!(b.take_batch(10, 100 * MS).is_empty());
    assert!(!b.ready(100 * MS, 1, 0));
    b.succeeded(flight.pop().unwrap());
    let batch = b.take_batch(10, 100 * MS);
    assert_eq!(batch[0].change(), &Change::Put(3));
    assert_eq!((batch[0].first_seq(), batch[0].attempt()), (2, 1));
    b.check_invariants();
}

#[test]
fn a_failed_write_is_superseded_by_a_newer_one_of_its_key() {
    let mut b = buffer(3);
    b.push("a", Change::Put(1), 0);
    let mut flight = b.take_batch(10, 0);
    b.push("a", Change::Delete, 1);
    assert_eq!(b.failed(flight.pop().unwrap(), 2, 0.5), None);
    assert_eq!(b.len(), 1);
    assert_eq!(b.stats().coalesced, 1);
    assert!(!b.is_settled(1), "write 1 settles with write 2");
    // The newer change inherits the backoff and the attempt spent.
    assert!(b.take_batch(10, 2 + 10 * MS - 1).is_empty());
    let mut retry = b.take_batch(10, 2 + 10 * MS);
    let t = retry.pop().unwrap();
    assert_eq!(
        (t.change(), t.attempt(), t.first_seq()),
        (&Change::Delete, 2, 1)
    );
    b.succeeded(t);
    assert!(b.is_settled(2) && b.is_empty());
    b.check_invariants();
}

#[test]
fn the_last_attempt_returns_a_dead_letter() {
    let mut b = buffer(2);
    b.push("a", Change::Put(1), 0);
    let t = b.take_batch(1, 0).pop().unwrap();
    assert_eq!(b.failed(t, 0, 0.5), None);
    let t = b.take_batch(1, 10 * MS).pop().unwrap();
    assert_eq!(t.attempt(), 2);
    let dead = b.failed(t, 10 * MS, 0.5);
    let expected = DeadLetter {
        key: "a",
        change: Change::Put(1),
        attempts: 2,
    };
    assert_eq!(dead, Some(expected));
    assert!(b.is_empty() && b.is_settled(1) && !b.contains(&"a"));
    let s = b.stats();
    assert_eq!((s.retried, s.dead_lettered, s.flushed), (1, 1, 0));
    b.check_invariants();
}

#[test]
fn a_newer_change_behind_a_dead_letter_starts_afresh() {
    let mut b = buffer(1);
    b.push("a", Change::Put(1), 0);
    let t = b.take_batch(1, 0).pop().unwrap();
    b.push("a", Change::Put(2), 1);
    let dead = b.failed(t, 1, 0.5).expect("one attempt only");
    assert_eq!(dead.change, Change::Put(1));
    assert!(b.is_settled(1) && !b.is_settled(2));
    let t = b.take_batch(1, 1).pop().unwrap();
    assert_eq!((t.change(), t.attempt()), (&Change::Put(2), 1));
    b.check_invariants();
}

#[test]
fn backoff_doubles_up_to_the_cap_and_jitters_both_ways() {
    let mut policy = backoff();
    let delays: Vec<u64> = (1..=5).map(|n| policy.delay(n, 0.3) / MS).collect();
    assert_eq!(delays, [10, 20, 40, 50, 50]);
    policy.jitter = 0.5;
    assert_eq!(policy.delay(1, 0.0), 5 * MS);
    assert_eq!(policy.delay(1, 0.5), 10 * MS);
    assert_eq!(policy.delay(1, 1.0), 15 * MS);
    assert_eq!(policy.delay(1, f64::NAN), 10 * MS);
    assert_eq!(policy.delay(1, 7.0), 15 * MS);
    policy.base = Duration::MAX;
    policy.max = Duration::MAX;
    assert_eq!(policy.delay(200, 0.5), u64::MAX);
}

#[test]
fn a_retry_waits_for_its_backoff_then_is_ready_at_once() {
    let mut b = buffer(5);
    b.push("a", Change::Put(1), 0);
    let t = b.take_batch(1, 0).pop().unwrap();
    b.failed(t, 100, 0.5);
    assert!(!b.ready(100 + 10 * MS - 1, 1000, u64::MAX));
    assert_eq!(b.next_due(u64::MAX), Some(100 + 10 * MS));
    assert!(b.ready(100 + 10 * MS, 1000, u64::MAX));
    let t = b.take_batch(1, 100 + 10 * MS).pop().unwrap();
    b.failed(t, 200 * MS, 0.5);
    assert_eq!(b.next_due(u64::MAX), Some(220 * MS), "second delay doubles");
    b.check_invariants();
}

#[test]
fn ready_by_batch_size_by_age_and_by_flush() {
    let mut b = buffer(3);
    assert!(!b.ready(0, 1, 0));
    assert_eq!(b.next_due(5), None);
    b.push("a", Change::Put(1), 10);
    b.push("b", Change::Put(2), 20);
    assert!(!b.ready(20, 3, 100));
    assert_eq!(b.next_due(100), Some(110));
    assert!(b.ready(110, 3, 100));
    b.push("c", Change::Put(3), 30);
    assert!(b.ready(30, 3, 100));
    let mut b = buffer(3);
    b.push("a", Change::Put(1), 10);
    let mark = b.flush_mark();
    b.request_flush(mark);
    assert!(b.ready(10, 100, u64::MAX));
    let t = b.take_batch(100, 10).pop().unwrap();
    b.succeeded(t);
    assert!(b.is_settled(mark));
    b.push("a", Change::Put(2), 20);
    assert!(!b.ready(20, 100, u64::MAX), "the flush is over");
}

#[test]
fn a_flush_settles_only_when_the_write_its_mark_was_coalesced_into_lands() {
    let mut b = buffer(3);
    b.push("a", Change::Put(1), 0);
    b.push("b", Change::Put(1), 0);
    let mark = b.flush_mark();
    b.push("a", Change::Put(2), 0);
    b.request_flush(mark);
    let mut batch = b.take_batch(10, 0);
    assert_eq!(batch[0].seq(), 3);
    b.succeeded(batch.pop().unwrap());
    assert!(!b.is_settled(mark), "write 1 travels as write 3");
    b.succeeded(batch.pop().unwrap());
    assert!(b.is_settled(mark) && b.is_settled(3));
    assert_eq!(b.stats().flushed, 2);
    b.check_invariants();
}

#[test]
fn a_failed_batch_is_split_until_the_poisonous_key_is_alone() {
    let mut b = buffer(2);
    for key in ["a", "b", "c", "d", "e"] {
        b.push(key, Change::Put(0), 0);
    }
    let batch = b.take_batch(8, 0);
    assert!(b.batch_failed(batch, 0, 0.5).is_empty());
    assert!(b.ready(0, 100, u64::MAX), "a split is retried at once");
    let (mut now, mut landed, mut dead) = (0, Vec::new(), Vec::new());
    for _ in 0..20 {
        let batch = b.take_batch(8, now);
        if batch.iter().any(|t| *t.key() == "c") {
            assert!(batch.len() <= 3);
            for d in b.batch_failed(batch, now, 0.5) {
                assert_eq!(d.attempts, 2, "splits spend no attempt");
                dead.push(d.key);
            }
        } else {
            landed.extend(keys(&batch));
            batch.into_iter().for_each(|t| b.succeeded(t));
        }
        b.check_invariants();
        now = b.next_due(u64::MAX).unwrap_or(now);
    }
    landed.sort_unstable();
    assert_eq!((landed, dead), (vec!["a", "b", "d", "e"], vec!["c"]));
    assert_eq!(b.stats().dead_lettered, 1);
    assert!(b.is_empty());
}

#[test]
fn contains_a_key_until_its_last_write_settles() {
    let mut b = buffer(3);
    b.push("a", Change::Put(1), 0);
    let t = b.take_batch(1, 0).pop().unwrap();
    assert!(b.contains(&"a"));
    b.push("a", Change::Put(2), 0);
    b.succeeded(t);
    assert!(b.contains(&"a"));
    let t = b.take_batch(1, 0).pop().unwrap();
    b.succeeded(t);
    assert!(!b.contains(&"a"));
    let s = b.stats();
    assert_eq!((s.queued, s.flushed, s.coalesced, s.len), (2, 2, 0, 0));
}

std::thread_local! {
    /// Set: a [`Touchy`] key's `Eq` panics on this thread.
    static EQ_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A key whose `Eq` panics while [`EQ_PANICS`] is set.
#[derive(Clone, Debug)]
struct Touchy(u32);

impl Hash for Touchy {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for Touchy {
    fn eq(&self, other: &Self) -> bool {
        assert!(!EQ_PANICS.get(), "Eq of key {} refused", self.0);
        self.0 == other.0
    }
}

impl Eq for Touchy {}

/// Runs `f` with every [`Touchy`] key's `Eq` panicking.
fn untouchable<T>(f: impl FnOnce() -> T) -> T {
    EQ_PANICS.set(true);
    let out = f();
    EQ_PANICS.set(false);
    out
}

#[test]
fn taking_settling_retrying_and_splitting_never_compare_keys() {
    let ids = |batch: &[Taken<Touchy, u32>]| batch.iter().map(|t| t.key().0).collect::<Vec<_>>();
    let mut b: Buffer<Touchy, u32> = Buffer::new(2, backoff());
    for k in 1..=4 {
        b.push(Touchy(k), Change::Put(k), 0);
    }
    let batch = untouchable(|| b.take_batch(4, 0));
    assert_eq!(ids(&batch), [1, 2, 3, 4]);
    // A newer change of key 1 waits behind its flight (a push compares
    // keys: allowed here).
    b.push(Touchy(1), Change::Put(10), 0);
    let dead = untouchable(|| {
        let mut slots = Vec::new();
        let batch: Vec<_> = batch
            .into_iter()
            .map(|taken| {
                let (change, receipt) = taken.split();
                slots.push(receipt.slot());
                Taken::from_parts(change, receipt)
            })
            .collect();
        assert_eq!(b.pending_change_in(slots[0]), Some(&Change::Put(10)));
        assert_eq!(b.pending_change_in(slots[1]), None);
        // The whole batch fails: split into halves, key 1 carrying its
        // newer change.
        let mut dead = b.batch_failed(batch, 0, 0.5);
        let half = b.take_batch(4, 0);
        assert_eq!(ids(&half), [1, 2]);
        assert_eq!(half[0].change(), &Change::Put(10));
        let mut half = half.into_iter();
        b.succeeded(half.next().unwrap());
        // Key 2 fails alone: retried after its backoff.
        dead.extend(b.failed(half.next().unwrap(), 0, 0.5));
        let half = b.take_batch(4, 0);
        assert_eq!(ids(&half), [3, 4]);
        half.into_iter().for_each(|taken| b.succeeded(taken));
        // Its retry comes due and fails: the last attempt.
        let retry = b.take_batch(4, 1_000 * MS);
        assert_eq!(ids(&retry), [2]);
        dead.extend(b.batch_failed(retry, 1_000 * MS, 0.5));
        b.check_invariants();
        dead
    });
    assert_eq!(
        dead,
        [DeadLetter {
            key: Touchy(2),
            change: Change::Put(2),
            attempts: 2
        }]
    );
    assert!(b.is_empty());
    let s = b.stats();
    assert_eq!(
        (s.queued, s.flushed, s.coalesced, s.dead_lettered),
        (5, 3, 1, 1)
    );
}

#[test]
fn a_drained_change_whose_eq_panics_comes_back_and_changes_nothing() {
    let mut b: Buffer<Touchy, u32> = Buffer::new(2, backoff());
    b.push(Touchy(1), Change::Put(1), 0);
    let before = b.stats();
    b.begin_drain();
    let hash = b.hasher.hash_one(Touchy(1));
    let lost = untouchable(|| b.push_ordered_hashed(Touchy(1), hash, Change::Put(2), 0, 9))
        .expect_err("the key's Eq panicked");
    assert_eq!((lost.key.0, lost.change), (1, Change::Put(2)));
    assert_eq!(
        lost.panic.downcast_ref::<String>().unwrap(),
        "Eq of key 1 refused"
    );
    assert_eq!(b.stats(), before);
    assert_eq!(b.pending_change(&Touchy(1)), Some(&Change::Put(1)));
    b.check_invariants();
}

#[test]
#[should_panic(expected = "buffer that made it")]
fn a_taken_from_another_buffer_is_refused() {
    let mut a = buffer(3);
    let mut b = buffer(3);
    a.push("k", Change::Put(1), 0);
    b.push("k", Change::Put(1), 0);
    let t = a.take_batch(1, 0).pop().unwrap();
    b.succeeded(t);
}

std::thread_local! {
    /// The [`Uncopyable`] key whose `Clone` panics on this thread, if any.
    static COPY_REFUSED: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// A key whose `Clone` panics while it is [`COPY_REFUSED`].
#[derive(Debug, PartialEq, Eq, Hash)]
struct Uncopyable(u32);

impl Clone for Uncopyable {
    fn clone(&self) -> Self {
        assert!(
            COPY_REFUSED.get() != Some(self.0),
            "Clone of key {} refused",
            self.0
        );
        Uncopyable(self.0)
    }
}

/// Runs `f` with key `id`'s `Clone` panicking.
fn uncopyable<T>(id: u32, f: impl FnOnce() -> T) -> T {
    COPY_REFUSED.set(Some(id));
    let out = f();
    COPY_REFUSED.set(None);
    out
}

#[test]
fn a_key_that_cannot_be_copied_for_a_batch_is_given_up_and_the_rest_taken() {
    let mut b: Buffer<Uncopyable, u32> = Buffer::new(3, backoff());
    for k in 1..=3 {
        b.push(Uncopyable(k), Change::Put(k), 0);
    }
    let batch = uncopyable(2, || b.take_batch_copied(8, 0));
    let ids: Vec<_> = batch.iter().map(|(copy, t)| (copy.0, t.key().0)).collect();
    assert_eq!(ids, [(1, 1), (3, 3)]);
    let lost = b.take_uncopied();
    assert_eq!(lost.len(), 1);
    assert_eq!((lost[0].key.0, &lost[0].change), (2, &Change::Put(2)));
    assert!(b.take_uncopied().is_empty(), "taken once");
    b.check_invariants();
    for (_, t) in batch {
        b.succeeded(t);
    }
    let s = b.stats();
    assert_eq!((s.queued, s.flushed, s.dead_lettered, s.len), (3, 2, 1, 0));
    b.check_invariants();
}

#[test]
fn a_newer_change_behind_a_dead_letter_whose_key_cannot_be_copied_is_given_up_too() {
    let mut b: Buffer<Uncopyable, u32> = Buffer::new(1, backoff());
    b.push(Uncopyable(1), Change::Put(1), 0);
    let t = b.take_batch(1, 0).pop().unwrap();
    b.push(Uncopyable(1), Change::Put(2), 0);
    let dead = uncopyable(1, || b.failed(t, 0, 0.5));
    let dead = dead.expect("one attempt: a dead letter");
    assert_eq!((dead.key.0, &dead.change), (1, &Change::Put(1)));
    let lost = b.take_uncopied();
    assert_eq!(lost.len(), 1);
    assert_eq!((lost[0].key.0, &lost[0].change), (1, &Change::Put(2)));
    assert!(b.is_empty());
    let s = b.stats();
    assert_eq!((s.queued, s.dead_lettered, s.len), (2, 2, 0));
    b.check_invariants();
}

#[test]
fn a_landed_flight_queues_the_change_behind_it_without_copying_its_key() {
    let mut b: Buffer<Uncopyable, u32> = Buffer::new(3, backoff());
    b.push(Uncopyable(1), Change::Put(1), 0);
    let t = b.take_batch(1, 0).pop().unwrap();
    b.push(Uncopyable(1), Change::Put(2), 0);
    let (_, receipt) = t.split();
    uncopyable(1, || b.landed(receipt));
    let next = b.take_batch(1, 0);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].change(), &Change::Put(2));
    b.check_invariants();
}
