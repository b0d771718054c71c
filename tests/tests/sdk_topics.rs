//! Topics through the Rust SDK and the `mpreg pub` / `mpreg sub` CLI, against a real broker:
//! wildcard matching and order, fan-out, confirmation, retained backlog, unsubscribe on drop,
//! typed errors, batches, a subscriber that does not read, and the CLI's exact output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mpreg::{
    Client, Delivery, Error, ErrorCode, LagSource, Message, Outgoing, PublishOptions,
    SubscribeOptions, Subscription, Value,
};
use mpreg_tests::{bin, start_broker, BrokerProc, Proc};
use serde_json::{json, Value as Json};

const WAIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test after [`WAIT`].
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
}

async fn connect(b: &BrokerProc) -> Client {
    within("connect", Client::connect(&b.client))
        .await
        .expect("connect")
}

async fn next_message(sub: &mut Subscription) -> Message {
    match within("a message", sub.next()).await {
        Some(Ok(Delivery::Message(m))) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Nothing more arrives for a while.
async fn quiet(sub: &mut Subscription) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        panic!("unexpected delivery: {item:?}");
    }
}

async fn confirm(client: &Client, topic: &str, payload: impl Into<Value>) -> mpreg::Published {
    let options = PublishOptions::default().with_confirm(true);
    within("publish", client.publish_with(topic, payload, options))
        .await
        .expect("publish")
        .expect("confirmed")
}

async fn subscriptions(client: &Client) -> u64 {
    let status = within("status", client.status()).await.unwrap();
    status.gauges["subscriptions"]
}

