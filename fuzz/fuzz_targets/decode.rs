//! Shared by the fuzz targets: turn fuzzer bytes into a run's settings and
//! up to [`MAX_OPS`] operations.

use libfuzzer_sys::arbitrary::{Result, Unstructured};

/// Longest operation sequence one input decodes to.
pub const MAX_OPS: usize = 256;

/// Settings from `config`, then operations from `op` until the bytes run
/// out or [`MAX_OPS`] is reached; `None` if the settings cannot be read.
pub fn decode<C, O>(
    data: &[u8],
    config: impl FnOnce(&mut Unstructured<'_>) -> Result<C>,
    mut op: impl FnMut(&mut Unstructured<'_>) -> Result<O>,
) -> Option<(C, Vec<O>)> {
    let mut u = Unstructured::new(data);
    let cfg = config(&mut u).ok()?;
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        match op(&mut u) {
            Ok(next) => ops.push(next),
            Err(_) => break,
        }
    }
    Some((cfg, ops))
}
