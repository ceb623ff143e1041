//! Model test: random operation sequences, including clock advances, run
//! against a `HashMap`-with-deadlines reference on a `MockClock` (the model
//! lives in `support/model.rs`, shared with the fuzz target).

#[path = "support/cases.rs"]
mod cases;
#[path = "support/model.rs"]
mod model;

use model::{Config, KEYS, Op, Weigher, run};
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS;
    prop_oneof![
        24 => (key.clone(), any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
        9 => (key.clone(), any::<u16>(), 0u8..=20).prop_map(|(k, v, t)| Op::InsertTtl(k, v, t)),
        24 => key.clone().prop_map(Op::Get),
        6 => key.clone().prop_map(Op::Peek),
        6 => key.clone().prop_map(Op::Contains),
        6 => key.clone().prop_map(Op::Remove),
        3 => key.clone().prop_map(Op::Invalidate),
        3 => (2u16..7).prop_map(Op::InvalidateIf),
        3 => Just(Op::InvalidateAll),
        6 => (key.clone(), any::<u16>()).prop_map(|(k, v)| Op::GetWith(k, v)),
        3 => (key.clone(), any::<u16>(), any::<bool>()).prop_map(|(k, v, ok)| Op::TryGetWith(k, v, ok)),
        3 => key.clone().prop_map(Op::GetWithPanic),
        3 => (key.clone(), any::<u16>(), any::<u16>(), 0u8..3)
            .prop_map(|(k, v, w, kind)| Op::GetWithWrite(k, v, w, kind)),
        3 => (key.clone(), any::<u16>()).prop_map(|(k, v)| Op::IterWriting(k, v)),
        3 => (key.clone(), any::<u16>()).prop_map(|(k, v)| Op::OrInsertWith(k, v)),
        8 => (key.clone(), any::<u16>(), 0u8..4).prop_map(|(k, v, kind)| Op::Compute(k, v, kind)),
        3 => (key.clone(), any::<u16>(), any::<u16>(), 0u8..2)
            .prop_map(|(k, v, w, kind)| Op::ComputeWrite(k, v, w, kind)),
        6 => (key.clone(), 0u8..=20).prop_map(|(k, t)| Op::Expire(k, t)),
        2 => key.clone().prop_map(Op::Persist),
        4 => key.clone().prop_map(Op::ExpiresIn),
        12 => (0u16..4000).prop_map(Op::Advance),
        6 => (key, -2i8..=2).prop_map(|(k, d)| Op::AdvanceNear(k, d)),
        1 => (0u8..5).prop_map(Op::Jump),
        6 => Just(Op::RunPending),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![Just(0u64), 1u64..8, 8u64..40, Just(1_000), Just(u64::MAX)],
        prop_oneof![Just(1usize), Just(4), Just(16), Just(64)],
        proptest::option::of(1u64..15),
        proptest::option::of(1u64..10),
        prop_oneof![
            Just(Weigher::Unit),
            Just(Weigher::Small),
            Just(Weigher::Wide)
        ],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(capacity, shards, ttl, tti, weigher, hooks, jitter, reentrant)| {
                Config {
                    capacity,
                    shards,
                    ttl,
                    tti,
                    weigher,
                    hooks,
                    jitter,
                    reentrant,
                }
                .sane()
            },
        )
}

/// Longest sequence tried: 120 steps, or `MODEL_MAX_OPS` for long runs.
fn max_ops() -> usize {
    std::env::var("MODEL_MAX_OPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(120)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases::cases(300), ..ProptestConfig::default() })]

    #[test]
    fn cache_matches_reference_model(cfg in config(), ops in proptest::collection::vec(op(), 1..max_ops())) {
        run(cfg, ops);
    }
}

#[test]
fn model_catches_a_long_unbounded_run() {
    let cfg = Config {
        capacity: 1_000,
        shards: 4,
        ttl: Some(5),
        tti: Some(2),
        weigher: Weigher::Unit,
        hooks: false,
        jitter: false,
        reentrant: false,
    };
    let ops: Vec<Op> = (0..2_000u16)
        .map(|i| match i % 7 {
            0 | 1 => Op::Insert((i % u16::from(KEYS)) as u8, i),
            2 => Op::Get((i * 7 % u16::from(KEYS)) as u8),
            3 => Op::Advance(700),
            4 => Op::InsertTtl((i % 5) as u8, i, 3),
            5 => Op::RunPending,
            _ => Op::Remove((i % 3) as u8),
        })
        .collect();
    run(cfg, ops);
}
