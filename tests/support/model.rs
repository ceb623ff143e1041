//! The operation model shared by `tests/model.rs` (proptest) and the fuzz
//! target `fuzz/fuzz_targets/cache_ops.rs`: operations, a `HashMap`-with-
//! deadlines reference on a `MockClock`, and the checks run after each step.
//!
//! The reference learns about size evictions from the eviction listener (the
//! only removals it cannot predict) and checks each for consistency; every
//! other notification it predicts exactly. After every step the cache's
//! contents must equal the reference's live entries (key by key, and as
//! `iter` lists them), and the cache's own
//! consistency check (table, slots, wheel, policy) must pass.
//!
//! With `ttl_jitter` the reference cannot know a spread deadline, only the
//! range the docs promise for it (`1 ± jitter` of the lifetime): it keeps
//! that range, requires the entry live before it and gone after it, and
//! narrows it by what it sees in between (a `peek` is side-effect free, so
//! every step's check settles each entry as live or expired at the step's
//! time, and the next step starts from known states).
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashMap,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Arc, Mutex},
    time::Duration,
};

use larder::{Cache, CompResult, Expiry, RemovalCause, clock::MockClock};

/// Keys are drawn from `0..KEYS`.
pub const KEYS: u8 = 24;
const NS: u64 = 1_000_000_000;
/// No deadline.
const NEVER: u64 = u64::MAX;
/// Deadlines from here on are none (see `MockClock::advance`).
const EDGE: u64 = (1 << 60) - 1;
/// The last deadline an idle slide may reach.
const LAST: u64 = EDGE - 1;
/// The spread `ttl_jitter` is given when a config asks for one.
pub const JITTER: f64 = 0.25;

/// One step of a replayed sequence.
#[derive(Clone, Debug)]
pub enum Op {
    Insert(u8, u16),
    /// `insert_with_ttl` of [`given_ttl`] of the last number.
    InsertTtl(u8, u16, u8),
    Get(u8),
    Peek(u8),
    Contains(u8),
    Remove(u8),
    Invalidate(u8),
    InvalidateIf(u16),
    InvalidateAll,
    /// `get_with(key, || value)`.
    GetWith(u8, u16),
    /// `try_get_with(key, ..)`: the value if `true`, else an error.
    TryGetWith(u8, u16, bool),
    /// `get_with` whose `init` panics.
    GetWithPanic(u8),
    /// `get_with(key, || value)` whose `init` first writes: inserts the
    /// `u16` under the key (0), invalidates the key (1), or inserts it under
    /// the next key (2), by the last number modulo 3. The loaded value is
    /// returned, and cached only in the last case.
    GetWithWrite(u8, u16, u16, u8),
    /// `iter()` with an `insert(key, value)` made after its first item:
    /// no key listed twice, nothing listed that was not cached, and every
    /// entry cached throughout listed.
    IterWriting(u8, u16),
    /// `entry(key).or_insert_with(|| value)`: fresh exactly on a miss.
    OrInsertWith(u8, u16),
    /// A compute of the key from the value it is shown, by the last
    /// number modulo 4: `and_compute_with` putting [`computed`] (0),
    /// removing (1) or leaving it (2), or `and_upsert_with` of
    /// [`computed`] (3).
    Compute(u8, u16, u8),
    /// `and_compute_with` putting [`computed`], whose closure's first run
    /// writes the key: inserts the `u16` (made [`lasting`]) under it (even
    /// last number) or invalidates it (odd). The closure runs again, shown that write's
    /// outcome, and only that run's value is put.
    ComputeWrite(u8, u16, u16, u8),
    /// `expire_in` of [`given_ttl`] of the number: the live entry's new
    /// lifetime, exact (a zero one removes it as expired).
    Expire(u8, u8),
    /// `persist`: the live entry's hard deadline dropped.
    Persist(u8),
    /// `expires_in`: the time left, side-effect free.
    ExpiresIn(u8),
    Advance(u16),
    /// Moves the clock to the key's deadline plus `delta` ns (if that is
    /// ahead; else 1 ns).
    AdvanceNear(u8, i8),
    /// A long jump: see [`jump`].
    Jump(u8),
    RunPending,
}

/// What weighs the entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weigher {
    /// No weigher: every entry weighs 1.
    Unit,
    /// `value % 4`: weights 0 to 3.
    Small,
    /// Weights 0 up to `u32::MAX` (see [`wide`]), far over any shard's share.
    Wide,
}

/// The cache under test: its bound, shards and expiry settings. `hooks`
/// (the model's [`Hooks`]) goes without `ttl` and `tti`, as the builder
/// requires; `jitter` without `tti` (the idle slide needs exact deadlines)
/// and only with a lifetime to spread, `ttl` or `hooks` (the builder
/// refuses it otherwise).
#[derive(Clone, Debug)]
pub struct Config {
    pub capacity: u64,
    pub shards: usize,
    pub ttl: Option<u64>,
    pub tti: Option<u64>,
    pub weigher: Weigher,
    pub hooks: bool,
    pub jitter: bool,
    /// The listener, weigher and hooks call back into the cache: side-
    /// effect-free reads (`peek`, `contains_key`, `iter`, counts), and the
    /// listener `run_pending_tasks` too.
    pub reentrant: bool,
}

