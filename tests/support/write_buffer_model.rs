//! The write-behind buffer's operation model, shared by `tests/write_buffer.rs`
//! (proptest) and the fuzz target `fuzz/fuzz_targets/write_buffer.rs`.
//!
//! The reference keeps, per key, the log of every pushed write and its fate
//! (open, landed, coalesced, dead-lettered), what the store holds, and the
//! failures spent since the key last settled. Batches taken from the buffer
//! are held by the model until an operation resolves them. Checks:
//!
//! 1. no key twice in a batch or in flight twice at once;
//! 2. a taken write carries the key's newest change and settles exactly its
//!    oldest open writes, so landed writes follow push order;
//! 3. every write ends landed, coalesced into a later write of its key, or
//!    dead-lettered, and the counters agree;
//! 4. `is_settled(m)` is true exactly when every write up to `m` has ended;
//! 5. `ready` / `next_due` never stall a flusher, and a final flush drains
//!    everything within a bound even when one key always fails; then every
//!    key's last write has landed (the store holds it) or was dead-lettered.
//!
//! A drain pushes several writes at once, each with an order (a wrapping
//! counter per key, as the queue's write guards hand out): within a drain, a
//! write older than its key's pending write of the same drain is
//! *superseded* (ends at once, coalesced), whatever its arrival; "last" in
//! the checks above means last among the writes not superseded.
#![allow(dead_code, unreachable_pub)]

use larder::write_buffer::{Backoff, Buffer, Change, DeadLetter, Seq, Taken};
use std::time::Duration;

/// Keys are drawn from `0..KEYS`.
pub const KEYS: u8 = 6;
/// The most batches the flusher loop of the final drain may send.
const DRAIN_STEPS: usize = 100_000;

/// One step of a replayed sequence.
#[derive(Clone, Debug)]
pub enum Op {
    /// Push `Put(value)` (`Some`) or `Delete` (`None`) for a key.
    Push(u8, Option<u8>),
    /// A drain: pushes of (key, value as for `Push`, order), the order
    /// counted from just below the wrap of the 32-bit counter.
    Drain(Vec<(u8, Option<u8>, u8)>),
    /// Take a batch of up to this many entries (at least 1).
    Take(u8),
    /// The store accepts the held batch picked by the index.
    Succeed(u8),
    /// The store reports per key: entries whose bit is set in the mask fail
    /// (with the draw), the others land.
    FailSome(u8, u8, u8),
    /// The store rejects the picked batch as a whole (with the draw).
    FailBatch(u8, u8),
    /// Time passes, in nanoseconds.
    Advance(u16),
    /// Request a flush of everything pushed so far.
    Flush,
}

/// The buffer's settings and the final drain's poisonous key.
#[derive(Clone, Debug)]
pub struct Config {
    /// 1 to 4.
    pub max_attempts: u32,
    /// Backoff base and cap, in nanoseconds.
    pub base: u64,
    pub max: u64,
    /// 0.0 to 1.0.
    pub jitter: f64,
    /// For `ready`: at least 1.
    pub batch_size: usize,
    /// For `ready`, in nanoseconds.
    pub interval: u64,
    /// The key the drain's store always rejects (none if `>= KEYS`).
    pub poisoned: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Open,
    Landed,
    Coalesced,
    /// Older than a pending write of its key in the same drain.
    Superseded,
    Dead,
}

#[derive(Debug)]
struct Write {
    seq: Seq,
    at: u64,
    change: Change<u8>,
    fate: Fate,
}

#[derive(Debug, Default)]
struct Key {
    writes: Vec<Write>,
    /// The last change that landed.
    store: Option<Change<u8>>,
    in_flight: bool,
    /// Failed sends since the key last settled.
    attempts: u32,
    /// Sent before since the key last settled (a retry).
    retry: bool,
    /// Not to be sent before this time (backoff).
    not_before: u64,
    /// The largest batch it may be sent in, after splits (0: no limit).
    cap: usize,
}

struct Model {
    cfg: Config,
    buf: Buffer<u8, u8>,
    keys: Vec<Key>,
    batches: Vec<Vec<Taken<u8, u8>>>,
    now: u64,
    pushed: u64,
    flush_to: Seq,
}

fn draw(byte: u8) -> f64 {
    f64::from(byte) / 255.0
}

