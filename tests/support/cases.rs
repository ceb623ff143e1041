//! How many cases a model proptest runs: its own default, or
//! `PROPTEST_CASES` for long runs. (A `ProptestConfig` that names its
//! `cases` overrides proptest's own reading of that variable.)

/// `PROPTEST_CASES` if set to a number, else `default`.
pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}
