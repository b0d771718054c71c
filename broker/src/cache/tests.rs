//! Tests of [`Cache`]: hits and collisions, TTL, invalidation (transitive), single flight,
//! counters, and a random-operation property test over both policies.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn key(fun: &str, n: i64) -> CacheKey {
    CacheKey::new(fun, None, &[], &[n.into()], &BTreeMap::new()).unwrap()
}

fn cache(policy: PolicyKind) -> Cache<u32> {
    Cache::new(CacheConfig {
        policy,
        ..CacheConfig::default()
    })
    .unwrap()
}

fn fill(tags: &[&str], parents: &[&CacheKey]) -> Fill {
    Fill {
        ttl: None,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        parents: parents.iter().map(|&p| p.clone()).collect(),
    }
}

fn ms(t0: Instant, n: u64) -> Instant {
    t0 + Duration::from_millis(n)
}

#[test]
fn a_hit_returns_exactly_this_call() {
    let now = Instant::now();
    for policy in [PolicyKind::Lru, PolicyKind::S4lru] {
        let mut c = cache(policy);
        let (a, b) = (key("f", 1), key("f", 2));
        assert_eq!(c.get(&a, now), None);
        assert!(matches!(
            c.insert(a.clone(), Value::from("A"), Fill::default(), now),
            Stored::Cached { evicted: 0 }
        ));
        assert_eq!(c.get(&a, now), Some(&Value::from("A")));
        assert_eq!(c.get(&b, now), None);
        // Same digest, other canonical bytes: never the other call's result.
        let forged = CacheKey::forged("f", b.canonical().to_vec(), a.digest());
        assert_eq!(c.get(&forged, now), None, "{policy:?}");
        c.insert(forged.clone(), Value::from("B"), Fill::default(), now);
        assert_eq!(c.get(&a, now), Some(&Value::from("A")));
        assert_eq!(c.get(&forged, now), Some(&Value::from("B")));
        let n = c.counters();
        assert_eq!((n.hits, n.misses, n.insertions), (3, 3, 2));
        assert_eq!(c.gauges().entries, 2);
    }
}

/// Acceptance K4: `ttl_ms = 500` -> a hit at 400 ms, a miss at 600 ms.
#[test]
fn ttl_hit_before_and_miss_after() {
    let t0 = Instant::now();
    let mut c = cache(PolicyKind::S4lru);
    let k = key("slow", 1);
    let f = Fill {
        ttl: Some(Duration::from_millis(500)),
        ..Fill::default()
    };
    c.insert(k.clone(), Value::from(1), f, t0);
    assert_eq!(c.get(&k, ms(t0, 400)), Some(&Value::from(1)));
    assert_eq!(c.get(&k, ms(t0, 600)), None);
    assert_eq!(c.counters().evictions.ttl, 1);
    assert_eq!(c.gauges(), CacheGauges::default());
    assert!(c.index.is_empty());
}

#[test]
fn sweep_removes_expired_entries_within_its_budget() {
    let t0 = Instant::now();
    let mut c: Cache<u32> = Cache::new(CacheConfig {
        sweep_budget: 2,
        ..CacheConfig::default()
    })
    .unwrap();
    for n in 0..5 {
        let f = Fill {
            ttl: Some(Duration::from_millis(10 * (n as u64 + 1))),
            tags: vec!["t".into()],
            parents: vec![],
        };
        c.insert(key("f", n), Value::from(n), f, t0);
    }
    c.insert(key("f", 9), Value::Nil, Fill::default(), t0);
    assert_eq!(c.sweep(ms(t0, 35)), 2);
    assert_eq!(c.sweep(ms(t0, 35)), 1);
    assert_eq!(c.sweep(ms(t0, 35)), 0);
    assert!(c.peek(&key("f", 3)).is_some() && c.peek(&key("f", 2)).is_none());
    assert_eq!(c.sweep(ms(t0, 1_000)), 2);
    assert_eq!(c.gauges().entries, 1);
    assert_eq!(c.counters().evictions.ttl, 5);
    assert_eq!(
        c.invalidate_tag("t"),
        0,
        "the tag index forgot the swept entries"
    );
}