impl Model {
    fn new(cfg: Config) -> Self {
        let backoff = Backoff {
            base: Duration::from_nanos(cfg.base),
            max: Duration::from_nanos(cfg.max),
            jitter: cfg.jitter,
        };
        Self {
            buf: Buffer::new(cfg.max_attempts, backoff),
            keys: (0..KEYS).map(|_| Key::default()).collect(),
            batches: Vec::new(),
            now: 0,
            pushed: 0,
            flush_to: 0,
            cfg,
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            base: Duration::from_nanos(self.cfg.base),
            max: Duration::from_nanos(self.cfg.max),
            jitter: self.cfg.jitter,
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Push(k, value) => self.push(k % KEYS, value),
            Op::Drain(pushes) => self.drain_pushes(&pushes),
            Op::Take(max) => {
                let ready = self
                    .buf
                    .ready(self.now, self.cfg.batch_size, self.cfg.interval);
                let batch = self.take(usize::from(max.max(1)), ready);
                if !batch.is_empty() {
                    self.batches.push(batch);
                }
            }
            Op::Succeed(pick) => {
                if let Some(batch) = self.pick(pick) {
                    batch.into_iter().for_each(|t| self.succeed(t));
                }
            }
            Op::FailSome(pick, mask, d) => {
                if let Some(batch) = self.pick(pick) {
                    for (i, t) in batch.into_iter().enumerate() {
                        if mask >> (i % 8) & 1 == 1 {
                            self.fail(vec![t], draw(d));
                        } else {
                            self.succeed(t);
                        }
                    }
                }
            }
            Op::FailBatch(pick, d) => {
                if let Some(batch) = self.pick(pick) {
                    self.fail(batch, draw(d));
                }
            }
            Op::Advance(ns) => self.now += u64::from(ns),
            Op::Flush => {
                self.flush_to = self.buf.flush_mark();
                self.buf.request_flush(self.flush_to);
            }
        }
        self.check();
    }

    fn push(&mut self, k: u8, value: Option<u8>) {
        let change = value.map_or(Change::Delete, Change::Put);
        let seq = self.buf.push(k, change.clone(), self.now);
        self.pushed += 1;
        assert_eq!(seq, self.pushed, "sequence numbers count pushes");
        self.keys[usize::from(k)].writes.push(Write {
            seq,
            at: self.now,
            change,
            fate: Fate::Open,
        });
    }

    /// Pushes one drain's writes, deciding in the reference which are
    /// superseded: those older than the key's newest write of the drain,
    /// when that write is still pending (no batch is taken during a drain,
    /// so it is).
    fn drain_pushes(&mut self, pushes: &[(u8, Option<u8>, u8)]) {
        const BASE: u32 = u32::MAX - 100;
        self.buf.begin_drain();
        // The newest order pushed in this drain per key; such a write is
        // still pending, as no batch is taken during the drain.
        let mut newest: Vec<Option<u8>> = vec![None; usize::from(KEYS)];
        for &(k, value, order) in pushes {
            let k = k % KEYS;
            let change = value.map_or(Change::Delete, Change::Put);
            let wrapped = BASE.wrapping_add(u32::from(order));
            let seq = self.buf.push_ordered(k, change.clone(), self.now, wrapped);
            self.pushed += 1;
            assert_eq!(seq, self.pushed, "sequence numbers count pushes");
            let held = &mut newest[usize::from(k)];
            let older = held.is_some_and(|held| order < held);
            if !older {
                *held = Some(order);
            }
            self.keys[usize::from(k)].writes.push(Write {
                seq,
                at: self.now,
                change,
                fate: if older { Fate::Superseded } else { Fate::Open },
            });
        }
    }

    fn pick(&mut self, pick: u8) -> Option<Vec<Taken<u8, u8>>> {
        if self.batches.is_empty() {
            return None;
        }
        let i = usize::from(pick) % self.batches.len();
        Some(self.batches.swap_remove(i))
    }

    fn flush_pending(&self) -> bool {
        !self.open_through(self.flush_to)
    }

    /// Whether every write up to `mark` has ended.
    fn open_through(&self, mark: Seq) -> bool {
        self.keys
            .iter()
            .flat_map(|key| &key.writes)
            .all(|w| w.seq > mark || w.fate != Fate::Open)
    }