impl Config {
    /// Drops the settings the builder does not combine (see [`Config`]).
    pub fn sane(mut self) -> Self {
        if self.hooks {
            self.ttl = None;
            self.tti = None;
        }
        if self.tti.is_some() || (self.ttl.is_none() && !self.hooks) {
            self.jitter = false;
        }
        self
    }
}

/// Weights of [`Weigher::Wide`], by `value % 8`.
fn wide(value: u16) -> u32 {
    [0, 0, 1, 3, 17, 300, 5_000, u32::MAX][usize::from(value % 8)]
}

fn weight(w: Weigher, value: u16) -> u32 {
    match w {
        Weigher::Unit => 1,
        Weigher::Small => u32::from(value % 4),
        Weigher::Wide => wide(value),
    }
}

/// The expiry hooks of a `hooks` config: answers that depend on the value
/// only, or give back the time left (which the cache must take as "keep
/// the deadline").
#[derive(Debug)]
pub struct Hooks(Probe);

/// The cache, for callbacks to call back into (while the run lasts).
#[derive(Clone, Debug, Default)]
pub struct Probe(Arc<Mutex<Option<Cache<u8, u16>>>>);

impl Probe {
    /// A callback's look at the cache around `k`, if the run is reentrant.
    fn look(&self, k: u8) -> Option<Cache<u8, u16>> {
        // Cloned out: a nested callback looks too.
        let cache = self.0.lock().unwrap().clone()?;
        let _ = (cache.peek(&k), cache.contains_key(&k));
        let _ = (
            cache.iter().count(),
            cache.entry_count(),
            cache.weighted_size(),
        );
        Some(cache)
    }
}

/// Ends a run's reentrancy (the cache would keep itself alive through
/// its callbacks), however the run ends.
struct Unhook(Probe);

impl Drop for Unhook {
    fn drop(&mut self) {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// A hook's answer: the time left given back, or a lifetime of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Keep,
    After(Option<Duration>),
}

impl Answer {
    fn given(self, remaining: Option<Duration>) -> Option<Duration> {
        match self {
            Answer::Keep => remaining,
            Answer::After(after) => after,
        }
    }
}

fn create_answer(v: u16) -> Option<Duration> {
    match v % 8 {
        0 => None,
        1 => Some(Duration::ZERO),
        2 => Some(Duration::from_nanos(1)),
        // About 30 years: spread by the jitter, past the deadline edge.
        7 => Some(Duration::from_secs(30 * 365 * 86_400)),
        n => Some(Duration::from_millis(u64::from(n) * 700)),
    }
}

fn read_answer(v: u16) -> Answer {
    match (v / 8) % 4 {
        0 => Answer::Keep,
        1 => Answer::After(Some(Duration::from_secs(2))),
        2 => Answer::After(None),
        _ => Answer::After(Some(match v % 4 {
            3 => Duration::MAX,
            n => Duration::from_nanos(u64::from(n)),
        })),
    }
}

fn update_answer(v: u16) -> Answer {
    match (v / 32) % 4 {
        0 => Answer::Keep,
        1 => Answer::After(Some(Duration::from_secs(3))),
        2 => Answer::After(None),
        _ => Answer::After(Some(Duration::ZERO)),
    }
}

impl Expiry<u8, u16> for Hooks {
    fn expire_after_create(&self, k: &u8, v: &u16) -> Option<Duration> {
        self.0.look(*k);
        create_answer(*v)
    }
    fn expire_after_read(&self, k: &u8, v: &u16, r: Option<Duration>) -> Option<Duration> {
        self.0.look(*k);
        read_answer(*v).given(r)
    }
    fn expire_after_update(&self, k: &u8, v: &u16, r: Option<Duration>) -> Option<Duration> {
        self.0.look(*k);
        update_answer(*v).given(r)
    }
}

/// The TTL an [`Op::InsertTtl`] gives: 0 is zero (expired at once), 20
/// and up `Duration::MAX` (saturating: no deadline), else seconds.
pub fn given_ttl(t: u8) -> Duration {
    match t {
        0 => Duration::ZERO,
        20.. => Duration::MAX,
        t => Duration::from_secs(u64::from(t)),
    }
}

/// The value a compute op puts, from the value it was shown.
pub fn computed(shown: Option<u16>, v: u16) -> u16 {
    shown.map_or(v, |x| x.wrapping_add(v))
}

/// How far a [`Op::Jump`] moves the clock from `now`.
fn jump(n: u8, now: u64) -> u64 {
    match n % 5 {
        0 => 3_600 * NS,
        1 => 400 * 86_400 * NS,
        // To a few seconds, 1 ns, or 0 ns before the deadline range's end.
        2 => (EDGE - 5 * NS).saturating_sub(now),
        3 => (EDGE - 1).saturating_sub(now),
        _ => EDGE.saturating_sub(now),
    }
}

/// A reference entry: its value, the range its deadline lies in (`lo ==
/// hi` when known exactly; [`NEVER`] for none), and the write-based cap
/// of idle slides.
#[derive(Clone, Copy, Debug)]
struct Entry {
    value: u16,
    lo: u64,
    hi: u64,
    hard: u64,
}

impl Entry {
    fn exact(&self) -> u64 {
        assert_eq!(self.lo, self.hi, "model: deadline of an exact entry");
        self.lo
    }
}

/// A deadline the cache stores: from [`EDGE`] on, none.
fn representable(at: u64) -> u64 {
    if at >= EDGE { NEVER } else { at }
}

fn exact_after(now: u64, d: u64) -> u64 {
    now.saturating_add(d).min(NEVER - 1)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

type Event = (u8, u16, RemovalCause);

/// The reference's counters, compared with `stats()` at the end.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    hits: u64,
    misses: u64,
    load_successes: u64,
    load_failures: u64,
}

struct Model {
    cfg: Config,
    now: u64,
    map: HashMap<u8, Entry>,
    expected: Vec<Event>,
    counts: Counts,
    /// Every notification heard, by cause (see [`cause_index`]).
    heard: [u64; 4],
    /// If the step wrote: the most total weight the reference held once a
    /// write of the step was made (expired entries not yet reaped
    /// included), before any eviction. Only a write can evict for size,
    /// and only past a shard's capacity.
    pressure: Option<u64>,
    /// The keys the step wrote.
    written: Vec<u8>,
}

impl Model {
    fn weight_of(&self, e: &Entry) -> u64 {
        u64::from(weight(self.cfg.weigher, e.value))
    }

