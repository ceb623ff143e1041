//! larder: an in-process, concurrent, in-memory cache engine.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod expiry;
mod policy;
