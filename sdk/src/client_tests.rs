#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::args;
use mpreg_protocol::Limits;

/// Nothing listens on the discard port: requests queue and never get an answer.
const SILENT: &str = "tcp://127.0.0.1:9";

fn offline(request_timeout: Duration) -> Client {
    Client::open(
        SILENT,
        ClientOptions::default().with_request_timeout(request_timeout),
    )
    .unwrap()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(5), "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn connect_without_a_broker_fails_within_the_timeout() {
    let options = ClientOptions::default().with_connect_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let err = Client::connect_with(SILENT, options).await.unwrap_err();
    assert_eq!((err.code(), err.kind()), (900, "connection_failed"));
    assert!(err.message().contains(SILENT), "{err}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[tokio::test]
async fn bad_endpoints_are_invalid_input() {
    for endpoint in ["127.0.0.1:7400", "tcp://nohost", "udp://h:1"] {
        let err = Client::connect(endpoint).await.unwrap_err();
        assert_eq!(err.code(), 902, "{endpoint}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_requests_time_out_each_on_its_own() {
    let client = offline(Duration::from_millis(300));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..500u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                client.call("echo", args![i]).await.map(|_| ())
            } else {
                client.ping().await.map(|_| ())
            }
        }));
    }
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert_eq!((err.code(), err.kind()), (901, "request_timeout"), "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(client.counters().in_flight, 0);
}

#[tokio::test]
async fn a_deadline_sets_the_wait() {
    let client = offline(Duration::from_secs(30));
    let started = Instant::now();
    let err = client
        .plan()
        .step("a", "sleep", args![10])
        .deadline(Duration::from_millis(100))
        .run()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    // deadline + the default 1 s margin, not the 30 s request timeout
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1100) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn dropping_a_request_forgets_it() {
    let client = offline(Duration::from_secs(30));
    let waiting = client.clone();
    let task = tokio::spawn(async move { waiting.ping().await });
    eventually("request registered", || client.counters().in_flight == 1).await;
    task.abort();
    eventually("request forgotten", || client.counters().in_flight == 0).await;

    let stream = client
        .plan()
        .step("a", "f", args![])
        .stream()
        .await
        .unwrap();
    eventually("plan registered", || client.counters().in_flight == 1).await;
    drop(stream);
    eventually("plan forgotten", || client.counters().in_flight == 0).await;
}

#[tokio::test]
async fn close_fails_requests_in_flight_and_later_ones() {
    let client = offline(Duration::from_secs(30));
    let waiting = client.clone();
    let task = tokio::spawn(async move { waiting.status().await });
    eventually("request registered", || client.counters().in_flight == 1).await;
    client.close().await;
    assert_eq!(task.await.unwrap().unwrap_err(), Error::Closed);
    eventually("closed", || client.is_closed()).await;
    let err = client.call("echo", args![]).await.unwrap_err();
    assert_eq!((err.code(), err.kind()), (903, "connection_closed"));
}

#[tokio::test]
async fn dropping_the_last_clone_closes_the_connection() {
    let client = offline(Duration::from_secs(30));
    let counters = client.link_counters();
    let other = client.clone();
    drop(client);
    assert!(!counters.closed.load(Ordering::Acquire));
    drop(other);
    eventually("reactor closed", || counters.closed.load(Ordering::Acquire)).await;
}

#[tokio::test]
async fn requests_over_the_limit_are_refused_without_being_sent() {
    let limits = Limits {
        max_message_bytes: 1024,
        ..Limits::default()
    };
    let client = Client::open(SILENT, ClientOptions::default().with_limits(limits)).unwrap();
    assert_eq!(client.max_request_bytes(), 1024);
    let started = Instant::now();
    let err = client
        .call("echo", args!["x".repeat(2000)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                kind: "plan",
                limit: 1024,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!((err.code(), err.kind()), (104, "message_too_large"));
    // Unconfirmed publishes too: refused at once rather than counted later.
    let err = client.publish("t", vec![0u8; 2000]).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                kind: "publish",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(client.counters().in_flight, 0);
    // Under the limit, a request is sent (and waits: nobody answers here).
    let small = tokio::time::timeout(Duration::from_millis(100), client.call("echo", args!["x"]));
    assert!(small.await.is_err());
}

#[test]
fn clients_are_send_and_sync() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Client>();
    check::<crate::PlanBuilder>();
    fn check_send<T: Send + 'static>() {}
    check_send::<crate::PlanStream>();
}
