//! Segmented LRU (S4LRU: Huang et al., "An Analysis of Facebook Photo Caching", SOSP 2013),
//! bounded in bytes, with N segments (4 by default; upstream vector 40 uses 2).
//!
//! The byte budget is split evenly over the segments, the last taking the remainder (10 over
//! 4: 2, 2, 2, 4). Segment 0 is probationary:
//! - a new key enters the head of segment 0 **after** segment 0's tail is evicted to make room
//!   (the original dropped the new key instead and, through its manager, grew without bound:
//!   vector 40);
//! - a hit in segment `i` moves the entry to the head of segment `i + 1` (a hit in the last
//!   segment moves it to that segment's head);
//! - a segment over its share demotes its tail to the head of the segment below, down to
//!   segment 0, whose overflow leaves the cache.
//!
//! An entry must fit segment 0 (the smallest share), so the per-entry limit is the smaller of
//! the budget's `max_entry_bytes` and that share.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::time::Instant;

use lru::LruCache;

use super::policy::{Budget, Deadlines, Lookup, Policy, Put, Slot};

/// Most segments a cache may be configured with: beyond a handful, each share is too small to
/// hold a useful working set and a hit costs a lookup per segment.
pub const MAX_SEGMENTS: usize = 16;

/// `total` split over `n` segments: `total / n` each, the last taking the remainder.
pub fn split(total: usize, n: NonZeroUsize) -> Vec<usize> {
    let n = n.get();
    let share = total / n;
    let mut shares = vec![share; n];
    shares[n - 1] = total - share * (n - 1);
    shares
}

struct Segment<K, V> {
    list: LruCache<K, Slot<V>>,
    bytes: usize,
    capacity: usize,
}

impl<K: Hash + Eq, V> Segment<K, V> {
    fn over(&self) -> bool {
        self.bytes > self.capacity
    }

    fn push(&mut self, key: K, slot: Slot<V>) {
        self.bytes += slot.bytes;
        // Unbounded list, and a key is in one segment at most: nothing comes back.
        let _ = self.list.push(key, slot);
    }

    fn pop(&mut self, key: &K) -> Option<(K, Slot<V>)> {
        let (k, slot) = self.list.pop_entry(key)?;
        self.bytes -= slot.bytes;
        Some((k, slot))
    }

    fn pop_tail(&mut self) -> Option<(K, Slot<V>)> {
        let (k, slot) = self.list.pop_lru()?;
        self.bytes -= slot.bytes;
        Some((k, slot))
    }
}

/// The segmented LRU. See the module documentation for its rules.
pub struct S4lru<K: Hash + Eq, V> {
    segments: Vec<Segment<K, V>>,
    budget: Budget,
    deadlines: Deadlines<K>,
}

impl<K: Hash + Eq + Clone, V> S4lru<K, V> {
    /// An empty cache within `budget`, over `segments` segments.
    pub fn new(budget: Budget, segments: NonZeroUsize) -> Self {
        S4lru {
            segments: split(budget.max_bytes, segments)
                .into_iter()
                .map(|capacity| Segment {
                    list: LruCache::unbounded(),
                    bytes: 0,
                    capacity,
                })
                .collect(),
            budget,
            deadlines: Deadlines::new(),
        }
    }

    /// The keys of each segment, segment 0 first, each from its head (most recent) to its tail.
    pub fn keys(&self) -> Vec<Vec<&K>> {
        self.segments
            .iter()
            .map(|s| s.list.iter().map(|(k, _)| k).collect())
            .collect()
    }

    fn find(&self, key: &K) -> Option<usize> {
        self.segments.iter().position(|s| s.list.contains(key))
    }

    fn take(&mut self, key: &K) -> Option<(K, Slot<V>)> {
        let at = self.find(key)?;
        let (k, slot) = self.segments[at].pop(key)?;
        self.deadlines.remove(slot.ticket);
        Some((k, slot))
    }

    /// Demotes the overflow of segments `top` down to 1 one segment down, then evicts segment
    /// 0's overflow into `evicted`.
    fn settle(&mut self, top: usize, evicted: &mut Vec<(K, V)>) {
        for j in (1..=top).rev() {
            while self.segments[j].over() {
                let Some((k, slot)) = self.segments[j].pop_tail() else {
                    break;
                };
                self.segments[j - 1].push(k, slot);
            }
        }
        while self.segments[0].over() {
            let Some((k, slot)) = self.segments[0].pop_tail() else {
                break;
            };
            self.deadlines.remove(slot.ticket);
            evicted.push((k, slot.value));
        }
    }
}

