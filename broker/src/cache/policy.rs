//! Eviction policies of the result cache (design section 4.2), bounded in bytes: the bytes an
//! entry costs are the caller's estimate, given with it. Two policies share one trait:
//! [`ByteLru`] here and [`S4lru`](super::s4lru::S4lru).
//!
//! Every entry may carry a deadline (its TTL). Expiry is checked lazily when the entry is read,
//! and [`Policy::sweep`] removes expired entries with bounded work per call. The sweep walks a
//! deadline index (earliest first) rather than the cold end of the LRU list, as first planned:
//! with TTLs that differ per function, a cold-end walk bounded to N entries stops at N live
//! entries and never reaches an expired one behind them; the index finds exactly the expired
//! ones, in order, for O(log n) per insertion.
//!
//! Time is passed in (`now`), never read. Nothing leaves silently: every entry that goes
//! (pushed out, expired, replaced) is handed back to the caller, which keeps its own indexes
//! (tags, dependencies) and counters by these outcomes.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::time::Instant;

use lru::LruCache;

/// How much a policy may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes all entries may cost together.
    pub max_bytes: usize,
    /// Bytes one entry may cost; a larger one is not stored.
    pub max_entry_bytes: usize,
}

/// What a read found.
#[derive(Debug, PartialEq)]
pub enum Lookup<'a, K, V> {
    /// The entry, now warmer; `evicted` are entries its promotion pushed out of the cache.
    Hit {
        /// The stored value.
        value: &'a V,
        /// Entries pushed out of the cache by the promotion (S4LRU only), coldest first.
        evicted: Vec<(K, V)>,
    },
    /// The entry had expired: it is removed and handed back.
    Expired(K, V),
    /// Not held.
    Miss,
}

/// What a write did.
#[derive(Debug, PartialEq)]
pub enum Put<K, V> {
    /// Stored.
    Stored {
        /// The value the key held before, if any.
        replaced: Option<V>,
        /// Entries pushed out to make room, coldest first.
        evicted: Vec<(K, V)>,
    },
    /// Not stored: the entry costs more than one entry may.
    TooLarge {
        /// What it costs.
        bytes: usize,
        /// What one entry may cost in this policy.
        limit: usize,
    },
}

/// A byte-bounded cache policy with per-entry deadlines. At most one entry per key; the bytes
/// held never exceed the budget's `max_bytes`.
pub trait Policy<K, V> {
    /// Reads `key` at `now`, making it warmer (an expired entry is removed instead).
    fn get(&mut self, key: &K, now: Instant) -> Lookup<'_, K, V>;
    /// Reads `key` without making it warmer and without looking at its deadline.
    fn peek(&self, key: &K) -> Option<&V>;
    /// Stores `value` under `key`, costing `bytes`, until `expires_at` (`None`: no deadline).
    fn put(&mut self, key: K, value: V, bytes: usize, expires_at: Option<Instant>) -> Put<K, V>;
    /// Removes `key`.
    fn remove(&mut self, key: &K) -> Option<(K, V)>;
    /// Removes up to `budget` entries whose deadline is at or before `now`, earliest first.
    fn sweep(&mut self, now: Instant, budget: usize) -> Vec<(K, V)>;
    /// Bytes held.
    fn bytes(&self) -> usize;
    /// Entries held.
    fn len(&self) -> usize;
    /// True when nothing is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The most one entry may cost.
    fn entry_limit(&self) -> usize;
}

/// Where an entry sits in the deadline index: its deadline and a sequence number that makes
/// the position unique.
pub(super) type Ticket = (Instant, u64);

/// One stored entry.
#[derive(Debug)]
pub(super) struct Slot<V> {
    pub(super) value: V,
    pub(super) bytes: usize,
    pub(super) ticket: Option<Ticket>,
}

impl<V> Slot<V> {
    /// An entry expires at its deadline (a TTL of 500 ms is a hit at 499 ms, a miss at 500).
    pub(super) fn expired(&self, now: Instant) -> bool {
        self.ticket.is_some_and(|(at, _)| at <= now)
    }
}

/// Entries with a deadline, earliest first.
#[derive(Debug)]
pub(super) struct Deadlines<K> {
    by_time: BTreeMap<Ticket, K>,
    next: u64,
}

impl<K: Clone> Deadlines<K> {
    pub(super) fn new() -> Self {
        Deadlines {
            by_time: BTreeMap::new(),
            next: 0,
        }
    }

    pub(super) fn add(&mut self, at: Option<Instant>, key: &K) -> Option<Ticket> {
        let at = at?;
        let ticket = (at, self.next);
        self.next += 1;
        self.by_time.insert(ticket, key.clone());
        Some(ticket)
    }

