//! The result cache's pure core (design section 4; issue 13): results of calls to functions
//! declared pure, keyed by the call, bounded in bytes, shared by identical calls in flight.
//!
//! Layout:
//! - [`canonical`]: the canonical msgpack of a call's arguments;
//! - [`key`]: the cache key (function, version, resource set, canonical arguments);
//! - [`policy`] and [`s4lru`]: the byte-bounded eviction policies, with TTL;
//! - [`flight`]: single flight (one execution for identical calls in flight);
//! - [`config`]: the `[cache]` settings;
//! - `index`: tags, functions and dependency links, for invalidation;
//! - this file: [`Cache`], which ties them together and counts.
//!
//! The rule it keeps: a hit returns the result of exactly this call (full canonical bytes
//! compared, never a digest alone), of a result that was never invalidated (transitively along
//! dependencies) and whose TTL has not passed. No I/O, no clock (time is passed in), no
//! randomness, and no unordered iteration reaching an output.
//!
//! How the engine uses it, for a step of a cacheable function, after its references are
//! resolved and its access checked: [`CacheKey::new`], then [`Cache::get`]; on a miss
//! [`Cache::begin`]: `Lead` dispatches and later reports [`Cache::complete`] (a result),
//! [`Cache::fail`] (the worker's failure) or [`Cache::leave`] (gone without an outcome);
//! `Follow` waits to be handed the outcome; `Crowded` dispatches alone and stores nothing.

pub mod canonical;
pub mod config;
pub mod flight;
mod index;
pub mod key;
pub mod policy;
pub mod s4lru;

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use mpreg_protocol::Value;

pub use config::{CacheConfig, CacheConfigError, PolicyKind};
pub use flight::{Flight, Left};
pub use key::CacheKey;

use flight::Flights;
use index::Index;
use policy::{Budget, ByteLru, Lookup, Policy, Put};
use s4lru::S4lru;

/// Fixed cost of one entry besides its key, value, tags and links, in bytes: the policy's list
/// node and hash slot, the entry itself, its place in the function and deadline indexes. An
/// estimate, so that millions of tiny results cannot hold far more memory than `max_bytes`.
pub const ENTRY_OVERHEAD_BYTES: usize = 256;
/// Cost of one tag or one dependency link of an entry, in bytes besides the tag's text: the
/// index node's share and the key clone (an estimate).
pub const LINK_BYTES: usize = 64;

/// One cached result.
#[derive(Debug)]
pub struct Entry {
    /// The result.
    pub value: Value,
    /// What the entry costs (key, value, tags, links, overhead), as counted against
    /// `max_bytes`.
    pub bytes: usize,
    /// When it expires (`None`: only room or invalidation remove it).
    pub expires_at: Option<Instant>,
    /// Its tags, sorted, each once.
    pub tags: Box<[Box<str>]>,
    /// The keys of the cached entries its arguments came from, sorted, each once.
    pub parents: Box<[CacheKey]>,
}

/// How to store a result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fill {
    /// Time to live (`None`: no expiry).
    pub ttl: Option<Duration>,
    /// Tags to invalidate it by (the function's, from its registration).
    pub tags: Vec<String>,
    /// The keys of the cached entries whose results fed this call's arguments in the same
    /// plan: invalidating one of them invalidates this entry too.
    pub parents: Vec<CacheKey>,
}

/// What storing a result did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Cached; `evicted` entries were pushed out to make room.
    Cached {
        /// Entries pushed out.
        evicted: usize,
    },
    /// Not cached: it costs more than one entry may.
    TooLarge {
        /// What it would cost.
        bytes: usize,
        /// What one entry may cost.
        limit: usize,
    },
    /// Not cached: an invalidation happened while the call ran, so the result may be built on
    /// what was invalidated.
    Stale,
    /// Not cached: the caller led no flight of this key (it left, or ran crowded).
    NotLeading,
}

/// A flight that ended with a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed<W> {
    /// The followers, in the order they came: each gets the result.
    pub followers: Vec<W>,
    /// Whether the result was cached.
    pub stored: Stored,
}

/// Entries removed, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evictions {
    /// Pushed out to make room.
    pub capacity: u64,
    /// Their TTL passed (found on a read or by a sweep).
    pub ttl: u64,
    /// Invalidated by key, tag or function, or downstream of one.
    pub invalidation: u64,
}

/// Counters since the cache was made (only ever increase).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Reads that found a live entry.
    pub hits: u64,
    /// Reads that did not.
    pub misses: u64,
    /// Results stored.
    pub insertions: u64,
    /// Results not stored for their size.
    pub too_large: u64,
    /// Results not stored because an invalidation happened while their call ran.
    pub stale: u64,
    /// Callers that followed a call in flight instead of dispatching their own.
    pub shared: u64,
    /// Callers that found a call in flight with no room for followers.
    pub crowded: u64,
    /// Entries removed, by cause.
    pub evictions: Evictions,
}

