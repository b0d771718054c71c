//! The engine's topic exchange driven through its message interface: a `publish_batch` is
//! answered before its copies go out (so the publisher can send the next batch while the
//! broker encodes them), and the answer counts exactly the copies that follow.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Instant;

use mpreg_broker::engine::EngineConfig;
use mpreg_protocol::*;
use support::{client, Recorder};

/// The kinds of everything the recorder saw, in order.
fn kinds(out: &Recorder) -> Vec<String> {
    let mut kinds = Vec::new();
    let mut rest = &out.log[..];
    let part = |rest: &mut &[u8]| {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        let (part, tail) = tail.split_at(len);
        *rest = tail;
        part.to_vec()
    };
    while !rest.is_empty() {
        let _to = part(&mut rest);
        kinds.push(String::from_utf8(part(&mut rest)).unwrap());
        let _body = part(&mut rest);
    }
    kinds
}

/// Subscribes `conn` to `pattern` and activates the subscription as its SUB socket would.
fn subscribe(
    e: &mut mpreg_broker::Engine,
    out: &mut Recorder,
    conn: &[u8],
    pattern: &str,
    now: Instant,
) {
    let request = ClientToBroker::Subscribe(Subscribe {
        id: 1,
        patterns: vec![pattern.into()],
        backlog: false,
        cluster_ack: false,
    });
    e.on_client(out, client(conn), request, now);
    let token = match out.client.last() {
        Some((_, BrokerToClient::Subscribed(s))) => s.sub.clone(),
        other => panic!("expected subscribed, got {other:?}"),
    };
    let mut frame = vec![1u8];
    frame.extend_from_slice(token.as_bytes());
    e.on_event_frame(out, &frame, None, now);
}

fn batch(id: u64, topics: &[&str]) -> ClientToBroker {
    ClientToBroker::PublishBatch(PublishBatch {
        id,
        messages: topics
            .iter()
            .enumerate()
            .map(|(i, t)| BatchItem {
                topic: t.to_string(),
                headers: Default::default(),
                payload: Value::from(i as u64),
            })
            .collect(),
        confirm: true,
    })
}

#[test]
fn a_batch_is_answered_before_its_copies_and_the_answer_counts_them() {
    let now = Instant::now();
    let mut e = support::engine(EngineConfig::default(), now, 7);
    let mut out = Recorder::default();
    subscribe(&mut e, &mut out, b"reader-a", "t.*", now);
    subscribe(&mut e, &mut out, b"reader-b", "t.one", now);
    let before = kinds(&out).len();

    e.on_client(
        &mut out,
        client(b"writer"),
        batch(9, &["t.one", "t.two", "u.three", "t.one"]),
        now,
    );

    let after: Vec<String> = kinds(&out).split_off(before);
    // The answer first, then one `messages` event per matching subscription.
    assert_eq!(
        after,
        ["published_batch", "messages", "messages"],
        "{after:?}"
    );
    match out.client.last() {
        Some((to, BrokerToClient::PublishedBatch(p))) => {
            assert_eq!(to, b"writer");
            assert_eq!((p.id, p.count), (9, 4));
            // reader-a: t.one, t.two, t.one; reader-b: t.one twice.
            assert_eq!(p.matched, 5);
        }
        other => panic!("expected published_batch, got {other:?}"),
    }
}

#[test]
fn an_unconfirmed_batch_sends_only_its_copies() {
    let now = Instant::now();
    let mut e = support::engine(EngineConfig::default(), now, 7);
    let mut out = Recorder::default();
    subscribe(&mut e, &mut out, b"reader", "#", now);
    let before = kinds(&out).len();
    let mut request = batch(3, &["a", "b"]);
    if let ClientToBroker::PublishBatch(b) = &mut request {
        b.confirm = false;
    }
    e.on_client(&mut out, client(b"writer"), request, now);
    assert_eq!(kinds(&out).split_off(before), ["messages"]);
}