    pub(super) fn remove(&mut self, ticket: Option<Ticket>) {
        if let Some(t) = ticket {
            self.by_time.remove(&t);
        }
    }

    /// Up to `budget` keys whose deadline is at or before `now`, earliest first.
    pub(super) fn due(&self, now: Instant, budget: usize) -> Vec<K> {
        self.by_time
            .iter()
            .take_while(|((at, _), _)| *at <= now)
            .take(budget)
            .map(|(_, k)| k.clone())
            .collect()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_time.len()
    }
}

/// Least recently used first out, bounded in bytes: the `lru` crate keeps the order (unbounded
/// in count), this type the bytes.
pub struct ByteLru<K: Hash + Eq, V> {
    list: LruCache<K, Slot<V>>,
    budget: Budget,
    bytes: usize,
    deadlines: Deadlines<K>,
}

impl<K: Hash + Eq + Clone, V> ByteLru<K, V> {
    /// An empty cache within `budget`.
    pub fn new(budget: Budget) -> Self {
        ByteLru {
            list: LruCache::unbounded(),
            budget,
            bytes: 0,
            deadlines: Deadlines::new(),
        }
    }

    /// The keys, most recently used first.
    pub fn keys(&self) -> Vec<&K> {
        self.list.iter().map(|(k, _)| k).collect()
    }

    fn take(&mut self, key: &K) -> Option<(K, Slot<V>)> {
        let (k, slot) = self.list.pop_entry(key)?;
        self.bytes -= slot.bytes;
        self.deadlines.remove(slot.ticket);
        Some((k, slot))
    }
}

