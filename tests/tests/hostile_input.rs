//! Malformed, oversized and unknown input on the client socket: every message gets a typed
//! error reply naming what was wrong, and the broker keeps serving other clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mpreg_protocol::*;
use mpreg_tests::start_broker;
use mpreg_transport::{Context, RawDealer, SocketOptions};

const WAIT: Duration = Duration::from_secs(10);

fn reply(dealer: &RawDealer) -> BrokerToClient {
    mpreg_tests::raw_reply(dealer, WAIT)
}

fn error(dealer: &RawDealer) -> ErrorReply {
    mpreg_tests::raw_error(dealer, WAIT)
}

fn ping_works(ctx: &Context, endpoint: &str) {
    let other = RawDealer::connect(ctx, endpoint).unwrap();
    other
        .send(&ClientToBroker::Ping(Ping { id: 99 }).to_frames())
        .unwrap();
    assert!(matches!(
        reply(&other),
        BrokerToClient::Pong(Pong { id: 99, .. })
    ));
}

#[test]
fn malformed_frames_get_typed_errors_and_others_are_served() {
    let broker = start_broker(&[], &[]);
    let ctx = Context::new();
    let d = RawDealer::connect(&ctx, &broker.client).unwrap();

    // Wrong frame count.
    d.send(&[&b"just one frame"[..]]).unwrap();
    let e = error(&d);
    assert_eq!(e.error_code(), Some(ErrorCode::MalformedMessage));
    assert_eq!(e.id, None);

    // Wrong version.
    d.send(&[&b"MPREG/9"[..], b"ping", &encode_body(&Ping { id: 1 })])
        .unwrap();
    assert_eq!(error(&d).error_code(), Some(ErrorCode::UnsupportedVersion));

    // Unknown type: the id is still read from the body.
    d.send(&[VERSION, b"frobnicate", &encode_body(&Ping { id: 5 })])
        .unwrap();
    let e = error(&d);
    assert_eq!(e.error_code(), Some(ErrorCode::UnknownMessageType));
    assert_eq!(e.id, Some(5));

    // Not msgpack at all.
    d.send(&[VERSION, b"plan", &[0xc1, 0xff, 0x00]]).unwrap();
    assert_eq!(error(&d).error_code(), Some(ErrorCode::InvalidBody));

    // A field of the wrong type: the error names the path.
    let body = rmp_serde_like_plan_with_string_id();
    d.send(&[VERSION, b"plan", &body]).unwrap();
    let e = error(&d);
    assert_eq!(e.error_code(), Some(ErrorCode::InvalidBody));
    assert_eq!(e.path.as_deref(), Some("id"), "{e:?}");

    // Nested 100,000 deep: refused before decoding (no stack overflow in the broker).
    let mut deep = vec![0x81, 0xa2, b'i', b'd', 0x01]; // {"id": 1, ...
    deep[0] = 0x82;
    deep.extend_from_slice(&[0xa5, b's', b't', b'e', b'p', b's']);
    deep.extend(std::iter::repeat_n(0x91u8, 100_000));
    deep.push(0xc0);
    d.send(&[VERSION, b"plan", &deep]).unwrap();
    let e = error(&d);
    assert_eq!(e.error_code(), Some(ErrorCode::NestingTooDeep));
    assert_eq!(e.id, Some(1));

    // The broker is alive and serves another client.
    ping_works(&ctx, &broker.client);
}

/// `{"id": "seven", "steps": []}` encoded by hand.
fn rmp_serde_like_plan_with_string_id() -> Vec<u8> {
    let mut b = vec![0x82, 0xa2, b'i', b'd', 0xa5];
    b.extend_from_slice(b"seven");
    b.extend_from_slice(&[0xa5, b's', b't', b'e', b'p', b's', 0x90]);
    b
}

#[test]
fn oversized_bodies_and_plans_are_refused_with_their_codes() {
    let broker = start_broker(
        &[],
        &[
            ("MPREG_BROKER_LIMITS__MAX_MESSAGE_BYTES", "100000"),
            ("MPREG_BROKER_LIMITS__MAX_STEPS", "50"),
        ],
    );
    let ctx = Context::new();
    let d = RawDealer::connect(&ctx, &broker.client).unwrap();

    // One byte over the application limit: typed error 104, connection kept.
    let mut plan = PlanRequest {
        id: 3,
        steps: vec![Step::new("a", "echo", vec![Value::from("")])],
        deadline_ms: None,
        all_results: false,
        progress: false,
        progress_topic: None,
        plan: None,
        trace: false,
    };
    let base = encode_body(&plan).len();
    // A str32 header is 5 bytes where the empty string took 1: exactly one byte over.
    plan.steps[0].args[0] = Value::from("x".repeat(100_001 - base - 4));
    let body = encode_body(&plan);
    assert_eq!(body.len(), 100_001);
    d.send(&[VERSION, b"plan", &body]).unwrap();
    let e = error(&d);
    assert_eq!(e.error_code(), Some(ErrorCode::MessageTooLarge));
    assert_eq!(e.id, Some(3), "the id is read even from an oversized body");

    // A frame far over the limit (+1 MiB margin): libzmq drops that connection; others live.
    let big =
        RawDealer::connect_with(&ctx, &broker.client, &SocketOptions::dealer_client()).unwrap();
    big.send(&[VERSION, b"plan", &vec![0u8; 3 << 20]]).unwrap();
    assert!(big.recv(Duration::from_millis(500)).is_none());

    // Over the step limit.
    let steps = (0..51)
        .map(|i| Step::new(format!("s{i}"), "echo", vec![]))
        .collect();
    d.send(
        &ClientToBroker::Plan(PlanRequest {
            id: 4,
            steps,
            deadline_ms: None,
            all_results: false,
            progress: false,
            progress_topic: None,
            plan: None,
            trace: false,
        })
        .to_frames(),
    )
    .unwrap();
    let e = error(&d);
    assert_eq!(e.error_code(), Some(ErrorCode::TooManySteps));
    assert_eq!(e.id, Some(4));

    ping_works(&ctx, &broker.client);
}

