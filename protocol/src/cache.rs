//! The result cache's messages: what a worker declares cacheable, how a step uses the cache,
//! and the client's and peers' cache requests.

use serde::{Deserialize, Serialize};

use crate::codec::nil_as_default;
use crate::Value;

/// How a step uses the broker's result cache (`Step.cache`). Only functions a worker declared
/// cacheable ([`CacheRule`]) are ever cached; for others the mode changes nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Answer from the cache when it holds the result, else run the call and store its
    /// result (the default).
    #[default]
    Use,
    /// Neither read nor write the cache: the call runs.
    Bypass,
    /// Run the call even when the cache holds its result, and store the new result.
    Refresh,
}

/// A worker's declaration that one of its functions is pure and its results may be cached
/// (`Register.cacheable`, by function name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRule {
    /// How long a result stays valid, in milliseconds (at least 1); absent: until evicted or
    /// invalidated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Tags the results carry, to invalidate them together (`cache_invalidate` by tag).
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tags: Vec<String>,
}

/// `cache_stats`: ask for the broker's cache figures. Answered by `cache_stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStatsRequest {
    /// Request id.
    pub id: u64,
}

/// `cache_stats` reply: the broker's cache figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStatsReply {
    /// The request id.
    pub id: u64,
    /// The answering broker's name.
    pub broker: String,
    /// False when the broker runs without a cache (`[cache] enabled = false`).
    pub enabled: bool,
    /// `lru` or `s4lru`.
    pub policy: String,
    /// Entries held.
    pub entries: u64,
    /// Bytes the entries cost (estimated resident size).
    pub bytes: u64,
    /// The byte budget (`max_bytes`).
    pub max_bytes: u64,
    /// Calls in flight that others wait on (single flight).
    pub flights: u64,
    /// Counters since the broker started: `hits`, `misses`, `insertions`, `too_large`,
    /// `stale`, `shared`, `crowded`, `evictions_capacity`, `evictions_ttl`,
    /// `evictions_invalidation`, `invalidations`.
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// `cache_invalidate`: drop cached results, by tag or by function (exactly one of them), and
/// everything computed from them. Spread to the cluster's other brokers. Answered by
/// `cache_invalidated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheInvalidate {
    /// Request id.
    pub id: u64,
    /// Drop the results carrying this tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Drop the results of this function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fun: Option<String>,
}

/// `cache_invalidated` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheInvalidated {
    /// The request id.
    pub id: u64,
    /// Entries dropped on the answering broker (dependents included).
    pub entries: u64,
    /// Peers the invalidation was sent to (they apply it on receipt; not awaited).
    pub peers: u64,
}

/// `cache_drop` (peer control link): a peer's client invalidated cached results; drop the
/// same here. Not answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheDrop {
    /// Drop the results carrying this tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Drop the results of this function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fun: Option<String>,
}

/// The parts of a cache key, as one broker names a call to another (cluster tier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireKey {
    /// The function.
    pub fun: String,
    /// The step's version requirement, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The requested resources, sorted, without repetition.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub locs: Vec<String>,
    /// The canonical msgpack of the resolved `[args, kwargs]`.
    #[serde(with = "serde_bytes")]
    pub canonical: Vec<u8>,
}

/// `cache_get` (peer data link, cluster tier): do you, the key's owner, hold this result?
/// Answered by `cache_value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheGet {
    /// The asker's id for this lookup (echoed).
    pub gid: u64,
    /// The call.
    pub key: WireKey,
}

/// `cache_value` (peer data link): the owner's answer to `cache_get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheValue {
    /// The lookup's id.
    pub gid: u64,
    /// True when the owner holds the result.
    pub hit: bool,
    /// The result (nil on a miss).
    #[serde(default = "nil_value")]
    pub value: Value,
}

fn nil_value() -> Value {
    Value::Nil
}

/// `cache_put` (peer data link, cluster tier): a result computed here, for its key's owner to
/// keep. Not answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachePut {
    /// The call.
    pub key: WireKey,
    /// Its result.
    pub value: Value,
    /// How long it stays valid, in milliseconds, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Its tags.
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tags: Vec<String>,
}
