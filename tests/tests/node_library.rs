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
