//! Model test with two threads: each replays its own random operation
//! sequence on keys of its own (even keys for one, odd for the other) of
//! one shared cache, against a reference `HashMap` of its own.
//!
//! The threads share shards, locks, the policy, the counters and the
//! bulk operations' passes (`invalidate_entries_if` retries a shard written
//! while it tests it, `iter` copies a shard at a time), but not keys, so
//! what each sees of its own keys is exactly what its reference predicts:
//! the cache is unbounded and its clock never moves, so nothing leaves but
//! what a thread removes or replaces itself, and the listener, running on
//! the thread that caused the removal, must have told that thread of each
//! removal before its call returns. At the end the counters must add up.

#[path = "support/cases.rs"]
mod cases;
#[path = "support/threads.rs"]
mod threads;

use std::{
    collections::HashMap,
    sync::{Arc, Barrier, Mutex},
    time::Duration,
};

use larder::{Cache, RemovalCause, clock::MockClock};
use proptest::prelude::*;
use threads::parallel;

/// Each thread's keys are `2 * k + thread` for `k` in `0..KEYS`.
const KEYS: u8 = 12;

#[derive(Clone, Copy, Debug)]
enum Op {
    Insert(u8, u16),
    InsertTtl(u8, u16),
    Get(u8),
    Peek(u8),
    Remove(u8),
    Invalidate(u8),
    /// `invalidate_entries_if` of this thread's values divisible by this.
    InvalidateIf(u16),
    GetWith(u8, u16),
    TryGetWith(u8, u16, bool),
    /// `iter`: this thread's keys must be listed exactly as held.
    Iter,
}

#[derive(Clone, Copy, Debug)]
struct Config {
    shards: usize,
    weighted: bool,
    ttl: bool,
    tti: bool,
}

type Event = (u16, u16, RemovalCause);

/// One thread's side: its reference, counts and the notifications it
/// expects; the listener files notifications by the key's thread.
struct Side {
    map: HashMap<u16, u16>,
    expected: Vec<Event>,
    hits: u64,
    misses: u64,
    loads: u64,
    removals: [u64; 3],
}

impl Side {
    fn take(&mut self, k: u16, cause: RemovalCause) -> Option<u16> {
        let v = self.map.remove(&k)?;
        self.expected.push((k, v, cause));
        Some(v)
    }

    fn write(&mut self, k: u16, v: u16) {
        self.take(k, RemovalCause::Replaced);
        self.map.insert(k, v);
    }

