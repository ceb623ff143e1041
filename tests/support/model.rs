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
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use larder::{Cache, RemovalCause, clock::MockClock};

/// Keys are drawn from `0..KEYS`.
pub const KEYS: u8 = 24;
const NS: u64 = 1_000_000_000;

/// One step of a replayed sequence.
#[derive(Clone, Debug)]
pub enum Op {
    Insert(u8, u16),
    InsertTtl(u8, u16, u8),
    Get(u8),
    Peek(u8),
    Contains(u8),
    Remove(u8),
    Invalidate(u8),
    InvalidateIf(u16),
    InvalidateAll,
    Advance(u16),
    RunPending,
}

/// The cache under test: its bound, shards and expiry settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub capacity: u64,
    pub shards: usize,
    pub ttl: Option<u64>,
    pub tti: Option<u64>,
    pub weighted: bool,
}

/// A reference entry: value, deadline and write-based cap (ns), weight.
#[derive(Clone, Copy, Debug)]
struct Entry {
    value: u16,
    at: u64,
    hard: u64,
}

type Event = (u8, u16, RemovalCause);

struct Model {
    cfg: Config,
    now: u64,
    map: HashMap<u8, Entry>,
    expected: Vec<Event>,
    hits: u64,
    misses: u64,
    /// The step's write, if it was one: the total weight the reference held
    /// once it was made (expired entries not yet reaped included), before
    /// any eviction. Only a write can evict for size, and only past a
    /// shard's capacity.
    pressure: Option<u64>,
}

fn weight(value: u16) -> u32 {
    u32::from(value % 4)
}

impl Model {
    fn weight_of(&self, e: &Entry) -> u64 {
        if self.cfg.weighted {
            u64::from(weight(e.value))
        } else {
            1
        }
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

    fn live(&self, k: u8) -> Option<Entry> {
        self.map.get(&k).copied().filter(|e| self.now < e.at)
    }

    /// Removes `k` if present, predicting its notification.
    fn take(&mut self, k: u8, cause_if_live: RemovalCause) -> Option<u16> {
        let e = self.map.remove(&k)?;
        let live = self.now < e.at;
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

    fn write(&mut self, k: u8, value: u16, ttl: Option<u64>) {
        self.take(k, RemovalCause::Replaced);
        let after = |d: u64| self.now.saturating_add(d * NS);
        let hard = ttl.or(self.cfg.ttl).map_or(u64::MAX, after);
        let at = self.cfg.tti.map_or(hard, |tti| hard.min(after(tti)));
        self.map.insert(k, Entry { value, at, hard });
    }

    /// A read hit slides an idle deadline (in steps above ~1 ms, as the cache does).
    fn read(&mut self, k: u8) -> Option<u16> {
        let now = self.now;
        let tti = self.cfg.tti;
        let e = self.map.get_mut(&k).filter(|e| now < e.at)?;
        if let Some(tti) = tti {
            let next = e.hard.min(now + tti * NS);
            if next > e.at + (1 << 20) {
                e.at = next;
            }
        }
        Some(e.value)
    }
}

fn build(cfg: &Config, clock: &MockClock, events: &Arc<Mutex<Vec<Event>>>) -> Cache<u8, u16> {
    let log = events.clone();
    let mut b = Cache::builder()
        .max_capacity(cfg.capacity)
        .num_shards(cfg.shards)
        .clock(clock.clone())
        .eviction_listener(move |k: Arc<u8>, v: u16, cause| {
            log.lock().unwrap().push((*k, v, cause))
        });
    if cfg.weighted {
        b = b.weigher(|_, v| weight(*v));
    }
    if let Some(ttl) = cfg.ttl {
        b = b.time_to_live(Duration::from_secs(ttl));
    }
    if let Some(tti) = cfg.tti {
        b = b.time_to_idle(Duration::from_secs(tti));
    }
    b.build().unwrap()
}

fn apply(op: &Op, cache: &Cache<u8, u16>, clock: &MockClock, m: &mut Model) {
    match *op {
        Op::Insert(k, v) => {
            cache.insert(k, v);
            m.write(k, v, None);
            m.pressure = Some(m.total_weight());
        }
        Op::InsertTtl(k, v, t) => {
            cache.insert_with_ttl(k, v, Duration::from_secs(u64::from(t)));
            m.write(k, v, Some(u64::from(t)));
            m.pressure = Some(m.total_weight());
        }
        Op::Get(k) => {
            let expected = m.read(k);
            if expected.is_some() {
                m.hits += 1
            } else {
                m.misses += 1
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
            let doomed: Vec<u8> = m
                .map
                .iter()
                .filter(|&(_, e)| m.now < e.at && e.value % modulus == 0)
                .map(|(&k, _)| k)
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
        Op::Advance(ms) => {
            clock.advance(Duration::from_millis(u64::from(ms)));
            m.now += u64::from(ms) * 1_000_000;
        }
        Op::RunPending => {
            cache.run_pending_tasks();
            let expired: Vec<u8> = m
                .map
                .iter()
                .filter(|(_, e)| e.at <= m.now)
                .map(|(&k, _)| k)
                .collect();
            for k in expired {
                m.take(k, RemovalCause::Expired);
            }
        }
    }
}

/// Matches observed notifications against predictions; unpredicted ones must
/// be size evictions (or expiries) of entries the reference still holds.
fn reconcile(observed: Vec<Event>, m: &mut Model) {
    let mut expected = std::mem::take(&mut m.expected);
    let pressure = m.pressure.take();
    for (k, v, cause) in observed {
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
                assert!(m.now < held.at, "size eviction of an expired entry {k}");
                let floor = m.smallest_shard();
                assert!(
                    pressure.is_some_and(|total| total > floor || floor == 0),
                    "size eviction of {k} with room to spare: {pressure:?} held, \
                     no shard holds less than {floor}"
                );
            }
            RemovalCause::Expired => assert!(held.at <= m.now, "entry {k} reported expired early"),
            other => panic!("unpredicted {other:?} of {k}={v}"),
        }
        m.map.remove(&k);
    }
    assert!(
        expected.is_empty(),
        "notifications never delivered: {expected:?}"
    );
}

fn check(cache: &Cache<u8, u16>, m: &Model) {
    cache.check_invariants();
    for k in 0..KEYS {
        assert_eq!(
            cache.peek(&k),
            m.live(k).map(|e| e.value),
            "contents differ at key {k}"
        );
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
    let clock = MockClock::new();
    let events = Arc::new(Mutex::new(Vec::new()));
    let cache = build(&cfg, &clock, &events);
    let mut m = Model {
        cfg,
        now: 0,
        map: HashMap::new(),
        expected: Vec::new(),
        hits: 0,
        misses: 0,
        pressure: None,
    };
    for op in &ops {
        apply(op, &cache, &clock, &mut m);
        let observed = std::mem::take(&mut *events.lock().unwrap());
        reconcile(observed, &mut m);
        check(&cache, &m);
    }
    let stats = cache.stats();
    assert_eq!(
        (stats.hits(), stats.misses()),
        (m.hits, m.misses),
        "hit and miss counts"
    );
}
