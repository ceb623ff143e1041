//! Replays arbitrary operation sequences (the model of `tests/write_buffer.rs`)
//! against the write-behind buffer and a per-key log of writes, checking the
//! buffer's invariants after every step and draining it with a flush at the
//! end.
#![no_main]

#[path = "../../tests/support/write_buffer_model.rs"]
mod model;

mod decode;

use decode::decode;
use libfuzzer_sys::{
    arbitrary::{Result, Unstructured},
    fuzz_target,
};
use model::{Config, KEYS, Op, run};

fn config(u: &mut Unstructured<'_>) -> Result<Config> {
    let base = u.int_in_range(1..=499)?;
    let jitter = f64::from(u.int_in_range(0..=4u8)?) / 4.0;
    let interval = match u.int_in_range(0..=2u8)? {
        0 => 0,
        1 => u.int_in_range(1..=2999)?,
        _ => u64::MAX,
    };
    Ok(Config {
        max_attempts: u.int_in_range(1..=4)?,
        base,
        max: base + u.int_in_range(0..=1999)?,
        jitter,
        batch_size: u.int_in_range(1..=5)?,
        interval,
        poisoned: u.int_in_range(0..=KEYS + 1)?,
    })
}

fn op(u: &mut Unstructured<'_>) -> Result<Op> {
    Ok(match u.int_in_range(0..=10u8)? {
        0..=2 => Op::Push(u.int_in_range(0..=KEYS - 1)?, u.arbitrary()?),
        10 => {
            let n = u.int_in_range(1..=8)?;
            let pushes = (0..n)
                .map(|_| {
                    Ok((
                        u.int_in_range(0..=KEYS - 1)?,
                        u.arbitrary()?,
                        u.arbitrary()?,
                    ))
                })
                .collect::<Result<_>>()?;
            Op::Drain(pushes)
        }
        3 | 4 => Op::Take(u.int_in_range(1..=8)?),
        5 => Op::Succeed(u.arbitrary()?),
        6 => Op::FailSome(u.arbitrary()?, u.arbitrary()?, u.arbitrary()?),
        7 => Op::FailBatch(u.arbitrary()?, u.arbitrary()?),
        8 => Op::Advance(u.int_in_range(0..=2999)?),
        _ => Op::Flush,
    })
}

fuzz_target!(|data: &[u8]| {
    if let Some((cfg, ops)) = decode(data, config, op) {
        run(cfg, ops);
    }
});