#[test]
fn invalid_plans_are_rejected_before_running() {
    let broker = start_broker(&[], &[]);
    let ctx = Context::new();
    let d = RawDealer::connect(&ctx, &broker.client).unwrap();
    let send = |id: u64, steps: Vec<Step>| {
        d.send(
            &ClientToBroker::Plan(PlanRequest {
                id,
                steps,
                deadline_ms: None,
                all_results: false,
                progress: false,
                progress_topic: None,
                plan: None,
                trace: false,
            })
            .to_frames(),
        )
        .unwrap();
        error(&d)
    };
    let s = |name: &str, args: Vec<&str>| {
        Step::new(name, "echo", args.into_iter().map(Value::from).collect())
    };
    assert_eq!(
        send(1, vec![s("", vec![])]).error_code(),
        Some(ErrorCode::EmptyStepName)
    );
    let dup = send(2, vec![s("a", vec![]), s("a", vec![])]);
    assert_eq!(
        (dup.error_code(), dup.step.as_deref()),
        (Some(ErrorCode::DuplicateStepName), Some("a"))
    );
    assert_eq!(
        send(3, vec![s("a.b", vec![])]).error_code(),
        Some(ErrorCode::InvalidStepName)
    );
    let cycle = send(4, vec![s("a", vec!["b"]), s("b", vec!["a.x"])]);
    assert_eq!(cycle.error_code(), Some(ErrorCode::PlanCycle));
    assert_eq!(cycle.cycle.unwrap().len(), 2);
    // No worker serves it: no_route naming the function and resources.
    let mut needs = s("x", vec![]);
    needs.fun = "nobody".into();
    needs.locs = vec!["gpu".into()];
    let e = send(5, vec![needs]);
    assert_eq!(e.error_code(), Some(ErrorCode::NoRoute));
    assert_eq!(
        (e.fun.as_deref(), e.locs),
        (Some("nobody"), Some(vec!["gpu".to_string()]))
    );
    // An empty plan returns an empty result.
    d.send(
        &ClientToBroker::Plan(PlanRequest {
            id: 6,
            steps: vec![],
            deadline_ms: None,
            all_results: false,
            progress: false,
            progress_topic: None,
            plan: None,
            trace: false,
        })
        .to_frames(),
    )
    .unwrap();
    assert!(
        matches!(reply(&d), BrokerToClient::Result(PlanResult { id: 6, ref results, .. }) if results.is_empty())
    );
}

/// One valid-sized request used to kill the broker: a reference loop through 60,000 or more
/// steps overflowed the stack of a recursive cycle search (exit 134, everything in flight
/// lost). Now it is a `plan_cycle` like any other, and the broker keeps serving.
#[test]
fn a_loop_through_max_steps_is_a_cycle_error_not_a_crash() {
    let broker = start_broker(&[], &[]);
    let ctx = Context::new();
    let d = RawDealer::connect(&ctx, &broker.client).unwrap();
    let n = Limits::default().max_steps;
    let steps = (0..n)
        .map(|i| {
            Step::new(
                format!("s{i}"),
                "echo",
                vec![Value::from(format!("s{}", (i + 1) % n))],
            )
        })
        .collect();
    let plan = PlanRequest {
        id: 7,
        steps,
        deadline_ms: None,
        all_results: false,
        progress: false,
        progress_topic: None,
        plan: None,
        trace: false,
    };
    d.send(&ClientToBroker::Plan(plan).to_frames()).unwrap();
    let e = error(&d);
    assert_eq!(e.error_code(), Some(ErrorCode::PlanCycle), "{e:?}");
    assert_eq!(e.id, Some(7));
    let cycle = e.cycle.unwrap();
    assert_eq!(
        (cycle.len(), cycle[0].as_str()),
        (1_000, "s0"),
        "the cycle list is capped"
    );
    assert!(e.message.contains("cycle of 100000 steps"), "{}", e.message);
    ping_works(&ctx, &broker.client);
}