/// Upstream vector 39 went one level: 1 depends on 0, 2 on 1; invalidating 0 left {0, 2}.
/// Here it removes the whole chain, and nothing else. Acceptance K6 by tag.
#[test]
fn invalidation_follows_dependencies_transitively() {
    let now = Instant::now();
    let mut c = cache(PolicyKind::Lru);
    let (k0, k1, k2, other) = (key("a", 0), key("b", 1), key("c", 2), key("d", 3));
    c.insert(k0.clone(), Value::from(0), fill(&["src"], &[]), now);
    c.insert(k1.clone(), Value::from(1), fill(&[], &[&k0]), now);
    c.insert(k2.clone(), Value::from(2), fill(&[], &[&k1]), now);
    c.insert(other.clone(), Value::from(3), fill(&["other"], &[]), now);
    assert_eq!(c.invalidate_key(&k0), 3);
    assert_eq!(c.gauges().entries, 1);
    assert!(c.peek(&other).is_some());

    c.insert(k0.clone(), Value::from(0), fill(&["src"], &[]), now);
    c.insert(k1.clone(), Value::from(1), fill(&[], &[&k0]), now);
    c.insert(
        k2.clone(),
        Value::from(2),
        fill(&["x"], &[&k1, &other]),
        now,
    );
    assert_eq!(c.invalidate_tag("src"), 3);
    assert_eq!(c.invalidate_tag("src"), 0);
    assert_eq!(c.counters().evictions.invalidation, 6);
    assert!(c.peek(&other).is_some());
    // By function: every entry of `d`, and what hangs off it.
    c.insert(k2.clone(), Value::from(2), fill(&[], &[&other]), now);
    assert_eq!(c.invalidate_function("d"), 2);
    assert_eq!(c.gauges(), CacheGauges::default());
    assert!(c.index.is_empty());
}

#[test]
fn a_parent_gone_first_still_invalidates_its_children_by_key() {
    let now = Instant::now();
    let mut c = cache(PolicyKind::Lru);
    let (a, b) = (key("a", 0), key("b", 1));
    c.insert(a.clone(), Value::from(0), Fill::default(), now);
    c.insert(b.clone(), Value::from(1), fill(&[], &[&a]), now);
    assert_eq!(c.invalidate_key(&a), 2);
    c.insert(b.clone(), Value::from(1), fill(&[], &[&a]), now);
    assert_eq!(c.invalidate_key(&a), 1, "a is not cached; b hangs off it");
}

#[test]
fn replacing_an_entry_replaces_its_tags_and_links() {
    let now = Instant::now();
    let mut c = cache(PolicyKind::S4lru);
    let (p, k) = (key("p", 0), key("k", 1));
    c.insert(k.clone(), Value::from(1), fill(&["old"], &[&p]), now);
    c.insert(k.clone(), Value::from(2), fill(&["new"], &[]), now);
    assert_eq!(c.invalidate_tag("old"), 0);
    assert_eq!(
        c.invalidate_key(&p),
        0,
        "the old link went with the old entry"
    );
    assert_eq!(c.get(&k, now), Some(&Value::from(2)));
    assert_eq!(c.invalidate_tag("new"), 1);
}

#[test]
fn too_large_results_are_not_cached() {
    let now = Instant::now();
    let mut c: Cache<u32> = Cache::new(CacheConfig {
        max_bytes: 4096,
        max_entry_bytes: 1024,
        ..CacheConfig::default()
    })
    .unwrap();
    let k = key("f", 1);
    let big = Value::Binary(vec![0; 1024]);
    assert!(matches!(
        c.insert(k.clone(), big, Fill::default(), now),
        Stored::TooLarge { limit: 1024, .. }
    ));
    assert_eq!(c.get(&k, now), None);
    assert_eq!(c.counters().too_large, 1);
}

#[test]
fn the_byte_budget_holds_and_evictions_are_counted() {
    let now = Instant::now();
    let max_bytes = 8 * 1024;
    for policy in [PolicyKind::Lru, PolicyKind::S4lru] {
        let mut c: Cache<u32> = Cache::new(CacheConfig {
            policy,
            max_bytes,
            max_entry_bytes: 1024,
            ..CacheConfig::default()
        })
        .unwrap();
        for n in 0..1_000 {
            let k = key("f", n);
            c.insert(k, Value::Binary(vec![0; 300]), fill(&["t"], &[]), now);
            assert!(c.gauges().bytes <= max_bytes);
        }
        let (g, n) = (c.gauges(), c.counters());
        assert!(g.entries > 1);
        assert_eq!(n.insertions, 1_000);
        assert_eq!(n.evictions.capacity, 1_000 - g.entries as u64, "{policy:?}");
        assert_eq!(c.invalidate_tag("t"), g.entries);
        assert!(c.index.is_empty());
    }
}

