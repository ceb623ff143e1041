//! Replays arbitrary operation sequences (the model of `tests/model.rs`)
//! against a cache and a reference, running the cache's consistency check
//! after every step.
#![no_main]

#[path = "../../tests/support/model.rs"]
mod model;

mod decode;

use decode::decode;
use libfuzzer_sys::{
    arbitrary::{Result, Unstructured},
    fuzz_target,
};
use model::{Config, KEYS, Op, Weigher, run};

fn config(u: &mut Unstructured<'_>) -> Result<Config> {
    let capacity = match u.int_in_range(0..=4u8)? {
        0 => 0,
        1 => u.int_in_range(1..=8)?,
        2 => u.int_in_range(8..=40)?,
        3 => 1_000,
        _ => u64::MAX,
    };
    let ttl = if u.arbitrary()? {
        Some(u.int_in_range(1..=15)?)
    } else {
        None
    };
    let tti = if u.arbitrary()? {
        Some(u.int_in_range(1..=10)?)
    } else {
        None
    };
    let shards = [1, 4, 16, 64][usize::from(u.int_in_range(0..=3u8)?)];
    let weigher = match u.int_in_range(0..=2u8)? {
        0 => Weigher::Unit,
        1 => Weigher::Small,
        _ => Weigher::Wide,
    };
    Ok(Config {
        capacity,
        shards,
        ttl,
        tti,
        weigher,
        hooks: u.arbitrary()?,
        jitter: u.arbitrary()?,
        reentrant: u.arbitrary()?,
    }
    .sane())
}

fn op(u: &mut Unstructured<'_>) -> Result<Op> {
    let key = |u: &mut Unstructured<'_>| u.int_in_range(0..=KEYS - 1);
    Ok(match u.int_in_range(0..=23u8)? {
        0 => Op::Insert(key(u)?, u.arbitrary()?),
        1 => Op::InsertTtl(key(u)?, u.arbitrary()?, u.int_in_range(0..=20)?),
        2 => Op::Get(key(u)?),
        3 => Op::Peek(key(u)?),
        4 => Op::Contains(key(u)?),
        5 => Op::Remove(key(u)?),
        6 => Op::Invalidate(key(u)?),
        7 => Op::InvalidateIf(u.int_in_range(2..=6)?),
        8 => Op::InvalidateAll,
        9 => Op::Advance(u.int_in_range(0..=3999)?),
        10 => Op::GetWith(key(u)?, u.arbitrary()?),
        11 => Op::TryGetWith(key(u)?, u.arbitrary()?, u.arbitrary()?),
        12 => Op::GetWithPanic(key(u)?),
        13 => Op::AdvanceNear(key(u)?, u.int_in_range(-2..=2)?),
        // Long jumps, rarely: most of them end expiry for the run.
        14 if u.ratio(1, 8)? => Op::Jump(u.arbitrary()?),
        15 => Op::GetWithWrite(key(u)?, u.arbitrary()?, u.arbitrary()?, u.arbitrary()?),
        16 => Op::IterWriting(key(u)?, u.arbitrary()?),
        17 => Op::OrInsertWith(key(u)?, u.arbitrary()?),
        18 => Op::Compute(key(u)?, u.arbitrary()?, u.arbitrary()?),
        19 => Op::ComputeWrite(key(u)?, u.arbitrary()?, u.arbitrary()?, u.arbitrary()?),
        20 => Op::ExpiresIn(key(u)?),
        21 => Op::Expire(key(u)?, u.int_in_range(0..=20)?),
        22 => Op::Persist(key(u)?),
        _ => Op::RunPending,
    })
}

fuzz_target!(|data: &[u8]| {
    if let Some((cfg, ops)) = decode(data, config, op) {
        run(cfg, ops);
    }
});
