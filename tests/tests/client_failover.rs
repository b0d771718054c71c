//! Issue 11, item 6: clients fail over between the brokers of a cluster. Real brokers in a
//! cluster (`start_broker_cluster`), real `mpreg-node` processes, the SDK, the `mpreg` CLI and
//! the Python conformance client; every wait is bounded.
//!
//! - An SDK client with two brokers doing 100 calls/s survives `kill -9` of its broker with a
//!   gap of at most 1.5 s, every call answered once with its own argument.
//! - A plan resent under its plan id to a broker that already has it runs once.
//! - A subscriber moves to the other broker, says so with the gap, and the backlog fills it.
//! - A client given one broker learns the other and moves to it.
//! - The CLI (`--broker dead,alive`, `MPREG_BROKER`, `sub` across a kill) and the Python
//!   client and topics client move to the next broker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mpreg::{
    args, Client, ClientOptions, Delivery, PlanEvent, PublishOptions, SubscribeOptions, Value,
};
use mpreg_protocol::peer::MemberState;
use mpreg_tests::{
    bin, cli, eventually, python, python_dir, spawn_cli, start_broker, start_broker_cluster,
    start_node, BrokerProc, Proc,
};
use serde_json::Value as Json;

/// Longest any one step of these tests may take.
const STEP: Duration = Duration::from_secs(20);
/// The bound on the gap a client sees when its broker is killed.
const MAX_GAP: Duration = Duration::from_millis(1500);

async fn within<T>(what: &str, wait: Duration, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(wait, f).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: nothing within {wait:?}"),
    }
}

/// A client endpoint where nothing listens (a port the OS just gave and took back): a
/// connection to it is refused at once.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("tcp://127.0.0.1:{port}")
}

/// A broker configuration file keeping a backlog of up to 1,000 messages per topic.
fn retain_config() -> PathBuf {
    let path = std::env::temp_dir().join(format!("mpreg-failover-{}.toml", std::process::id()));
    std::fs::write(&path, "[topics]\nretain_count = 1000\n").unwrap();
    path
}

/// A client of one broker that stays there (for status checks and publishing).
async fn pinned(broker: &BrokerProc) -> Client {
    let options = ClientOptions::default().with_learn_brokers(false);
    within(
        "connect",
        STEP,
        Client::connect_with(&broker.client, options),
    )
    .await
    .unwrap()
}