    /// Takes a batch and checks it against the reference; `ready` is what
    /// the buffer said just before.
    fn take(&mut self, max: usize, ready: bool) -> Vec<Taken<u8, u8>> {
        let flush_pending = self.flush_pending();
        // Both ways of taking: the flusher's, with a copy of each key for
        // the store (an odd `now`), and the plain one.
        let batch = if self.now & 1 == 1 {
            let copied = self.buf.take_batch_copied(max, self.now);
            assert!(
                copied.iter().all(|(copy, t)| copy == t.key()),
                "a copy of another key"
            );
            assert!(self.buf.take_uncopied().is_empty(), "u8 keys always copy");
            copied.into_iter().map(|(_, t)| t).collect()
        } else {
            self.buf.take_batch(max, self.now)
        };
        assert!(batch.len() <= max, "batch over its maximum");
        assert!(!ready || !batch.is_empty(), "ready, but nothing to take");
        if !ready {
            assert!(
                batch.len() < self.cfg.batch_size,
                "a full batch was not ready"
            );
            assert!(
                !flush_pending || batch.is_empty(),
                "a flush waited on a sendable write"
            );
        }
        let mut previous = 0;
        for t in &batch {
            let cap = self.keys[usize::from(*t.key())].cap;
            assert!(
                cap == 0 || batch.len() <= cap,
                "a split entry in too big a batch"
            );
            assert!(t.first_seq() > previous, "batch not oldest first");
            previous = t.first_seq();
            let key = &mut self.keys[usize::from(*t.key())];
            assert!(!key.in_flight, "key {} sent twice at once", t.key());
            key.in_flight = true;
            assert!(
                self.now >= key.not_before,
                "key {} sent during its backoff",
                t.key()
            );
            assert!(!key.retry || ready, "a due retry was not ready");
            assert_eq!(t.attempt(), key.attempts + 1, "attempt number");
            let newest = key.writes.iter().rev().find(|w| w.fate != Fate::Superseded);
            let newest = newest.expect("a taken key was written");
            assert_eq!(t.seq(), newest.seq, "not the key's newest write");
            assert_eq!(t.change(), &newest.change, "change of the newest write");
            let oldest = key.writes.iter().find(|w| w.fate == Fate::Open);
            let oldest = oldest.expect("a taken key has open writes");
            assert_eq!(
                t.first_seq(),
                oldest.seq,
                "does not settle the oldest open write"
            );
            if !ready {
                let age = self.now - oldest.at;
                assert!(age < self.cfg.interval, "an aged write was not ready");
            }
        }
        batch
    }

    /// Ends the writes of `t` (all open): the newest with `fate`, the others
    /// coalesced into it.
    fn settle(&mut self, t: &Taken<u8, u8>, fate: Fate) {
        let key = &mut self.keys[usize::from(*t.key())];
        for w in &mut key.writes {
            if (t.first_seq()..=t.seq()).contains(&w.seq) && w.fate != Fate::Superseded {
                assert_eq!(w.fate, Fate::Open, "write {} ended twice", w.seq);
                w.fate = if w.seq == t.seq() {
                    fate
                } else {
                    Fate::Coalesced
                };
            }
        }
        if fate == Fate::Landed {
            key.store = Some(t.change().clone());
        }
        key.in_flight = false;
        key.attempts = 0;
        key.retry = false;
        key.not_before = 0;
        key.cap = 0;
    }

    fn succeed(&mut self, t: Taken<u8, u8>) {
        self.settle(&t, Fate::Landed);
        // Both ways of reporting, as the flusher (receipt) and as a store
        // reporting per key would (the whole `Taken`).
        if t.seq() & 1 == 0 {
            let (_, receipt) = t.split();
            self.buf.landed(receipt);
        } else {
            self.buf.succeeded(t);
        }
    }

    /// The store rejected `batch` (as a whole if it holds several entries).
    fn fail(&mut self, batch: Vec<Taken<u8, u8>>, draw: f64) {
        let split = batch.len() > 1;
        let mut expected = Vec::new();
        for t in &batch {
            let dead = !split && t.attempt() >= self.cfg.max_attempts;
            let delay = self.backoff().delay(t.attempt(), draw);
            if dead {
                expected.push(DeadLetter {
                    key: *t.key(),
                    change: t.change().clone(),
                    attempts: t.attempt(),
                });
                self.settle(t, Fate::Dead);
                continue;
            }
            let key = &mut self.keys[usize::from(*t.key())];
            key.in_flight = false;
            key.retry = true;
            if split {
                key.not_before = self.now;
                key.cap = batch.len().div_ceil(2);
            } else {
                key.cap = 0;
                key.attempts = t.attempt();
                key.not_before = self.now + delay;
            }
        }
        // Split and put back together, as the flusher does.
        let batch = batch
            .into_iter()
            .map(|t| {
                let (change, receipt) = t.split();
                Taken::from_parts(change, receipt)
            })
            .collect();
        let dead = self.buf.batch_failed(batch, self.now, draw);
        assert_eq!(dead, expected, "dead letters");
    }

