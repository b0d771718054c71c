//! The result cache's configuration: which policy, how many bytes, how much sharing.

use serde::Deserialize;

use super::s4lru::MAX_SEGMENTS;

/// Default bytes all entries may cost together (64 MiB): results of pure functions worth
/// caching are usually small, and the broker's memory must stay predictable (acceptance K7).
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Default bytes one entry may cost (1 MiB, memcached's item limit): a larger result would push
/// out many small ones for one hit.
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// Default S4LRU segments (the published S4LRU uses 4).
pub const DEFAULT_SEGMENTS: usize = 4;
/// Default followers per call in flight: enough for a burst of identical calls (K3 sends 100);
/// a follower costs a few dozen bytes, and beyond this callers run their own call.
pub const DEFAULT_MAX_FOLLOWERS: usize = 1024;
/// Default expired entries removed per sweep: bounds the pause of one sweep.
pub const DEFAULT_SWEEP_BUDGET: usize = 1024;

/// Which eviction policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// Least recently used first out.
    Lru,
    /// Segmented LRU: entries hit more than once survive a scan of new keys.
    S4lru,
}

/// `[cache]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// False: the broker runs without a cache (every call runs).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Eviction policy: `lru` or `s4lru`.
    pub policy: PolicyKind,
    /// Bytes all entries may cost together (estimated resident size: key, value, indexes).
    pub max_bytes: usize,
    /// Bytes one entry may cost; larger results are not cached. With `s4lru` an entry must
    /// also fit one segment's share (`max_bytes / segments`).
    pub max_entry_bytes: usize,
    /// Segments of `s4lru` (1 to 16); ignored by `lru`.
    pub segments: usize,
    /// Callers that may wait on one call in flight; later identical callers run their own.
    /// 0: identical calls in flight are never shared.
    pub max_followers: usize,
    /// Expired entries removed per sweep (at least 1).
    pub sweep_budget: usize,
    /// The cluster tier: each key has one owner broker among the cluster's live members
    /// (rendezvous hashing), which keeps its result for all of them; a broker missing a key
    /// asks the owner before running the call, and hands the owner what it computed.
    #[serde(default)]
    pub cluster_tier: bool,
    /// How long a broker waits for the owner's answer before it runs the call itself, ms.
    #[serde(default = "default_cluster_tier_timeout_ms")]
    pub cluster_tier_timeout_ms: u64,
}

/// Default wait for a key owner's answer: a few loopback or LAN round trips.
pub const DEFAULT_CLUSTER_TIER_TIMEOUT_MS: u64 = 200;

fn default_cluster_tier_timeout_ms() -> u64 {
    DEFAULT_CLUSTER_TIER_TIMEOUT_MS
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            policy: PolicyKind::Lru,
            max_bytes: DEFAULT_MAX_BYTES,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            segments: DEFAULT_SEGMENTS,
            max_followers: DEFAULT_MAX_FOLLOWERS,
            sweep_budget: DEFAULT_SWEEP_BUDGET,
            cluster_tier: false,
            cluster_tier_timeout_ms: DEFAULT_CLUSTER_TIER_TIMEOUT_MS,
        }
    }
}

fn enabled_by_default() -> bool {
    true
}

/// A configuration the cache refuses, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheConfigError {
    /// `segments` out of range.
    #[error("cache.segments is {got}; it must be 1 to {max}")]
    Segments {
        /// The value given.
        got: usize,
        /// The most allowed.
        max: usize,
    },
    /// `max_entry_bytes` above `max_bytes`.
    #[error("cache.max_entry_bytes ({entry}) is larger than cache.max_bytes ({total})")]
    EntryOverTotal {
        /// `max_entry_bytes`.
        entry: usize,
        /// `max_bytes`.
        total: usize,
    },
    /// `sweep_budget` of 0 would never sweep.
    #[error("cache.sweep_budget must be at least 1")]
    SweepBudget,
}

impl CacheConfig {
    /// Checks the values, naming the first wrong field.
    pub fn validate(&self) -> Result<(), CacheConfigError> {
        if !(1..=MAX_SEGMENTS).contains(&self.segments) {
            return Err(CacheConfigError::Segments {
                got: self.segments,
                max: MAX_SEGMENTS,
            });
        }
        if self.max_entry_bytes > self.max_bytes {
            return Err(CacheConfigError::EntryOverTotal {
                entry: self.max_entry_bytes,
                total: self.max_bytes,
            });
        }
        if self.sweep_budget == 0 {
            return Err(CacheConfigError::SweepBudget);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_wrong_fields_are_named() {
        assert_eq!(CacheConfig::default().validate(), Ok(()));
        let with = |f: fn(&mut CacheConfig)| {
            let mut c = CacheConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(with(|c| c.segments = 0).contains("cache.segments is 0"));
        assert!(with(|c| c.segments = MAX_SEGMENTS + 1).contains("cache.segments"));
        assert!(with(|c| c.max_entry_bytes = c.max_bytes + 1).contains("cache.max_entry_bytes"));
        assert!(with(|c| c.sweep_budget = 0).contains("cache.sweep_budget"));
    }

    #[test]
    fn reads_from_toml_and_refuses_unknown_keys() {
        let c: CacheConfig = config::Config::builder()
            .add_source(config::File::from_str(
                "policy = \"s4lru\"\nmax_bytes = 100\nmax_entry_bytes = 10\nsegments = 2\n\
                 max_followers = 3\nsweep_budget = 4\n",
                config::FileFormat::Toml,
            ))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        assert_eq!(c.policy, PolicyKind::S4lru);
        assert_eq!((c.max_bytes, c.segments), (100, 2));
        let unknown = config::Config::builder()
            .add_source(config::File::from_str(
                "policy = \"lfu\"\nmax_bytes = 1\nmax_entry_bytes = 1\nsegments = 1\n\
                 max_followers = 1\nsweep_budget = 1\n",
                config::FileFormat::Toml,
            ))
            .build()
            .unwrap()
            .try_deserialize::<CacheConfig>();
        assert!(unknown.is_err());
    }
}
