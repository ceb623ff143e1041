//! Model test: random operation sequences, including clock advances, run
//! against a `HashMap`-with-deadlines reference on a `MockClock` (the model
//! lives in `support/model.rs`, shared with the fuzz target).

#[path = "support/model.rs"]
mod model;

use model::{Config, KEYS, Op, run};
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS;
    prop_oneof![
        8 => (key.clone(), any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
        3 => (key.clone(), any::<u16>(), 1u8..20).prop_map(|(k, v, t)| Op::InsertTtl(k, v, t)),
        8 => key.clone().prop_map(Op::Get),
        2 => key.clone().prop_map(Op::Peek),
        2 => key.clone().prop_map(Op::Contains),
        2 => key.clone().prop_map(Op::Remove),
        1 => key.prop_map(Op::Invalidate),
        1 => (2u16..7).prop_map(Op::InvalidateIf),
        1 => Just(Op::InvalidateAll),
        4 => (0u16..4000).prop_map(Op::Advance),
        2 => Just(Op::RunPending),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![Just(0u64), 1u64..8, 8u64..40, Just(1_000)],
        prop_oneof![Just(1usize), Just(4)],
        proptest::option::of(1u64..15),
        proptest::option::of(1u64..10),
        any::<bool>(),
    )
        .prop_map(|(capacity, shards, ttl, tti, weighted)| Config {
            capacity,
            shards,
            ttl,
            tti,
            weighted,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn cache_matches_reference_model(cfg in config(), ops in proptest::collection::vec(op(), 1..120)) {
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
        weighted: false,
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
