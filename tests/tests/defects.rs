//! Regressions of the defects found by trying the single broker as its users and operators
//! would (faults and bad input), broker side: each test failed before its fix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mpreg_protocol::*;
use mpreg_tests::{start_broker, start_node, BrokerProc, Proc};
use mpreg_transport::{Context, RawDealer, RawSub};

const WAIT: Duration = Duration::from_secs(10);

fn decode_reply(frames: &[Vec<u8>]) -> BrokerToClient {
    let env = parse_envelope(frames).unwrap();
    BrokerToClient::decode(env.kind, env.body, &Limits::default()).unwrap()
}

/// A client connection speaking raw frames.
struct Conn {
    dealer: RawDealer,
    next: u64,
}

impl Conn {
    fn new(ctx: &Context, endpoint: &str) -> Conn {
        Conn {
            dealer: RawDealer::connect(ctx, endpoint).unwrap(),
            next: 100,
        }
    }

    fn send(&mut self, make: impl FnOnce(u64) -> ClientToBroker) -> u64 {
        self.next += 1;
        self.dealer.send(&make(self.next).to_frames()).unwrap();
        self.next
    }

    fn reply(&self) -> BrokerToClient {
        decode_reply(&self.dealer.recv(WAIT).expect("a reply in time"))
    }

    fn request(&mut self, make: impl FnOnce(u64) -> ClientToBroker) -> BrokerToClient {
        self.send(make);
        self.reply()
    }

    fn subscribe(&mut self, pattern: &str) -> String {
        let patterns = vec![pattern.to_string()];
        match self.request(|id| {
            ClientToBroker::Subscribe(Subscribe {
                id,
                patterns,
                backlog: false,
                cluster_ack: false,
            })
        }) {
            BrokerToClient::Subscribed(s) => s.sub,
            other => panic!("{other:?}"),
        }
    }

    fn unsubscribe(&mut self, token: &str) -> BrokerToClient {
        let sub = token.to_string();
        self.request(|id| ClientToBroker::Unsubscribe(Unsubscribe { id, sub }))
    }

    fn publish(&mut self, topic: &str) -> u64 {
        let topic = topic.to_string();
        match self.request(|id| {
            ClientToBroker::Publish(Publish {
                id,
                topic,
                headers: BTreeMap::new(),
                payload: Value::from("x"),
                confirm: true,
            })
        }) {
            BrokerToClient::Published(p) => p.matched,
            other => panic!("{other:?}"),
        }
    }