    fn total_weight(&self) -> u64 {
        self.map.values().map(|e| self.weight_of(e)).sum()
    }

    /// The smallest shard's capacity: a shard evicts for size only once its
    /// own weight, at most the total, is past its capacity (or keeps
    /// nothing, at capacity 0). The cache splits
    /// its bound evenly over its shards, of which it has at most the largest
    /// power of two within the bound.
    fn smallest_shard(&self) -> u64 {
        let cap = self.cfg.capacity;
        let within = 1u64 << cap.max(1).ilog2().min(16);
        let shards = (self.cfg.shards.next_power_of_two() as u64).min(within);
        cap / shards
    }

    /// Whether `k`'s entry is live now: `None` if the reference cannot
    /// tell (a spread deadline whose range holds `now`).
    fn liveness(&self, k: u8) -> Option<bool> {
        match self.map.get(&k) {
            None => Some(false),
            Some(e) if self.now < e.lo => Some(true),
            Some(e) if e.hi <= self.now => Some(false),
            Some(_) => None,
        }
    }

    /// `k`'s live entry. Each step starts with every entry's state known
    /// (the previous step's check settled it), and only an advance moves
    /// the time.
    fn live(&self, k: u8) -> Option<Entry> {
        let live = self
            .liveness(k)
            .unwrap_or_else(|| panic!("model: liveness of {k} unknown at {}", self.now));
        if live {
            self.map.get(&k).copied()
        } else {
            None
        }
    }

    /// Removes `k` if present, predicting its notification.
    fn take(&mut self, k: u8, cause_if_live: RemovalCause) -> Option<u16> {
        let live = self.live(k).is_some();
        let e = self.map.remove(&k)?;
        self.expected.push((
            k,
            e.value,
            if live {
                cause_if_live
            } else {
                RemovalCause::Expired
            },
        ));
        live.then_some(e.value)
    }

    /// The range a lifetime of `d` ns the cache decides (`time_to_live`,
    /// a hook's answer) puts the deadline in, spread by the jitter.
    fn spread(&self, d: u64) -> (u64, u64) {
        if !self.cfg.jitter || d == 0 {
            let at = representable(exact_after(self.now, d));
            return (at, at);
        }
        let f = d as f64;
        let lo = ((f * (1.0 - JITTER) * (1.0 - 1e-9)) as u64).saturating_sub(1);
        let hi = ((f * (1.0 + JITTER) * (1.0 + 1e-9)) as u64).saturating_add(1);
        (
            representable(exact_after(self.now, lo.max(1))),
            representable(exact_after(self.now, hi)),
        )
    }

    /// The range of a hook's answer applied to an entry whose deadline is
    /// in `old`: unchanged if the answer gives back the time left (which
    /// the reference may not know exactly: then either).
    fn answer(&self, old: (u64, u64), answer: Answer) -> (u64, u64) {
        let Answer::After(after) = answer else {
            return old;
        };
        let new = after.map_or((NEVER, NEVER), |d| self.spread(nanos(d)));
        let same_possible = match after {
            None => old.1 == NEVER,
            Some(d) => {
                let at = self.now.saturating_add(nanos(d));
                old.0 <= at && at <= old.1
            }
        };
        match (same_possible, old.0 == old.1) {
            (false, _) => new,
            (true, true) => old,
            (true, false) => (old.0.min(new.0), old.1.max(new.1)),
        }
    }

