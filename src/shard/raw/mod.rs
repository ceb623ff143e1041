//! Two of the crate's three `unsafe` parts: the SSE2 tag match of the
//! index ([`group`]) and the shard lock ([`lock`]); the third is the
//! time-stamp counter read of `expiry::tsc`. Each `unsafe` block says why
//! it is sound in a `// SAFETY:` comment, and each part says what it
//! measured against its safe alternative.

pub(super) mod group;
pub(crate) mod lock;