    fn status(&mut self) -> StatusReply {
        match self.request(|id| ClientToBroker::Status(StatusRequest { id })) {
            BrokerToClient::Status(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn plan(&mut self, steps: Vec<Step>, deadline_ms: u64) -> u64 {
        self.send(|id| {
            ClientToBroker::Plan(PlanRequest {
                id,
                steps,
                deadline_ms: Some(deadline_ms),
                all_results: false,
                progress: false,
                progress_topic: None,
                plan: None,
                trace: false,
            })
        })
    }
}

fn next_event(sub: &RawSub, within: Duration) -> Option<Event> {
    let f = sub.recv(within)?;
    Some(Event::decode(&f[2], &f[3], &Limits::default()).unwrap())
}

fn activate(sub: &RawSub, token: &str) {
    sub.subscribe(token.as_bytes()).unwrap();
    match next_event(sub, WAIT) {
        Some(Event::Active(a)) => assert_eq!(a.sub, token),
        other => panic!("expected active, got {other:?}"),
    }
}

fn expect_message(sub: &RawSub) -> TopicMessage {
    match next_event(sub, WAIT) {
        Some(Event::Message(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Waits until `f` holds, polling; panics with `what` after `within`.
fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Without CURVE a second SUB subscribing to an active token received copies and could end
/// the subscription with an unsubscribe, the owner never told. The token now belongs to the
/// first SUB: the second gets nothing, and its leaving ends nothing.
#[test]
fn a_token_belongs_to_the_first_sub_that_activates_it() {
    let b = start_broker(&[], &[]);
    let ctx = Context::new();
    let mut c = Conn::new(&ctx, &b.client);
    let owner = RawSub::connect(&ctx, &b.events, 1000).unwrap();
    let token = c.subscribe("t.*");
    activate(&owner, &token);

    let thief = RawSub::connect(&ctx, &b.events, 1000).unwrap();
    thief.subscribe(token.as_bytes()).unwrap();
    // Give the thief's filter time to reach the broker, then publish.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.publish("t.1"), 1);
    assert_eq!(expect_message(&owner).seq, 1);
    assert!(
        next_event(&thief, Duration::from_millis(300)).is_none(),
        "a second SUB got the owner's messages"
    );

    // The thief unsubscribes, then disconnects: the owner's subscription lives on.
    thief.unsubscribe(token.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(thief);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.publish("t.2"), 1, "the subscription must still exist");
    assert_eq!(expect_message(&owner).seq, 2);
    assert_eq!(c.status().gauges["subscriptions"], 1);

    // The owner's own SUB leaving still ends it.
    owner.unsubscribe(token.as_bytes()).unwrap();
    eventually(WAIT, "the owner's unsubscription ends it", || {
        c.status().gauges["subscriptions"] == 0
    });
}

/// Section 15 gave no order between the `unsubscribe` request and the SUB's own unsubscribe,
/// and the SUB-first order answered the request with 602. Both orders now end it cleanly.
#[test]
fn unsubscribe_request_and_sub_unsubscribe_work_in_either_order() {
    let b = start_broker(&[], &[]);
    let ctx = Context::new();
    let mut c = Conn::new(&ctx, &b.client);
    let sub = RawSub::connect(&ctx, &b.events, 1000).unwrap();

    // SUB first, then the request.
    let first = c.subscribe("a.#");
    activate(&sub, &first);
    sub.unsubscribe(first.as_bytes()).unwrap();
    eventually(WAIT, "the SUB's unsubscription arrives", || {
        c.status().gauges["subscriptions"] == 0
    });
    match c.unsubscribe(&first) {
        BrokerToClient::Unsubscribed(u) => assert_eq!(u.sub, first),
        other => panic!("SUB first, then unsubscribe: {other:?}"),
    }

    // The request first, then the SUB.
    let second = c.subscribe("a.#");
    activate(&sub, &second);
    assert!(matches!(
        c.unsubscribe(&second),
        BrokerToClient::Unsubscribed(_)
    ));
    sub.unsubscribe(second.as_bytes()).unwrap();
    // A third subscription still works, and a token never issued is still refused.
    let third = c.subscribe("a.#");
    activate(&sub, &third);
    assert_eq!(c.publish("a.b"), 1);
    assert_eq!(expect_message(&sub).seq, 1);
    match c.unsubscribe("s00000000000000000000000000") {
        BrokerToClient::Error(e) => {
            assert_eq!(e.error_code(), Some(ErrorCode::UnknownSubscription))
        }
        other => panic!("{other:?}"),
    }
}

/// A client killed with plans in flight left them running until their deadline, holding
/// worker slots (the next call on a one-slot node waited 19 s). A client that sends
/// heartbeats now has its plans cancelled once it is silent for its grace period.
#[test]
fn the_plans_of_a_client_that_went_silent_are_cancelled() {
    let b = start_broker(&[], &[]);
    let _node = start_node(&b.worker, "one-slot", &[], &["--capacity", "1"]);
    let ctx = Context::new();
    let mut gone = Conn::new(&ctx, &b.client);
    gone.send(|id| {
        ClientToBroker::Heartbeat(ClientHeartbeat {
            id,
            interval_ms: 200,
        })
    });
    let sleeper = Step::new("s", "sleep", vec![Value::from(20_000), Value::from("late")]);
    gone.plan(vec![sleeper], 30_000);
    let mut other = Conn::new(&ctx, &b.client);
    eventually(WAIT, "the sleep is running", || {
        other.status().workers.iter().any(|w| w.outstanding == 1)
    });
    assert_eq!(other.status().gauges["clients_tracked"], 1);
    // The client vanishes without a word (as after kill -9).
    drop(gone);
    let started = Instant::now();
    other.plan(vec![Step::new("e", "echo", vec![Value::from(1)])], 30_000);
    match other.reply() {
        BrokerToClient::Result(r) => assert_eq!(r.results["e"], Value::from(1)),
        other => panic!("{other:?}"),
    }
    let waited = started.elapsed();
    // Grace: 3 x 200 ms, checked every heartbeat_ms (1 s).
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    let status = other.status();
    assert_eq!(status.counters["plans_cancelled_client_gone"], 1);
    assert_eq!(status.counters["clients_expired"], 1);
    assert_eq!(status.gauges["clients_tracked"], 0);

    // A client that never sends heartbeats is never tracked: silent for longer than any grace
    // period, its plan still runs to the end.
    let mut quiet = Conn::new(&ctx, &b.client);
    quiet.plan(
        vec![Step::new(
            "q",
            "sleep",
            vec![Value::from(4_000), Value::from("done")],
        )],
        10_000,
    );
    match quiet.reply() {
        BrokerToClient::Result(r) => assert_eq!(r.results["q"], Value::from("done")),
        other => panic!("{other:?}"),
    }
}

/// Registers `n` raw workers and returns their sockets.
fn raw_workers(ctx: &Context, b: &BrokerProc, n: usize) -> Vec<RawDealer> {
    (0..n)
        .map(|i| {
            let w = RawDealer::connect(ctx, &b.worker).unwrap();
            let register = WorkerToBroker::Register(Register {
                node: format!("raw-{i}"),
                functions: vec!["f".into()],
                resources: vec![],
                capacity: 1,
                versions: Default::default(),
                cacheable: Default::default(),
            });
            w.send(&register.to_frames()).unwrap();
            let f = w.recv(WAIT).expect("registered");
            assert_eq!(f[1], b"registered", "{f:?}");
            w
        })
        .collect()
}

/// The stopping broker's `disconnect` did not reach 3 of 12 workers (its sockets closed with
/// LINGER 0 right after sending); they noticed 3 s later. Now every worker hears it.
#[test]
fn a_stopping_broker_tells_every_worker() {
    for round in 0..2 {
        let mut b = start_broker(&[], &[]);
        let ctx = Context::new();
        let workers = raw_workers(&ctx, &b, 12);
        b.proc.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(2);
        for (i, w) in workers.iter().enumerate() {
            let mut told = false;
            while let Some(f) = w.recv(deadline.saturating_duration_since(Instant::now())) {
                if f[1] == b"disconnect" {
                    told = true;
                    break;
                }
            }
            assert!(told, "round {round}: worker {i} got no disconnect");
        }
        assert_eq!(
            b.proc.wait_exit(WAIT).and_then(|s| s.code()),
            Some(0),
            "{}",
            b.proc.log()
        );
    }
}

/// A compact `register` was answered with a three-frame `registered`; every reply now comes
/// in the form of its request.
#[test]
fn a_compact_register_is_answered_compactly() {
    let b = start_broker(&[], &[]);
    let ctx = Context::new();
    let w = RawDealer::connect(&ctx, &b.worker).unwrap();
    let register = WorkerToBroker::Register(Register {
        node: "compact".into(),
        functions: vec!["f".into()],
        resources: vec![],
        capacity: 1,
        versions: Default::default(),
        cacheable: Default::default(),
    });
    w.send(&[register.to_compact_frame()]).unwrap();
    let f = w.recv(WAIT).expect("registered");
    assert_eq!(f.len(), 1, "one compact frame, got {} frames", f.len());
    assert_eq!(parse_envelope(&f).unwrap().kind, b"registered");
    // An invalid one is refused in kind too.
    let bad = WorkerToBroker::Register(Register {
        node: "n".repeat(300),
        functions: vec!["f".into()],
        resources: vec![],
        capacity: 1,
        versions: Default::default(),
        cacheable: Default::default(),
    });
    let w2 = RawDealer::connect(&ctx, &b.worker).unwrap();
    w2.send(&[bad.to_compact_frame()]).unwrap();
    let f = w2.recv(WAIT).expect("an error");
    assert_eq!(f.len(), 1);
    let env = parse_envelope(&f).unwrap();
    assert_eq!(env.kind, b"error");
    let e: ErrorReply = decode_body(env.body, &Limits::default()).unwrap();
    assert_eq!(e.error_code(), Some(ErrorCode::InvalidBody));
    // The message names the field, not "function or resource name".
    assert!(
        e.message
            .contains("node name is 300 bytes long; the limit is 256"),
        "{}",
        e.message
    );
    let mut c = Conn::new(&ctx, &b.client);
    assert_eq!(c.status().counters["registrations_refused"], 1);
}

/// `status.counters` held gauges; they now have their own map, and the limits are all listed.
#[test]
fn status_keeps_gauges_apart_from_counters() {
    let b = start_broker(&[], &[]);
    let ctx = Context::new();
    let mut c = Conn::new(&ctx, &b.client);
    let s = c.status();
    for gauge in ["plan_bytes_in_flight", "subscriptions", "clients_tracked"] {
        assert!(
            s.gauges.contains_key(gauge),
            "gauge {gauge}: {:?}",
            s.gauges
        );
        assert!(
            !s.counters.contains_key(gauge),
            "{gauge} among the counters"
        );
    }
    for limit in ["max_plan_bytes_in_flight", "max_worker_capacity"] {
        assert!(s.limits.contains_key(limit), "{limit}: {:?}", s.limits);
    }
}

/// A client pointed at the worker port got "unknown message type `ping`"; a worker message on
/// the client port got the same. Both now say which port they reached and name the right one.
#[test]
fn a_message_on_the_wrong_port_names_the_right_one() {
    let b = start_broker(&[], &[]);
    let ctx = Context::new();
    let wrong = RawDealer::connect(&ctx, &b.worker).unwrap();
    wrong
        .send(&ClientToBroker::Ping(Ping { id: 5 }).to_frames())
        .unwrap();
    let f = wrong.recv(WAIT).expect("an error");
    let env = parse_envelope(&f).unwrap();
    let e: ErrorReply = decode_body(env.body, &Limits::default()).unwrap();
    assert_eq!(e.error_code(), Some(ErrorCode::UnknownMessageType));
    assert!(
        e.message.contains("`ping` is a client message")
            && e.message
                .contains(&format!("clients connect to {}", b.client)),
        "{}",
        e.message
    );

    let wrong = RawDealer::connect(&ctx, &b.client).unwrap();
    let register = WorkerToBroker::Register(Register {
        node: "lost".into(),
        functions: vec![],
        resources: vec![],
        capacity: 1,
        versions: Default::default(),
        cacheable: Default::default(),
    });
    wrong.send(&register.to_frames()).unwrap();
    match decode_reply(&wrong.recv(WAIT).expect("an error")) {
        BrokerToClient::Error(e) => assert!(
            e.message.contains("`register` is a worker message")
                && e.message
                    .contains(&format!("workers connect to {}", b.worker)),
            "{}",
            e.message
        ),
        other => panic!("{other:?}"),
    }
}

/// Keyword arguments given to a built-in were ignored silently; they are a typed failure.
#[test]
fn builtins_refuse_keyword_arguments() {
    let b = start_broker(&[], &[]);
    let _node = start_node(&b.worker, "n", &[], &[]);
    let ctx = Context::new();
    let mut c = Conn::new(&ctx, &b.client);
    let mut step = Step::new("e", "echo", vec![Value::from(1)]);
    step.kwargs.insert("sep".into(), Value::from(","));
    c.plan(vec![step], 10_000);
    match c.reply() {
        BrokerToClient::Error(e) => {
            assert_eq!(e.error_code(), Some(ErrorCode::StepFailed));
            assert_eq!(e.cause.as_deref(), Some(failure_kind::BAD_ARGUMENTS));
            assert!(e.message.contains("no keyword arguments"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
}

/// A paused node that alone held the requested resources yielded "no other worker serves
/// `sleep`" although others served it without the resource: the message names the resources.
#[test]
fn a_lost_step_names_the_resources_nobody_else_holds() {
    let b = start_broker(&[], &[]);
    let paused: Proc = start_node(&b.worker, "holder", &["rare"], &[]);
    let _other = start_node(&b.worker, "plain", &[], &[]);
    let ctx = Context::new();
    let mut c = Conn::new(&ctx, &b.client);
    let mut step = Step::new("s", "sleep", vec![Value::from(10_000), Value::Nil]);
    step.locs = vec!["rare".into()];
    c.plan(vec![step], 20_000);
    eventually(WAIT, "the step runs on the holder", || {
        c.status()
            .workers
            .iter()
            .any(|w| w.name == "holder" && w.outstanding == 1)
    });
    paused.pause();
    let reply = c.reply();
    paused.signal("CONT");
    match reply {
        BrokerToClient::Error(e) => {
            assert_eq!(e.error_code(), Some(ErrorCode::WorkerLost));
            assert!(
                e.message
                    .contains("no other worker serves `sleep` with resources [rare]"),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
}