fn remote_code(e: &Error) -> Option<ErrorCode> {
    match e {
        Error::Remote(r) => r.error_code(),
        other => panic!("expected a broker error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_deliver_exactly_the_matching_messages_in_order() {
    let b = start_broker(&[], &[]);
    let client = connect(&b).await;
    let mut eu = within("subscribe", client.subscribe(["orders.*.eu"]))
        .await
        .unwrap();
    let mut all = within("subscribe", client.subscribe(["orders.#"]))
        .await
        .unwrap();
    assert_ne!(eu.id(), all.id());
    assert_eq!(eu.patterns(), ["orders.*.eu"]);
    let topics = [
        "orders.1.eu",
        "orders.1.us",
        "orders.1.2.eu",
        "orders.2.eu",
        "orders",
        "x.3.eu",
        "orders.3.eu",
    ];
    // Unconfirmed: the published order is the delivered order all the same.
    for (i, topic) in topics.iter().enumerate() {
        client.publish(*topic, i as i64).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = next_message(&mut eu).await;
        got.push((m.seq, m.topic, m.payload));
    }
    assert_eq!(
        got,
        vec![
            (1, "orders.1.eu".to_string(), Value::from(0)),
            (2, "orders.2.eu".to_string(), Value::from(3)),
            (3, "orders.3.eu".to_string(), Value::from(6)),
        ]
    );
    quiet(&mut eu).await;
    // `#` matches zero or more words: everything under `orders`, and `orders` itself.
    let mut got = Vec::new();
    for _ in 0..6 {
        let m = next_message(&mut all).await;
        assert!(!m.retained);
        got.push((m.seq, m.topic));
    }
    let want: Vec<(u64, String)> = [0, 1, 2, 3, 4, 6]
        .iter()
        .enumerate()
        .map(|(i, &t)| (i as u64 + 1, topics[t].to_string()))
        .collect();
    assert_eq!(got, want);
    quiet(&mut all).await;
    within("flush", client.flush()).await.unwrap();
    assert_eq!(client.counters().publish_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_patterns_deliver_once_and_every_subscription_gets_a_copy() {
    let b = start_broker(&[], &[]);
    let client = connect(&b).await;
    let other = connect(&b).await;
    let mut overlapping = within("subscribe", client.subscribe(["a.*", "a.#", "*.b"]))
        .await
        .unwrap();
    let mut second = within("subscribe", client.subscribe(["a.b"]))
        .await
        .unwrap();
    let mut elsewhere = within("subscribe", other.subscribe(vec!["#".to_string()]))
        .await
        .unwrap();
    assert_eq!(subscriptions(&client).await, 3);

    let options = PublishOptions::default()
        .with_header("trace", "t-1")
        .with_header("empty", "")
        .with_confirm(true);
    let published = within("publish", client.publish_with("a.b", "x", options))
        .await
        .unwrap()
        .expect("confirmed");
    assert_eq!(published.matched, 3);
    for sub in [&mut overlapping, &mut second, &mut elsewhere] {
        let m = next_message(sub).await;
        assert_eq!((m.seq, m.topic.as_str()), (1, "a.b"));
        assert_eq!(m.id, published.id, "every copy carries the message id");
        assert_eq!(m.payload, Value::from("x"));
        assert_eq!(
            m.headers,
            BTreeMap::from([
                ("empty".to_string(), String::new()),
                ("trace".to_string(), "t-1".to_string())
            ])
        );
        quiet(sub).await;
    }
    // Matching one pattern of three, and none.
    assert_eq!(confirm(&client, "z.b", 1).await.matched, 2);
    assert_eq!(next_message(&mut overlapping).await.seq, 2);
    assert_eq!(next_message(&mut elsewhere).await.seq, 2);
    quiet(&mut second).await;
    // Without confirm there is nothing to report.
    let none = within(
        "publish",
        client.publish_with("a.b", 2, PublishOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(none, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_replays_retained_messages_then_live_ones() {
    let b = start_broker(&[], &[("MPREG_BROKER_TOPICS__RETAIN_COUNT", "3")]);
    let client = connect(&b).await;
    for i in 1..=5 {
        confirm(&client, "t.one", i).await;
    }
    confirm(&client, "u.one", 100).await;
    let options = SubscribeOptions::default().with_backlog(true);
    let mut sub = within("subscribe", client.subscribe_with(["t.*"], options))
        .await
        .unwrap();
    assert_eq!(sub.backlog(), 3);
    for (i, want) in [3, 4, 5].into_iter().enumerate() {
        let m = next_message(&mut sub).await;
        assert_eq!(
            (m.seq, m.payload, m.retained),
            (i as u64 + 1, Value::from(want), true)
        );
    }
    confirm(&client, "t.two", 6).await;
    let live = next_message(&mut sub).await;
    assert_eq!(
        (live.seq, live.topic.as_str(), live.payload, live.retained),
        (4, "t.two", Value::from(6), false)
    );
    // Without backlog: live messages only.
    let mut fresh = within("subscribe", client.subscribe(["t.*"]))
        .await
        .unwrap();
    assert_eq!(fresh.backlog(), 0);
    quiet(&mut fresh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_or_unsubscribing_ends_the_subscription_at_the_broker() {
    let b = start_broker(&[], &[]);
    let client = connect(&b).await;
    let sub = within("subscribe", client.subscribe(["d.#"]))
        .await
        .unwrap();
    assert_eq!(confirm(&client, "d.1", 1).await.matched, 1);
    assert_eq!(subscriptions(&client).await, 1);
    drop(sub);
    let deadline = Instant::now() + WAIT;
    while subscriptions(&client).await != 0 {
        assert!(
            Instant::now() < deadline,
            "the dropped subscription lived on"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(confirm(&client, "d.2", 2).await.matched, 0);
    // The answer to the drop's `unsubscribe` was expected and discarded, not unmatched.
    let deadline = Instant::now() + WAIT;
    while client.counters().in_flight != 0 {
        assert!(
            Instant::now() < deadline,
            "the drop's unsubscribe is still in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.counters().unmatched_replies, 0);

    // An explicit unsubscribe has taken effect when it returns.
    let mut sub = within("subscribe", client.subscribe(["d.#"]))
        .await
        .unwrap();
    assert_eq!(confirm(&client, "d.3", 3).await.matched, 1);
    assert_eq!(next_message(&mut sub).await.payload, Value::from(3));
    within("unsubscribe", sub.unsubscribe()).await.unwrap();
    assert_eq!(confirm(&client, "d.4", 4).await.matched, 0);
    assert_eq!(subscriptions(&client).await, 0);
    assert_eq!(client.counters().unrouted_events, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_patterns_and_topics_get_typed_errors() {
    let b = start_broker(&[], &[]);
    let client = connect(&b).await;
    let words = vec!["w"; 40].join(".");
    for patterns in [vec![], vec![""], vec!["ok", words.as_str()]] {
        let e = within("subscribe", client.subscribe(patterns.clone()))
            .await
            .unwrap_err();
        assert_eq!(
            remote_code(&e),
            Some(ErrorCode::InvalidPattern),
            "{patterns:?}"
        );
        assert_eq!((e.code(), e.kind()), (601, "invalid_pattern"));
    }
    assert_eq!(subscriptions(&client).await, 0);
    let options = PublishOptions::default().with_confirm(true);
    let e = within("publish", client.publish_with("", 1, options))
        .await
        .unwrap_err();
    assert_eq!(remote_code(&e), Some(ErrorCode::InvalidTopic));

    // An unconfirmed publish's error is not lost: counted and kept once flushed.
    assert_eq!(client.last_publish_error(), None);
    client.publish("fine", 1).await.unwrap();
    client.publish(words.as_str(), 2).await.unwrap();
    client.publish("fine", 3).await.unwrap();
    within("flush", client.flush()).await.unwrap();
    let counters = client.counters();
    assert_eq!(counters.publish_errors, 1);
    assert_eq!(counters.unmatched_replies, 0);
    let e = client.last_publish_error().expect("the rejected publish");
    assert_eq!((e.code(), e.kind()), (600, "invalid_topic"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_events_are_expanded_in_order() {
    let b = start_broker(&[], &[]);
    let client = connect(&b).await;
    let mut sub = within("subscribe", client.subscribe(["o.*.eu"]))
        .await
        .unwrap();
    let item = |topic: &str, n: i64| Outgoing::new(topic, n).with_header("n", n.to_string());
    let done = within(
        "publish_batch",
        client.publish_batch([
            item("o.1.eu", 1),
            item("o.2.us", 2),
            item("o.3.eu", 3),
            item("o.4.eu", 4),
        ]),
    )
    .await
    .unwrap();
    assert_eq!((done.count, done.matched), (4, 3));
    // Checked whole: one bad topic and nothing is published.
    let bad = within(
        "publish_batch",
        client.publish_batch([item("o.5.eu", 5), Outgoing::new("", 0)]),
    )
    .await
    .unwrap_err();
    assert_eq!(bad.code(), 600);
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = next_message(&mut sub).await;
        got.push((m.seq, m.topic, m.headers["n"].clone()));
    }
    assert_eq!(
        got,
        vec![
            (1, "o.1.eu".into(), "1".into()),
            (2, "o.3.eu".into(), "3".into()),
            (3, "o.4.eu".into(), "4".into())
        ]
    );
    quiet(&mut sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_is_not_read_drops_and_reports_it() {
    let b = start_broker(&[], &[]);
    let client = connect(&b).await;
    let options = SubscribeOptions::default().with_buffer(4);
    let mut slow = within("subscribe", client.subscribe_with(["s"], options))
        .await
        .unwrap();
    let mut other = within("subscribe", client.subscribe(["s"])).await.unwrap();
    for i in 1..=20 {
        confirm(&client, "s", i).await;
    }
    // The other subscription on the same connection is not held back.
    for i in 1..=20 {
        assert_eq!(next_message(&mut other).await.seq, i);
    }
    let deadline = Instant::now() + WAIT;
    while client.counters().events_dropped < 16 {
        assert!(Instant::now() < deadline, "{:?}", client.counters());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 1..=4 {
        assert_eq!(next_message(&mut slow).await.seq, i);
    }
    confirm(&client, "s", 21).await;
    match within("lagging", slow.next()).await {
        Some(Ok(Delivery::Lagging(l))) => {
            assert_eq!(
                (l.dropped, l.dropped_total, l.source),
                (16, 16, LagSource::Client)
            );
        }
        other => panic!("expected a lagging notice, got {other:?}"),
    }
    let m = within("a message", slow.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m.seq, m.payload), (21, Value::from(21)));
    assert_eq!(slow.dropped(), 16);
    assert_eq!(client.counters().events_dropped, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_buffer_keeps_its_head_and_reports_the_rest() {
    let b = start_broker(&[], &[]);
    let client = connect(&b).await;
    let options = SubscribeOptions::default().with_buffer(4);
    let mut sub = within("subscribe", client.subscribe_with(["b"], options))
        .await
        .unwrap();
    // One `messages` event of 20: the buffer takes the first 4, the other 16 are dropped.
    let batch = (1..=20).map(|i| Outgoing::new("b", i));
    let published = within("publish_batch", client.publish_batch(batch))
        .await
        .unwrap();
    assert_eq!((published.count, published.matched), (20, 20));
    let deadline = Instant::now() + WAIT;
    while client.counters().events_dropped < 16 {
        assert!(Instant::now() < deadline, "{:?}", client.counters());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 1..=4 {
        let m = next_message(&mut sub).await;
        assert_eq!((m.seq, m.payload), (i, Value::from(i)));
    }
    // The next batch is preceded by the notice of the 16, and arrives whole.
    let batch = (21..=23).map(|i| Outgoing::new("b", i));
    within("publish_batch", client.publish_batch(batch))
        .await
        .unwrap();
    match within("lagging", sub.next()).await {
        Some(Ok(Delivery::Lagging(l))) => {
            assert_eq!((l.dropped, l.source), (16, LagSource::Client));
        }
        other => panic!("expected a lagging notice, got {other:?}"),
    }
    for i in 21..=23 {
        let m = next_message(&mut sub).await;
        assert_eq!((m.seq, m.payload), (i, Value::from(i)));
    }
    assert_eq!(sub.dropped(), 16);
}

// ---- the CLI ----

static CLI_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Starts `mpreg ARGS --broker BROKER` (stdout collected by line, stderr in its log).
fn spawn_cli(broker: &str, args: &[&str]) -> Proc {
    let mut argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    argv.extend(["--broker".to_string(), broker.to_string()]);
    let n = CLI_RUNS.fetch_add(1, Ordering::Relaxed);
    Proc::spawn(&format!("mpreg-{n}"), &bin("mpreg"), &argv, &[])
}

/// Runs `mpreg` to the end (killed after [`WAIT`]): exit code, stdout lines, stderr.
fn run_cli(broker: &str, args: &[&str]) -> (i32, Vec<String>, String) {
    let mut p = spawn_cli(broker, args);
    let status = p
        .wait_exit(WAIT)
        .unwrap_or_else(|| panic!("mpreg {args:?} did not exit within {WAIT:?}"));
    (status.code().unwrap_or(-1), stdout_lines(&mut p), p.log())
}

/// The stdout lines of a process that has exited.
fn stdout_lines(p: &mut Proc) -> Vec<String> {
    std::iter::from_fn(|| p.next_line(Duration::from_millis(500))).collect()
}

fn error_json(stderr: &str) -> Json {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one stderr line: {stderr:?}");
    let v: Json = serde_json::from_str(lines[0]).unwrap();
    let keys: Vec<&String> = v["error"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["code", "kind", "message", "step"], "{v}");
    assert_eq!(v["error"]["step"], Json::Null);
    v["error"].clone()
}

#[test]
fn cli_sub_prints_exact_lines_for_published_messages() {
    let b = start_broker(&[], &[]);
    let mut sub = spawn_cli(
        &b.client,
        &["sub", "orders.#", "--count", "2", "--timeout", "20"],
    );
    // Publish until the subscription is live: publishes that matched nothing were not
    // delivered, so the first one that matched is the first line.
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, out, err) = run_cli(
            &b.client,
            &[
                "pub",
                "orders.1.eu",
                r#"{"n":[1,2.5,null]}"#,
                "--header",
                "k=v=w",
                "--header",
                "trace=abc",
                "--confirm",
            ],
        );
        assert_eq!((code, err.as_str()), (0, ""), "{out:?}");
        assert_eq!(out.len(), 1, "{out:?}");
        match out[0].as_str() {
            r#"{"matched":1}"# => break,
            r#"{"matched":0}"# => {}
            other => panic!("unexpected pub output {other:?}"),
        }
        assert!(Instant::now() < deadline, "mpreg sub never subscribed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Not JSON: taken as a string. Without --confirm nothing is printed, and the message is
    // out before the process exits.
    let (code, out, err) = run_cli(&b.client, &["pub", "orders.2", "plain text"]);
    assert_eq!((code, out.len(), err.as_str()), (0, 0, ""));

    let status = sub
        .wait_exit(WAIT)
        .expect("sub exits after --count messages");
    assert_eq!(status.code(), Some(0), "{}", sub.log());
    assert_eq!(sub.log(), "", "nothing on stderr");
    let lines = stdout_lines(&mut sub);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let ids: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: Json = serde_json::from_str(l).unwrap();
            let id = v["id"].as_str().unwrap().to_string();
            assert_eq!(id.len(), 26, "a ULID: {id}");
            id
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
    assert_eq!(
        lines[0],
        format!(
            r#"{{"topic":"orders.1.eu","payload":{{"n":[1,2.5,null]}},"headers":{{"k":"v=w","trace":"abc"}},"seq":1,"id":"{}"}}"#,
            ids[0]
        )
    );
    assert_eq!(
        lines[1],
        format!(
            r#"{{"topic":"orders.2","payload":"plain text","headers":{{}},"seq":2,"id":"{}"}}"#,
            ids[1]
        )
    );
}

#[test]
fn cli_sub_times_out_with_the_standard_error_line() {
    let b = start_broker(&[], &[]);
    let started = Instant::now();
    let (code, out, err) = run_cli(
        &b.client,
        &["sub", "nothing.here", "--count", "1", "--timeout", "1"],
    );
    let took = started.elapsed();
    assert_eq!((code, out.len()), (1, 0), "{err}");
    let e = error_json(&err);
    assert_eq!(
        (e["code"].as_u64(), e["kind"].as_str()),
        (Some(901), Some("request_timeout"))
    );
    assert_eq!(e["message"], "0 of 1 messages arrived within 1.000s");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // Without --count, the timeout is the end of listening: success.
    let (code, out, err) = run_cli(&b.client, &["sub", "nothing.here", "--timeout", "0.5"]);
    assert_eq!((code, out.len(), err.as_str()), (0, 0, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_pub_confirm_backlog_and_errors() {
    let b = start_broker(&[], &[("MPREG_BROKER_TOPICS__RETAIN_COUNT", "2")]);
    let client = connect(&b).await;
    let broker = b.client.clone();
    let cli = move |args: &'static [&'static str]| {
        let broker = broker.clone();
        tokio::task::spawn_blocking(move || run_cli(&broker, args))
    };
    let (code, out, err) = cli(&["pub", "p.q", "1", "--confirm"]).await.unwrap();
    assert_eq!(
        (code, out, err.as_str()),
        (0, vec![r#"{"matched":0}"#.to_string()], "")
    );
    let mut sub = within("subscribe", client.subscribe(["p.*"]))
        .await
        .unwrap();
    let (code, out, _) = cli(&["pub", "p.q", "-2.5", "--confirm"]).await.unwrap();
    assert_eq!((code, out), (0, vec![r#"{"matched":1}"#.to_string()]));
    let m = next_message(&mut sub).await;
    assert_eq!((m.seq, m.payload), (1, Value::F64(-2.5)));
    // Fire-and-forget from the command line still arrives.
    let (code, out, _) = cli(&["pub", "p.r", r#"{"$bin":"00ff"}"#]).await.unwrap();
    assert_eq!((code, out.len()), (0, 0));
    let m = next_message(&mut sub).await;
    assert_eq!(
        (m.topic.as_str(), m.payload),
        ("p.r", Value::Binary(vec![0, 255]))
    );

    // --backlog: the two retained messages of p.q (1 and -2.5), then nothing more needed.
    let (code, out, err) = cli(&["sub", "p.q", "--backlog", "--count", "2", "--timeout", "5"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let payloads: Vec<Json> = out
        .iter()
        .map(|l| serde_json::from_str::<Json>(l).unwrap()["payload"].clone())
        .collect();
    assert_eq!(payloads, vec![json!(1), json!(-2.5)]);

    // Typed broker errors: exit 1, nothing on stdout, one line on stderr.
    let (code, out, err) = cli(&["pub", "", "1"]).await.unwrap();
    assert_eq!((code, out.len()), (1, 0));
    assert_eq!(error_json(&err)["code"], 600);
    let (code, out, err) = cli(&["sub", "ok", "", "--timeout", "5"]).await.unwrap();
    assert_eq!((code, out.len()), (1, 0));
    let e = error_json(&err);
    assert_eq!(
        (e["code"].as_u64(), e["kind"].as_str()),
        (Some(601), Some("invalid_pattern"))
    );
    let (code, _, err) = cli(&["pub", "t", "1", "--header", "novalue"])
        .await
        .unwrap();
    assert_eq!(code, 1);
    assert_eq!(error_json(&err)["code"], 902);
}
