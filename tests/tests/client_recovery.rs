//! Issue 9, client side: what the SDK and the `mpreg` CLI do when the broker dies, restarts or
//! goes silent, when the CLI is interrupted or killed, and with a request over the broker's
//! size limit. Real broker, node and CLI processes; every test fails before its fix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use mpreg::{args, Client, ClientOptions, Delivery, Error, PublishOptions, Subscription};
use mpreg_tests::{
    cli, eventually, spawn_cli, start_broker, start_broker_at, start_broker_at_with_env,
    start_node, BrokerProc, Proc,
};
use serde_json::Value as Json;

/// Longest any single step of these tests may take (a restarted broker is reconnected to
/// within the DEALER's 5 s reconnect backoff).
const STEP: Duration = Duration::from_secs(15);

async fn within<T>(what: &str, wait: Duration, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(wait, f).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: nothing within {wait:?}"),
    }
}

async fn next(sub: &mut Subscription) -> Delivery {
    within("a delivery", STEP, sub.next())
        .await
        .expect("the stream goes on")
        .expect("a delivery, not an error")
}

async fn confirm(client: &Client, topic: &str, payload: &str) -> u64 {
    let options = PublishOptions::default().with_confirm(true);
    within(
        "publish",
        STEP,
        client.publish_with(topic, payload, options),
    )
    .await
    .expect("published")
    .expect("confirmed")
    .matched
}

/// Starts a broker again on the ports of `old` (killed).
fn restart(old: &BrokerProc) -> BrokerProc {
    start_broker_at(&old.client, &old.worker, &old.events, &[])
}

/// The gauge or counter `name` of a broker's status (0 when absent).
async fn status_value(client: &Client, name: &str) -> u64 {
    let status = within("status", STEP, client.status()).await.unwrap();
    status
        .gauges
        .get(name)
        .or_else(|| status.counters.get(name))
        .copied()
        .unwrap_or(0)
}

/// The one JSON error line a CLI printed on stderr.
fn error_line(stderr: &str) -> Json {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("{\"error\""))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"));
    serde_json::from_str(line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_subscription_survives_a_broker_restart() {
    let mut broker = start_broker(&[], &[]);
    let client = Client::connect(&broker.client).await.unwrap();
    let mut sub = client.subscribe(["news.#"]).await.unwrap();
    let first_token = sub.id().to_string();
    assert_eq!(confirm(&client, "news.a", "before").await, 1);
    match next(&mut sub).await {
        Delivery::Message(m) => assert_eq!((m.payload.as_str(), m.seq), (Some("before"), 1)),
        other => panic!("{other:?}"),
    }

    broker.proc.kill();
    let killed = Instant::now();
    assert_eq!(next(&mut sub).await, Delivery::ConnectionLost);
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "{:?}",
        killed.elapsed()
    );

    let broker = restart(&broker);
    let (id, backlog) = match next(&mut sub).await {
        Delivery::Resubscribed { id, backlog, .. } => (id, backlog),
        other => panic!("expected the re-subscription notice, got {other:?}"),
    };
    assert_ne!(id, first_token, "a new broker gives a new token");
    assert_eq!((sub.id(), backlog), (id.as_str(), 0));
    assert_eq!(client.counters().connections_lost, 1);

    // Messages published after the restart arrive, numbered afresh.
    assert_eq!(confirm(&client, "news.b", "after").await, 1);
    match next(&mut sub).await {
        Delivery::Message(m) => assert_eq!((m.payload.as_str(), m.seq), (Some("after"), 1)),
        other => panic!("{other:?}"),
    }

    // Unsubscribing works under the new token: the broker no longer has it.
    within("unsubscribe", STEP, sub.unsubscribe())
        .await
        .unwrap();
    assert_eq!(status_value(&client, "subscriptions").await, 0);
    drop(broker);
}

