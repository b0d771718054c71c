//! The result cache against a real broker and in-process workers that count their
//! executions: hits never reach a worker, keys tell calls apart exactly as specified, single
//! flight, TTL, modes, failures, transitive invalidation, the byte budget under a flood of
//! distinct results, the CLI, and invalidation across a cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpreg::{args, CacheMode, Client, Error, Value};
use mpreg_node::{Node, NodeBuilder};
use mpreg_tests::{cli, eventually, start_broker, start_broker_cluster};

const WAIT: Duration = Duration::from_secs(10);

/// Executions of each counted function.
#[derive(Clone, Default)]
struct Runs(Arc<[AtomicUsize; 4]>);

impl Runs {
    fn of(&self, i: usize) -> usize {
        self.0[i].load(Ordering::SeqCst)
    }
}

/// A node with counted functions: `pure(x)` (cacheable, tag `t-pure`) returns x,
/// `derived(x)` (cacheable) returns [x], `flaky(x)` (cacheable) always fails, `plain(x)`
/// (not cacheable) returns x, `nap(ms, x)` (cacheable) sleeps then returns x, `stamp()`
/// (cacheable) returns how many times it ran.
async fn counting_node(worker: &str, ttl: Option<Duration>, resources: &[&str]) -> (Node, Runs) {
    let runs = Runs::default();
    let counted = |i: usize| {
        let runs = runs.clone();
        move || runs.0[i].fetch_add(1, Ordering::SeqCst) + 1
    };
    let (pure, derived, flaky, stamp) = (counted(0), counted(1), counted(2), counted(3));
    let node = NodeBuilder::new("counting")
        .broker(worker)
        .resources(resources.iter().copied())
        .capacity(128)
        .inline_function("pure", move |a, _k| -> Result<Value, String> {
            pure();
            Ok(a.into_iter().next().unwrap_or(Value::Nil))
        })
        .inline_function("derived", move |a, _k| -> Result<Value, String> {
            derived();
            Ok(Value::Array(a))
        })
        .inline_function("flaky", move |_a, _k| -> Result<Value, String> {
            flaky();
            Err("no luck".into())
        })
        .inline_function("stamp", move |_a, _k| -> Result<Value, String> {
            Ok(Value::from(stamp() as u64))
        })
        .inline_function("plain", |a, _k| -> Result<Value, String> {
            Ok(a.into_iter().next().unwrap_or(Value::Nil))
        })
        .async_function("nap", |a, _k| async move {
            let ms = a.first().and_then(Value::as_u64).ok_or("nap(ms, x)")?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, String>(a.get(1).cloned().unwrap_or(Value::Nil))
        })
        .cacheable("pure", ttl, &["t-pure"])
        .cacheable("derived", ttl, &[])
        .cacheable("flaky", ttl, &[])
        .cacheable("stamp", ttl, &[])
        .cacheable("nap", ttl, &[])
        .start()
        .unwrap();
    assert!(node.wait_registered(WAIT).await);
    (node, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_keys_modes_and_failures() {
    let broker = start_broker(&[], &[]);
    let (node, runs) = counting_node(&broker.worker, None, &["a", "b"]).await;
    let client = Client::connect(&broker.client).await.unwrap();

    // A second identical call is answered by the broker: the worker ran once.
    assert_eq!(client.call("pure", args![1]).await.unwrap(), Value::from(1));
    assert_eq!(client.call("pure", args![1]).await.unwrap(), Value::from(1));
    assert_eq!(runs.of(0), 1);
    // Another argument, or another resource set, is another call.
    client.call("pure", args![2]).await.unwrap();
    assert_eq!(runs.of(0), 2);
    let with_locs = |locs: &'static [&'static str]| {
        client
            .plan()
            .step("s", "pure", args![1])
            .locs(locs.iter().copied())
            .run()
    };
    with_locs(&["a"]).await.unwrap();
    assert_eq!(runs.of(0), 3, "resources [a] miss");
    with_locs(&["b", "a"]).await.unwrap();
    with_locs(&["a", "b"]).await.unwrap();
    assert_eq!(runs.of(0), 4, "[b, a] and [a, b] are one resource set");

    // Map keys in another order, and kwargs given in another order, hit.
    let map = |pairs: &[(&str, i64)]| {
        Value::Map(
            pairs
                .iter()
                .map(|(k, v)| (Value::from(*k), Value::from(*v)))
                .collect(),
        )
    };
    client
        .call("pure", args![map(&[("x", 1), ("y", 2)])])
        .await
        .unwrap();
    client
        .call("pure", args![map(&[("y", 2), ("x", 1)])])
        .await
        .unwrap();
    assert_eq!(
        runs.of(0),
        5,
        "maps differing only in key order are one call"
    );
    let kw = |first: (&'static str, i64), second: (&'static str, i64)| {
        client
            .plan()
            .step("s", "pure", args![])
            .kwarg(first.0, first.1)
            .kwarg(second.0, second.1)
            .run()
    };
    kw(("p", 1), ("q", 2)).await.unwrap();
    kw(("q", 2), ("p", 1)).await.unwrap();
    assert_eq!(runs.of(0), 6);
    // 1 and 1.0 are different calls (integers and floats are kept apart), as are str and bin.
    client.call("pure", args![1.0]).await.unwrap();
    client
        .call("pure", args![Value::Binary(b"1".to_vec())])
        .await
        .unwrap();
    client.call("pure", args!["1"]).await.unwrap();
    assert_eq!(runs.of(0), 9);

    // Bypass runs and stores nothing; refresh runs and replaces.
    let stamped = |mode: Option<CacheMode>| {
        let mut plan = client.plan().step("s", "stamp", args![]);
        if let Some(mode) = mode {
            plan = plan.cache(mode);
        }
        async move { plan.run().await.unwrap()["s"].clone() }
    };
    assert_eq!(stamped(None).await, Value::from(1));
    assert_eq!(stamped(None).await, Value::from(1), "cached");
    assert_eq!(stamped(Some(CacheMode::Bypass)).await, Value::from(2));
    assert_eq!(stamped(None).await, Value::from(1), "bypass stored nothing");
    assert_eq!(stamped(Some(CacheMode::Refresh)).await, Value::from(3));
    assert_eq!(
        stamped(None).await,
        Value::from(3),
        "refresh replaced the entry"
    );
    assert_eq!(runs.of(3), 3);

    // Failures are never cached; functions not declared cacheable never are.
    for _ in 0..2 {
        match client.call("flaky", args![1]).await.unwrap_err() {
            Error::Remote(e) => assert_eq!(e.code, 301, "{e:?}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(runs.of(2), 2);
    let stats = client.cache_stats().await.unwrap();
    assert!(stats.enabled);
    assert_eq!(stats.policy, "lru");
    assert!(stats.counters["hits"] >= 6, "{stats:?}");
    client.call("plain", args![7]).await.unwrap();
    client.call("plain", args![7]).await.unwrap();
    let after = client.cache_stats().await.unwrap();
    assert_eq!(after.entries, stats.entries, "plain results are not stored");
    assert_eq!(after.counters["hits"], stats.counters["hits"]);

    // The figures are in `status` too.
    let status = client.status().await.unwrap();
    assert_eq!(status.counters["cache_hits"], after.counters["hits"]);
    assert_eq!(status.gauges["cache_entries"], after.entries);

    // A cached result's progress names the cache as its worker.
    let mut seen = Vec::new();
    client
        .plan()
        .step("s", "pure", args![1])
        .run_with_progress(|p| seen.push(p.worker.clone()))
        .await
        .unwrap();
    assert_eq!(seen, ["cache"]);
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_calls_in_flight_run_once_and_ttl_expires() {
    let broker = start_broker(&[], &[]);
    let (node, runs) = counting_node(&broker.worker, Some(Duration::from_millis(400)), &[]).await;
    let client = Client::connect(&broker.client).await.unwrap();

    // 100 concurrent identical calls: one execution, 100 right answers.
    let started = Instant::now();
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.call("nap", args![300, "shared"]).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), Value::from("shared"));
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let stats = client.cache_stats().await.unwrap();
    assert_eq!(stats.counters["insertions"], 1, "{stats:?}");
    assert!(
        stats.counters["shared"] + stats.counters["hits"] >= 99,
        "{stats:?}"
    );
    assert_eq!(stats.flights, 0);

    // TTL: the entry answers while it is young and is gone after 400 ms.
    client.call("pure", args!["t"]).await.unwrap();
    client.call("pure", args!["t"]).await.unwrap();
    assert_eq!(runs.of(0), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    client.call("pure", args!["t"]).await.unwrap();
    assert_eq!(runs.of(0), 2, "expired after its time to live");

    // A plan ended while it led a call: a follower takes over and still gets its answer.
    let leader = {
        let c = client.clone();
        tokio::spawn(async move {
            c.plan()
                .step("s", "nap", args![400, "lead"])
                .deadline(Duration::from_millis(150))
                .run()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let follower = client.call("nap", args![400, "lead"]);
    let follower = tokio::time::timeout(WAIT, follower).await.unwrap();
    assert_eq!(follower.unwrap(), Value::from("lead"));
    match leader.await.unwrap().unwrap_err() {
        Error::Remote(e) => assert_eq!(e.code, 303, "plan_timeout: {e:?}"),
        other => panic!("{other:?}"),
    }
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_is_transitive_along_plans() {
    let broker = start_broker(&[], &[]);
    let (node, runs) = counting_node(&broker.worker, None, &[]).await;
    let client = Client::connect(&broker.client).await.unwrap();
    let chain = || {
        client
            .plan()
            .step("base", "pure", args![5])
            .step("top", "derived", args!["base"])
            .run()
    };
    let first = chain().await.unwrap();
    assert_eq!(first["top"], Value::Array(vec![Value::from(5)]));
    chain().await.unwrap();
    assert_eq!(
        (runs.of(0), runs.of(1)),
        (1, 1),
        "both answered from the cache"
    );

    // `derived` has no tag: dropping the tag of `pure` drops it too, computed from `pure`.
    let dropped = client.cache_invalidate_tag("t-pure").await.unwrap();
    assert_eq!(dropped.entries, 2, "{dropped:?}");
    chain().await.unwrap();
    assert_eq!((runs.of(0), runs.of(1)), (2, 2));

    // By function: `pure` and what was computed from it.
    let dropped = client.cache_invalidate_function("pure").await.unwrap();
    assert_eq!(dropped.entries, 2);
    chain().await.unwrap();
    assert_eq!((runs.of(0), runs.of(1)), (3, 3));
    // Dropping the downstream result leaves the upstream one.
    client.cache_invalidate_function("derived").await.unwrap();
    chain().await.unwrap();
    assert_eq!((runs.of(0), runs.of(1)), (3, 4));

    // The CLI: stats as one JSON line, invalidate by function, and its errors.
    let (code, out, err) = cli(&broker.client, &["cache", "stats"], None);
    assert_eq!(code, 0, "{err}");
    let stats: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(stats["entries"], 2);
    assert!(stats["counters"]["hits"].as_u64().unwrap() >= 2);
    let (code, out, _) = cli(
        &broker.client,
        &["cache", "invalidate", "--fun", "pure"],
        None,
    );
    assert_eq!(code, 0);
    assert_eq!(out.trim(), r#"{"entries":2,"peers":0}"#);
    // Usage errors: the CLI's `902 invalid_input` line, exit 1.
    let (code, _, err) = cli(&broker.client, &["cache", "invalidate"], None);
    assert!(code == 1 && err.contains("902"), "{code} {err}");
    let (code, _, err) = cli(
        &broker.client,
        &["cache", "invalidate", "--fun", "a", "--tag", "b"],
        None,
    );
    assert!(code == 1 && err.contains("902"), "{code} {err}");
    let (code, _, err) = cli(
        &broker.client,
        &["call", "--cache", "often", "pure", "1"],
        None,
    );
    assert!(code == 1 && err.contains("often"), "{code} {err}");
    let (code, out, _) = cli(
        &broker.client,
        &["call", "--cache", "bypass", "pure", "9"],
        None,
    );
    assert_eq!((code, out.trim()), (0, "9"));
    assert_eq!(runs.of(0), 4, "bypass ran it");
    let (_, out, _) = cli(&broker.client, &["cache", "stats"], None);
    assert!(
        out.contains("\"entries\":0"),
        "the bypassed call stored nothing: {out}"
    );
    node.shutdown(Duration::from_secs(1)).await;
}

/// A broker's resident memory (VmRSS) in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// 1 GiB of distinct cacheable results (2,048 of 512 KiB) through a broker whose cache may
/// hold 32 MiB: the cache stays within its budget and so does the broker's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_budget_holds_under_a_gibibyte_of_results() {
    const BUDGET: usize = 32 << 20;
    const BLOB: usize = 512 << 10;
    let budget = BUDGET.to_string();
    let broker = start_broker(&["--cache-max-bytes", &budget], &[]);
    let node = NodeBuilder::new("blobs")
        .broker(&broker.worker)
        .capacity(8)
        .function("blob", |a, _k| -> Result<Value, String> {
            let seed = a.first().and_then(Value::as_u64).ok_or("blob(seed)")?;
            Ok(Value::Binary(vec![seed as u8; BLOB]))
        })
        .cacheable("blob", None, &[])
        .start()
        .unwrap();
    assert!(node.wait_registered(WAIT).await);
    let client = Client::connect(&broker.client).await.unwrap();
    let baseline = rss_kib(broker.proc.pid());
    let mut peak = baseline;
    let total = (1usize << 30) / BLOB;
    for batch in 0..total / 32 {
        let calls: Vec<_> = (0..32)
            .map(|i| {
                let c = client.clone();
                let seed = (batch * 32 + i) as u64;
                tokio::spawn(async move { c.call("blob", args![seed]).await })
            })
            .collect();
        for call in calls {
            match call.await.unwrap().unwrap() {
                Value::Binary(b) => assert_eq!(b.len(), BLOB),
                other => panic!("{other:?}"),
            }
        }
        peak = peak.max(rss_kib(broker.proc.pid()));
    }
    let stats = client.cache_stats().await.unwrap();
    assert!(stats.bytes as usize <= BUDGET, "{stats:?}");
    assert!(stats.counters["evictions_capacity"] > 1500, "{stats:?}");
    // The cache's budget plus the plans in flight (32 results) and allocator slack; without
    // the budget the broker would hold the whole gibibyte.
    let grown_mib = (peak.saturating_sub(baseline)) / 1024;
    assert!(grown_mib < 256, "broker grew by {grown_mib} MiB");
    eprintln!("1 GiB of results: broker grew by {grown_mib} MiB, cache {stats:?}");
    node.shutdown(Duration::from_secs(1)).await;
}

/// An invalidation on one broker reaches the cluster's others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_spreads_across_the_cluster() {
    let brokers = start_broker_cluster("cachec", 2, &[]);
    let mut nodes = Vec::new();
    for b in &brokers {
        nodes.push(counting_node(&b.worker, None, &[]).await);
    }
    let c1 = Client::connect(&brokers[0].client).await.unwrap();
    let c2 = Client::connect(&brokers[1].client).await.unwrap();
    eventually(WAIT, "two members", || {
        let (_, out, _) = cli(&brokers[0].client, &["cluster"], None);
        out.matches("\"alive\"").count() == 2
    });
    c1.call("pure", args!["x"]).await.unwrap();
    c2.call("pure", args!["x"]).await.unwrap();
    assert_eq!(c2.cache_stats().await.unwrap().entries, 1);
    let dropped = c1.cache_invalidate_tag("t-pure").await.unwrap();
    assert_eq!((dropped.entries, dropped.peers), (1, 1));
    let deadline = Instant::now() + WAIT;
    while c2.cache_stats().await.unwrap().entries != 0 {
        assert!(Instant::now() < deadline, "the peer kept its entry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (node, _) in nodes {
        node.shutdown(Duration::from_secs(1)).await;
    }
}

/// The cluster tier: a result computed through one broker answers the same call through the
/// other, whichever of them owns the key; without the tier each broker runs it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_tier_shares_results_between_brokers() {
    for tier in [true, false] {
        let flags: &[&str] = if tier { &["--cache-cluster-tier"] } else { &[] };
        let brokers = start_broker_cluster(if tier { "tier" } else { "notier" }, 2, flags);
        let mut nodes = Vec::new();
        for b in &brokers {
            nodes.push(counting_node(&b.worker, None, &[]).await);
        }
        eventually(WAIT, "two members", || {
            let (_, out, _) = cli(&brokers[1].client, &["cluster"], None);
            out.matches("\"alive\"").count() == 2
        });
        let c1 = Client::connect(&brokers[0].client).await.unwrap();
        let c2 = Client::connect(&brokers[1].client).await.unwrap();
        const KEYS: i64 = 20;
        for k in 0..KEYS {
            assert_eq!(c1.call("pure", args![k]).await.unwrap(), Value::from(k));
        }
        // The hand-over to an owner is asynchronous: give it a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for k in 0..KEYS {
            assert_eq!(c2.call("pure", args![k]).await.unwrap(), Value::from(k));
        }
        let runs: usize = nodes.iter().map(|(_, r)| r.of(0)).sum();
        if tier {
            assert_eq!(
                runs, KEYS as usize,
                "every key ran once in the whole cluster"
            );
            let s1 = c1.status().await.unwrap();
            let s2 = c2.status().await.unwrap();
            let count = |s: &mpreg::StatusReply, k: &str| s.counters.get(k).copied().unwrap_or(0);
            // Keys owned by broker 2 were handed to it; broker 2 asked broker 1 for the others.
            assert_eq!(
                count(&s1, "cache_remote_puts") + count(&s2, "cache_remote_hits"),
                KEYS as u64,
                "{:?} {:?}",
                s1.counters,
                s2.counters
            );
            assert!(count(&s1, "cache_remote_puts") > 0 && count(&s2, "cache_remote_hits") > 0);
        } else {
            assert_eq!(
                runs,
                2 * KEYS as usize,
                "without the tier each broker runs each key"
            );
        }
        for (node, _) in nodes {
            node.shutdown(Duration::from_secs(1)).await;
        }
    }
}