/// What the cache holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheGauges {
    /// Bytes held (never above `max_bytes`).
    pub bytes: usize,
    /// Entries held.
    pub entries: usize,
    /// Calls in flight.
    pub flights: usize,
    /// Callers waiting on them.
    pub followers: usize,
}

/// The result cache. `W` identifies a caller waiting on a call in flight (the engine's step).
pub struct Cache<W> {
    config: CacheConfig,
    store: Box<dyn Policy<CacheKey, Entry> + Send>,
    index: Index,
    flights: Flights<W>,
    /// Bumped by every invalidation: a flight that began in an older epoch stores nothing.
    epoch: u64,
    counters: CacheCounters,
}

impl<W: Clone + PartialEq> Cache<W> {
    /// An empty cache.
    pub fn new(config: CacheConfig) -> Result<Self, CacheConfigError> {
        config.validate()?;
        let budget = Budget {
            max_bytes: config.max_bytes,
            max_entry_bytes: config.max_entry_bytes,
        };
        let store: Box<dyn Policy<CacheKey, Entry> + Send> = match config.policy {
            PolicyKind::Lru => Box::new(ByteLru::new(budget)),
            PolicyKind::S4lru => {
                let n = NonZeroUsize::new(config.segments).ok_or(CacheConfigError::Segments {
                    got: 0,
                    max: s4lru::MAX_SEGMENTS,
                })?;
                Box::new(S4lru::new(budget, n))
            }
        };
        Ok(Cache {
            flights: Flights::new(config.max_followers),
            config,
            store,
            index: Index::default(),
            epoch: 0,
            counters: CacheCounters::default(),
        })
    }

    /// The result of exactly this call, if cached and live at `now` (the entry gets warmer).
    pub fn get(&mut self, key: &CacheKey, now: Instant) -> Option<&Value> {
        match self.store.get(key, now) {
            Lookup::Hit { value, evicted } => {
                self.counters.hits += 1;
                for (k, e) in &evicted {
                    self.index.forget(k, &e.tags, &e.parents);
                }
                self.counters.evictions.capacity += evicted.len() as u64;
                Some(&value.value)
            }
            Lookup::Expired(k, e) => {
                self.index.forget(&k, &e.tags, &e.parents);
                self.counters.evictions.ttl += 1;
                self.counters.misses += 1;
                None
            }
            Lookup::Miss => {
                self.counters.misses += 1;
                None
            }
        }
    }

    /// The entry of `key`, without warming it or looking at its TTL (status, tests).
    pub fn peek(&self, key: &CacheKey) -> Option<&Entry> {
        self.store.peek(key)
    }

    /// Stores `value` as the result of `key`, replacing any earlier one. For results that come
    /// back through a flight, use [`Cache::complete`], which also refuses stale ones.
    pub fn insert(&mut self, key: CacheKey, value: Value, fill: Fill, now: Instant) -> Stored {
        let mut tags: Vec<Box<str>> = fill.tags.into_iter().map(Into::into).collect();
        tags.sort_unstable();
        tags.dedup();
        let mut parents = fill.parents;
        parents.sort_unstable();
        parents.dedup();
        let bytes = ENTRY_OVERHEAD_BYTES
            + key.footprint()
            + value_footprint(&value)
            + tags.iter().map(|t| LINK_BYTES + t.len()).sum::<usize>()
            + parents.len() * LINK_BYTES;
        let limit = self.store.entry_limit();
        if bytes > limit {
            self.counters.too_large += 1;
            return Stored::TooLarge { bytes, limit };
        }
        // A TTL too long to represent is no expiry.
        let expires_at = fill.ttl.and_then(|t| now.checked_add(t));
        let entry = Entry {
            value,
            bytes,
            expires_at,
            tags: tags.into(),
            parents: parents.into(),
        };
        let (tags, parents) = (entry.tags.clone(), entry.parents.clone());
        match self.store.put(key.clone(), entry, bytes, expires_at) {
            Put::Stored { replaced, evicted } => {
                if let Some(old) = replaced {
                    self.index.forget(&key, &old.tags, &old.parents);
                }
                for (k, e) in &evicted {
                    self.index.forget(k, &e.tags, &e.parents);
                }
                self.index.add(&key, &tags, &parents);
                self.counters.insertions += 1;
                self.counters.evictions.capacity += evicted.len() as u64;
                Stored::Cached {
                    evicted: evicted.len(),
                }
            }
            Put::TooLarge { bytes, limit } => {
                self.counters.too_large += 1;
                Stored::TooLarge { bytes, limit }
            }
        }
    }

