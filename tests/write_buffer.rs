//! Model test of the write-behind buffer: random pushes, batches, per-key
//! and whole-batch failures, clock advances and flushes against a per-key
//! log of writes (the model lives in `support/write_buffer_model.rs`, shared
//! with the fuzz target), then a flush that must drain everything.

#[path = "support/cases.rs"]
mod cases;
#[path = "support/write_buffer_model.rs"]
mod model;

use model::{Config, KEYS, Op, run};
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS;
    prop_oneof![
        10 => (key.clone(), proptest::option::of(any::<u8>())).prop_map(|(k, v)| Op::Push(k, v)),
        3 => proptest::collection::vec((key, proptest::option::of(any::<u8>()), any::<u8>()), 1..8)
            .prop_map(Op::Drain),
        5 => (1u8..9).prop_map(Op::Take),
        4 => any::<u8>().prop_map(Op::Succeed),
        2 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(p, m, d)| Op::FailSome(p, m, d)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(p, d)| Op::FailBatch(p, d)),
        3 => (0u16..3000).prop_map(Op::Advance),
        1 => Just(Op::Flush),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        1u32..5,
        (1u64..500, 0u64..2000),
        prop_oneof![Just(0.0), Just(0.5), Just(1.0)],
        1usize..6,
        prop_oneof![Just(0u64), 1u64..3000, Just(u64::MAX)],
        0..KEYS + 2,
    )
        .prop_map(
            |(max_attempts, (base, extra), jitter, batch_size, interval, poisoned)| Config {
                max_attempts,
                base,
                max: base + extra,
                jitter,
                batch_size,
                interval,
                poisoned,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases::cases(500), ..ProptestConfig::default() })]

    #[test]
    fn buffer_matches_reference_model(cfg in config(), ops in proptest::collection::vec(op(), 1..150)) {
        run(cfg, ops);
    }
}

#[test]
fn a_poisoned_key_written_all_along_still_drains() {
    let cfg = Config {
        max_attempts: 3,
        base: 100,
        max: 1_000,
        jitter: 0.5,
        batch_size: 4,
        interval: 500,
        poisoned: 0,
    };
    let mut ops = Vec::new();
    for i in 0..200u16 {
        ops.push(Op::Push((i % 7) as u8 % KEYS, Some(i as u8)));
        ops.push(Op::Push(0, if i % 3 == 0 { None } else { Some(1) }));
        ops.push(Op::Take(4));
        ops.push(Op::FailBatch(0, (i * 37) as u8));
        ops.push(Op::Take(1));
        ops.push(Op::FailSome(1, 0b1, (i * 11) as u8));
        ops.push(Op::Advance(i * 13));
        if i % 50 == 0 {
            ops.push(Op::Flush);
        }
    }
    run(cfg, ops);
}