    /// The deadline range the hook answers of a write of `value` give,
    /// over `old` if the key holds a live entry.
    fn hooked(&self, value: u16, old: Option<Entry>) -> (u64, u64) {
        match old {
            None => {
                let after = create_answer(value);
                after.map_or((NEVER, NEVER), |d| self.spread(nanos(d)))
            }
            Some(e) => self.answer((e.lo, e.hi), update_answer(value)),
        }
    }

    /// A write of `value` under `k`, with the TTL the caller gave (ns), if any.
    fn write(&mut self, k: u8, value: u16, ttl: Option<u64>) {
        let old = self.live(k);
        self.take(k, RemovalCause::Replaced);
        let (lo, hi, hard) = if let Some(ttl) = ttl {
            // A TTL given by the caller is kept exactly.
            let hard = exact_after(self.now, ttl);
            let at = self
                .cfg
                .tti
                .map_or(hard, |tti| hard.min(exact_after(self.now, tti * NS)));
            (representable(at), representable(at), hard)
        } else if self.cfg.hooks {
            let (lo, hi) = self.hooked(value, old);
            (lo, hi, hi)
        } else {
            match self.cfg.tti {
                // No jitter with a time to idle: the deadline is exact.
                Some(tti) => {
                    let hard = self
                        .cfg
                        .ttl
                        .map_or(NEVER, |t| exact_after(self.now, t * NS));
                    let at = representable(hard.min(exact_after(self.now, tti * NS)));
                    (at, at, hard)
                }
                None => {
                    let (lo, hi) = self.cfg.ttl.map_or((NEVER, NEVER), |t| self.spread(t * NS));
                    (lo, hi, hi)
                }
            }
        };
        self.map.insert(
            k,
            Entry {
                value,
                lo,
                hi,
                hard,
            },
        );
        let total = self.total_weight();
        self.pressure = Some(self.pressure.map_or(total, |p| p.max(total)));
        self.written.push(k);
    }

    /// A read hit slides an idle deadline (in steps above ~1 ms, or an
    /// eighth of the idle time if shorter, as the cache does) or applies
    /// the read hook's answer.
    fn read(&mut self, k: u8) -> Option<u16> {
        let e = self.live(k)?;
        let mut next = e;
        if let Some(tti) = self.cfg.tti {
            let at = e.exact();
            let slid = e.hard.min(self.now.saturating_add(tti * NS)).min(LAST);
            let step = ((tti * NS) >> 3).min(1 << 20);
            if at != NEVER && slid > at.saturating_add(step) {
                next.lo = slid;
                next.hi = slid;
            }
        }
        if self.cfg.hooks {
            (next.lo, next.hi) = self.answer((e.lo, e.hi), read_answer(e.value));
        }
        self.map.insert(k, next);
        Some(e.value)
    }

    /// `get_with` / `try_get_with`: a hit, or a miss and a load of `init`.
    fn load(&mut self, k: u8, init: Result<u16, ()>) -> Result<u16, ()> {
        if let Some(v) = self.read(k) {
            self.counts.hits += 1;
            return Ok(v);
        }
        self.counts.misses += 1;
        match init {
            Ok(v) => {
                self.counts.load_successes += 1;
                self.write(k, v, None);
            }
            Err(()) => self.counts.load_failures += 1,
        }
        init
    }

    /// `expire_in` (the TTL in ns) or `persist` (`None`): the live entry's
    /// new deadlines, exact, with the idle time restarting now as after a
    /// write; a zero TTL removes it as expired. Returns whether it was live.
    fn retime(&mut self, k: u8, ttl: Option<u64>) -> bool {
        if self.live(k).is_none() {
            return false;
        }
        if ttl == Some(0) {
            self.take(k, RemovalCause::Expired);
            return true;
        }
        let hard = ttl.map_or(NEVER, |t| exact_after(self.now, t));
        let at = self
            .cfg
            .tti
            .map_or(hard, |tti| hard.min(exact_after(self.now, tti * NS)));
        let e = self.map.get_mut(&k).expect("live");
        (e.lo, e.hi, e.hard) = (representable(at), representable(at), hard);
        true
    }

