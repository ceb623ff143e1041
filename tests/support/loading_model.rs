//! A reference model of a [`LoadingCache`] in front of a database, for the
//! proptest (`tests/loading_model.rs`) and the fuzz target `loading_ops`.
//!
//! The database is a `HashMap` the operations change behind the cache's
//! back; the model keeps what the cache should hold (a value or a cached
//! "absent", and when it stops being fresh) and the number of loader calls.
//! Per-entry TTLs (`insert_with_ttl`, `expire_in`, `persist`) change when a
//! value stops being fresh, and `expires_in` must tell it to the millisecond.
//! Every read's answer, the hit and miss counts and the load count must
//! match the model exactly. Background settings are off and the clock is a
//! `MockClock`, so the cache is deterministic; `refresh` then reloads on the
//! calling thread.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use larder::{Cache, LoadingCache, RemovalCause, clock::MockClock};

/// Keys are drawn from `0..KEYS`, so operations collide often.
pub const KEYS: u8 = 12;

/// Settings of one run, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub ttl: Option<u64>,
    pub negative_ttl: Option<u64>,
    /// `stale_if_error`, kept only with a `ttl` (the builder needs one).
    pub stale_if_error: Option<u64>,
    /// A bound (entries), and then no `negative_ttl`: the listener, which
    /// tells the model what the cache evicted, hears of values only.
    pub capacity: Option<u64>,
}

/// One step.
#[derive(Clone, Debug)]
pub enum Op {
    Get(u8),
    GetMany(Vec<u8>),
    Insert(u8, u32),
    Invalidate(u8),
    /// `invalidate_entries_if` of the values divisible by this (at least 1).
    InvalidateIf(u8),
    InvalidateAll,
    Refresh(u8),
    /// The database changes under the cache: a value, or the key deleted.
    DbSet(u8, Option<u32>),
    /// The database starts or stops failing.
    DbFails(bool),
    Advance(u16),
    RunPending,
    /// `insert_with_ttl`, the time to live in seconds (0 included).
    InsertTtl(u8, u32, u8),
    /// `expire_in`, in seconds (0 included).
    ExpireIn(u8, u8),
    Persist(u8),
    ExpiresIn(u8),
}

/// What the cache should hold for a key.
#[derive(Clone, Copy, Debug)]
struct Held {
    value: Option<u32>,
    /// Model time (ms) at which it stops being served; `None` never.
    until: Option<u64>,
}

/// The database both sides read.
#[derive(Default)]
struct Db {
    rows: HashMap<u8, u32>,
    failing: bool,
}

struct Model {
    cfg: Config,
    db: Arc<Mutex<Db>>,
    held: HashMap<u8, Held>,
    now_ms: u64,
    loads: u64,
    refreshes: u64,
    hits: u64,
    misses: u64,
    stale_hits: u64,
    /// Every value stored, key by key (cached absences are not values).
    stored: HashMap<u8, Vec<u32>>,
    /// Keys the step stored: the value each held before (if any) and the
    /// values stored. A write evicts to make room, so the step's Size
    /// evictions may be of any of them, in any order with the stores.
    touched: HashMap<u8, (Option<u32>, Vec<u32>)>,
}

impl Model {
    fn live(&self, k: u8) -> Option<Held> {
        let h = *self.held.get(&k)?;
        match h.until {
            Some(until) if self.now_ms >= until => None,
            _ => Some(h),
        }
    }

    /// What a failed load of `k` answers instead of its error: the value
    /// the cache held, if it stopped being fresh less than the
    /// `stale_if_error` window ago (the docs promise this of values: a
    /// cached absence gets no such grace).
    fn fallback(&self, k: u8) -> Option<Option<u32>> {
        let window = self.cfg.stale_if_error? * 1_000;
        let h = self.held.get(&k)?;
        let until = h.until?;
        h.value?;
        (until <= self.now_ms && self.now_ms < until + window).then_some(h.value)
    }

    /// What a load of `k` stores, if anything: `None` for a failure.
    fn load(&mut self, k: u8) -> Option<Option<u32>> {
        let db = self.db.lock().unwrap();
        if db.failing {
            return None;
        }
        Some(db.rows.get(&k).copied())
    }

