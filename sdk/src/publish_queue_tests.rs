#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::wire::KIND;
use super::*;
use std::collections::BTreeMap as Map;
use std::time::Duration;

use mpreg_protocol::{
    encode_body, parse_envelope, BatchItem, ClientToBroker, Limits, PublishBatch, PublishedBatch,
    Value,
};

fn item(topic: &str, payload: Value) -> BatchItem {
    BatchItem {
        topic: topic.into(),
        headers: Map::new(),
        payload,
    }
}

fn queue(budget: usize) -> (Arc<PublishQueue>, Coalescer) {
    let queue = Arc::new(PublishQueue::new(budget));
    let coalescer = Coalescer::new(
        Arc::clone(&queue),
        Arc::new(AtomicU64::new(1_000)),
        Arc::new(LinkCounters::default()),
    );
    (queue, coalescer)
}

fn decode(batch: &Batch) -> PublishBatch {
    let frames = [batch.frame()];
    let envelope = parse_envelope(&frames).unwrap();
    assert_eq!(envelope.kind, KIND);
    match ClientToBroker::decode(envelope.kind, envelope.body, &Limits::default()).unwrap() {
        ClientToBroker::PublishBatch(b) => b,
        other => panic!("{other:?}"),
    }
}

fn batch(out: Option<Outgoing>) -> Batch {
    match out {
        Some(Outgoing::Batch(b)) => b,
        Some(Outgoing::Request(_)) => panic!("a request"),
        None => panic!("nothing to send"),
    }
}

#[test]
fn a_batch_is_exactly_what_the_protocol_encodes() {
    let mut headers = Map::new();
    headers.insert("k".to_string(), "v".to_string());
    for n in [0usize, 1, 15, 16, 300, 70_000] {
        let items: Vec<BatchItem> = (0..n)
            .map(|i| BatchItem {
                topic: format!("t.{i}"),
                headers: if i % 2 == 0 {
                    headers.clone()
                } else {
                    Map::new()
                },
                payload: Value::from(i as u64),
            })
            .collect();
        let encoded: Vec<Vec<u8>> = items.iter().map(encode_body).collect();
        for id in [
            0u64,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64 + 1,
            u64::MAX,
        ] {
            let built = Batch::encode(
                id,
                encoded
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (i as u64, 0, &b[..])),
            );
            let expected = encode_body(&PublishBatch {
                id,
                messages: items.clone(),
                confirm: true,
            });
            let frames = [built.frame()];
            let envelope = parse_envelope(&frames).unwrap();
            assert_eq!(envelope.body, &expected[..], "{n} items, id {id}");
            assert_eq!(built.items.len(), n);
            let items_bytes: usize = encoded.iter().map(Vec::len).sum();
            assert!(built.frame().len() - items_bytes <= BATCH_OVERHEAD);
        }
    }
}

#[test]
fn an_item_is_exactly_what_the_protocol_encodes() {
    let long = "x".repeat(300);
    let mut headers = Map::new();
    for (k, v) in [("trace", "abc"), ("k", long.as_str())] {
        headers.insert(k.to_string(), v.to_string());
    }
    let payloads = [
        Value::Nil,
        Value::from(true),
        Value::from(-5i64),
        Value::from(u64::MAX),
        Value::from(2.5f64),
        Value::F32(1.5),
        Value::from("text"),
        Value::from(long.as_str()),
        Value::Binary(vec![7; 64]),
        Value::Binary(vec![1; 70_000]),
        Value::Array(vec![Value::from(1u64), Value::from("a")]),
        Value::Map(vec![(Value::from("k"), Value::Array(vec![]))]),
        Value::Ext(3, vec![1, 2, 3]),
    ];
    for topic in ["t", "orders.42.eu", long.as_str()] {
        for headers in [Map::new(), headers.clone()] {
            for payload in &payloads {
                let expected = encode_body(&BatchItem {
                    topic: topic.into(),
                    headers: headers.clone(),
                    payload: payload.clone(),
                });
                assert_eq!(
                    encode_item(topic, &headers, payload),
                    expected,
                    "{payload:?}"
                );
            }
        }
    }
    let many: Map<String, String> = (0..20).map(|i| (format!("h{i}"), "v".into())).collect();
    let expected = encode_body(&item_with(&many));
    assert_eq!(encode_item("t", &many, &Value::Nil), expected);
}