/// Waits until `broker` sees `n` members alive.
async fn wait_for_members(broker: &BrokerProc, n: usize) {
    let client = pinned(broker).await;
    let deadline = Instant::now() + STEP;
    loop {
        let reply = within("cluster", STEP, client.cluster()).await.unwrap();
        let alive = reply
            .members
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .count();
        if alive == n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} members: only {alive}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A status counter of a broker (0 when absent).
async fn counter(client: &Client, name: &str) -> u64 {
    let status = within("status", STEP, client.status()).await.unwrap();
    status.counters.get(name).copied().unwrap_or(0)
}

/// Two brokers in a cluster, each with its own node serving the built-ins.
fn two_brokers(cluster: &str, extra: &[&str]) -> (Vec<BrokerProc>, Vec<Proc>) {
    let brokers = start_broker_cluster(cluster, 2, extra);
    let nodes = brokers
        .iter()
        .enumerate()
        .map(|(i, b)| start_node(&b.worker, &format!("{cluster}-n{i}"), &[], &[]))
        .collect();
    (brokers, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_at_100_per_second_survive_kill_9_of_their_broker_within_1_5_s() {
    const CALLS: u64 = 400;
    const KILL_AT: u64 = 150;
    let (mut brokers, _nodes) = two_brokers("fo-calls", &[]);
    let options = ClientOptions::default().with_request_timeout(Duration::from_secs(10));
    let endpoints = [brokers[0].client.clone(), brokers[1].client.clone()];
    let client = within(
        "connect",
        STEP,
        Client::connect_any_with(&endpoints, options),
    )
    .await
    .unwrap();
    assert_eq!(client.current_broker(), brokers[0].client);
    assert_eq!(client.brokers(), endpoints);

    // One call every 10 ms, each in its own task, whatever the others do; each takes 100 ms
    // on its worker, so about ten are in flight when the broker is killed.
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut calls = Vec::new();
    let mut killed_at = None;
    for i in 0..CALLS {
        ticker.tick().await;
        if i == KILL_AT {
            brokers[0].proc.kill();
            killed_at = Some(Instant::now());
        }
        let c = client.clone();
        calls.push(tokio::spawn(async move {
            let outcome = c.call("sleep", args![100, i]).await;
            (i, Instant::now(), outcome)
        }));
    }
    let killed_at = killed_at.unwrap();
    let mut done = Vec::new();
    for call in calls {
        done.push(within("a call", STEP, call).await.unwrap());
    }

    // Every call ended (none hangs), each once, with its own argument or a typed error.
    assert_eq!(done.len() as u64, CALLS);
    let ids: BTreeSet<u64> = done.iter().map(|(i, _, _)| *i).collect();
    assert_eq!(ids.len() as u64, CALLS);
    let mut completions = Vec::new();
    let mut errors = Vec::new();
    for (i, at, outcome) in &done {
        match outcome {
            Ok(value) => {
                assert_eq!(
                    value,
                    &Value::from(*i),
                    "call {i} got another call's result"
                );
                completions.push(*at);
            }
            Err(e) => {
                assert!(
                    (100..=905).contains(&e.code()) && !e.kind().is_empty(),
                    "untyped error for call {i}: {e:?}"
                );
                errors.push((*i, e.to_string()));
            }
        }
    }
    // Plans in flight went to the other broker under their plan ids: none was lost.
    assert!(errors.is_empty(), "calls failed: {errors:?}");

    completions.sort();
    let around: Vec<Instant> = completions
        .iter()
        .copied()
        .filter(|&at| at + Duration::from_secs(1) >= killed_at)
        .collect();
    let after = around.iter().filter(|&&at| at > killed_at).count();
    assert!(after > 100, "only {after} calls completed after the kill");
    let gap = around
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let first_after = around.iter().find(|&&at| at > killed_at).unwrap();
    eprintln!(
        "longest gap between completions around the kill: {gap:?}; first completion {:?} \
         after it; counters {:?}",
        *first_after - killed_at,
        client.counters()
    );
    assert!(gap <= MAX_GAP, "gap {gap:?}");
    let counters = client.counters();
    assert_eq!(counters.broker_moves, 1, "{counters:?}");
    assert!(
        counters.requests_resent >= 1,
        "plans in flight sent again: {counters:?}"
    );
    assert_eq!(counters.in_flight, 0);
    assert_eq!(client.current_broker(), brokers[1].client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_resent_under_its_id_to_a_broker_that_has_it_runs_once() {
    // One broker under two names: moving between them resends the plan to the broker that
    // already runs it (or has just finished it).
    let broker = start_broker(&[], &[]);
    let _node = start_node(&broker.worker, "once-n0", &[], &[]);
    let port = broker.client.rsplit_once(':').unwrap().1;
    let names = [broker.client.clone(), format!("tcp://localhost:{port}")];
    let client = within("connect", STEP, Client::connect_any(&names))
        .await
        .unwrap();
    let calling = client.clone();
    let call = tokio::spawn(async move { calling.call("sleep", args![1500, "once"]).await });
    let c = client.clone();
    tokio::task::spawn_blocking(move || {
        eventually(STEP, "the plan in flight", || c.counters().in_flight == 1)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Silent for 2.5 s: the client gives up after its 1 s silence window and tries the other
    // name (whose handshake waits for the broker), and back.
    broker.proc.pause();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let moves_while_silent = client.counters().broker_moves;
    broker.proc.signal("CONT");
    let result = within("the call", STEP, call).await.unwrap().unwrap();
    assert_eq!(result, Value::from("once"));
    assert!(moves_while_silent >= 1, "{:?}", client.counters());

    let status = pinned(&broker).await;
    assert_eq!(counter(&status, "tasks_dispatched").await, 1, "ran once");
    assert!(counter(&status, "plans_received").await >= 2, "resent");
    assert!(counter(&status, "plans_resumed").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_streamed_across_a_move_reports_each_step_once() {
    let (mut brokers, _nodes) = two_brokers("fo-progress", &[]);
    let endpoints = [brokers[0].client.clone(), brokers[1].client.clone()];
    let client = within("connect", STEP, Client::connect_any(&endpoints))
        .await
        .unwrap();
    let mut events = within(
        "stream",
        STEP,
        client
            .plan()
            .step("a", "echo", args!["x"])
            .step("b", "sleep", args![1000, "a"])
            .stream(),
    )
    .await
    .unwrap();
    match within("progress", STEP, events.next()).await {
        Some(Ok(PlanEvent::Progress(p))) if p.step == "a" => {}
        other => panic!("expected a's progress, got {other:?}"),
    }
    brokers[0].proc.kill();
    // Broker 2 runs the plan again from the start; `a` was reported already.
    let mut rest = Vec::new();
    while let Some(event) = within("the next event", STEP, events.next()).await {
        rest.push(event.unwrap());
    }
    let steps: Vec<&str> = rest
        .iter()
        .filter_map(|e| match e {
            PlanEvent::Progress(p) => Some(p.step.as_str()),
            PlanEvent::Done(_) => None,
        })
        .collect();
    assert_eq!(steps, ["b"], "{rest:?}");
    match rest.last() {
        Some(PlanEvent::Done(results)) => assert_eq!(results["b"], Value::from("x")),
        other => panic!("{other:?}"),
    }
    assert_eq!(client.current_broker(), brokers[1].client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_accepts_but_never_answers_is_given_up_after_the_silence_window() {
    // The kernel completes TCP connections to a listener that never accepts: the ZMTP
    // handshake never comes.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = format!("tcp://{}", hole.local_addr().unwrap());
    let broker = start_broker(&[], &[]);
    let _node = start_node(&broker.worker, "hole-n0", &[], &[]);
    let started = Instant::now();
    let client = within(
        "connect",
        STEP,
        Client::connect_any([hole.as_str(), broker.client.as_str()]),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    eprintln!("connected past the silent broker in {took:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(client.current_broker(), broker.client);
    assert_eq!(client.counters().broker_moves, 1);
    let echoed = within("a call", STEP, client.call("echo", args![1]))
        .await
        .unwrap();
    assert_eq!(echoed, Value::from(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_on_the_other_broker_and_reports_the_gap() {
    let config = retain_config();
    let mut brokers = start_broker_cluster("fo-sub", 2, &["--config", config.to_str().unwrap()]);
    // Read at start: not needed any more.
    let _ = std::fs::remove_file(&config);
    wait_for_members(&brokers[1], 2).await;
    let publisher = pinned(&brokers[1]).await;
    let endpoints = [brokers[0].client.clone(), brokers[1].client.clone()];
    let subscriber = within("connect", STEP, Client::connect_any(&endpoints))
        .await
        .unwrap();
    let options = SubscribeOptions::default().with_backlog(true);
    let mut sub = within(
        "subscribe",
        STEP,
        subscriber.subscribe_with(["news.#"], options),
    )
    .await
    .unwrap();

    // Publishes on broker 2 reach the subscription on broker 1 once the interest travelled.
    let confirm = PublishOptions::default().with_confirm(true);
    let warm = async {
        loop {
            let _ = publisher
                .publish_with("news.warm", "warm", confirm.clone())
                .await;
            let next = tokio::time::timeout(Duration::from_millis(100), sub.next()).await;
            if let Ok(Some(Ok(Delivery::Message(_)))) = next {
                return;
            }
        }
    };
    within("the first forwarded message", STEP, warm).await;

    // 100 publishes a second on broker 2; broker 1 is killed after the first 100.
    const TOTAL: i64 = 300;
    let publishing = tokio::spawn(async move {
        let confirm = PublishOptions::default().with_confirm(true);
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        for k in 0..TOTAL {
            ticker.tick().await;
            publisher
                .publish_with("news.tick", k, confirm.clone())
                .await
                .unwrap();
        }
    });
    let mut deliveries = Vec::new();
    let mut killed = false;
    let read = async {
        loop {
            let delivery = sub.next().await.expect("the stream goes on").unwrap();
            let last = matches!(&delivery, Delivery::Message(m)
                if m.topic == "news.tick" && m.payload == Value::from(TOTAL - 1));
            if !killed && matches!(&delivery, Delivery::Message(m) if m.payload == Value::from(100))
            {
                brokers[0].proc.kill();
                killed = true;
            }
            deliveries.push(delivery);
            if last {
                return;
            }
        }
    };
    within("every message", STEP, read).await;
    within("publishing", STEP, publishing).await.unwrap();

    let lost_at = deliveries
        .iter()
        .position(|d| *d == Delivery::ConnectionLost)
        .expect("a connection_lost notice");
    let (resub_at, backlog, broker, last_message_id, down_for) = deliveries
        .iter()
        .enumerate()
        .find_map(|(i, d)| match d {
            Delivery::Resubscribed {
                backlog,
                broker,
                last_message_id,
                down_for,
                ..
            } => Some((i, *backlog, broker, last_message_id, *down_for)),
            _ => None,
        })
        .expect("a resubscribed notice");
    assert!(lost_at < resub_at);
    eprintln!("resubscribed on {broker} after {down_for:?}, backlog {backlog}");
    assert_eq!(broker, &brokers[1].client);
    assert!(down_for <= MAX_GAP, "down for {down_for:?}");
    let messages = |range: &[Delivery]| -> Vec<mpreg::Message> {
        range
            .iter()
            .filter_map(|d| match d {
                Delivery::Message(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    };
    let before = messages(&deliveries[..lost_at]);
    let after = messages(&deliveries[resub_at..]);
    assert_eq!(
        last_message_id.as_deref(),
        before.last().map(|m| m.id.as_str()),
        "the gap starts at the last message delivered"
    );
    // The backlog of broker 2 fills the gap: every publish arrived at least once, and a
    // message seen twice is the same message (the same id on both brokers).
    assert!(backlog > 0);
    let mut ids: BTreeMap<i64, String> = BTreeMap::new();
    for m in before
        .iter()
        .chain(&after)
        .filter(|m| m.topic == "news.tick")
    {
        let k = m.payload.as_i64().unwrap();
        if let Some(id) = ids.insert(k, m.id.clone()) {
            assert_eq!(id, m.id, "message {k} came back with another id");
        }
    }
    let missing: Vec<i64> = (0..TOTAL).filter(|k| !ids.contains_key(k)).collect();
    assert!(missing.is_empty(), "missing {missing:?}");
    assert!(after.iter().any(|m| !m.retained), "live messages after");
    assert_eq!(
        after.iter().take_while(|m| m.retained).count() as u64,
        backlog,
        "the announced backlog comes first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_one_broker_learns_the_other_and_moves_to_it() {
    let (mut brokers, _nodes) = two_brokers("fo-learn", &[]);
    wait_for_members(&brokers[0], 2).await;
    let client = within("connect", STEP, Client::connect(&brokers[0].client))
        .await
        .unwrap();
    let c = client.clone();
    let want = vec![brokers[0].client.clone(), brokers[1].client.clone()];
    tokio::task::spawn_blocking(move || {
        eventually(STEP, "broker 2 learned", || c.brokers() == want)
    })
    .await
    .unwrap();

    let calling = client.clone();
    let call = tokio::spawn(async move { calling.call("sleep", args![500, "moved"]).await });
    let c = client.clone();
    tokio::task::spawn_blocking(move || {
        eventually(STEP, "the plan in flight", || c.counters().in_flight == 1)
    })
    .await
    .unwrap();
    brokers[0].proc.kill();
    let killed = Instant::now();
    let result = within("the call", STEP, call).await.unwrap().unwrap();
    eprintln!(
        "the call in flight ended {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(result, Value::from("moved"));
    assert_eq!(client.current_broker(), brokers[1].client);
    let echoed = within("a call", STEP, client.call("echo", args![7]))
        .await
        .unwrap();
    assert_eq!(echoed, Value::from(7));
}

#[test]
fn the_cli_takes_a_list_of_brokers_by_flag_and_from_mpreg_broker() {
    let broker = start_broker(&["--name", "alive"], &[]);
    let _node = start_node(&broker.worker, "cli-n0", &[], &[]);
    let list = format!("{},{}", dead_endpoint(), broker.client);

    let started = Instant::now();
    let (code, out, err) = cli(&list, &["call", "echo", "via-list"], None);
    assert_eq!((code, out.trim()), (0, "\"via-list\""), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let out = Command::new(bin("mpreg"))
        .arg("status")
        .env("MPREG_BROKER", &list)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["broker"], "alive");

    // Nothing answers anywhere: a typed error, in time.
    let nowhere = format!("{},{}", dead_endpoint(), dead_endpoint());
    let started = Instant::now();
    let (code, _, err) = cli(&nowhere, &["status", "--timeout", "2"], None);
    assert_eq!(code, 1);
    assert!(err.contains("\"code\":900"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(6));
    // A bad list is bad input, before any connection.
    let (code, _, err) = cli("tcp://127.0.0.1:1,nonsense", &["status"], None);
    assert_eq!(code, 1);
    assert!(err.contains("\"code\":902"), "{err}");
}

#[test]
fn mpreg_sub_moves_to_the_other_broker_and_says_so() {
    let mut brokers = start_broker_cluster("fo-cli", 2, &[]);
    let list = format!("{},{}", brokers[0].client, brokers[1].client);
    let mut sub = spawn_cli(&list, &["sub", "news.#"]);
    let mut publish = |broker: &BrokerProc, payload: &str| -> bool {
        let (code, _, _) = cli(
            &broker.client,
            &["pub", "news.x", payload, "--timeout", "5"],
            None,
        );
        code == 0 && sub_line(&mut sub).is_some_and(|l| l.contains(payload))
    };
    eventually(STEP, "mpreg sub reached through broker 2", || {
        publish(&brokers[1], "\"before\"")
    });
    brokers[0].proc.kill();
    eventually(STEP, "mpreg sub on broker 2", || {
        publish(&brokers[1], "\"after\"")
    });
    let notices: Vec<Json> = sub
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(notices[0]["connection_lost"].is_object(), "{notices:?}");
    let resubscribed = &notices[1]["resubscribed"];
    assert_eq!(
        resubscribed["broker"],
        brokers[1].client.as_str(),
        "{notices:?}"
    );
    assert!(resubscribed["after"].is_string(), "{notices:?}");
    assert!(
        resubscribed["down_ms"].as_u64().unwrap() < 1500,
        "{notices:?}"
    );
}

/// The next line `mpreg sub` printed, if one comes within a second.
fn sub_line(sub: &mut Proc) -> Option<String> {
    sub.next_line(Duration::from_secs(1))
}

/// Runs a Python conformance program in the background.
fn spawn_python(name: &str, script: &str, args: &[&str]) -> Proc {
    let mut all = vec![python_dir().join(script).to_string_lossy().into_owned()];
    all.extend(args.iter().map(|s| s.to_string()));
    Proc::spawn(name, &PathBuf::from(python()), &all, &[])
}

#[test]
fn the_python_client_moves_to_the_next_broker_and_resends_its_plan() {
    let (mut brokers, _nodes) = two_brokers("fo-py", &[]);
    let list = format!("{},{}", brokers[0].client, brokers[1].client);

    // A dead broker first: the client gives up on its silence and moves on.
    let dead_first = format!("{},{}", dead_endpoint(), brokers[1].client);
    let (ok, text) = mpreg_tests::run_python(
        "mpreg_client.py",
        &["--broker", &dead_first, "call", "echo", "\"py\""],
    );
    assert!(ok, "{text}");
    assert_eq!(text.trim(), "\"py\"");
    // The same list from MPREG_BROKER.
    let out = Command::new(python())
        .arg(python_dir().join("mpreg_client.py"))
        .args(["call", "echo", "\"env\""])
        .env("MPREG_BROKER", &dead_first)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"env\"");

    // A plan in flight on broker 1 when it is killed: sent again to broker 2 under its id.
    let mut call = spawn_python(
        "py-call",
        "mpreg_client.py",
        &["--broker", &list, "call", "sleep", "1500", "\"resent\""],
    );
    let b1 = brokers[0].client.clone();
    eventually(STEP, "the python plan in flight on broker 1", || {
        let (code, out, _) = cli(&b1, &["status"], None);
        code == 0 && serde_json::from_str::<Json>(&out).unwrap()["plans_in_flight"] == 1
    });
    brokers[0].proc.kill();
    let status = call.wait_exit(STEP).expect("the python client exits");
    assert!(status.success(), "{}", call.log());
    assert_eq!(
        call.next_line(Duration::from_secs(1)).as_deref(),
        Some("\"resent\""),
        "{}",
        call.log()
    );
}

#[test]
fn the_python_topics_client_resubscribes_on_the_next_broker() {
    let mut brokers = start_broker_cluster("fo-pysub", 2, &[]);
    let list = format!("{},{}", brokers[0].client, brokers[1].client);
    let mut sub = spawn_python(
        "py-sub",
        "mpreg_topics.py",
        &["--broker", &list, "sub", "news.#", "--timeout", "30"],
    );
    let b2 = brokers[1].client.clone();
    let publish = |payload: &str| -> bool {
        let (code, _, _) = cli(&b2, &["pub", "news.x", payload, "--timeout", "5"], None);
        code == 0
    };
    eventually(
        STEP,
        "the python subscriber reached through broker 2",
        || {
            publish("\"before\"")
                && sub
                    .next_line(Duration::from_millis(500))
                    .is_some_and(|l| l.contains("before"))
        },
    );
    brokers[0].proc.kill();
    eventually(STEP, "the python subscriber on broker 2", || {
        publish("\"after\"")
            && sub
                .next_line(Duration::from_millis(500))
                .is_some_and(|l| l.contains("after"))
    });
    let log = sub.log();
    let resubscribed: Json = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .find(|j| j["resubscribed"].is_object())
        .unwrap_or_else(|| panic!("no resubscribed line: {log}"));
    assert_eq!(resubscribed["resubscribed"]["broker"], b2.as_str(), "{log}");
}
