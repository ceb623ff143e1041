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
use model::{Config, KEYS, Op, run};

fn config(u: &mut Unstructured<'_>) -> Result<Config> {
    let capacity = match u.int_in_range(0..=3u8)? {
        0 => 0,
        1 => u.int_in_range(1..=8)?,
        2 => u.int_in_range(8..=40)?,
        _ => 1_000,
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
    let shards = if u.arbitrary()? { 1 } else { 4 };
    Ok(Config {
        capacity,
        shards,
        ttl,
        tti,
        weighted: u.arbitrary()?,
    })
}

fn op(u: &mut Unstructured<'_>) -> Result<Op> {
    let key = |u: &mut Unstructured<'_>| u.int_in_range(0..=KEYS - 1);
    Ok(match u.int_in_range(0..=10u8)? {
        0 => Op::Insert(key(u)?, u.arbitrary()?),
        1 => Op::InsertTtl(key(u)?, u.arbitrary()?, u.int_in_range(1..=19)?),
        2 => Op::Get(key(u)?),
        3 => Op::Peek(key(u)?),
        4 => Op::Contains(key(u)?),
        5 => Op::Remove(key(u)?),
        6 => Op::Invalidate(key(u)?),
        7 => Op::InvalidateIf(u.int_in_range(2..=6)?),
        8 => Op::InvalidateAll,
        9 => Op::Advance(u.int_in_range(0..=3999)?),
        _ => Op::RunPending,
    })
}

fuzz_target!(|data: &[u8]| {
    if let Some((cfg, ops)) = decode(data, config, op) {
        run(cfg, ops);
    }
});
