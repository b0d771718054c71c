//! The hash maps of the request path: foldhash instead of the standard library's SipHash.
//!
//! SipHash was 5 % of the broker's CPU under 1,000 pipelined calls (plans, tasks, clients and
//! workers are looked up several times per call). foldhash is several times faster on short
//! keys and is seeded at random per map, so keys a client chooses (plan ids, routing ids,
//! topics) cannot be crafted to collide.

/// A `HashMap` hashed with foldhash, randomly seeded.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
