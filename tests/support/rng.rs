//! A small xorshift generator for tests: fixed seeds, no dependency.

/// xorshift64, seeded through a multiply so that small seeds differ at once.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (not 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
