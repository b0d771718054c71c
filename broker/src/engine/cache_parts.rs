//! What the plan plane records about a step's use of the result cache (the caching plane
//! decides it; see `caching`). A leaf: it knows keys, not plans.

use crate::cache::CacheKey;

/// A step's part in the cache.
#[derive(Debug)]
pub struct StepCache {
    /// Its key.
    pub key: CacheKey,
    /// What it does with it.
    pub part: Part,
}

/// The part a step plays for its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// It runs the call; identical calls wait on it.
    Lead,
    /// It waits for an identical call in flight.
    Follow,
    /// It runs the call without sharing or storing it (too many were waiting already).
    Alone,
    /// It has its result, from the cache or stored in it: later steps reading it link to it.
    Done,
    /// It waits for the answer of its key's owner (the cluster tier).
    Remote,
}
