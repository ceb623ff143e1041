//! Loading: single-flight `get_with` / `try_get_with`.
//!
//! Read-through loaders, refresh-ahead and stale-while-revalidate will live
//! beside [`flight`] as they arrive.

pub(crate) mod flight;