impl<K: Hash + Eq + Clone, V> Policy<K, V> for S4lru<K, V> {
    fn get(&mut self, key: &K, now: Instant) -> Lookup<'_, K, V> {
        let Some(at) = self.find(key) else {
            return Lookup::Miss;
        };
        if self.segments[at]
            .list
            .peek(key)
            .is_some_and(|s| s.expired(now))
        {
            return match self.take(key) {
                Some((k, slot)) => Lookup::Expired(k, slot.value),
                None => Lookup::Miss,
            };
        }
        let last = self.segments.len() - 1;
        let mut evicted = Vec::new();
        let to = if at == last {
            self.segments[last].list.promote(key);
            last
        } else {
            if let Some((k, slot)) = self.segments[at].pop(key) {
                self.segments[at + 1].push(k, slot);
            }
            self.settle(at + 1, &mut evicted);
            at + 1
        };
        let slot = self.segments[to].list.peek(key).expect(
            "a promoted entry stays in its new segment: it fits segment 0, the smallest, and \
             demotion takes tails first",
        );
        Lookup::Hit {
            value: &slot.value,
            evicted,
        }
    }

    fn peek(&self, key: &K) -> Option<&V> {
        self.segments
            .iter()
            .find_map(|s| s.list.peek(key))
            .map(|s| &s.value)
    }

    fn put(&mut self, key: K, value: V, bytes: usize, expires_at: Option<Instant>) -> Put<K, V> {
        let limit = self.entry_limit();
        if bytes > limit {
            return Put::TooLarge { bytes, limit };
        }
        let replaced = self.take(&key).map(|(_, s)| s.value);
        let ticket = self.deadlines.add(expires_at, &key);
        let mut evicted = Vec::new();
        // Make room first, then insert: the new key always enters (vector 40).
        let first = &mut self.segments[0];
        while bytes > first.capacity - first.bytes {
            let Some((k, slot)) = first.pop_tail() else {
                break;
            };
            self.deadlines.remove(slot.ticket);
            evicted.push((k, slot.value));
        }
        first.push(
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
        self.segments.iter().map(|s| s.bytes).sum()
    }

    fn len(&self) -> usize {
        self.segments.iter().map(|s| s.list.len()).sum()
    }

    fn entry_limit(&self) -> usize {
        self.budget.max_entry_bytes.min(self.segments[0].capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn n(k: usize) -> NonZeroUsize {
        NonZeroUsize::new(k).unwrap()
    }

    /// S4LRU with unit-cost entries: `entries` slots over `segments` segments.
    fn s4(entries: usize, segments: usize) -> S4lru<u32, u32> {
        S4lru::new(
            Budget {
                max_bytes: entries,
                max_entry_bytes: entries,
            },
            n(segments),
        )
    }

    /// The upstream "access": a read, and on a miss a write.
    fn access(c: &mut S4lru<u32, u32>, k: u32, now: Instant) -> bool {
        if matches!(c.get(&k, now), Lookup::Hit { .. }) {
            return true;
        }
        c.put(k, k, 1, None);
        false
    }

    fn state(c: &S4lru<u32, u32>) -> Vec<Vec<u32>> {
        c.keys()
            .into_iter()
            .map(|s| s.into_iter().copied().collect())
            .collect()
    }

    #[test]
    fn capacity_split() {
        assert_eq!(split(10, n(4)), vec![2, 2, 2, 4]);
        assert_eq!(split(4, n(2)), vec![2, 2]);
        assert_eq!(split(3, n(4)), vec![0, 0, 0, 3]);
        assert_eq!(split(7, n(1)), vec![7]);
        assert_eq!(s4(10, 4).entry_limit(), 2, "an entry must fit segment 0");
    }

    /// Upstream vector 40, S4LRU(4 entries, 2 segments): access 0,0,1,1,2,2.
    #[test]
    fn vector_40() {
        let now = Instant::now();
        let mut c = s4(4, 2);
        let steps: [(u32, bool, Vec<Vec<u32>>); 6] = [
            (0, false, vec![vec![0], vec![]]),
            (0, true, vec![vec![], vec![0]]),
            (1, false, vec![vec![1], vec![0]]),
            (1, true, vec![vec![], vec![1, 0]]),
            (2, false, vec![vec![2], vec![1, 0]]),
            // A hit with segment 1 full: its tail 0 is demoted to segment 0.
            (2, true, vec![vec![0], vec![2, 1]]),
        ];
        for (k, hit, want) in steps {
            assert_eq!(access(&mut c, k, now), hit, "access {k}");
            assert_eq!(state(&c), want, "after access {k}");
        }
    }

    /// The upstream bug fixed: a miss with segment 0 full evicts its tail and inserts the key.
    #[test]
    fn vector_40_new_keys_enter_after_eviction() {
        let now = Instant::now();
        let mut c = s4(4, 2);
        for k in 0..3 {
            assert!(!access(&mut c, k, now));
        }
        assert_eq!(state(&c), vec![vec![2, 1], vec![]]);
        // And the cache stays bounded however many keys go through it (upstream: 51 of 100).
        for k in 3..100 {
            access(&mut c, k, now);
        }
        assert_eq!(c.len(), 2, "new keys only ever fill segment 0");
        for k in [98, 99, 97, 96, 95] {
            access(&mut c, k, now);
        }
        assert!(c.len() <= 4 && c.bytes() <= 4, "{:?}", state(&c));
    }

    /// One segment is plain LRU: vector 39 again (a hit in the top segment warms the entry).
    #[test]
    fn one_segment_is_lru() {
        let now = Instant::now();
        let mut c = s4(3, 1);
        for k in 0..3 {
            access(&mut c, k, now);
        }
        assert!(access(&mut c, 0, now));
        access(&mut c, 3, now);
        assert_eq!(state(&c), vec![vec![3, 0, 2]]);
    }

    #[test]
    fn hits_climb_one_segment_at_a_time() {
        let now = Instant::now();
        let mut c = s4(8, 4);
        access(&mut c, 7, now);
        for level in 1..4 {
            assert!(access(&mut c, 7, now));
            assert_eq!(c.find(&7), Some(level));
        }
        assert!(access(&mut c, 7, now));
        assert_eq!(c.find(&7), Some(3), "the last segment is the top");
    }

    #[test]
    fn demotion_cascades_and_evicts_from_segment_zero() {
        let now = Instant::now();
        // Shares of 4 bytes over 2 segments; costs differ, so a promotion can push out more.
        let mut c: S4lru<u32, u32> = S4lru::new(
            Budget {
                max_bytes: 8,
                max_entry_bytes: 8,
            },
            n(2),
        );
        c.put(1, 1, 4, None);
        c.get(&1, now); // [[], [1]]
        c.put(2, 2, 1, None);
        c.put(3, 3, 3, None); // [[3, 2], [1]]
        match c.get(&2, now) {
            // 2 joins segment 1 (5 bytes > 4): 1 is demoted to segment 0 (7 bytes > 4) and
            // segment 0's tail, 3, leaves the cache.
            Lookup::Hit { value, evicted } => {
                assert_eq!(*value, 2);
                assert_eq!(evicted, vec![(3, 3)]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(state(&c), vec![vec![1], vec![2]]);
        assert_eq!(c.bytes(), 5);
    }

    #[test]
    fn expired_entries_leave_from_any_segment() {
        let t0 = Instant::now();
        let mut c = s4(4, 2);
        c.put(1, 1, 1, Some(t0 + Duration::from_millis(10)));
        c.get(&1, t0); // to segment 1
        c.put(2, 2, 1, Some(t0 + Duration::from_millis(20)));
        assert_eq!(
            c.get(&1, t0 + Duration::from_millis(10)),
            Lookup::Expired(1, 1)
        );
        assert_eq!(c.sweep(t0 + Duration::from_secs(1), 8), vec![(2, 2)]);
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn replacing_a_promoted_key_keeps_one_entry() {
        let now = Instant::now();
        let mut c = s4(4, 2);
        c.put(1, 1, 1, None);
        c.get(&1, now);
        assert_eq!(
            c.put(1, 2, 1, None),
            Put::Stored {
                replaced: Some(1),
                evicted: vec![]
            }
        );
        assert_eq!(state(&c), vec![vec![1], vec![]]);
        assert_eq!(c.peek(&1), Some(&2));
    }
}