    /// What `expires_in` may answer of `k`, the reference's range then
    /// narrowed to the answer (a spread deadline is then known).
    fn time_left(&mut self, k: u8, answer: Option<Option<Duration>>) {
        let Some(e) = self.live(k) else {
            assert_eq!(answer, None, "expires_in({k}) of no live entry");
            return;
        };
        let Some(left) = answer else {
            panic!(
                "expires_in({k}) found no entry, live until {}..{}",
                e.lo, e.hi
            );
        };
        let at = left.map_or(NEVER, |d| self.now.saturating_add(nanos(d)));
        assert!(
            e.lo <= at && at <= e.hi && (at == NEVER) == left.is_none(),
            "expires_in({k}) = {left:?} at {}: deadline {at} outside {}..{}",
            self.now,
            e.lo,
            e.hi
        );
        let e = self.map.get_mut(&k).expect("live");
        (e.lo, e.hi) = (at, at);
    }

    /// A value heavier than `max_capacity / num_shards` (the cache's
    /// `max_entry_weight`) is refused by whichever shard its key falls in,
    /// so right after its insert the key has no entry.
    fn assert_refused_if_heavy(&self, cache: &Cache<u8, u16>, k: u8, v: u16) {
        if self.cfg.weigher != Weigher::Unit
            && u64::from(weight(self.cfg.weigher, v)) > self.smallest_shard()
        {
            assert_eq!(
                cache.peek(&k),
                None,
                "insert({k}, {v}) of weight {} kept, max_entry_weight {:?}",
                weight(self.cfg.weigher, v),
                cache.policy().max_entry_weight()
            );
        }
    }