    /// `who` wants the result of `key`, which [`Cache::get`] did not find.
    pub fn begin(&mut self, key: &CacheKey, who: W) -> Flight {
        let flight = self.flights.begin(key, who, self.epoch);
        match flight {
            Flight::Follow => self.counters.shared += 1,
            Flight::Crowded => self.counters.crowded += 1,
            Flight::Lead => {}
        }
        flight
    }

    /// The call `who` led returned `value`: the flight ends, the result is stored (unless an
    /// invalidation happened meanwhile, or it is too large) and the followers are handed back,
    /// each to be given the result.
    pub fn complete(
        &mut self,
        key: &CacheKey,
        who: &W,
        value: Value,
        fill: Fill,
        now: Instant,
    ) -> Completed<W> {
        let Some(landed) = self.flights.land(key, who) else {
            return Completed {
                followers: Vec::new(),
                stored: Stored::NotLeading,
            };
        };
        let stored = if landed.epoch != self.epoch {
            self.counters.stale += 1;
            Stored::Stale
        } else {
            self.insert(key.clone(), value, fill, now)
        };
        Completed {
            followers: landed.followers,
            stored,
        }
    }

    /// The call `who` led failed on its worker: the flight ends and its followers are handed
    /// back, each to fail with the same failure (see [`flight`]). Nothing is cached.
    pub fn fail(&mut self, key: &CacheKey, who: &W) -> Vec<W> {
        self.flights
            .land(key, who)
            .map(|l| l.followers)
            .unwrap_or_default()
    }

    /// `who` no longer wants the result of `key` (its plan ended). When it led, the oldest
    /// follower is promoted and must dispatch the call ([`Left::Promoted`]).
    pub fn leave(&mut self, key: &CacheKey, who: &W) -> Left<W> {
        self.flights.leave(key, who, self.epoch)
    }

    /// Removes `key` and every entry downstream of it; returns how many entries went.
    pub fn invalidate_key(&mut self, key: &CacheKey) -> usize {
        self.invalidate(vec![key.clone()])
    }

    /// Removes every entry tagged `tag` and everything downstream; returns how many went.
    pub fn invalidate_tag(&mut self, tag: &str) -> usize {
        let roots = self.index.tagged(tag);
        self.invalidate(roots)
    }

    /// Removes every entry of function `fun` (any version, any resources) and everything
    /// downstream; returns how many went.
    pub fn invalidate_function(&mut self, fun: &str) -> usize {
        let roots = self.index.of_function(fun);
        self.invalidate(roots)
    }

    fn invalidate(&mut self, roots: Vec<CacheKey>) -> usize {
        // Even when nothing is cached yet: a call in flight may have read what is invalidated.
        self.epoch += 1;
        let mut removed = 0;
        for k in self.index.downstream(roots) {
            if let Some((k, e)) = self.store.remove(&k) {
                self.index.forget(&k, &e.tags, &e.parents);
                removed += 1;
            }
        }
        self.counters.evictions.invalidation += removed as u64;
        removed
    }

    /// Removes entries whose TTL has passed at `now`, earliest first, at most the configured
    /// `sweep_budget`; returns how many went. Call it periodically (the engine's tick).
    pub fn sweep(&mut self, now: Instant) -> usize {
        let gone = self.store.sweep(now, self.config.sweep_budget);
        for (k, e) in &gone {
            self.index.forget(k, &e.tags, &e.parents);
        }
        self.counters.evictions.ttl += gone.len() as u64;
        gone.len()
    }

    /// The counters.
    pub fn counters(&self) -> CacheCounters {
        self.counters
    }

    /// What is held now.
    pub fn gauges(&self) -> CacheGauges {
        CacheGauges {
            bytes: self.store.bytes(),
            entries: self.store.len(),
            flights: self.flights.len(),
            followers: self.flights.followers(),
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }
}

/// Bytes a value holds in memory: each node's `Value` plus the bytes of strings, binaries and
/// extensions (iterative: values from the wire are deep and wide).
pub fn value_footprint(value: &Value) -> usize {
    let mut total = 0;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        total += std::mem::size_of::<Value>();
        match v {
            Value::String(s) => total += s.as_bytes().len(),
            Value::Binary(b) | Value::Ext(_, b) => total += b.len(),
            Value::Array(items) => stack.extend(items),
            Value::Map(pairs) => {
                for (k, x) in pairs {
                    stack.push(k);
                    stack.push(x);
                }
            }
            Value::Nil | Value::Boolean(_) | Value::Integer(_) | Value::F32(_) | Value::F64(_) => {}
        }
    }
    total
}

#[cfg(test)]
mod tests;
