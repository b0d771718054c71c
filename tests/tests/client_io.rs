//! Where the SDK's connection runs (`ClientOptions::io_thread`): by default on a thread of its
//! own, or as a task of the application's tokio runtime. Both serve calls and
//! subscriptions; only the own thread keeps the connection alive (heartbeats) while the
//! runtime's thread is blocked, which is the documented trade-off. Real broker and node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use mpreg::{args, Client, ClientOptions, PublishOptions, SubscribeOptions, Value};
use mpreg_tests::{start_broker, start_node, BrokerProc};

const STEP: Duration = Duration::from_secs(15);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, f).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: nothing within {STEP:?}"),
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn counter(b: &BrokerProc, name: &str) -> u64 {
    let observer = within("connect", Client::connect(&b.client)).await.unwrap();
    let status = within("status", observer.status()).await.unwrap();
    status.counters.get(name).copied().unwrap_or(0)
}

#[test]
fn both_placements_serve_calls_and_subscriptions() {
    let b = start_broker(&[], &[]);
    let _node = start_node(&b.worker, "io-node", &[], &[]);
    for io_thread in [false, true] {
        for multi_thread in [false, true] {
            let runtime = if multi_thread {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap()
            } else {
                current_thread()
            };
            runtime.block_on(async {
                let options = ClientOptions::default().with_io_thread(io_thread);
                let client = within("connect", Client::connect_with(&b.client, options))
                    .await
                    .unwrap();
                let topic = format!("io.{io_thread}.{multi_thread}");
                let mut sub = within(
                    "subscribe",
                    client.subscribe_with([topic.clone()], SubscribeOptions::default()),
                )
                .await
                .unwrap();
                for i in 0..200i64 {
                    let got = within("call", client.call("echo", args![i])).await.unwrap();
                    assert_eq!(got, Value::from(i), "io_thread {io_thread}");
                }
                let confirm = PublishOptions::default().with_confirm(true);
                within("publish", client.publish_with(&topic, 7i64, confirm))
                    .await
                    .unwrap();
                let message = within("delivery", sub.next_message())
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(message.payload, Value::from(7i64));
            });
        }
    }
}

#[test]
fn only_an_io_thread_keeps_the_connection_alive_while_the_runtime_is_blocked() {
    let b = start_broker(&[], &[]);
    let _node = start_node(&b.worker, "io-node", &[], &[]);
    let runtime = current_thread();
    for io_thread in [true, false] {
        let expired_before = runtime.block_on(counter(&b, "clients_expired"));
        let outcome = runtime.block_on(async {
            // A heartbeat every 100 ms: the broker gives up after 3 silent intervals.
            let options = ClientOptions::default()
                .with_heartbeat(Duration::from_millis(100))
                .with_io_thread(io_thread);
            let client = within("connect", Client::connect_with(&b.client, options))
                .await
                .unwrap();
            let call = tokio::spawn(async move {
                client
                    .call("sleep", args![2_500i64, "slept"])
                    .await
                    .map_err(|e| e.to_string())
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            // The runtime's only thread is blocked for well over the grace period and the
            // broker's one-second check.
            std::thread::sleep(Duration::from_millis(2_000));
            if io_thread {
                Some(within("the call", call).await.unwrap())
            } else {
                call.abort();
                None
            }
        });
        let expired = runtime.block_on(counter(&b, "clients_expired")) - expired_before;
        if io_thread {
            assert_eq!(outcome, Some(Ok(Value::from("slept"))));
            assert_eq!(
                expired, 0,
                "the client's own thread kept sending heartbeats"
            );
        } else {
            assert!(
                expired >= 1,
                "a blocked runtime stalls a connection run as its task: the broker must have \
                 expired it"
            );
        }
    }
}

/// A runtime task needs the runtime's timer: without it, connecting fails at once on the
/// caller's thread with tokio's own message, not later inside the connection's task.
#[test]
#[should_panic(expected = "timers are disabled")]
fn a_runtime_task_on_a_runtime_without_timers_panics_at_connect() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = ClientOptions::default().with_io_thread(false);
        let _ = Client::connect_with("tcp://127.0.0.1:1", options).await;
    });
}