    /// A value stored by `insert_with_ttl`: fresh for exactly `secs`.
    fn store_for(&mut self, k: u8, value: u32, secs: u64) {
        self.store(k, Some(value));
        let until = Some(self.now_ms + secs * 1_000);
        self.held.insert(
            k,
            Held {
                value: Some(value),
                until,
            },
        );
    }

    /// The key's value if it is one and fresh: what `expires_in`,
    /// `expire_in` and `persist` act on (a cached absence is none).
    fn fresh_value(&self, k: u8) -> Option<Held> {
        self.live(k).filter(|h| h.value.is_some())
    }

    fn store(&mut self, k: u8, value: Option<u32>) {
        if let Some(v) = value {
            self.stored.entry(k).or_default().push(v);
        }
        let before = self.held.get(&k).and_then(|h| h.value);
        let touched = self.touched.entry(k).or_insert((before, Vec::new()));
        touched.1.extend(value);
        let life = match value {
            Some(_) => self.cfg.ttl,
            None => match self.cfg.negative_ttl {
                Some(n) => Some(n),
                None => {
                    self.held.remove(&k);
                    return;
                }
            },
        };
        let until = life.map(|s| self.now_ms + s * 1_000);
        self.held.insert(k, Held { value, until });
    }
}

/// What the eviction listener heard, in order.
type Heard = Arc<Mutex<Vec<(u8, u32, RemovalCause)>>>;

fn build(
    cfg: Config,
    db: &Arc<Mutex<Db>>,
    clock: &MockClock,
    heard: &Heard,
) -> LoadingCache<u8, u32, String> {
    let source = db.clone();
    let log = heard.clone();
    let mut builder = Cache::builder()
        .clock(clock.clone())
        .max_capacity(cfg.capacity.unwrap_or(u64::MAX))
        .eviction_listener(move |k: Arc<u8>, v: u32, cause| {
            log.lock().unwrap().push((*k, v, cause))
        });
    if let Some(ttl) = cfg.ttl {
        builder = builder.time_to_live(Duration::from_secs(ttl));
    }
    let stale_if_error = cfg.stale_if_error.filter(|_| cfg.ttl.is_some());
    let mut builder = builder.loader(move |k: &u8| -> Result<Option<u32>, String> {
        let db = source.lock().unwrap();
        if db.failing {
            return Err(format!("db down reading {k}"));
        }
        Ok(db.rows.get(k).copied())
    });
    if let Some(n) = cfg.negative_ttl {
        builder = builder.negative_ttl(Duration::from_secs(n));
    }
    if let Some(w) = stale_if_error {
        builder = builder.stale_if_error(Duration::from_secs(w));
    }
    builder.build().expect("valid settings")
}

