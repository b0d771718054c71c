//! The result cache's pure core (design section 4; issue 13). So far, the key of a call and the
//! eviction policies.
//!
//! Layout:
//! - [`canonical`]: the canonical msgpack of a call's arguments;
//! - [`key`]: the cache key (function, version, resource set, canonical arguments);
//! - [`policy`] and [`s4lru`]: the byte-bounded eviction policies, with TTL.

pub mod canonical;
pub mod key;
pub mod policy;
pub mod s4lru;

pub use key::CacheKey;
