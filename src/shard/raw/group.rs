//! Matching one tag against a chunk's sixteen control bytes at once.
//!
//! One of the three parts of [`raw`](super), which with `expiry::tsc` holds
//! the crate's `unsafe` code. On x86-64 the match is SSE2's
//! byte compare and mask move (`pcmpeqb`, `pmovmskb`): three instructions
//! where the portable byte-by-byte fold below compiles to about 38 (a
//! partial vector compare, shuffles and scalar compares). Measured with
//! `valgrind --tool=lackey` on a read-hit loop over 1,000 entries: 174
//! instructions per hit with the fold, 150 with this match, against 111
//! for quick_cache, whose hashbrown table does the same SSE2 match; no safe
//! form found (`u128` SWAR, 16-lane folds into a `u16`) took fewer
//! instructions or less time.
//!
//! The intrinsics are `unsafe` to call only because Rust cannot see from a
//! plain function that SSE2 is available; SSE2 is part of the x86-64
//! baseline and the code is compiled only when the build enables it.

/// Bit `i` set for each byte `i < width` of `ctrl` that equals `tag`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[allow(unsafe_code)]
#[inline]
pub(in crate::shard) fn matching(ctrl: &[u8; 16], tag: u8, width: usize) -> u32 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };
    // SAFETY: this function is compiled only when the target enables SSE2
    // (the `cfg` above), so every intrinsic used here is available. The
    // load reads exactly the 16 bytes of `ctrl`, which the shared borrow
    // keeps valid, and `loadu` has no alignment requirement.
    let mask = unsafe {
        let group = _mm_loadu_si128(ctrl.as_ptr().cast::<__m128i>());
        _mm_movemask_epi8(_mm_cmpeq_epi8(group, _mm_set1_epi8(tag as i8)))
    };
    mask as u32 & ((1 << width) - 1)
}

/// Bit `i` set for each byte `i < width` of `ctrl` that equals `tag`, one
/// byte at a time (every target without SSE2, and the reference the tests
/// hold the SSE2 form to).
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "sse2"))))]
#[inline]
pub(super) fn portable(ctrl: &[u8; 16], tag: u8, width: usize) -> u32 {
    (0..width).fold(0, |bits, i| bits | u32::from(ctrl[i] == tag) << i)
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
pub(super) use portable as matching;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_agrees_with_the_portable_fold() {
        // Every byte value as the tag, against control words that hold it at
        // chosen positions (including past `width`) and near misses elsewhere.
        for tag in 0..=u8::MAX {
            for layout in [
                0u32, 1, 0x8001, 0x0fff, 0xf000, 0xffff, 0x5a5a, 0xa5a5, 0x1234,
            ] {
                let ctrl: [u8; 16] = std::array::from_fn(|i| {
                    if layout & (1 << i) != 0 {
                        tag
                    } else {
                        tag ^ [1, 0x80, 0xff][i % 3]
                    }
                });
                for width in [12, 16] {
                    assert_eq!(
                        matching(&ctrl, tag, width),
                        portable(&ctrl, tag, width),
                        "tag {tag:#x} layout {layout:#x} width {width}"
                    );
                    assert_eq!(matching(&ctrl, tag, width), layout & ((1 << width) - 1));
                }
            }
        }
    }
}
