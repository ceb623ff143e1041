//! Hierarchical timing wheel (to be written).