/// Acceptance K3 in miniature: identical calls in flight share one execution.
#[test]
fn identical_calls_in_flight_share_one_execution() {
    let now = Instant::now();
    let mut c: Cache<u32> = Cache::new(CacheConfig {
        max_followers: 2,
        ..CacheConfig::default()
    })
    .unwrap();
    let k = key("slow", 7);
    assert_eq!(c.begin(&k, 1), Flight::Lead);
    assert_eq!(c.begin(&k, 2), Flight::Follow);
    assert_eq!(c.begin(&k, 3), Flight::Follow);
    assert_eq!(c.begin(&k, 4), Flight::Crowded);
    assert_eq!(c.gauges().followers, 2);
    let done = c.complete(&k, &4, Value::from(9), Fill::default(), now);
    assert_eq!(
        done.stored,
        Stored::NotLeading,
        "a crowded caller lands nothing"
    );
    let done = c.complete(&k, &1, Value::from(9), Fill::default(), now);
    assert_eq!(done.followers, vec![2, 3]);
    assert!(matches!(done.stored, Stored::Cached { .. }));
    assert_eq!(c.get(&k, now), Some(&Value::from(9)));
    let n = c.counters();
    assert_eq!((n.shared, n.crowded), (2, 1));
    assert_eq!(c.gauges().flights, 0);
}

#[test]
fn a_failed_call_fails_its_followers_and_caches_nothing() {
    let now = Instant::now();
    let mut c = cache(PolicyKind::Lru);
    let k = key("f", 1);
    c.begin(&k, 1);
    c.begin(&k, 2);
    assert_eq!(c.fail(&k, &2), Vec::<u32>::new(), "only the leader reports");
    assert_eq!(c.fail(&k, &1), vec![2]);
    assert_eq!(c.get(&k, now), None);
    assert_eq!(c.begin(&k, 3), Flight::Lead, "the next call runs again");
}

#[test]
fn a_leader_leaving_promotes_the_oldest_follower() {
    let now = Instant::now();
    let mut c = cache(PolicyKind::Lru);
    let k = key("f", 1);
    c.begin(&k, 1);
    c.begin(&k, 2);
    c.begin(&k, 3);
    assert_eq!(c.leave(&k, &1), Left::Promoted(2));
    assert_eq!(c.leave(&k, &3), Left::Follower);
    let done = c.complete(&k, &2, Value::from(5), Fill::default(), now);
    assert_eq!(done.followers, Vec::<u32>::new());
    assert!(matches!(done.stored, Stored::Cached { .. }));
}

#[test]
fn a_result_computed_across_an_invalidation_is_not_stored() {
    let now = Instant::now();
    let mut c = cache(PolicyKind::Lru);
    let k = key("f", 1);
    c.begin(&k, 1);
    c.begin(&k, 2);
    // Nothing is cached yet, but the running call may have read what the tag covers.
    assert_eq!(c.invalidate_tag("prices"), 0);
    let done = c.complete(&k, &1, Value::from(1), fill(&["prices"], &[]), now);
    assert_eq!((done.followers, done.stored), (vec![2], Stored::Stale));
    assert_eq!(c.get(&k, now), None);
    assert_eq!(c.counters().stale, 1);
    // A leader promoted after the invalidation dispatches anew: its result is stored.
    c.begin(&k, 3);
    c.invalidate_tag("prices");
    c.begin(&k, 4);
    c.leave(&k, &3);
    let done = c.complete(&k, &4, Value::from(2), Fill::default(), now);
    assert!(matches!(done.stored, Stored::Cached { .. }));
}

/// An S4LRU hit can push entries out (a demotion cascade): the cache forgets them too.
#[test]
fn entries_pushed_out_by_a_hit_are_forgotten() {
    let now = Instant::now();
    let bin = |n: usize| Value::Binary(vec![0; n]);
    let (big, small, mid) = (key("big", 0), key("small", 1), key("mid", 2));
    // Measure the three entries first.
    let mut probe = cache(PolicyKind::Lru);
    let mut cost = |k: &CacheKey, v: Value| {
        probe.insert(k.clone(), v, fill(&[k.fun()], &[]), now);
        probe.peek(k).map_or(0, |e| e.bytes)
    };
    let (b, s, m) = (
        cost(&big, bin(2000)),
        cost(&small, bin(0)),
        cost(&mid, bin(500)),
    );
    // Two segments of `share` bytes: big + small overflow one, small + mid fit in one.
    let share = b + s - 1;
    assert!(s + m <= share && b + m > share);
    let mut c: Cache<u32> = Cache::new(CacheConfig {
        policy: PolicyKind::S4lru,
        max_bytes: 2 * share,
        max_entry_bytes: share,
        segments: 2,
        ..CacheConfig::default()
    })
    .unwrap();
    c.insert(big.clone(), bin(2000), fill(&["big"], &[]), now);
    assert!(c.get(&big, now).is_some()); // [[], [big]]
    c.insert(small.clone(), bin(0), fill(&["small"], &[]), now);
    c.insert(mid.clone(), bin(500), fill(&["mid"], &[]), now); // [[mid, small], [big]]
                                                               // small joins segment 1, big is demoted to segment 0 and mid leaves the cache.
    assert!(c.get(&small, now).is_some());
    assert_eq!(c.counters().evictions.capacity, 1);
    assert!(c.peek(&mid).is_none());
    assert_eq!(c.invalidate_function("mid"), 0);
    assert_eq!(c.invalidate_tag("mid"), 0);
    assert_eq!(c.invalidate_tag("big") + c.invalidate_tag("small"), 2);
    assert!(c.index.is_empty());
}