/// Runs `ops` against a loading cache and the model, panicking at the first
/// difference.
pub fn run(mut cfg: Config, ops: Vec<Op>) {
    cfg.stale_if_error = cfg.stale_if_error.filter(|_| cfg.ttl.is_some());
    if cfg.capacity.is_some() {
        cfg.negative_ttl = None;
    }
    let clock = MockClock::new();
    let db = Arc::new(Mutex::new(Db::default()));
    let heard = Heard::default();
    let cache = build(cfg, &db, &clock, &heard);
    let mut m = Model {
        cfg,
        db: db.clone(),
        held: HashMap::new(),
        now_ms: 0,
        loads: 0,
        refreshes: 0,
        hits: 0,
        misses: 0,
        stale_hits: 0,
        stored: HashMap::new(),
        touched: HashMap::new(),
    };
    let mut seen = 0;
    for (step, op) in ops.into_iter().enumerate() {
        let at = format!("step {step}: {op:?}");
        match op {
            Op::Get(k) => {
                let got = cache.get(&k);
                match m.live(k) {
                    Some(h) => {
                        m.hits += 1;
                        assert_eq!(got.as_ref().ok(), Some(&h.value), "{at}: cached");
                    }
                    None => {
                        m.misses += 1;
                        m.loads += 1;
                        match (m.load(k), m.fallback(k)) {
                            (Some(v), _) => {
                                assert_eq!(got.as_ref().ok(), Some(&v), "{at}: loaded");
                                m.store(k, v);
                            }
                            (None, Some(old)) => {
                                m.stale_hits += 1;
                                assert_eq!(got.as_ref().ok(), Some(&old), "{at}: stale if error");
                            }
                            (None, None) => assert!(got.is_err(), "{at}: the load failed"),
                        }
                    }
                }
            }
            Op::GetMany(keys) => {
                let got = cache.get_many(keys.iter().copied());
                let mut expected = HashMap::new();
                let mut missing = Vec::new();
                for k in keys.iter().copied().collect::<BTreeSet<_>>() {
                    match m.live(k) {
                        Some(h) => {
                            m.hits += 1;
                            if let Some(v) = h.value {
                                expected.insert(k, v);
                            }
                        }
                        None => {
                            m.misses += 1;
                            missing.push(k);
                        }
                    }
                }
                let failing = m.db.lock().unwrap().failing;
                if !missing.is_empty() {
                    m.loads += 1; // one batch call
                    if !failing {
                        for k in missing.iter().copied() {
                            let v = m.load(k).expect("not failing");
                            if let Some(v) = v {
                                expected.insert(k, v);
                            }
                            m.store(k, v);
                        }
                    }
                }
                // Failed, keys with a stale-if-error value are answered with
                // it; the batch fails if any key has none.
                let stale: Vec<Option<Option<u32>>> = if failing {
                    missing.iter().map(|&k| m.fallback(k)).collect()
                } else {
                    Vec::new()
                };
                let unanswered = stale.iter().any(Option::is_none);
                if failing && !unanswered {
                    for (&k, old) in missing.iter().zip(&stale) {
                        m.stale_hits += 1;
                        if let Some(Some(v)) = *old {
                            expected.insert(k, v);
                        }
                    }
                }
                if failing && unanswered {
                    // The step's checks below still run: nothing cached.
                    assert!(got.is_err(), "{at}: the batch failed");
                } else {
                    assert_eq!(got.ok(), Some(expected), "{at}");
                }
            }
            Op::Insert(k, v) => {
                cache.insert(k, v);
                m.store(k, Some(v));
            }
            Op::Invalidate(k) => {
                cache.invalidate(&k);
                m.held.remove(&k);
            }
            Op::InvalidateIf(d) => {
                let d = u32::from(d.max(1));
                cache.invalidate_entries_if(|_, v| v % d == 0);
                // The values a read may return (live, or kept by
                // stale-if-error; not absences) that match.
                let doomed: Vec<u8> = (0..KEYS)
                    .filter(|&k| {
                        let live = m.live(k).and_then(|h| h.value);
                        let kept = m.fallback(k).flatten();
                        live.or(kept).is_some_and(|v| v % d == 0)
                    })
                    .collect();
                for k in doomed {
                    m.held.remove(&k);
                }
            }
            Op::InvalidateAll => {
                cache.invalidate_all();
                m.held.clear();
            }
            Op::Refresh(k) => {
                assert!(cache.refresh(&k), "{at}: no other load runs");
                m.loads += 1;
                m.refreshes += 1;
                if let Some(v) = m.load(k) {
                    m.store(k, v);
                }
            }
            Op::DbSet(k, v) => {
                let mut db = db.lock().unwrap();
                match v {
                    Some(v) => db.rows.insert(k, v),
                    None => db.rows.remove(&k),
                };
            }
            Op::DbFails(failing) => db.lock().unwrap().failing = failing,
            Op::Advance(ms) => {
                clock.advance(Duration::from_millis(u64::from(ms)));
                m.now_ms += u64::from(ms);
            }
            Op::RunPending => cache.run_pending_tasks(),
            Op::InsertTtl(k, v, secs) => {
                cache.insert_with_ttl(k, v, Duration::from_secs(u64::from(secs)));
                m.store_for(k, v, u64::from(secs));
            }
            Op::ExpireIn(k, secs) => {
                let given = cache.expire_in(&k, Duration::from_secs(u64::from(secs)));
                let fresh = m.fresh_value(k);
                assert_eq!(given, fresh.is_some(), "{at}: a fresh value to retime");
                if let Some(h) = fresh {
                    let until = Some(m.now_ms + u64::from(secs) * 1_000);
                    m.held.insert(k, Held { until, ..h });
                }
            }
            Op::Persist(k) => {
                let given = cache.persist(&k);
                let fresh = m.fresh_value(k);
                assert_eq!(given, fresh.is_some(), "{at}: a fresh value to persist");
                if let Some(h) = fresh {
                    m.held.insert(k, Held { until: None, ..h });
                }
            }
            Op::ExpiresIn(k) => {
                let left = m
                    .fresh_value(k)
                    .map(|h| h.until.map(|u| Duration::from_millis(u - m.now_ms)));
                assert_eq!(cache.expires_in(&k), left, "{at}: time left");
            }
        }
        // Size evictions are the removals the model cannot predict: each
        // must be of a value it holds, which it then forgets.
        let evicted: Vec<(u8, u32)> = heard
            .lock()
            .unwrap()
            .iter()
            .skip(seen)
            .filter(|e| e.2 == RemovalCause::Size)
            .map(|&(k, v, _)| (k, v))
            .collect();
        seen = heard.lock().unwrap().len();
        let mut touched = std::mem::take(&mut m.touched);
        for (k, v) in evicted {
            assert!(
                cfg.capacity.is_some(),
                "{at}: Size eviction of {k} unbounded"
            );
            let held = m.held.get(&k).and_then(|h| h.value);
            let Some((before, stored)) = touched.get_mut(&k) else {
                // Not written this step: the value it held.
                assert_eq!(held, Some(v), "{at}: Size eviction of {k}={v}, not held");
                m.held.remove(&k);
                continue;
            };
            // The value held before the step's write (evicted to make room
            // before it), or one the step stored.
            if *before == Some(v) {
                *before = None;
            } else {
                let i = stored.iter().position(|&s| s == v);
                let i = i.unwrap_or_else(|| panic!("{at}: Size eviction of {k}={v}, never held"));
                stored.remove(i);
            }
            // If the model holds that value, it may be the entry evicted or
            // an equal one stored since: the new one is fresh, so the peek
            // shows whether it went.
            if held == Some(v) && cache.peek(&k) != Some(v) {
                m.held.remove(&k);
            }
        }
        let s = cache.stats();
        assert_eq!(
            (s.hits(), s.misses(), s.loads()),
            (m.hits, m.misses, m.loads),
            "{at}: hits, misses, loads"
        );
        assert_eq!(
            (s.refreshes(), s.stale_hits(), s.skipped_refreshes()),
            (m.refreshes, m.stale_hits, 0),
            "{at}: refreshes only through `refresh`, stale hits only if errors"
        );
        for k in 0..KEYS {
            assert_eq!(
                cache.peek(&k),
                m.live(k).and_then(|h| h.value),
                "{at}: peek({k}) after the step"
            );
        }
        let mut listed: Vec<_> = cache.iter().collect();
        listed.sort_unstable();
        let peeked: Vec<_> = (0..KEYS)
            .filter_map(|k| m.live(k).and_then(|h| h.value).map(|v| (k, v)))
            .collect();
        assert_eq!(listed, peeked, "{at}: iter() lists what peek returns");
    }
    // Exactly-once accounting: once everything is invalidated, the listener
    // has heard of every value stored, once each, and of nothing else.
    cache.invalidate_all();
    cache.run_pending_tasks();
    let mut by_key: HashMap<u8, Vec<u32>> = HashMap::new();
    for (k, v, _) in std::mem::take(&mut *heard.lock().unwrap()) {
        by_key.entry(k).or_default().push(v);
    }
    let mut heard = by_key;
    for values in heard.values_mut().chain(m.stored.values_mut()) {
        values.sort_unstable();
    }
    assert_eq!(heard, m.stored, "the listener hears each stored value once");
}