impl<K: Hash + Eq + Clone, V> Policy<K, V> for ByteLru<K, V> {
    fn get(&mut self, key: &K, now: Instant) -> Lookup<'_, K, V> {
        match self.list.peek(key) {
            None => return Lookup::Miss,
            Some(slot) if slot.expired(now) => {
                return match self.take(key) {
                    Some((k, slot)) => Lookup::Expired(k, slot.value),
                    None => Lookup::Miss,
                };
            }
            Some(_) => {}
        }
        match self.list.get(key) {
            Some(slot) => Lookup::Hit {
                value: &slot.value,
                evicted: Vec::new(),
            },
            None => Lookup::Miss,
        }
    }

    fn peek(&self, key: &K) -> Option<&V> {
        self.list.peek(key).map(|s| &s.value)
    }

    fn put(&mut self, key: K, value: V, bytes: usize, expires_at: Option<Instant>) -> Put<K, V> {
        let limit = self.entry_limit();
        if bytes > limit {
            return Put::TooLarge { bytes, limit };
        }
        let replaced = self.take(&key).map(|(_, s)| s.value);
        let mut evicted = Vec::new();
        // `bytes <= max_bytes` and `self.bytes <= max_bytes`: no overflow.
        while bytes > self.budget.max_bytes - self.bytes {
            let Some((k, slot)) = self.list.pop_lru() else {
                break;
            };
            self.bytes -= slot.bytes;
            self.deadlines.remove(slot.ticket);
            evicted.push((k, slot.value));
        }
        let ticket = self.deadlines.add(expires_at, &key);
        self.bytes += bytes;
        self.list.push(
            key,
            Slot {
                value,
                bytes,
                ticket,
            },
        );
        Put::Stored { replaced, evicted }
    }

    fn remove(&mut self, key: &K) -> Option<(K, V)> {
        self.take(key).map(|(k, s)| (k, s.value))
    }

    fn sweep(&mut self, now: Instant, budget: usize) -> Vec<(K, V)> {
        self.deadlines
            .due(now, budget)
            .into_iter()
            .filter_map(|k| self.remove(&k))
            .collect()
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    fn entry_limit(&self) -> usize {
        self.budget.max_entry_bytes.min(self.budget.max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lru(max_bytes: usize) -> ByteLru<u32, u32> {
        ByteLru::new(Budget {
            max_bytes,
            max_entry_bytes: max_bytes,
        })
    }

    fn held(c: &ByteLru<u32, u32>) -> Vec<u32> {
        let mut k: Vec<u32> = c.keys().into_iter().copied().collect();
        k.sort_unstable();
        k
    }

    /// Upstream vector 39: room for 3; put 0, 1, 2; get 0; put 3 -> {0, 2, 3}.
    #[test]
    fn vector_39_lru() {
        let now = Instant::now();
        let mut c = lru(3);
        for k in 0..3 {
            assert_eq!(
                c.put(k, k * 10, 1, None),
                Put::Stored {
                    replaced: None,
                    evicted: vec![]
                }
            );
        }
        assert!(matches!(c.get(&0, now), Lookup::Hit { value: &0, .. }));
        assert_eq!(
            c.put(3, 30, 1, None),
            Put::Stored {
                replaced: None,
                evicted: vec![(1, 10)]
            }
        );
        assert_eq!(held(&c), vec![0, 2, 3]);
        assert_eq!(c.keys(), vec![&3, &0, &2]);
    }

    #[test]
    fn bytes_not_count_bound_the_cache() {
        let now = Instant::now();
        let mut c = lru(10);
        c.put(1, 1, 4, None);
        c.put(2, 2, 4, None);
        // 4 + 4 + 3 > 10: the coldest goes, however many entries would fit by count.
        assert_eq!(
            c.put(3, 3, 3, None),
            Put::Stored {
                replaced: None,
                evicted: vec![(1, 1)]
            }
        );
        assert_eq!(c.bytes(), 7);
        // One large entry pushes out several small ones.
        c.get(&2, now);
        assert_eq!(
            c.put(4, 4, 10, None),
            Put::Stored {
                replaced: None,
                evicted: vec![(3, 3), (2, 2)]
            }
        );
        assert_eq!((c.len(), c.bytes()), (1, 10));
        assert_eq!(
            c.put(5, 5, 11, None),
            Put::TooLarge {
                bytes: 11,
                limit: 10
            }
        );
        assert_eq!(
            (c.len(), c.bytes()),
            (1, 10),
            "a refused entry evicts nothing"
        );
    }

    #[test]
    fn entries_over_the_entry_limit_are_refused() {
        let mut c: ByteLru<u32, u32> = ByteLru::new(Budget {
            max_bytes: 100,
            max_entry_bytes: 8,
        });
        assert_eq!(c.put(1, 1, 9, None), Put::TooLarge { bytes: 9, limit: 8 });
        assert!(matches!(c.put(1, 1, 8, None), Put::Stored { .. }));
        assert_eq!(
            c.put(1, 2, 9, None),
            Put::TooLarge { bytes: 9, limit: 8 },
            "refused before the old value is touched"
        );
        assert_eq!(c.peek(&1), Some(&1));
    }

    #[test]
    fn replacing_keeps_one_entry_and_frees_the_old_bytes() {
        let mut c = lru(10);
        c.put(1, 1, 6, None);
        assert_eq!(
            c.put(1, 2, 7, None),
            Put::Stored {
                replaced: Some(1),
                evicted: vec![]
            }
        );
        assert_eq!((c.len(), c.bytes(), c.peek(&1)), (1, 7, Some(&2)));
    }

    #[test]
    fn ttl_expires_lazily_and_by_sweep() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut c = lru(100);
        c.put(1, 1, 1, Some(ms(500)));
        c.put(2, 2, 1, Some(ms(100)));
        c.put(3, 3, 1, None);
        c.put(4, 4, 1, Some(ms(200)));
        assert!(matches!(c.get(&1, ms(499)), Lookup::Hit { value: &1, .. }));
        assert_eq!(c.get(&1, ms(500)), Lookup::Expired(1, 1));
        assert_eq!(c.get(&1, ms(500)), Lookup::Miss);
        // Earliest deadline first, bounded per call, live entries untouched.
        assert_eq!(c.sweep(ms(1_000), 1), vec![(2, 2)]);
        assert_eq!(c.sweep(ms(150), 5), vec![]);
        assert_eq!(c.sweep(ms(1_000), 5), vec![(4, 4)]);
        assert_eq!(c.keys(), vec![&3]);
        assert_eq!((c.bytes(), c.deadlines.len()), (1, 0));
    }

    #[test]
    fn eviction_and_removal_drop_the_deadline() {
        let t0 = Instant::now();
        let mut c = lru(2);
        c.put(1, 1, 1, Some(t0));
        c.put(2, 2, 1, Some(t0));
        c.put(3, 3, 1, Some(t0));
        c.remove(&2);
        assert_eq!(c.deadlines.len(), 1);
        assert_eq!(c.sweep(t0, 10), vec![(3, 3)]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u32, u32, usize, Option<u64>),
        Get(u32),
        Remove(u32),
        Sweep(usize),
        Wait(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u32..12, any::<u32>(), 0usize..14, proptest::option::of(1u64..40))
                .prop_map(|(k, v, b, t)| Op::Put(k, v, b, t)),
            4 => (0u32..12).prop_map(Op::Get),
            1 => (0u32..12).prop_map(Op::Remove),
            1 => (1usize..4).prop_map(Op::Sweep),
            1 => (0u64..20).prop_map(Op::Wait),
        ]
    }

    type Model = std::collections::BTreeMap<u32, (u32, usize, Option<Instant>)>;

    fn take_all(
        model: &mut Model,
        gone: &[(u32, u32)],
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        for (k, v) in gone {
            let held = model.remove(k).map(|(v, _, _)| v);
            proptest::prop_assert_eq!(held, Some(*v), "{} left twice or with another value", k);
        }
        Ok(())
    }

    /// Runs `ops` on `p` against a model map: every entry that leaves is reported, a read
    /// after a write returns the value until reported gone or expired, bytes stay within the
    /// budget, one entry per key (`keys` lists every key the policy holds, duplicates too).
    fn check<P: Policy<u32, u32>>(
        mut p: P,
        max_bytes: usize,
        ops: Vec<Op>,
        keys: impl Fn(&P) -> Vec<u32>,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        use proptest::{prop_assert, prop_assert_eq};
        let mut now = Instant::now();
        let mut model = Model::new();
        for op in ops {
            match op {
                Op::Put(k, v, bytes, ttl) => {
                    let at = ttl.map(|t| now + Duration::from_millis(t));
                    match p.put(k, v, bytes, at) {
                        Put::Stored { replaced, evicted } => {
                            prop_assert_eq!(replaced, model.remove(&k).map(|(v, _, _)| v));
                            take_all(&mut model, &evicted)?;
                            model.insert(k, (v, bytes, at));
                        }
                        Put::TooLarge { bytes: b, limit } => {
                            prop_assert!(b > limit && limit == p.entry_limit());
                        }
                    }
                }
                Op::Get(k) => match (p.get(&k, now), model.get(&k).copied()) {
                    (Lookup::Miss, None) => {}
                    (Lookup::Expired(gk, gv), Some((v, _, Some(at)))) if at <= now => {
                        prop_assert_eq!((gk, gv), (k, v));
                        model.remove(&k);
                    }
                    (Lookup::Hit { value, evicted }, Some((v, _, at))) => {
                        prop_assert!(at.is_none_or(|at| at > now), "an expired entry was a hit");
                        prop_assert_eq!(*value, v);
                        prop_assert!(!evicted.iter().any(|(e, _)| *e == k));
                        take_all(&mut model, &evicted)?;
                    }
                    (got, want) => prop_assert!(false, "get {}: {:?}, model {:?}", k, got, want),
                },
                Op::Remove(k) => {
                    let want = model.remove(&k).map(|(v, _, _)| (k, v));
                    prop_assert_eq!(p.remove(&k), want);
                }
                Op::Sweep(budget) => {
                    let gone = p.sweep(now, budget);
                    prop_assert!(gone.len() <= budget);
                    let mut last = None;
                    for (k, _) in &gone {
                        let at = model.get(k).and_then(|e| e.2);
                        prop_assert!(at.is_some_and(|at| at <= now), "{} swept alive", k);
                        prop_assert!(last <= at, "earliest first");
                        last = at;
                    }
                    take_all(&mut model, &gone)?;
                    if gone.len() < budget {
                        prop_assert!(model.values().all(|e| e.2.is_none_or(|at| at > now)));
                    }
                }
                Op::Wait(ms) => now += Duration::from_millis(ms),
            }
            prop_assert!(p.bytes() <= max_bytes);
            prop_assert_eq!(p.bytes(), model.values().map(|e| e.1).sum::<usize>());
            prop_assert_eq!(p.len(), model.len());
            let mut held = keys(&p);
            held.sort_unstable();
            prop_assert_eq!(
                held,
                model.keys().copied().collect::<Vec<_>>(),
                "one entry per key"
            );
            for (k, (v, _, _)) in &model {
                prop_assert_eq!(p.peek(k), Some(v));
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn byte_lru_keeps_its_promises(ops in proptest::collection::vec(op(), 1..120), max in 1usize..40) {
            let p = ByteLru::new(Budget { max_bytes: max, max_entry_bytes: 12 });
            check(p, max, ops, |p| p.keys().into_iter().copied().collect())?;
        }

        #[test]
        fn s4lru_keeps_its_promises(
            ops in proptest::collection::vec(op(), 1..120),
            max in 1usize..40,
            segments in 1usize..5,
        ) {
            let n = std::num::NonZeroUsize::new(segments).unwrap();
            let p = super::super::s4lru::S4lru::new(Budget { max_bytes: max, max_entry_bytes: 12 }, n);
            check(p, max, ops, |p| p.keys().into_iter().flatten().copied().collect())?;
        }
    }
}