#[test]
fn tags_and_links_are_paid_for() {
    let now = Instant::now();
    let mut c = cache(PolicyKind::Lru);
    let (p, q) = (key("p", 0), key("q", 1));
    let bytes = |c: &Cache<u32>, k: &CacheKey| c.peek(k).map_or(0, |e| e.bytes);
    c.insert(key("f", 1), Value::Nil, Fill::default(), now);
    let bare = bytes(&c, &key("f", 1));
    c.insert(key("f", 1), Value::Nil, fill(&["abc"], &[&p, &q]), now);
    assert_eq!(
        bytes(&c, &key("f", 1)),
        bare + LINK_BYTES + 3 + 2 * LINK_BYTES
    );
    assert_eq!(c.gauges().bytes, bare + 3 * LINK_BYTES + 3);
}

#[test]
fn footprint_grows_with_the_value() {
    let small = value_footprint(&Value::from(1));
    let nested = Value::Array(vec![Value::Map(vec![(
        Value::from("k"),
        Value::Binary(vec![0; 100]),
    )])]);
    assert_eq!(small, std::mem::size_of::<Value>());
    assert_eq!(value_footprint(&nested), 4 * small + 1 + 100);
}

#[derive(Debug, Clone)]
enum Op {
    Insert {
        n: i64,
        size: usize,
        ttl: Option<u64>,
        tag: u8,
        parents: Vec<i64>,
    },
    Get(i64),
    InvalidateKey(i64),
    InvalidateTag(u8),
    InvalidateFunction(i64),
    Sweep,
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0i64..24, 0usize..600, proptest::option::of(1u64..50), 0u8..3,
              proptest::collection::vec(0i64..24, 0..3))
            .prop_map(|(n, size, ttl, tag, parents)| Op::Insert { n, size, ttl, tag, parents }),
        3 => (0i64..24).prop_map(Op::Get),
        1 => (0i64..24).prop_map(Op::InvalidateKey),
        1 => (0u8..3).prop_map(Op::InvalidateTag),
        1 => (0i64..24).prop_map(Op::InvalidateFunction),
        1 => Just(Op::Sweep),
        1 => (0u64..30).prop_map(Op::Wait),
    ]
}

/// Keys spread over three functions.
fn pkey(n: i64) -> CacheKey {
    key(["f", "g", "h"][n as usize % 3], n)
}