#[test]
fn mpreg_sub_survives_a_broker_restart_and_says_so_on_stderr() {
    let mut broker = start_broker(&[], &[]);
    let mut sub = spawn_cli(&broker.client, &["sub", "news.#"]);
    let publish = |broker: &BrokerProc, payload: &str| -> u64 {
        let (code, out, err) = cli(
            &broker.client,
            &["pub", "news.x", payload, "--confirm", "--timeout", "5"],
            None,
        );
        assert_eq!(code, 0, "{err}");
        let matched: Json = serde_json::from_str(out.trim()).unwrap();
        matched["matched"].as_u64().unwrap()
    };
    // Published until the subscription is active (the CLI prints nothing before messages).
    eventually(STEP, "mpreg sub active", || {
        publish(&broker, "\"warm\"") == 1
    });
    let line = sub.next_line(STEP).expect("a message line");
    assert!(line.contains("\"warm\""), "{line}");

    broker.proc.kill();
    let broker = restart(&broker);
    eventually(STEP, "mpreg sub subscribed again", || {
        publish(&broker, "\"after\"") == 1
    });
    let line = loop {
        let line = sub
            .next_line(STEP)
            .expect("a message line after the restart");
        if !line.contains("\"warm\"") {
            break line;
        }
    };
    let message: Json = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (&message["payload"], &message["seq"]),
        (&Json::from("after"), &Json::from(1))
    );

    let stderr = sub.log();
    let notices: Vec<Json> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        notices[0]["connection_lost"]["message"].is_string(),
        "{stderr}"
    );
    assert!(notices[1]["resubscribed"]["sub"].is_string(), "{stderr}");
    assert!(
        notices[1]["resubscribed"]["message"]
            .as_str()
            .unwrap()
            .contains("may be missing"),
        "{stderr}"
    );

    // And SIGINT ends it the interrupted way.
    sub.signal("INT");
    let status = sub.wait_exit(STEP).expect("mpreg sub exits on SIGINT");
    assert_eq!(status.code(), Some(130));
    let error = error_line(&sub.log());
    assert_eq!(
        (&error["error"]["code"], &error["error"]["kind"]),
        (&Json::from(905), &Json::from("interrupted"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_when_the_broker_dies_fails_at_once_and_a_status_is_sent_again() {
    let mut broker = start_broker(&[], &[]);
    let _node = start_node(&broker.worker, "n0", &[], &[]);
    let client = Client::connect(&broker.client).await.unwrap();

    // A call the worker is running, and a status the broker has not read: it is stopped.
    let calling = client.clone();
    let call = tokio::spawn(async move { calling.call("sleep", args![20_000, "x"]).await });
    let c = client.clone();
    tokio::task::spawn_blocking(move || {
        eventually(STEP, "the call in flight", || c.counters().in_flight == 1)
    })
    .await
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    broker.proc.pause();
    let asking = client.clone();
    let status = tokio::spawn(async move { asking.status().await });
    // An unconfirmed publish and a flush (a ping that must not be sent again: after a lost
    // connection it cannot say that the publish was handled).
    client.publish("news.x", "maybe").await.unwrap();
    let flushing = client.clone();
    let flush = tokio::spawn(async move { flushing.flush().await });
    let c = client.clone();
    tokio::task::spawn_blocking(move || {
        eventually(STEP, "three requests in flight", || {
            c.counters().in_flight == 3
        })
    })
    .await
    .unwrap();

    broker.proc.kill();
    let killed = Instant::now();
    let err = within("the call's error", STEP, call)
        .await
        .unwrap()
        .unwrap_err();
    let waited = killed.elapsed();
    assert_eq!((err.code(), err.kind()), (904, "connection_lost"), "{err}");
    assert!(matches!(err, Error::ConnectionLost { .. }));
    assert!(waited < Duration::from_secs(3), "904 after {waited:?}");
    eprintln!("the call failed {waited:?} after the broker was killed");
    let err = within("the flush", STEP, flush).await.unwrap().unwrap_err();
    assert_eq!(err.code(), 904, "{err}");
    assert_eq!(client.counters().publishes_in_doubt, 1);

    // The status, idempotent, waits for the new broker and is answered by it.
    let _broker = restart(&broker);
    let status = within("the status", STEP, status).await.unwrap().unwrap();
    assert!(status.uptime_ms < STEP.as_millis() as u64, "{status:?}");
    let counters = client.counters();
    assert_eq!(
        (counters.connections_lost, counters.requests_resent),
        (1, 1)
    );
    // And the client works as before.
    let pong = within("ping", STEP, client.ping()).await.unwrap();
    assert!(!pong.broker.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_is_given_up_after_the_zmtp_heartbeat_timeout() {
    let broker = start_broker(&[], &[]);
    let _node = start_node(&broker.worker, "n0", &[], &[]);
    let client = Client::connect(&broker.client).await.unwrap();
    let calling = client.clone();
    let call = tokio::spawn(async move { calling.call("sleep", args![20_000, "x"]).await });
    let c = client.clone();
    tokio::task::spawn_blocking(move || {
        eventually(STEP, "the call in flight", || c.counters().in_flight == 1)
    })
    .await
    .unwrap();
    broker.proc.pause();
    let stopped = Instant::now();
    let err = within("the call's error", STEP, call)
        .await
        .unwrap()
        .unwrap_err();
    let waited = stopped.elapsed();
    assert_eq!(err.code(), 904, "{err}");
    // The DEALER's ZMTP heartbeat times out after 3 s of silence.
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    eprintln!("the call failed {waited:?} after the broker went silent");
    broker.proc.signal("CONT");
}

/// A broker and one node that runs one task at a time.
fn single_slot() -> (BrokerProc, Proc) {
    let broker = start_broker(&[], &[]);
    let node = start_node(&broker.worker, "n0", &[], &["--capacity", "1"]);
    (broker, node)
}

/// Waits until the broker has a plan in flight.
fn wait_for_a_plan_in_flight(broker: &BrokerProc) {
    eventually(STEP, "a plan in flight", || {
        let (code, out, _) = cli(&broker.client, &["status"], None);
        code == 0 && serde_json::from_str::<Json>(&out).unwrap()["plans_in_flight"] == 1
    });
}

/// How long `mpreg call echo 1` takes now.
fn time_an_echo(broker: &BrokerProc) -> Duration {
    let started = Instant::now();
    let (code, out, err) = cli(
        &broker.client,
        &["call", "echo", "1", "--timeout", "25"],
        None,
    );
    let took = started.elapsed();
    assert_eq!((code, out.trim()), (0, "1"), "{err}");
    took
}

#[test]
fn an_interrupted_call_is_cancelled_and_frees_the_worker() {
    let (broker, _node) = single_slot();
    for (signal, status) in [("INT", 130), ("TERM", 143)] {
        let mut call = spawn_cli(&broker.client, &["call", "sleep", "20000", "x"]);
        wait_for_a_plan_in_flight(&broker);
        let signalled = Instant::now();
        call.signal(signal);
        let exit = call.wait_exit(STEP).expect("mpreg call exits");
        let exited = signalled.elapsed();
        assert_eq!(exit.code(), Some(status), "SIG{signal}: {}", call.log());
        assert!(exited < Duration::from_secs(2), "{exited:?}");
        let error = error_line(&call.log());
        assert_eq!(error["error"]["code"], 905, "{error}");
        assert_eq!(error["error"]["kind"], "interrupted", "{error}");
        assert!(
            call.next_line(Duration::ZERO).is_none(),
            "nothing on stdout"
        );

        // The slot is free at once: the plan was cancelled, not left to run 20 s.
        let took = time_an_echo(&broker);
        eprintln!("SIG{signal}: exited in {exited:?}; the next call took {took:?}");
        assert!(took < Duration::from_secs(2), "SIG{signal}: {took:?}");
    }
}

#[test]
fn a_killed_cli_has_its_plan_cancelled_after_the_heartbeat_grace() {
    let (broker, _node) = single_slot();
    let mut call = spawn_cli(&broker.client, &["call", "sleep", "20000", "x"]);
    wait_for_a_plan_in_flight(&broker);
    call.kill();
    // The broker's grace is three 1 s heartbeats, checked every second.
    let took = time_an_echo(&broker);
    eprintln!("after SIGKILL the next call took {took:?}");
    assert!(took < Duration::from_secs(6), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_client_cancels_its_plans_at_the_broker() {
    let (broker, _node) = single_slot();
    let client = Client::connect_with(
        &broker.client,
        ClientOptions::default().with_heartbeat(Duration::ZERO),
    )
    .await
    .unwrap();
    let calling = client.clone();
    let call = tokio::spawn(async move { calling.call("sleep", args![20_000, "x"]).await });
    let b = broker.client.clone();
    tokio::task::spawn_blocking(move || {
        eventually(STEP, "a plan in flight", || {
            let (_, out, _) = cli(&b, &["status"], None);
            out.contains("\"plans_in_flight\":1")
        })
    })
    .await
    .unwrap();
    within("close", Duration::from_secs(2), client.close()).await;
    assert_eq!(
        within("the call", STEP, call).await.unwrap().unwrap_err(),
        Error::Closed
    );
    // No heartbeats: only the cancel sent at close frees the slot.
    let b = broker.client.clone();
    let took = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let (code, out, err) = cli(&b, &["call", "echo", "1", "--timeout", "25"], None);
        assert_eq!((code, out.trim()), (0, "1"), "{err}");
        started.elapsed()
    })
    .await
    .unwrap();
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn a_plan_over_the_brokers_limit_is_refused_without_sending_it() {
    const LIMIT: usize = 65_536;
    let limit = LIMIT.to_string();
    let broker = start_broker(
        &[],
        &[("MPREG_BROKER_LIMITS__MAX_MESSAGE_BYTES", limit.as_str())],
    );
    // Over the limit and over what libzmq lets through (the limit plus 1 MiB), which made the
    // broker drop the connection and the CLI wait 30 s for nothing.
    let big = "x".repeat(2 * 1024 * 1024);
    let plan = format!(r#"[{{"name": "a", "fun": "echo", "args": ["{big}"]}}]"#);
    let started = Instant::now();
    let (code, out, err) = cli(&broker.client, &["plan", "-"], Some(&plan));
    let took = started.elapsed();
    eprintln!("refused in {took:?}");
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty());
    let error = error_line(&err);
    assert_eq!(error["error"]["code"], 104, "{error}");
    assert_eq!(error["error"]["kind"], "message_too_large", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains(&limit), "{message}");
    assert!(message.contains("not sent"), "{message}");
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // Nothing reached the broker: no plan read, nothing malformed.
    let (_, status, _) = cli(&broker.client, &["status"], None);
    let status: Json = serde_json::from_str(&status).unwrap();
    for counter in ["plans_received", "malformed_messages"] {
        let value = status["counters"][counter].as_u64().unwrap_or(0);
        assert_eq!(value, 0, "{counter}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_resubscription_ends_its_stream_with_the_error() {
    let mut broker = start_broker(&[], &[]);
    let client = Client::connect(&broker.client).await.unwrap();
    let mut kept = client.subscribe(["a.#"]).await.unwrap();
    let mut refused = client.subscribe(["b.#"]).await.unwrap();
    broker.proc.kill();
    assert_eq!(next(&mut kept).await, Delivery::ConnectionLost);
    assert_eq!(next(&mut refused).await, Delivery::ConnectionLost);

    // The new broker allows one subscription per client: the second is refused.
    let limit = [("MPREG_BROKER_TOPICS__MAX_SUBSCRIPTIONS_PER_CLIENT", "1")];
    let _broker =
        start_broker_at_with_env(&broker.client, &broker.worker, &broker.events, &[], &limit);
    assert!(matches!(
        next(&mut kept).await,
        Delivery::Resubscribed { .. }
    ));
    let err = within("the refusal", STEP, refused.next())
        .await
        .expect("the error is yielded")
        .unwrap_err();
    assert_eq!(
        (err.code(), err.kind()),
        (406, "too_many_subscriptions"),
        "{err}"
    );
    assert!(
        within("the end", STEP, refused.next()).await.is_none(),
        "the stream ends after the error"
    );
    assert_eq!(confirm(&client, "a.1", "still here").await, 1);
    assert!(matches!(next(&mut kept).await, Delivery::Message(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubscription_asks_for_the_backlog_again() {
    let retain = [("MPREG_BROKER_TOPICS__RETAIN_COUNT", "10")];
    let mut broker = start_broker(&[], &retain);
    let client = Client::connect(&broker.client).await.unwrap();
    let options = mpreg::SubscribeOptions::default().with_backlog(true);
    let mut sub = client.subscribe_with(["config.#"], options).await.unwrap();
    broker.proc.kill();
    assert_eq!(next(&mut sub).await, Delivery::ConnectionLost);
    // Sent while the connection is down: queued, it reaches the new broker before the new
    // `subscribe`, which then finds it retained.
    client.publish("config.a", "retained").await.unwrap();
    let _broker =
        start_broker_at_with_env(&broker.client, &broker.worker, &broker.events, &[], &retain);
    match next(&mut sub).await {
        Delivery::Resubscribed { backlog, .. } => assert_eq!(backlog, 1),
        other => panic!("{other:?}"),
    }
    match next(&mut sub).await {
        Delivery::Message(m) => {
            assert_eq!(
                (m.payload.as_str(), m.retained, m.seq),
                (Some("retained"), true, 1)
            )
        }
        other => panic!("{other:?}"),
    }
}
