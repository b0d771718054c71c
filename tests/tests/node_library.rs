//! The node library in-process (user functions: inline, blocking, async) against a real broker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use mpreg::{args, Client, Error, Value};
use mpreg_node::NodeBuilder;
use mpreg_tests::start_broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_functions_panics_and_capacity() {
    let broker = start_broker(&[], &[]);
    let node = NodeBuilder::new("lib-node")
        .broker(&broker.worker)
        .resource("lib")
        .capacity(2)
        .inline_function("boom", |_a, _k| -> Result<Value, String> {
            panic!("kaboom")
        })
        .function("slow", |a, _k| -> Result<Value, String> {
            std::thread::sleep(Duration::from_millis(200));
            Ok(a.into_iter().next().unwrap_or(Value::Nil))
        })
        .async_function("twice", |a, _k| async move {
            let n = a.first().and_then(Value::as_i64).ok_or("twice(n)")?;
            Ok::<_, String>(Value::from(2 * n))
        })
        .start()
        .unwrap();
    assert!(node.wait_registered(Duration::from_secs(10)).await);
    let client = Client::connect(&broker.client).await.unwrap();

    // A panic is a typed failure; the node survives it.
    match client.call("boom", args![]).await.unwrap_err() {
        Error::Remote(e) => {
            assert_eq!(e.cause.as_deref(), Some("panic"));
            assert!(e.message.contains("kaboom"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client.call("twice", args![21]).await.unwrap(),
        Value::from(42)
    );
    match client.call("twice", args!["x"]).await.unwrap_err() {
        Error::Remote(e) => assert_eq!(e.cause.as_deref(), Some("function_error")),
        other => panic!("{other:?}"),
    }

    // Capacity 2: four 200 ms blocking calls take two rounds, never four at once.
    let started = Instant::now();
    let mut plan = client.plan();
    for i in 0..4 {
        plan = plan.step(format!("s{i}"), "slow", args![i]).locs(["lib"]);
    }
    let r = plan.run().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.len(), 4);
    assert!(
        took >= Duration::from_millis(390) && took < Duration::from_millis(2000),
        "{took:?}"
    );

    // Graceful shutdown: the broker forgets the node.
    node.shutdown(Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !client.status().await.unwrap().workers.is_empty() {
        assert!(
            Instant::now() < deadline,
            "node still registered after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node registered with several brokers splits its capacity over them (rounding up), so
/// their views of its load add up to what it can run; losing a broker gives its share back to
/// the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_split_over_the_brokers() {
    let a = start_broker(&[], &[]);
    let mut b = start_broker(&[], &[]);
    let node = NodeBuilder::new("split-node")
        .broker(&a.worker)
        .broker(&b.worker)
        .capacity(5)
        .function("id", |a, _k| -> Result<Value, String> {
            Ok(a.into_iter().next().unwrap_or(Value::Nil))
        })
        .start()
        .unwrap();
    assert!(node.wait_registered(Duration::from_secs(10)).await);
    let ca = Client::connect(&a.client).await.unwrap();
    let cb = Client::connect(&b.client).await.unwrap();
    let capacity = |s: mpreg_protocol::StatusReply| {
        s.workers
            .iter()
            .find(|w| w.name == "split-node")
            .map(|w| w.capacity)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (sa, sb) = (
            capacity(ca.status().await.unwrap()),
            capacity(cb.status().await.unwrap()),
        );
        if sa == Some(3) && sb == Some(3) {
            break;
        }
        assert!(Instant::now() < deadline, "shares {sa:?} {sb:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Broker b goes: a gets the whole capacity once the node notices.
    b.proc.kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sa = capacity(ca.status().await.unwrap());
        if sa == Some(5) {
            break;
        }
        assert!(Instant::now() < deadline, "share after losing b: {sa:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(cb);
    node.shutdown(Duration::from_secs(1)).await;
}