proptest! {
    /// Random operations on both policies: bytes never above the budget, a read after a write
    /// returns the value unless the cache reported it gone, the indexes name exactly the
    /// entries held, and an invalidation leaves no entry that hangs off a removed one.
    #[test]
    fn random_operations_keep_the_invariants(
        ops in proptest::collection::vec(op(), 1..80),
        s4 in any::<bool>(),
    ) {
        let t0 = Instant::now();
        let max_bytes = 6_000;
        let mut c: Cache<u32> = Cache::new(CacheConfig {
            policy: if s4 { PolicyKind::S4lru } else { PolicyKind::Lru },
            max_bytes,
            max_entry_bytes: 1_500,
            segments: 3,
            ..CacheConfig::default()
        }).unwrap();
        let mut now = t0;
        for op in ops {
            match op {
                Op::Insert { n, size, ttl, tag, parents } => {
                    let f = Fill {
                        ttl: ttl.map(Duration::from_millis),
                        tags: vec![format!("t{tag}")],
                        parents: parents.into_iter().map(pkey).collect(),
                    };
                    let value = Value::Binary(vec![0; size]);
                    let stored = c.insert(pkey(n), value.clone(), f, now);
                    if matches!(stored, Stored::Cached { .. }) {
                        prop_assert_eq!(c.peek(&pkey(n)).map(|e| &e.value), Some(&value));
                    }
                }
                Op::Get(n) => {
                    let live = c.peek(&pkey(n)).filter(|e| e.expires_at.is_none_or(|t| t > now))
                        .map(|e| e.value.clone());
                    prop_assert_eq!(c.get(&pkey(n), now).cloned(), live);
                }
                Op::InvalidateKey(n) => {
                    let before = held(&c);
                    c.invalidate_key(&pkey(n));
                    check_closed(&c, &before, &[pkey(n)])?;
                }
                Op::InvalidateTag(t) => {
                    let before = held(&c);
                    let roots: Vec<CacheKey> = before.iter()
                        .filter(|k| c.peek(k).is_some_and(|e| e.tags.iter().any(|x| **x == *format!("t{t}"))))
                        .cloned().collect();
                    c.invalidate_tag(&format!("t{t}"));
                    for r in &roots { prop_assert!(c.peek(r).is_none()); }
                    check_closed(&c, &before, &roots)?;
                }
                Op::InvalidateFunction(n) => {
                    let fun = pkey(n).fun().to_string();
                    c.invalidate_function(&fun);
                    prop_assert!(held(&c).iter().all(|k| k.fun() != fun));
                }
                Op::Sweep => {
                    c.sweep(now);
                }
                Op::Wait(d) => now += Duration::from_millis(d),
            }
            let g = c.gauges();
            prop_assert!(g.bytes <= max_bytes);
            let keys = held(&c);
            prop_assert_eq!(keys.len(), g.entries, "one entry per key");
            prop_assert_eq!(g.bytes, keys.iter().map(|k| c.peek(k).map_or(0, |e| e.bytes)).sum::<usize>());
            check_index(&c, &keys)?;
        }
    }
}

/// The keys held (over the keys the test uses).
fn held(c: &Cache<u32>) -> BTreeSet<CacheKey> {
    (0..24).map(pkey).filter(|k| c.peek(k).is_some()).collect()
}

/// No entry still held lists a root, or an entry removed by the invalidation, as a parent.
fn check_closed(
    c: &Cache<u32>,
    before: &BTreeSet<CacheKey>,
    roots: &[CacheKey],
) -> Result<(), TestCaseError> {
    let after = held(c);
    let mut gone: BTreeSet<CacheKey> = before.difference(&after).cloned().collect();
    gone.extend(roots.iter().cloned());
    for k in &after {
        let e = c.peek(k).ok_or_else(|| TestCaseError::fail("held"))?;
        for p in e.parents.iter() {
            prop_assert!(!gone.contains(p), "{k:?} still hangs off {p:?}");
        }
    }
    Ok(())
}

/// The indexes name exactly the entries held.
fn check_index(c: &Cache<u32>, keys: &BTreeSet<CacheKey>) -> Result<(), TestCaseError> {
    let mut by_tag: BTreeMap<Box<str>, BTreeSet<CacheKey>> = BTreeMap::new();
    let mut by_fun: BTreeMap<String, BTreeSet<CacheKey>> = BTreeMap::new();
    let mut children: BTreeMap<CacheKey, BTreeSet<CacheKey>> = BTreeMap::new();
    for k in keys {
        let e = c.peek(k).ok_or_else(|| TestCaseError::fail("held"))?;
        for t in e.tags.iter() {
            by_tag.entry(t.clone()).or_default().insert(k.clone());
        }
        by_fun
            .entry(k.fun().to_string())
            .or_default()
            .insert(k.clone());
        for p in e.parents.iter() {
            children.entry(p.clone()).or_default().insert(k.clone());
        }
    }
    for t in ["t0", "t1", "t2"] {
        let want = by_tag.get(t).cloned().unwrap_or_default();
        prop_assert_eq!(c.index.tagged(t).into_iter().collect::<BTreeSet<_>>(), want);
    }
    for f in ["f", "g", "h"] {
        let want = by_fun.get(f).cloned().unwrap_or_default();
        prop_assert_eq!(
            c.index.of_function(f).into_iter().collect::<BTreeSet<_>>(),
            want
        );
    }
    for k in (0..24).map(pkey) {
        let want = children.get(&k).cloned().unwrap_or_default();
        prop_assert_eq!(c.index.children_of(&k), want);
    }
    prop_assert_eq!(keys.is_empty(), c.index.is_empty());
    Ok(())
}