fn item_with(headers: &Map<String, String>) -> BatchItem {
    BatchItem {
        topic: "t".into(),
        headers: headers.clone(),
        payload: Value::Nil,
    }
}

#[tokio::test]
async fn single_publishes_are_coalesced_and_settled_by_the_confirmation() {
    let (q, mut c) = queue(1 << 20);
    let mut wakes = 0;
    for i in 0..10u64 {
        if q.push(i, encode_body(&item("a", Value::from(i))))
            .await
            .unwrap()
            == Wake::Reactor
        {
            wakes += 1;
        }
    }
    assert_eq!(wakes, 1, "one wake-up for a burst");
    let target = q.next_seq();
    let b = batch(c.next(1 << 20));
    let decoded = decode(&b);
    assert_eq!(decoded.messages.len(), 10);
    assert!(decoded.confirm);
    assert_eq!(decoded.messages[3].payload, Value::from(3u64));
    let id = b.id;
    c.sent(b);
    assert!(c.next(1 << 20).is_none());
    assert!(!q.lock().reactor_owes_drain, "emptied: the next push wakes");
    assert!(
        tokio::time::timeout(Duration::from_millis(20), q.wait_settled(target))
            .await
            .is_err()
    );
    assert!(c.owns(id));
    c.answer(
        id,
        BrokerToClient::PublishedBatch(PublishedBatch {
            id,
            count: 10,
            matched: 10,
        }),
    );
    q.wait_settled(target).await.unwrap();
    assert_eq!(q.bytes(), 0);
    assert!(!c.owns(id));
}

#[tokio::test]
async fn a_full_queue_makes_publishers_wait_until_the_broker_confirms() {
    let item_bytes = encode_body(&item("a", Value::Binary(vec![0; 100]))).len();
    let (q, mut c) = queue(item_bytes * 4);
    for i in 0..4 {
        let _ = q.push(i, vec![0x90; item_bytes]).await.unwrap();
    }
    let q2 = Arc::clone(&q);
    let blocked = tokio::spawn(async move { q2.push(99, vec![0x90; item_bytes]).await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!blocked.is_finished(), "over budget: the publisher waits");
    // Sending is not enough: the bytes are held until the broker answers.
    let b = batch(c.next(1 << 20));
    let id = b.id;
    c.sent(b);
    assert!(c.next(1 << 20).is_none());
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!blocked.is_finished());
    c.answer(
        id,
        BrokerToClient::PublishedBatch(PublishedBatch {
            id,
            count: 4,
            matched: 0,
        }),
    );
    let wake = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(wake, Wake::Reactor);
    assert_eq!(q.bytes(), item_bytes);
}

#[tokio::test]
async fn batches_grow_while_the_broker_is_busy() {
    let (q, mut c) = queue(1 << 24);
    let mut sent = Vec::new();
    for round in 0..EAGER_BATCHES as u64 {
        let _ = q.push(round, vec![0xc0]).await.unwrap();
        let b = batch(c.next(1 << 20));
        sent.push(b.id);
        c.sent(b);
    }
    for i in 0..100 {
        let _ = q.push(10 + i, vec![0xc0]).await.unwrap();
    }
    assert!(c.next(1 << 20).is_none(), "waits for an answer to coalesce");
    let first = sent[0];
    c.answer(
        first,
        BrokerToClient::PublishedBatch(PublishedBatch {
            id: first,
            count: 1,
            matched: 0,
        }),
    );
    assert_eq!(batch(c.next(1 << 20)).items.len(), 100);
}

#[tokio::test]
async fn a_queued_request_waits_for_the_messages_before_it() {
    let (q, mut c) = queue(1 << 20);
    let (reply, _rx) = tokio::sync::oneshot::channel();
    let request = || Request {
        id: 7,
        frames: Vec::new(),
        deadline: std::time::Instant::now(),
        wait: Duration::ZERO,
        kind: crate::link::RequestKind::Other,
        reply,
        progress: None,
    };
    let request = request();
    let _ = q.push(1, vec![0xc0]).await.unwrap();
    assert!(q.push_request(request).unwrap().is_none(), "queued behind");
    let _ = q.push(2, vec![0xc0]).await.unwrap();
    assert_eq!(batch(c.next(1 << 20)).items.len(), 1);
    assert!(matches!(c.next(1 << 20), Some(Outgoing::Request(r)) if r.id == 7));
    assert_eq!(batch(c.next(1 << 20)).items.len(), 1);
    assert!(c.next(1 << 20).is_none());
}

