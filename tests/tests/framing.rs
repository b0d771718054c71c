//! The two frame forms on the wire: three frames `[MPREG/1, type, body]`, or one compact frame
//! `MPREG/1 NUL type NUL body`. The broker answers each request in the form it came in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mpreg_protocol::*;
use mpreg_tests::{start_broker, start_node};
use mpreg_transport::{Context, RawDealer};

const WAIT: Duration = Duration::from_secs(10);

fn plan(id: u64) -> ClientToBroker {
    ClientToBroker::Plan(PlanRequest {
        id,
        steps: vec![Step::new("s", "echo", vec![Value::from("x")])],
        deadline_ms: None,
        all_results: false,
        progress: false,
        progress_topic: None,
        plan: None,
        trace: false,
    })
}

#[test]
fn the_broker_answers_in_the_form_of_the_request() {
    let b = start_broker(&[], &[]);
    // The node registers with compact frames: its tasks come back compact.
    let _node = start_node(&b.worker, "n", &[], &[]);
    let ctx = Context::new();
    let dealer = RawDealer::connect(&ctx, &b.client).unwrap();

    dealer.send(&[plan(1).to_compact_frame()]).unwrap();
    let reply = dealer.recv(WAIT).expect("reply");
    assert_eq!(reply.len(), 1, "a compact request gets a compact reply");
    assert!(reply[0].starts_with(COMPACT_PREFIX));
    let env = parse_envelope(&reply).unwrap();
    assert!(env.compact);
    match BrokerToClient::decode(env.kind, env.body, &Limits::default()).unwrap() {
        BrokerToClient::Result(r) => assert_eq!(r.results["s"], Value::from("x")),
        other => panic!("{other:?}"),
    }

    dealer.send(&plan(2).to_frames()).unwrap();
    let reply = dealer.recv(WAIT).expect("reply");
    assert_eq!(
        reply.len(),
        3,
        "a three-frame request gets a three-frame reply"
    );
    assert_eq!(&reply[1][..], b"result");

    // A compact frame without the NUL after the type is malformed (100), answered in the
    // three-frame form; a compact frame of another version is 101.
    dealer.send(&[b"MPREG/1\0plan".to_vec()]).unwrap();
    let reply = dealer.recv(WAIT).expect("reply");
    let e = BrokerToClient::decode(&reply[1], &reply[2], &Limits::default()).unwrap();
    match e {
        BrokerToClient::Error(e) => assert_eq!(e.code, ErrorCode::MalformedMessage.code()),
        other => panic!("{other:?}"),
    }
    dealer.send(&[b"MPREG/9\0plan\0\x80".to_vec()]).unwrap();
    let reply = dealer.recv(WAIT).expect("reply");
    match BrokerToClient::decode(&reply[1], &reply[2], &Limits::default()).unwrap() {
        BrokerToClient::Error(e) => assert_eq!(e.code, ErrorCode::UnsupportedVersion.code()),
        other => panic!("{other:?}"),
    }
    // Still serving.
    dealer.send(&[plan(3).to_compact_frame()]).unwrap();
    assert!(dealer.recv(WAIT).is_some());
}
