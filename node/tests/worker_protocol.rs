//! The node library against a scripted broker (see `common`): registration, tasks and
//! failures, heartbeats, reconnection, capacity, cancel, drain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{outcome_of, Scripted, PROMPT};
use mpreg_node::{Node, NodeBuilder, Value};
use mpreg_protocol::{
    failure_kind, BrokerToWorker, CancelTask, Disconnect, ErrorCode, ErrorReply, Heartbeat,
    Reconnect, Task, TaskId, WorkerToBroker,
};

fn node(name: &str, broker: &str) -> NodeBuilder {
    NodeBuilder::new(name).broker(broker).builtins()
}

fn start(builder: NodeBuilder) -> Node {
    builder.start().expect("the node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_serves_tasks_and_heartbeats() {
    let mut broker = Scripted::start();
    let node = start(
        node("t-serve", &broker.endpoint)
            .resources(["b", "a", "a"])
            .capacity(4)
            .inline_function("boom_inline", |_a, _k| -> Result<Value, String> {
                panic!("inline kaboom")
            })
            .function("boom_blocking", |_a, _k| -> Result<Value, String> {
                panic!("blocking kaboom")
            })
            .async_function("boom_async", |_a, _k| async move {
                if true {
                    panic!("async kaboom");
                }
                Ok::<_, String>(Value::Nil)
            })
            .async_function(
                "boom_early",
                |_a, _k| -> std::future::Ready<Result<Value, String>> { panic!("early kaboom") },
            )
            .function("kw", |_a, k| -> Result<Value, String> {
                k.get("k").cloned().ok_or_else(|| "no k".to_string())
            }),
    );

    // `register` is repeated every second until answered, on the same connection.
    let first = broker.next(PROMPT).await;
    let WorkerToBroker::Register(register) = &first.message else {
        panic!("expected register, got {:?}", first.message);
    };
    assert_eq!(register.node, "t-serve");
    assert_eq!(
        register.functions,
        [
            "boom_async",
            "boom_blocking",
            "boom_early",
            "boom_inline",
            "echo",
            "echokw",
            "echos",
            "fail",
            "kw",
            "sleep",
            "slow"
        ]
    );
    assert_eq!(register.resources, ["a", "b"]);
    assert_eq!(register.capacity, 4);
    let again = broker.next(PROMPT).await;
    assert!(matches!(again.message, WorkerToBroker::Register(_)));
    assert_eq!(again.routing, first.routing);
    let gap = again.at - first.at;
    assert!(
        gap >= Duration::from_millis(800) && gap <= Duration::from_millis(2500),
        "{gap:?}"
    );
    assert_eq!(node.registered_brokers(), 0);
    assert!(!node.wait_registered(Duration::from_millis(50)).await);

    let (routing, _) = broker.accept(100, 50).await;
    assert!(node.wait_registered(PROMPT).await);
    assert_eq!(node.registered_brokers(), 1);

    let r = &routing;
    assert_eq!(
        broker.call(r, 1, "echo", vec!["hi".into()]).await,
        Ok("hi".into())
    );
    assert_eq!(
        broker.call(r, 2, "echos", vec![1.into(), "a".into()]).await,
        Ok(Value::Array(vec![1.into(), "a".into()]))
    );
    let kind = |o: Result<Value, (String, String)>| o.unwrap_err().0;
    assert_eq!(
        kind(broker.call(r, 3, "echo", vec![]).await),
        failure_kind::BAD_ARGUMENTS
    );
    assert_eq!(
        broker.call(r, 4, "fail", vec!["boom".into()]).await,
        Err((failure_kind::FUNCTION_ERROR.into(), "boom".into()))
    );
    assert_eq!(
        kind(broker.call(r, 5, "nope", vec![]).await),
        failure_kind::UNKNOWN_FUNCTION
    );
    for (id, fun) in [
        (6, "boom_inline"),
        (7, "boom_blocking"),
        (8, "boom_async"),
        (108, "boom_early"),
    ] {
        let (kind, message) = broker.call(r, id, fun, vec![]).await.unwrap_err();
        assert_eq!(kind, failure_kind::PANIC, "{fun}");
        assert!(message.contains("kaboom"), "{fun}: {message}");
    }
    assert_eq!(
        kind(broker.call(r, 9, "sleep", vec!["x".into(), 1.into()]).await),
        failure_kind::BAD_ARGUMENTS
    );
    assert_eq!(
        broker
            .call(r, 10, "sleep", vec![20.into(), "late".into()])
            .await,
        Ok("late".into())
    );
    // Keyword arguments reach the function.
    let mut kwargs = BTreeMap::new();
    kwargs.insert("k".to_string(), Value::from(7));
    broker
        .send(
            r,
            BrokerToWorker::Task(Task {
                task: TaskId(11),
                fun: "kw".into(),
                args: Vec::new().into(),
                kwargs: std::borrow::Cow::Owned(kwargs),
                timeout_ms: Some(1000),
            }),
        )
        .await;
    assert_eq!(
        outcome_of(broker.next_not_heartbeat(PROMPT).await, 11),
        Ok(7.into())
    );
    // After the panics the node still serves.
    assert_eq!(
        broker.call(r, 12, "echo", vec![Value::Nil]).await,
        Ok(Value::Nil)
    );

    // Heartbeats every 100 ms.
    let mut beats = 0;
    let until = Instant::now() + Duration::from_millis(650);
    while Instant::now() < until {
        let got = broker.next(PROMPT).await;
        assert!(matches!(got.message, WorkerToBroker::Heartbeat(_)));
        beats += 1;
    }
    assert!((4..=9).contains(&beats), "{beats} heartbeats in 650 ms");

    tokio::time::timeout(PROMPT, node.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown returns");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_registers_again_and_abandons_old_tasks() {
    let mut broker = Scripted::start();
    let node = start(node("t-reconnect", &broker.endpoint));
    let (routing, _) = broker.accept(200, 50).await;
    assert!(node.wait_registered(PROMPT).await);

    broker
        .task(&routing, 1, "sleep", vec![300.into(), "old".into()])
        .await;
    broker
        .send(
            &routing,
            BrokerToWorker::Reconnect(Reconnect {
                reason: "restarted".into(),
            }),
        )
        .await;
    // `register` again at once, on the same connection.
    let started = Instant::now();
    let (again, _) = broker.accept(200, 50).await;
    assert_eq!(again, routing);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(node.wait_registered(PROMPT).await);

    // The restarted broker reuses id 1: only the new task's result may come back.
    assert_eq!(
        broker.call(&routing, 1, "echo", vec!["new".into()]).await,
        Ok("new".into())
    );
    broker.expect_quiet(Duration::from_millis(600)).await;

    node.shutdown(Duration::from_secs(1)).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_or_leaving_broker_is_replaced_by_a_new_connection() {
    let mut broker = Scripted::start();
    let node = start(node("t-silence", &broker.endpoint));
    // Liveness: 3 x 100 ms of silence.
    let (first, _) = broker.accept(100, 3).await;
    assert!(node.wait_registered(PROMPT).await);
    let registered_at = Instant::now();
    // A task in flight when the broker goes silent is abandoned.
    broker
        .task(&first, 1, "sleep", vec![1500.into(), "stale".into()])
        .await;

    // Say nothing: after ~300 ms the node gives up, and after a 1 s backoff it connects again
    // with a fresh routing id.
    let got = broker.next_not_heartbeat(Duration::from_secs(5)).await;
    let WorkerToBroker::Register(_) = got.message else {
        panic!("expected register, got {:?}", got.message);
    };
    assert_ne!(got.routing, first, "a new connection has a new routing id");
    let waited = got.at - registered_at;
    assert!(
        waited >= Duration::from_millis(1200) && waited < Duration::from_millis(3500),
        "{waited:?}"
    );
    assert_eq!(node.registered_brokers(), 0);

    // Registered again: the backoff is back to 1 s; `disconnect` from the broker is handled
    // like silence.
    let (second, _) = broker.accept(100, 50).await;
    assert!(node.wait_registered(PROMPT).await);
    let left_at = Instant::now();
    broker
        .send(
            &second,
            BrokerToWorker::Disconnect(Disconnect {
                reason: "broker shutting down".into(),
            }),
        )
        .await;
    let got = broker.next_not_heartbeat(Duration::from_secs(5)).await;
    assert!(matches!(got.message, WorkerToBroker::Register(_)));
    assert!(got.routing != first && got.routing != second);
    let waited = got.at - left_at;
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1900),
        "{waited:?}"
    );

    // Turned away before registering: the next attempt waits twice as long.
    let refused_at = Instant::now();
    broker
        .send(
            &got.routing,
            BrokerToWorker::Disconnect(Disconnect {
                reason: "not now".into(),
            }),
        )
        .await;
    let got = broker.next_not_heartbeat(Duration::from_secs(5)).await;
    assert!(matches!(got.message, WorkerToBroker::Register(_)));
    let waited = got.at - refused_at;
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_millis(3000),
        "{waited:?}"
    );
    let (third, _) = broker.accept(100, 50).await;
    assert!(node.wait_registered(PROMPT).await);
    assert_eq!(
        broker.call(&third, 2, "echo", vec![2.into()]).await,
        Ok(2.into())
    );
    // The abandoned task's result never arrives on any connection.
    broker.expect_quiet(Duration::from_millis(300)).await;

    node.shutdown(Duration::from_secs(1)).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_bounds_running_tasks_and_extra_tasks_wait() {
    let mut broker = Scripted::start();
    let node = start(node("t-capacity", &broker.endpoint).capacity(2));
    let (routing, register) = broker.accept(1000, 50).await;
    assert_eq!(register.capacity, 2);
    assert!(node.wait_registered(PROMPT).await);

    let sent = Instant::now();
    for id in 1..=5u64 {
        broker
            .task(&routing, id, "sleep", vec![200.into(), id.into()])
            .await;
    }
    let mut done = Vec::new();
    for _ in 0..5 {
        let got = broker.next_not_heartbeat(PROMPT).await;
        let WorkerToBroker::Result(r) = got.message else {
            panic!("expected a result, got {:?}", got.message);
        };
        assert_eq!(r.value, Value::from(r.task.0));
        done.push((r.task, got.at - sent));
    }
    // Two at a time, in arrival order: rounds end near 200, 400 and 600 ms.
    let ids: Vec<u64> = done.iter().map(|(id, _)| id.0).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [1, 2, 3, 4, 5]);
    assert_eq!(ids[4], 5, "{done:?}");
    assert!(done[1].1 < Duration::from_millis(390), "{done:?}");
    assert!(done[2].1 >= Duration::from_millis(390), "{done:?}");
    assert!(done[4].1 >= Duration::from_millis(590), "{done:?}");

    node.shutdown(Duration::from_secs(1)).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_aborts_running_and_queued_tasks() {
    let mut broker = Scripted::start();
    let node = start(node("t-cancel", &broker.endpoint).capacity(1));
    let (routing, _) = broker.accept(1000, 50).await;
    assert!(node.wait_registered(PROMPT).await);

    broker
        .task(&routing, 1, "sleep", vec![800.into(), "running".into()])
        .await;
    broker
        .task(&routing, 2, "sleep", vec![10.into(), "queued".into()])
        .await;
    for task in [2, 1] {
        broker
            .send(
                &routing,
                BrokerToWorker::Cancel(CancelTask { task: TaskId(task) }),
            )
            .await;
    }
    // The aborted task gave its slot back: the next one runs at once, not after 800 ms.
    let started = Instant::now();
    assert_eq!(
        broker
            .call(&routing, 3, "sleep", vec![10.into(), "c".into()])
            .await,
        Ok("c".into())
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    // Cancelling an unknown or finished task is harmless.
    broker
        .send(
            &routing,
            BrokerToWorker::Cancel(CancelTask { task: TaskId(3) }),
        )
        .await;
    broker.expect_quiet(Duration::from_millis(1000)).await;

    node.shutdown(Duration::from_secs(1)).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_disconnects_then_drains() {
    let mut broker = Scripted::start();
    let node = start(node("t-drain", &broker.endpoint).capacity(1));
    let (routing, _) = broker.accept(100, 50).await;
    assert!(node.wait_registered(PROMPT).await);

    broker
        .task(&routing, 1, "sleep", vec![300.into(), "one".into()])
        .await;
    broker
        .task(&routing, 2, "sleep", vec![100.into(), "two".into()])
        .await;
    // Let both arrive before the shutdown starts.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let shutdown = tokio::spawn(node.shutdown(Duration::from_secs(5)));

    let got = broker.next_not_heartbeat(PROMPT).await;
    let WorkerToBroker::Disconnect(d) = got.message else {
        panic!("expected disconnect first, got {:?}", got.message);
    };
    assert_eq!(d.reason, "shutting down");
    // The running task and the queued one both finish and are answered.
    assert_eq!(
        outcome_of(broker.next_not_heartbeat(PROMPT).await, 1),
        Ok("one".into())
    );
    assert_eq!(
        outcome_of(broker.next_not_heartbeat(PROMPT).await, 2),
        Ok("two".into())
    );
    tokio::time::timeout(PROMPT, shutdown)
        .await
        .expect("shutdown returns once drained")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_at_the_drain_deadline() {
    let mut broker = Scripted::start();
    let node = start(node("t-deadline", &broker.endpoint));
    let (routing, _) = broker.accept(100, 50).await;
    assert!(node.wait_registered(PROMPT).await);
    broker
        .task(&routing, 1, "sleep", vec![10_000.into(), "never".into()])
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    tokio::time::timeout(PROMPT, node.shutdown(Duration::from_millis(200)))
        .await
        .expect("shutdown returns at the drain deadline");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let got = broker.next_not_heartbeat(PROMPT).await;
    assert!(matches!(got.message, WorkerToBroker::Disconnect(_)));
    broker.expect_quiet(Duration::from_millis(300)).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_broker_is_ignored() {
    let mut broker = Scripted::start();
    let node = start(node("t-garbage", &broker.endpoint));
    let (routing, _) = broker.accept(1000, 50).await;
    assert!(node.wait_registered(PROMPT).await);

    let heartbeat = BrokerToWorker::Heartbeat(Heartbeat {}).encode_body();
    broker
        .send_raw(&routing, &[b"MPREG/0", b"task", b"\x80"])
        .await;
    broker.send_raw(&routing, &[b"MPREG/1", b"task"]).await;
    broker
        .send_raw(&routing, &[b"MPREG/1", b"teleport", &heartbeat])
        .await;
    broker
        .send_raw(&routing, &[b"MPREG/1", b"task", b"\xc1\xff"])
        .await;
    // A task body without its id.
    broker
        .send_raw(&routing, &[b"MPREG/1", b"task", b"\x81\xa3fun\xa4echo"])
        .await;
    let mut error = ErrorReply::new(Some(9), ErrorCode::InvalidBody, "you sent junk");
    error.worker = Some("t-garbage".into());
    broker.send(&routing, BrokerToWorker::Error(error)).await;
    assert_eq!(
        broker
            .call(&routing, 1, "echo", vec!["still here".into()])
            .await,
        Ok("still here".into())
    );
    assert_eq!(node.registered_brokers(), 1);

    node.shutdown(Duration::from_secs(1)).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_several_brokers_at_once() {
    let mut a = Scripted::start();
    let mut b = Scripted::start();
    let node = start(node("t-two", &a.endpoint).broker(&b.endpoint).capacity(2));
    a.accept(200, 50).await;
    b.accept(200, 50).await;
    let deadline = Instant::now() + PROMPT;
    while node.registered_brokers() < 2 {
        assert!(
            Instant::now() < deadline,
            "not registered with both brokers"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Registered with both, the node splits its capacity (2) over them and tells each its
    // share again.
    let (ra, again) = a.accept(200, 50).await;
    assert_eq!(again.capacity, 1);
    let (rb, again) = b.accept(200, 50).await;
    assert_eq!(again.capacity, 1);
    // Same task id on both brokers: each answer goes to the broker that asked.
    a.task(&ra, 1, "echo", vec!["from a".into()]).await;
    b.task(&rb, 1, "echo", vec!["from b".into()]).await;
    assert_eq!(
        outcome_of(a.next_not_heartbeat(PROMPT).await, 1),
        Ok("from a".into())
    );
    assert_eq!(
        outcome_of(b.next_not_heartbeat(PROMPT).await, 1),
        Ok("from b".into())
    );

    // Shutdown tells both.
    let shutdown = tokio::spawn(node.shutdown(Duration::from_secs(1)));
    for broker in [&mut a, &mut b] {
        let got = broker.next_not_heartbeat(PROMPT).await;
        assert!(matches!(got.message, WorkerToBroker::Disconnect(_)));
    }
    shutdown.await.unwrap();
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_reports_bad_input() {
    let err = NodeBuilder::new("x").builtins().start().err().unwrap();
    assert!(matches!(err, mpreg_node::NodeError::NoBroker), "{err}");
    let err = NodeBuilder::new("x")
        .broker("localhost:7401")
        .start()
        .err()
        .unwrap();
    assert!(err.to_string().contains("localhost:7401"), "{err}");
}

#[test]
fn start_needs_a_runtime() {
    let err = NodeBuilder::new("x")
        .broker("tcp://127.0.0.1:7401")
        .start()
        .err()
        .unwrap();
    assert!(matches!(err, mpreg_node::NodeError::NoRuntime), "{err}");
}

/// A registration the broker refuses as invalid (here: a node name over its limit) used to be
/// resent every second forever. The node stops trying and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_registration_is_not_retried() {
    let mut broker = Scripted::start();
    let node = start(node(&"n".repeat(300), &broker.endpoint));
    let got = broker.next(PROMPT).await;
    assert!(matches!(got.message, WorkerToBroker::Register(_)));
    let refusal = ErrorReply::new(
        None,
        ErrorCode::InvalidBody,
        "register refused: the node name is 300 bytes long; the limit is 256 (max_name_bytes)",
    );
    broker
        .send(&got.routing, BrokerToWorker::Error(refusal))
        .await;
    let reason = tokio::time::timeout(PROMPT, node.refused())
        .await
        .expect("the node gives up");
    assert!(
        reason.contains("the node name is 300 bytes long"),
        "{reason}"
    );
    // No `register` follows (they came every second before).
    broker.expect_quiet(Duration::from_millis(2_500)).await;
    assert_eq!(node.registered_brokers(), 0);
    node.shutdown(Duration::from_secs(1)).await;
    broker.stop().await;
}