    fn read(&mut self, k: u16) -> Option<u16> {
        let v = self.map.get(&k).copied();
        if v.is_some() {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        v
    }
}

fn build(cfg: Config, logs: &Arc<[Mutex<Vec<Event>>; 2]>) -> Cache<u16, u16> {
    let logs = logs.clone();
    // Far beyond anything a run reaches: the clock never moves.
    let long = Duration::from_secs(1_000);
    let mut b = Cache::builder()
        .num_shards(cfg.shards)
        .clock(MockClock::new())
        .eviction_listener(move |k: Arc<u16>, v: u16, cause| {
            logs[usize::from(*k % 2)]
                .lock()
                .unwrap()
                .push((*k, v, cause))
        });
    if cfg.weighted {
        b = b.weigher(|_, v: &u16| u32::from(*v % 4));
    }
    if cfg.ttl {
        b = b.time_to_live(long);
    }
    if cfg.tti {
        b = b.time_to_idle(long);
    }
    b.build().unwrap()
}

fn apply(op: Op, t: u16, cache: &Cache<u16, u16>, s: &mut Side) {
    let key = |k: u8| 2 * u16::from(k) + t;
    match op {
        Op::Insert(k, v) => {
            cache.insert(key(k), v);
            s.write(key(k), v);
        }
        Op::InsertTtl(k, v) => {
            cache.insert_with_ttl(key(k), v, Duration::from_secs(500));
            s.write(key(k), v);
        }
        Op::Get(k) => assert_eq!(cache.get(&key(k)), s.read(key(k)), "get({})", key(k)),
        Op::Peek(k) => assert_eq!(cache.peek(&key(k)), s.map.get(&key(k)).copied()),
        Op::Remove(k) => {
            let expected = s.take(key(k), RemovalCause::Explicit);
            assert_eq!(cache.remove(&key(k)), expected, "remove({})", key(k));
        }
        Op::Invalidate(k) => {
            cache.invalidate(&key(k));
            s.take(key(k), RemovalCause::Explicit);
        }
        Op::InvalidateIf(m) => {
            cache.invalidate_entries_if(move |k, v| k % 2 == t && v % m == 0);
            let doomed: Vec<u16> = s
                .map
                .iter()
                .filter(|&(_, v)| v % m == 0)
                .map(|(&k, _)| k)
                .collect();
            for k in doomed {
                s.take(k, RemovalCause::Explicit);
            }
        }
        Op::GetWith(k, v) => {
            let expected = s.read(key(k)).unwrap_or_else(|| {
                s.loads += 1;
                s.write(key(k), v);
                v
            });
            assert_eq!(
                cache.get_with(key(k), || v),
                expected,
                "get_with({})",
                key(k)
            );
        }
        Op::TryGetWith(k, v, ok) => {
            let expected = match s.read(key(k)) {
                Some(held) => Ok(held),
                None => {
                    s.loads += 1;
                    if ok {
                        s.write(key(k), v);
                    }
                    if ok { Ok(v) } else { Err(()) }
                }
            };
            let got = cache.try_get_with(key(k), || if ok { Ok(v) } else { Err(()) });
            assert_eq!(got.map_err(|e| *e), expected, "try_get_with({})", key(k));
        }
        Op::Iter => {
            let mut listed: Vec<(u16, u16)> = cache.iter().filter(|(k, _)| k % 2 == t).collect();
            listed.sort_unstable();
            let mut held: Vec<(u16, u16)> = s.map.iter().map(|(&k, &v)| (k, v)).collect();
            held.sort_unstable();
            assert_eq!(listed, held, "iter() lists this thread's entries");
        }
    }
}

/// Replays `ops` as thread `t`, checking its notifications after each step.
fn side(t: u16, ops: &[Op], cache: &Cache<u16, u16>, log: &Mutex<Vec<Event>>) -> Side {
    let mut s = Side {
        map: HashMap::new(),
        expected: Vec::new(),
        hits: 0,
        misses: 0,
        loads: 0,
        removals: [0; 3],
    };
    for (step, &op) in ops.iter().enumerate() {
        apply(op, t, cache, &mut s);
        let mut heard = std::mem::take(&mut *log.lock().unwrap());
        let mut expected = std::mem::take(&mut s.expected);
        for &(_, _, cause) in &heard {
            let i = match cause {
                RemovalCause::Explicit => 0,
                RemovalCause::Replaced => 1,
                _ => 2,
            };
            s.removals[i] += 1;
        }
        heard.sort_unstable_by_key(|&(k, v, c)| (k, v, c as u8));
        expected.sort_unstable_by_key(|&(k, v, c)| (k, v, c as u8));
        assert_eq!(
            heard, expected,
            "thread {t}, step {step} ({op:?}): notifications"
        );
    }
    s
}

fn run(cfg: Config, ops: [Vec<Op>; 2]) {
    let logs: Arc<[Mutex<Vec<Event>>; 2]> = Arc::new(Default::default());
    let cache = build(cfg, &logs);
    let barrier = Arc::new(Barrier::new(2));
    let ops = Arc::new(ops);
    let shared = (cache.clone(), logs.clone(), barrier, ops);
    let sides = parallel(Duration::from_secs(60), "two model threads", 2, move |t| {
        let (cache, logs, barrier, ops) = &shared;
        barrier.wait();
        side(t as u16, &ops[t], cache, &logs[t])
    });
    cache.check_invariants();
    let held: u64 = sides.iter().map(|s| s.map.len() as u64).sum();
    assert_eq!(cache.entry_count(), held, "entry count");
    let s = cache.stats();
    let sum = |f: fn(&Side) -> u64| sides.iter().map(f).sum::<u64>();
    assert_eq!(
        (s.hits(), s.misses(), s.loads()),
        (sum(|s| s.hits), sum(|s| s.misses), sum(|s| s.loads)),
        "hits, misses, loads"
    );
    assert_eq!(
        (
            s.removals(RemovalCause::Explicit),
            s.removals(RemovalCause::Replaced),
        ),
        (sum(|s| s.removals[0]), sum(|s| s.removals[1])),
        "removals by cause"
    );
    assert_eq!(sum(|s| s.removals[2]), 0, "nothing expires or is evicted");
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS;
    prop_oneof![
        6 => (key.clone(), any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => (key.clone(), any::<u16>()).prop_map(|(k, v)| Op::InsertTtl(k, v)),
        6 => key.clone().prop_map(Op::Get),
        2 => key.clone().prop_map(Op::Peek),
        2 => key.clone().prop_map(Op::Remove),
        1 => key.clone().prop_map(Op::Invalidate),
        2 => (2u16..5).prop_map(Op::InvalidateIf),
        3 => (key.clone(), any::<u16>()).prop_map(|(k, v)| Op::GetWith(k, v)),
        1 => (key, any::<u16>(), any::<bool>()).prop_map(|(k, v, ok)| Op::TryGetWith(k, v, ok)),
        2 => Just(Op::Iter),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![Just(1usize), Just(2), Just(4), Just(16)],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(shards, weighted, ttl, tti)| Config {
            shards,
            weighted,
            ttl,
            tti,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases::cases(64), ..ProptestConfig::default() })]

    #[test]
    fn two_threads_on_their_own_keys_each_match_their_model(
        cfg in config(),
        ops in [proptest::collection::vec(op(), 1..300), proptest::collection::vec(op(), 1..300)],
    ) {
        run(cfg, ops);
    }
}