#[tokio::test]
async fn a_rejected_message_costs_only_itself() {
    let (q, mut c) = queue(1 << 20);
    for (i, topic) in ["ok.1", "bad", "ok.2"].into_iter().enumerate() {
        let _ = q
            .push(
                50 + i as u64,
                encode_body(&item(topic, Value::from(i as u64))),
            )
            .await
            .unwrap();
    }
    let target = q.next_seq();
    let b = batch(c.next(1 << 20));
    let id = b.id;
    c.sent(b);
    let reply = ErrorReply {
        path: Some("messages[1].topic".into()),
        ..ErrorReply::new(
            Some(id),
            mpreg_protocol::ErrorCode::InvalidTopic,
            format!("messages[1].topic \"bad\": forbidden{WHOLE_BATCH_TAIL}"),
        )
    };
    c.answer(id, BrokerToClient::Error(reply));
    assert_eq!(c.counters.publish_errors.load(Ordering::Relaxed), 1);
    let last = c
        .counters
        .last_publish_error
        .lock()
        .unwrap()
        .clone()
        .unwrap();
    match last {
        Error::Remote(r) => {
            assert_eq!(
                (r.id, r.code, r.path.as_deref()),
                (Some(51), 600, Some("topic"))
            );
            assert_eq!(r.message, "topic \"bad\": forbidden");
        }
        other => panic!("{other:?}"),
    }
    // The other two go again, in order, and settle with their confirmation.
    let again = batch(c.next(1 << 20));
    let decoded = decode(&again);
    let topics: Vec<&str> = decoded.messages.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(topics, ["ok.1", "ok.2"]);
    let id = again.id;
    c.sent(again);
    assert!(
        tokio::time::timeout(Duration::from_millis(20), q.wait_settled(target))
            .await
            .is_err()
    );
    c.answer(
        id,
        BrokerToClient::PublishedBatch(PublishedBatch {
            id,
            count: 2,
            matched: 0,
        }),
    );
    q.wait_settled(target).await.unwrap();
    assert_eq!(q.bytes(), 0);
}

#[tokio::test]
async fn a_lost_connection_settles_unanswered_batches_in_doubt() {
    let (q, mut c) = queue(1 << 20);
    let _ = q.push(1, vec![0xc0]).await.unwrap();
    let _ = q.push(2, vec![0xc0]).await.unwrap();
    let b = batch(c.next(1 << 20));
    let id = b.id;
    c.sent(b);
    let _ = q.push(3, vec![0xc0]).await.unwrap();
    let target = q.next_seq();
    c.on_lost();
    assert_eq!(c.counters.publishes_in_doubt.load(Ordering::Relaxed), 2);
    // A late confirmation is recognised, not an unmatched reply.
    assert!(c.owns(id));
    // The queued one is not settled: it goes out after the reconnection.
    assert!(
        tokio::time::timeout(Duration::from_millis(20), q.wait_settled(target))
            .await
            .is_err()
    );
    assert_eq!(batch(c.next(1 << 20)).items.len(), 1);
}

#[tokio::test]
async fn close_fails_waiting_publishers_and_flushes() {
    let (q, mut c) = queue(8);
    let _ = q.push(1, vec![0xc0; 8]).await.unwrap();
    let q2 = Arc::clone(&q);
    let blocked = tokio::spawn(async move { q2.push(2, vec![0xc0; 8]).await });
    let q3 = Arc::clone(&q);
    let target = q.next_seq();
    let flushing = tokio::spawn(async move { q3.wait_settled(target).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(c.close().is_empty());
    assert_eq!(blocked.await.unwrap(), Err(Error::Closed));
    // Closing settles what it dropped (counted as errors): a flush does not hang.
    assert_eq!(flushing.await.unwrap(), Ok(()));
    assert_eq!(c.counters.publish_errors.load(Ordering::Relaxed), 1);
    assert_eq!(q.push(3, vec![0xc0]).await, Err(Error::Closed));
}
