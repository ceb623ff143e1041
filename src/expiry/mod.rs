//! Expiry: the clock, the hierarchical timing wheel and the `Expiry` trait.

pub(crate) mod wheel;
