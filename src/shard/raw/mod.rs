//! Three of the crate's four `unsafe` parts: the SSE2 tag match of the
//! index ([`group`]), the shard lock ([`lock`]) and the prefetch hint a
//! write gives for its key's line of the admission sketch ([`prefetch`]);
//! the fourth is the time-stamp counter read of `expiry::tsc`. Each
//! `unsafe` block says why it is sound in a `// SAFETY:` comment, and
//! each part says what it measured against its safe alternative.

pub(super) mod group;
pub(crate) mod lock;
pub(crate) mod prefetch;
