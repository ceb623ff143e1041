//! Replays arbitrary operation sequences — reads, bulk reads with arbitrary
//! (duplicate, absent, failing) key batches, writes, refreshes, database
//! changes, clock advances and per-entry TTLs — against a loading cache
//! and the reference model of `tests/loading_model.rs`.
#![no_main]

#[path = "../../tests/support/loading_model.rs"]
mod loading_model;

mod decode;

use decode::decode;
use libfuzzer_sys::{
    arbitrary::{Result, Unstructured},
    fuzz_target,
};
use loading_model::{Config, KEYS, Op, run};

fn config(u: &mut Unstructured<'_>) -> Result<Config> {
    let ttl = if u.arbitrary()? {
        Some(u.int_in_range(1..=9)?)
    } else {
        None
    };
    let negative_ttl = if u.arbitrary()? {
        Some(u.int_in_range(1..=4)?)
    } else {
        None
    };
    let stale_if_error = if u.arbitrary()? {
        Some(u.int_in_range(1..=7)?)
    } else {
        None
    };
    let capacity = if u.arbitrary()? {
        Some(u.int_in_range(0..=5)?)
    } else {
        None
    };
    Ok(Config {
        ttl,
        negative_ttl,
        stale_if_error,
        capacity,
    })
}

fn op(u: &mut Unstructured<'_>) -> Result<Op> {
    let key = |u: &mut Unstructured<'_>| u.int_in_range(0..=KEYS - 1);
    Ok(match u.int_in_range(0..=14u8)? {
        0 => Op::Get(key(u)?),
        1 => {
            let n = u.int_in_range(0..=8u8)?;
            Op::GetMany((0..n).map(|_| key(u)).collect::<Result<_>>()?)
        }
        2 => Op::Insert(key(u)?, u.arbitrary()?),
        3 => Op::Invalidate(key(u)?),
        4 => Op::InvalidateAll,
        5 => Op::Refresh(key(u)?),
        6 => Op::DbSet(key(u)?, u.arbitrary()?),
        7 => Op::DbFails(u.arbitrary()?),
        8 => Op::Advance(u.int_in_range(0..=5999)?),
        9 => Op::InvalidateIf(u.int_in_range(1..=4)?),
        10 => Op::InsertTtl(key(u)?, u.arbitrary()?, u.int_in_range(0..=9)?),
        11 => Op::ExpireIn(key(u)?, u.int_in_range(0..=9)?),
        12 => Op::Persist(key(u)?),
        13 => Op::ExpiresIn(key(u)?),
        _ => Op::RunPending,
    })
}

fuzz_target!(|data: &[u8]| {
    if let Some((cfg, ops)) = decode(data, config, op) {
        run(cfg, ops);
    }
});
