//! The result cache's pure core (design section 4; issue 13). So far, the key of a call.
//!
//! Layout:
//! - [`canonical`]: the canonical msgpack of a call's arguments;
//! - [`key`]: the cache key (function, version, resource set, canonical arguments).

pub mod canonical;
pub mod key;

pub use key::CacheKey;
