//! Writing to the user's store: write-behind's coalescing buffer.

pub(crate) mod buffer;
