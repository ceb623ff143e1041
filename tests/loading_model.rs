//! Model test of the loading cache: random reads, bulk reads, writes,
//! invalidations, refreshes, database changes and failures, clock advances,
//! and one value's time to live given, read and changed, against a reference in `support/loading_model.rs` (shared with
//! the fuzz target `loading_ops`).

#[path = "support/cases.rs"]
mod cases;
#[path = "support/loading_model.rs"]
mod loading_model;

use loading_model::{Config, KEYS, Op, run};
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS;
    prop_oneof![
        10 => key.clone().prop_map(Op::Get),
        3 => proptest::collection::vec(key.clone(), 0..6).prop_map(Op::GetMany),
        3 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => key.clone().prop_map(Op::Invalidate),
        1 => any::<u8>().prop_map(Op::InvalidateIf),
        1 => Just(Op::InvalidateAll),
        2 => key.clone().prop_map(Op::Refresh),
        5 => (key.clone(), proptest::option::of(any::<u32>())).prop_map(|(k, v)| Op::DbSet(k, v)),
        1 => any::<bool>().prop_map(Op::DbFails),
        4 => (0u16..6000).prop_map(Op::Advance),
        1 => Just(Op::RunPending),
        2 => (key.clone(), any::<u32>(), 0u8..10).prop_map(|(k, v, t)| Op::InsertTtl(k, v, t)),
        2 => (key.clone(), 0u8..10).prop_map(|(k, t)| Op::ExpireIn(k, t)),
        1 => key.clone().prop_map(Op::Persist),
        1 => key.prop_map(Op::ExpiresIn),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        proptest::option::of(1u64..10),
        proptest::option::of(1u64..5),
        proptest::option::of(1u64..8),
        proptest::option::of(prop_oneof![Just(0u64), 1u64..6]),
    )
        .prop_map(|(ttl, negative_ttl, stale_if_error, capacity)| Config {
            ttl,
            negative_ttl,
            stale_if_error,
            capacity,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases::cases(300), ..ProptestConfig::default() })]

    #[test]
    fn loading_cache_matches_reference_model(cfg in config(), ops in proptest::collection::vec(op(), 1..150)) {
        run(cfg, ops);
    }
}