    /// The clock step of [`Op::AdvanceNear`].
    fn near(&self, k: u8, delta: i8) -> u64 {
        let target = self
            .map
            .get(&k)
            .filter(|e| e.lo != NEVER)
            .map(|e| e.lo.saturating_add_signed(i64::from(delta)));
        match target {
            Some(t) if t > self.now => t - self.now,
            _ => 1,
        }
    }
}

fn build(
    cfg: &Config,
    clock: &MockClock,
    events: &Arc<Mutex<Vec<Event>>>,
    probe: &Probe,
) -> Cache<u8, u16> {
    let log = events.clone();
    let looks = probe.clone();
    let mut b = Cache::builder()
        .max_capacity(cfg.capacity)
        .num_shards(cfg.shards)
        .clock(clock.clone())
        .eviction_listener(move |k: Arc<u8>, v: u16, cause| {
            log.lock().unwrap().push((*k, v, cause));
            if let Some(cache) = looks.look(*k) {
                cache.run_pending_tasks();
            }
        });
    let w = cfg.weigher;
    if w != Weigher::Unit {
        let looks = probe.clone();
        b = b.weigher(move |k, v| {
            looks.look(*k);
            weight(w, *v)
        });
    }
    if let Some(ttl) = cfg.ttl {
        b = b.time_to_live(Duration::from_secs(ttl));
    }
    if let Some(tti) = cfg.tti {
        b = b.time_to_idle(Duration::from_secs(tti));
    }
    if cfg.hooks {
        b = b.expire_after(Hooks(probe.clone()));
    }
    if cfg.jitter {
        b = b.ttl_jitter(JITTER);
    }
    b.build().unwrap()
}

fn apply(op: &Op, cache: &Cache<u8, u16>, clock: &MockClock, m: &mut Model) {
    match *op {
        Op::Insert(k, v) => {
            cache.insert(k, v);
            m.assert_refused_if_heavy(cache, k, v);
            m.write(k, v, None);
        }
        Op::InsertTtl(k, v, t) => {
            cache.insert_with_ttl(k, v, given_ttl(t));
            m.assert_refused_if_heavy(cache, k, v);
            m.write(k, v, Some(nanos(given_ttl(t))));
        }
        Op::Get(k) => {
            let expected = m.read(k);
            if expected.is_some() {
                m.counts.hits += 1
            } else {
                m.counts.misses += 1
            }
            assert_eq!(cache.get(&k), expected, "get({k})");
        }
        Op::Peek(k) => assert_eq!(cache.peek(&k), m.live(k).map(|e| e.value), "peek({k})"),
        Op::Contains(k) => assert_eq!(
            cache.contains_key(&k),
            m.live(k).is_some(),
            "contains_key({k})"
        ),
        Op::Remove(k) => {
            let expected = m.take(k, RemovalCause::Explicit);
            assert_eq!(cache.remove(&k), expected, "remove({k})");
        }
        Op::Invalidate(k) => {
            cache.invalidate(&k);
            m.take(k, RemovalCause::Explicit);
        }
        Op::InvalidateIf(modulus) => {
            cache.invalidate_entries_if(move |_, v| v % modulus == 0);
            let doomed: Vec<u8> = (0..KEYS)
                .filter(|&k| m.live(k).is_some_and(|e| e.value % modulus == 0))
                .collect();
            for k in doomed {
                m.take(k, RemovalCause::Explicit);
            }
        }
        Op::InvalidateAll => {
            cache.invalidate_all();
            let keys: Vec<u8> = m.map.keys().copied().collect();
            for k in keys {
                m.take(k, RemovalCause::Explicit);
            }
        }
        Op::GetWith(k, v) => {
            let expected = m.load(k, Ok(v));
            assert_eq!(Ok(cache.get_with(k, || v)), expected, "get_with({k})");
        }
        Op::TryGetWith(k, v, ok) => {
            let init = if ok { Ok(v) } else { Err(()) };
            let expected = m.load(k, init);
            let got = cache.try_get_with(k, || init).map_err(|e| *e);
            assert_eq!(got, expected, "try_get_with({k})");
        }
        Op::GetWithPanic(k) => {
            let expected = m.load(k, Err(()));
            let got = quietly(|| {
                catch_unwind(AssertUnwindSafe(|| {
                    cache.get_with(k, || panic!("init of {k} panics"))
                }))
            })
            .map_err(|_| ());
            assert_eq!(got, expected, "get_with({k}) with a panicking init");
        }
        Op::GetWithWrite(k, v, w, kind) => {
            let other = (k + 1) % KEYS;
            let expected = if m.live(k).is_some() {
                m.load(k, Ok(v))
            } else {
                m.counts.misses += 1;
                m.counts.load_successes += 1;
                match kind % 3 {
                    0 => m.write(k, w, None),
                    1 => {
                        m.take(k, RemovalCause::Explicit);
                    }
                    _ => {
                        m.write(other, w, None);
                        m.write(k, v, None);
                    }
                }
                Ok(v)
            };
            let got = cache.get_with(k, || {
                match kind % 3 {
                    0 => cache.insert(k, w),
                    1 => cache.invalidate(&k),
                    _ => cache.insert(other, w),
                }
                v
            });
            assert_eq!(Ok(got), expected, "get_with({k}) writing in its init");
        }
        Op::IterWriting(k, v) => {
            let before: HashMap<u8, u16> = (0..KEYS)
                .filter_map(|key| m.live(key).map(|e| (key, e.value)))
                .collect();
            let mut it = cache.iter();
            let first = it.next();
            cache.insert(k, v);
            m.write(k, v, None);
            let listed: Vec<(u8, u16)> = first.into_iter().chain(it).collect();
            let mut keys: Vec<u8> = listed.iter().map(|&(key, _)| key).collect();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(
                keys.len(),
                listed.len(),
                "iter() listed a key twice: {listed:?}"
            );
            for &(key, value) in &listed {
                assert!(
                    before.get(&key) == Some(&value) || (key, value) == (k, v),
                    "iter() listed {key}={value}, never cached during it"
                );
            }
            for (&key, &value) in &before {
                if key != k && cache.peek(&key) == Some(value) {
                    assert!(
                        listed.contains(&(key, value)),
                        "iter() missed {key}={value}, cached throughout"
                    );
                }
            }
        }
        Op::OrInsertWith(k, v) => {
            let miss = m.live(k).is_none();
            let expected = m.load(k, Ok(v));
            let e = cache.entry(k).or_insert_with(|| v);
            let got = (Ok(*e.value()), e.is_fresh());
            assert_eq!(got, (expected, miss), "or_insert_with({k}): value, fresh");
        }
        Op::Compute(k, v, kind) => compute(cache, m, k, v, kind),
        Op::ComputeWrite(k, v, w, kind) => compute_writing(cache, m, k, v, w, kind),
        Op::Expire(k, t) => {
            let expected = m.retime(k, Some(nanos(given_ttl(t))));
            assert_eq!(
                cache.expire_in(&k, given_ttl(t)),
                expected,
                "expire_in({k}, {:?})",
                given_ttl(t)
            );
        }
        Op::Persist(k) => {
            let expected = m.retime(k, None);
            assert_eq!(cache.persist(&k), expected, "persist({k})");
        }
        Op::ExpiresIn(k) => m.time_left(k, cache.expires_in(&k)),
        Op::Advance(ms) => step(clock, m, u64::from(ms) * 1_000_000),
        Op::AdvanceNear(k, delta) => step(clock, m, m.near(k, delta)),
        Op::Jump(n) => step(clock, m, jump(n, m.now)),
        Op::RunPending => {
            cache.run_pending_tasks();
            let expired: Vec<u8> = (0..KEYS)
                .filter(|&k| m.map.contains_key(&k) && m.live(k).is_none())
                .collect();
            for k in expired {
                m.take(k, RemovalCause::Expired);
            }
        }
    }
}

/// The first look of a compute: a read with its effects, counted.
fn compute_read(m: &mut Model, k: u8) -> Option<u16> {
    let shown = m.read(k);
    if shown.is_some() {
        m.counts.hits += 1;
    } else {
        m.counts.misses += 1;
    }
    shown
}

/// [`Op::Compute`].
fn compute(cache: &Cache<u8, u16>, m: &mut Model, k: u8, v: u16, kind: u8) {
    let expected = compute_read(m, k);
    let shown = |e: Option<larder::Entry<u8, u16>>| e.map(|e| *e.value());
    if kind % 4 == 3 {
        let e = cache.entry(k).and_upsert_with(|e| {
            assert_eq!(shown(e), expected, "upsert({k}) shown");
            computed(expected, v)
        });
        assert_eq!(e.is_old_value_replaced(), expected.is_some());
        m.write(k, computed(expected, v), None);
        return;
    }
    let result = cache.entry(k).and_compute_with(|e| {
        assert_eq!(shown(e), expected, "compute({k}) shown");
        match kind % 4 {
            0 => larder::Op::Put(computed(expected, v)),
            1 => larder::Op::Remove,
            _ => larder::Op::Nop,
        }
    });
    let got = match result {
        CompResult::StillNone(_) => (4, None),
        CompResult::Unchanged(e) => (2, Some(*e.value())),
        CompResult::Removed(e) => (1, Some(*e.value())),
        CompResult::Inserted(e) | CompResult::ReplacedWith(e) => (0, Some(*e.value())),
    };
    let want = match (kind % 4, expected) {
        (0, _) => {
            m.write(k, computed(expected, v), None);
            (0, Some(computed(expected, v)))
        }
        (1, Some(old)) => {
            m.take(k, RemovalCause::Explicit);
            (1, Some(old))
        }
        (_, Some(old)) => (2, Some(old)),
        (_, None) => (4, None),
    };
    assert_eq!(got, want, "compute({k}) kind {kind}");
}

/// A value the expiry hooks give a nonzero lifetime, created or updated:
/// a write the reference expects live and the cache does not hold was
/// then turned away by the policy, not expired at once.
fn lasting(w: u16) -> u16 {
    let w = if create_answer(w) == Some(Duration::ZERO) {
        w ^ 2
    } else {
        w
    };
    if update_answer(w) == Answer::After(Some(Duration::ZERO)) {
        w ^ 32
    } else {
        w
    }
}

/// [`Op::ComputeWrite`].
fn compute_writing(cache: &Cache<u8, u16>, m: &mut Model, k: u8, v: u16, w: u16, kind: u8) {
    let w = lasting(w);
    let first = compute_read(m, k);
    let mut runs = 0;
    let mut last = None;
    let result = cache.entry(k).and_compute_with(|e| {
        runs += 1;
        let shown = e.map(|e| *e.value());
        if runs == 1 {
            assert_eq!(shown, first, "compute({k}) first shown");
            if kind % 2 == 0 {
                cache.insert(k, w);
                m.write(k, w, None);
                if m.live(k).is_some() && cache.peek(&k).is_none() {
                    // The policy turned the write away: heard as `Size`.
                    m.map.remove(&k);
                    m.expected.push((k, w, RemovalCause::Size));
                }
            } else {
                cache.invalidate(&k);
                m.take(k, RemovalCause::Explicit);
            }
        } else {
            // Shown with no read effects: what a `peek` returns.
            assert_eq!(
                shown,
                m.live(k).map(|e| e.value),
                "compute({k}) shown again"
            );
        }
        last = shown;
        larder::Op::Put(computed(shown, v))
    });
    assert_eq!(runs, 2, "compute({k}) runs again after its key's write");
    let put = computed(last, v);
    m.write(k, put, None);
    let got = match result {
        CompResult::Inserted(e) => (false, *e.value()),
        CompResult::ReplacedWith(e) => (true, *e.value()),
        other => panic!("compute({k}) put, got {other:?}"),
    };
    assert_eq!(got, (last.is_some(), put), "compute({k}) writing");
}

/// Runs `f` with the panic hook silenced: the fuzzer's hook aborts on any
/// panic, caught or not. (Process-wide: another test thread's panic in
/// the meantime still fails its test, with its message lost.)
fn quietly<T>(f: impl FnOnce() -> T) -> T {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = f();
    std::panic::set_hook(hook);
    out
}

fn step(clock: &MockClock, m: &mut Model, ns: u64) {
    clock.advance(Duration::from_nanos(ns));
    m.now = m.now.saturating_add(ns);
}

fn cause_index(cause: RemovalCause) -> usize {
    match cause {
        RemovalCause::Expired => 0,
        RemovalCause::Explicit => 1,
        RemovalCause::Replaced => 2,
        RemovalCause::Size => 3,
    }
}

/// Matches observed notifications against predictions; unpredicted ones must
/// be size evictions (or expiries) of entries the reference still holds.
fn reconcile(observed: Vec<Event>, m: &mut Model) {
    let mut expected = std::mem::take(&mut m.expected);
    let pressure = m.pressure.take();
    let written = std::mem::take(&mut m.written);
    for (k, v, cause) in observed {
        m.heard[cause_index(cause)] += 1;
        if let Some(pos) = expected.iter().position(|&e| e == (k, v, cause)) {
            expected.swap_remove(pos);
            continue;
        }
        let held = m.map.get(&k).copied();
        let held = held.unwrap_or_else(|| {
            panic!("unpredicted {cause:?} of {k}={v}, which the model does not hold")
        });
        assert_eq!(held.value, v, "{cause:?} of {k} carried the wrong value");
        match cause {
            RemovalCause::Size => {
                // An entry written expired (a zero lifetime) and refused
                // as too heavy is heard of as refused.
                assert!(
                    m.now < held.hi || written.contains(&k),
                    "size eviction of an expired entry {k}"
                );
                let floor = m.smallest_shard();
                assert!(
                    pressure.is_some_and(|total| total > floor || floor == 0),
                    "size eviction of {k} with room to spare: {pressure:?} held, \
                     no shard holds less than {floor}"
                );
                // Weightless entries are exempt; only a cache that keeps
                // nothing turns them away.
                assert!(
                    m.weight_of(&held) > 0 || m.cfg.capacity == 0,
                    "size eviction of the weightless {k}={v}"
                );
                // Expired entries make way first: a shard reaps what is
                // due before it evicts or turns away a live entry for
                // size (their `Expired` is heard first). In a one-shard
                // cache, then, no entry the reference knows expired is
                // held at a size eviction (a refusal of an entry too heavy
                // for the shard aside). The reference holds the step's
                // end: a key the step wrote may have expired only after the
                // eviction (a compute's write of a zero lifetime).
                if m.cfg.shards == 1 && m.weight_of(&held) <= m.smallest_shard() {
                    let stale: Vec<u8> = m
                        .map
                        .iter()
                        .filter(|&(&other, e)| {
                            other != k && m.now >= e.hi && !written.contains(&other)
                        })
                        .map(|(&other, _)| other)
                        .collect();
                    assert!(
                        stale.is_empty(),
                        "size eviction of {k}={v} while {stale:?} expired and held"
                    );
                }
            }
            RemovalCause::Expired => assert!(held.lo <= m.now, "entry {k} reported expired early"),
            RemovalCause::Explicit | RemovalCause::Replaced => {
                panic!("unpredicted {cause:?} of {k}={v}")
            }
        }
        m.map.remove(&k);
    }
    assert!(
        expected.is_empty(),
        "notifications never delivered: {expected:?}"
    );
}

fn check(cache: &Cache<u8, u16>, m: &mut Model) {
    cache.check_invariants();
    for k in 0..KEYS {
        let seen = cache.peek(&k);
        match m.liveness(k) {
            Some(live) => assert_eq!(
                seen,
                live.then(|| m.map[&k].value),
                "contents differ at key {k}"
            ),
            // A spread deadline in range: what the cache shows settles it.
            None => {
                let now = m.now;
                let e = m.map.get_mut(&k).unwrap();
                match seen {
                    Some(v) => {
                        assert_eq!(v, e.value, "contents differ at key {k}");
                        e.lo = now + 1;
                    }
                    None => e.hi = now,
                }
            }
        }
    }
    let mut listed: Vec<(u8, u16)> = cache.iter().collect();
    listed.sort_unstable();
    let mut live: Vec<(u8, u16)> = (0..KEYS)
        .filter_map(|k| m.live(k).map(|e| (k, e.value)))
        .collect();
    live.sort_unstable();
    assert_eq!(listed, live, "iter() lists the live entries, once each");
    assert_eq!(
        cache.entry_count(),
        m.map.len() as u64,
        "entry count (expired-unreaped included)"
    );
    assert_eq!(cache.weighted_size(), m.total_weight());
    assert!(cache.weighted_size() <= m.cfg.capacity, "over capacity");
}

/// Replays `ops` against a fresh cache and the reference, checking after each.
pub fn run(cfg: Config, ops: Vec<Op>) {
    let cfg = cfg.sane();
    let clock = MockClock::new();
    let events = Arc::new(Mutex::new(Vec::new()));
    let probe = Probe::default();
    let cache = build(&cfg, &clock, &events, &probe);
    let _unhook = Unhook(probe.clone());
    if cfg.reentrant {
        *probe.0.lock().unwrap() = Some(cache.clone());
    }
    let mut m = Model {
        cfg,
        now: 0,
        map: HashMap::new(),
        expected: Vec::new(),
        counts: Counts::default(),
        heard: [0; 4],
        pressure: None,
        written: Vec::new(),
    };
    for op in &ops {
        apply(op, &cache, &clock, &mut m);
        let observed = std::mem::take(&mut *events.lock().unwrap());
        reconcile(observed, &mut m);
        check(&cache, &mut m);
    }
    let stats = cache.stats();
    let counted = Counts {
        hits: stats.hits(),
        misses: stats.misses(),
        load_successes: stats.load_successes(),
        load_failures: stats.load_failures(),
    };
    assert_eq!(counted, m.counts, "hit, miss and load counts");
    let causes = [
        RemovalCause::Expired,
        RemovalCause::Explicit,
        RemovalCause::Replaced,
        RemovalCause::Size,
    ];
    for (cause, heard) in causes.into_iter().zip(m.heard) {
        assert_eq!(
            stats.removals(cause),
            heard,
            "{cause:?} removals counted vs heard"
        );
    }
}
