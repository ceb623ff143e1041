//! Eviction and admission policies.