    fn check(&self) {
        self.buf.check_invariants();
        let writes = || self.keys.iter().flat_map(|key| &key.writes);
        let count = |fate| writes().filter(|w| w.fate == fate).count() as u64;
        let stats = self.buf.stats();
        assert_eq!(stats.queued, self.pushed, "queued");
        assert_eq!(stats.flushed, count(Fate::Landed), "flushed");
        assert_eq!(stats.dead_lettered, count(Fate::Dead), "dead-lettered");
        let superseded = count(Fate::Superseded);
        assert!(stats.coalesced <= count(Fate::Open) + count(Fate::Coalesced) + superseded);
        assert!(
            stats.coalesced >= superseded,
            "superseded writes count as coalesced"
        );
        let held: usize = self.batches.iter().map(Vec::len).sum();
        assert_eq!(self.buf.in_flight(), held, "in flight");
        for (k, key) in self.keys.iter().enumerate() {
            let open = key.writes.iter().any(|w| w.fate == Fate::Open);
            assert_eq!(self.buf.contains(&(k as u8)), open, "contains({k})");
        }
        let first_open = writes()
            .filter(|w| w.fate == Fate::Open)
            .map(|w| w.seq)
            .min();
        assert_eq!(self.buf.first_open(), first_open, "first open write");
        match first_open {
            Some(seq) => {
                assert!(self.buf.is_settled(seq - 1), "not settled before {seq}");
                assert!(!self.buf.is_settled(seq), "settled while {seq} is open");
                assert!(!self.buf.is_empty());
            }
            None => {
                assert!(self.buf.is_settled(self.pushed) && self.buf.is_empty());
                let ended = count(Fate::Coalesced) + superseded;
                assert_eq!(stats.coalesced, ended, "coalesced");
            }
        }
    }

    /// The store of the final drain: rejects any batch holding the poisoned
    /// key, accepts the others.
    fn store(&mut self, batch: Vec<Taken<u8, u8>>) {
        if batch.iter().any(|t| *t.key() == self.cfg.poisoned) {
            self.fail(batch, 0.5);
        } else {
            batch.into_iter().for_each(|t| self.succeed(t));
        }
    }

    /// Resolves the held batches, then runs a flusher loop for a flush of
    /// everything until the buffer is empty.
    fn drain(&mut self) {
        while let Some(batch) = self.batches.pop() {
            self.store(batch);
            self.check();
        }
        self.apply(Op::Flush);
        let mark = self.flush_to;
        let mut steps = 0;
        while !self.buf.is_empty() {
            steps += 1;
            assert!(steps <= DRAIN_STEPS, "the flush does not end");
            if self
                .buf
                .ready(self.now, self.cfg.batch_size, self.cfg.interval)
            {
                let batch = self.take(self.cfg.batch_size, true);
                self.store(batch);
            } else {
                let due = self.buf.next_due(self.cfg.interval);
                let due = due.expect("not ready, nothing due, not empty: the flusher stalls");
                assert!(due > self.now, "next_due is past, yet not ready");
                self.now = due;
            }
            self.check();
        }
        assert!(self.buf.is_settled(mark));
        for key in &self.keys {
            let Some(last) = key.writes.iter().rev().find(|w| w.fate != Fate::Superseded) else {
                continue;
            };
            match last.fate {
                Fate::Landed => assert_eq!(key.store.as_ref(), Some(&last.change)),
                Fate::Dead => {}
                fate => panic!("the last write of a key ended {fate:?}"),
            }
        }
    }
}

/// Replays `ops` against a buffer and the reference, then drains.
pub fn run(cfg: Config, ops: Vec<Op>) {
    let mut model = Model::new(cfg);
    for op in ops {
        model.apply(op);
    }
    model.drain();
}
