//! ARCHITECTURE section 3, point by point, against a real broker and real nodes through the
//! Rust SDK.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mpreg::{args, Client, Error, ErrorCode, PlanEvent, Step, Value};
use mpreg_tests::{start_node, Cluster};

fn s(x: &str) -> Value {
    Value::from(x)
}

fn remote(e: Error) -> Box<mpreg::RemoteError> {
    match e {
        Error::Remote(r) => r,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

async fn connect(c: &Cluster) -> Client {
    Client::connect(&c.broker.client).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_example_sinks_and_all_results() {
    let c = Cluster::start(&[&[]]);
    let client = connect(&c).await;
    let r = client
        .plan()
        .step("|first", "echo", args!["hi there!"])
        .step("|second", "echo", args!["|first"])
        .step("|third", "echos", args!["|first", "|second", "AND ME TOO"])
        .run()
        .await
        .unwrap();
    let want = BTreeMap::from([(
        "|third".to_string(),
        Value::Array(vec![s("hi there!"), s("hi there!"), s("AND ME TOO")]),
    )]);
    assert_eq!(r, want);
    // Without `|second` in `|third`'s args, both are sinks.
    let r = client
        .plan()
        .step("|first", "echo", args!["hi there!"])
        .step("|second", "echo", args!["|first"])
        .step("|third", "echos", args!["|first", "AND ME TOO"])
        .run()
        .await
        .unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r["|second"], s("hi there!"));
    assert_eq!(
        r["|third"],
        Value::Array(vec![s("hi there!"), s("AND ME TOO")])
    );
    // All results on request.
    let r = client
        .plan()
        .step("a", "echo", args![1])
        .step("b", "echo", args!["a"])
        .all_results()
        .run()
        .await
        .unwrap();
    assert_eq!(
        (r["a"].clone(), r["b"].clone()),
        (Value::from(1), Value::from(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_at_depth_field_paths_kwargs_and_literals() {
    let c = Cluster::start(&[&[]]);
    let client = connect(&c).await;
    let data = Value::Map(vec![(
        s("rows"),
        Value::Array(vec![s("r0"), Value::Map(vec![(s("k"), Value::from(7))])]),
    )]);
    let use_it = Step::new(
        "use",
        "echos",
        vec![
            Value::Array(vec![Value::Map(vec![(s("deep"), s("fetch.rows.1.k"))])]),
            s("fetch.rows.0"),
            s("nostep"),
            s("fetchx"),
        ],
    );
    // A kwargs value is a reference too (echokw returns its keyword arguments).
    let mut keyed = Step::new("keyed", "echokw", vec![]);
    keyed.kwargs.insert("row".into(), s("fetch.rows.0"));
    keyed.kwargs.insert("text".into(), s("plain"));
    let r = client
        .plan()
        .step("fetch", "echo", vec![data.clone()])
        .step_with(use_it)
        .step_with(keyed)
        .run()
        .await
        .unwrap();
    assert_eq!(
        r["keyed"],
        Value::Map(vec![(s("row"), s("r0")), (s("text"), s("plain"))])
    );
    assert_eq!(
        r["use"],
        Value::Array(vec![
            Value::Array(vec![Value::Map(vec![(s("deep"), Value::from(7))])]),
            s("r0"),
            s("nostep"),
            s("fetchx"),
        ])
    );
    // A path that does not resolve is an error naming the step and the path, with partials.
    let e = remote(
        client
            .plan()
            .step("fetch", "echo", vec![data])
            .step("bad", "echo", args!["fetch.rows.9"])
            .run()
            .await
            .unwrap_err(),
    );
    assert_eq!(e.error_code(), Some(ErrorCode::UnresolvedReference));
    assert_eq!(e.step.as_deref(), Some("bad"));
    assert_eq!(e.path.as_deref(), Some("fetch.rows.9"));
    assert!(e.partial.contains_key("fetch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_by_resources_and_no_route() {
    let c = Cluster::start(&[&["gpu", "eu"], &["cpu"]]);
    let client = connect(&c).await;
    // `echos` of nothing returns []: use progress events to see which worker ran each step.
    let mut stream = client
        .plan()
        .step("g", "echo", args![1])
        .locs(["gpu", "eu"])
        .step("c", "echo", args![2])
        .locs(["cpu"])
        .progress()
        .stream()
        .await
        .unwrap();
    let mut ran = BTreeMap::new();
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            PlanEvent::Progress(p) => {
                ran.insert(p.step, p.worker);
            }
            PlanEvent::Done(r) => assert_eq!(r.len(), 2),
        }
    }
    assert_eq!(ran["g"], "n0");
    assert_eq!(ran["c"], "n1");
    let e = remote(
        client
            .plan()
            .step("x", "echo", args![1])
            .locs(["gpu", "cpu"])
            .run()
            .await
            .unwrap_err(),
    );
    assert_eq!(e.error_code(), Some(ErrorCode::NoRoute));
    assert_eq!(e.fun.as_deref(), Some("echo"));
    assert_eq!(e.locs, Some(vec!["gpu".to_string(), "cpu".to_string()]));
    let e = remote(client.call("no_such_function", args![]).await.unwrap_err());
    assert_eq!(e.error_code(), Some(ErrorCode::NoRoute));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_steps_run_concurrently_and_failures_carry_partials() {
    let c = Cluster::start(&[&[], &[]]);
    let client = connect(&c).await;
    // Four 300 ms sleeps on two nodes (capacity 64 each) finish together, not in 1.2 s.
    let started = Instant::now();
    let mut plan = client.plan();
    for i in 0..4 {
        plan = plan.step(format!("z{i}"), "sleep", args![300, i]);
    }
    let r = plan.run().await.unwrap();
    assert_eq!(r.len(), 4);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    let e = remote(
        client
            .plan()
            .step("ok", "echo", args!["fine"])
            .step("boom", "fail", args!["ok"])
            .run()
            .await
            .unwrap_err(),
    );
    assert_eq!(e.error_code(), Some(ErrorCode::StepFailed));
    assert_eq!(
        (e.step.as_deref(), e.fun.as_deref()),
        (Some("boom"), Some("fail"))
    );
    assert_eq!(e.cause.as_deref(), Some("function_error"));
    // The reference to `ok` ran first and resolved: its value is the failure's message.
    assert!(e.message.contains("fine"), "{}", e.message);
    assert!(e.worker.is_some());
    assert_eq!(e.partial.get("ok"), Some(&s("fine")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_expiry_is_a_typed_timeout_with_partials() {
    let c = Cluster::start(&[&[]]);
    let client = connect(&c).await;
    let started = Instant::now();
    let e = remote(
        client
            .plan()
            .step("quick", "echo", args![1])
            .step("slow", "sleep", args![5_000, "late"])
            .deadline(Duration::from_millis(400))
            .run()
            .await
            .unwrap_err(),
    );
    assert_eq!(e.error_code(), Some(ErrorCode::PlanTimeout));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.partial.get("quick"), Some(&Value::from(1)));
    // The broker is still fine, and the cancelled sleep does not block the node.
    assert_eq!(
        client.call("echo", args!["after"]).await.unwrap(),
        s("after")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_plans_on_one_connection() {
    let c = Cluster::start(&[&[], &[]]);
    let client = connect(&c).await;
    let mut handles = Vec::new();
    for i in 0..500u64 {
        let client = client.clone();
        handles.push(tokio::spawn(async move {
            client
                .plan()
                .step("a", "echo", args![i])
                .step("b", "sleep", args![i % 20, "a"])
                .step("c", "echos", args!["a", "b"])
                .run()
                .await
        }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.await.unwrap().unwrap();
        assert_eq!(
            r["c"],
            Value::Array(vec![Value::from(i as u64), Value::from(i as u64)])
        );
    }
    let status = client.status().await.unwrap();
    assert_eq!(status.plans_in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_mid_plan_is_replaced() {
    let c = Cluster::start(&[&[]]);
    let client = connect(&c).await;
    // The only worker takes the step, then freezes (SIGSTOP: silent, connection open).
    let plan = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .plan()
                .step("s", "sleep", args![1_500, "done"])
                .deadline(Duration::from_secs(20))
                .run()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.nodes[0].pause();
    let spare = start_node(&c.broker.worker, "spare", &[], &[]);
    let started = Instant::now();
    let r = plan.await.unwrap().unwrap();
    assert_eq!(r["s"], s("done"));
    // Expired after ~3 heartbeats of silence, then re-run on the spare (1.5 s).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let status = client.status().await.unwrap();
    assert_eq!(status.workers.len(), 1, "{:?}", status.workers);
    assert_eq!(status.workers[0].name, "spare");
    assert!(status.counters.get("tasks_retried").copied().unwrap_or(0) >= 1);
    c.nodes[0].signal("CONT");
    drop(spare);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_lost_without_replacement_fails_the_plan() {
    let mut c = Cluster::start(&[&[]]);
    let client = connect(&c).await;
    let plan = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .plan()
                .step("s", "sleep", args![3_000, 1])
                .deadline(Duration::from_secs(20))
                .run()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.nodes[0].kill();
    let e = remote(plan.await.unwrap().unwrap_err());
    assert_eq!(e.error_code(), Some(ErrorCode::WorkerLost));
    assert_eq!(e.step.as_deref(), Some("s"));
}
