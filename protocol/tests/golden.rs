//! Golden fixtures: the exact bytes of one sample of every message, plus a JSON view of each
//! body, so other implementations can check themselves against the same files.
//!
//! `fixtures/<direction>.<type>.msgpack` holds the body bytes; `<direction>.<type>.json` holds
//! `{"frames": [version, type], "body": <body as JSON>}`. Run with `UPDATE_GOLDEN=1` to rewrite
//! them after a deliberate protocol change (and update docs/PROTOCOL.md in the same commit).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;

use mpreg_protocol::*;

fn v(s: &str) -> Value {
    Value::from(s)
}

/// (file stem, type frame, body bytes, check that decoding the bytes gives the sample back).
type Sample = (&'static str, Vec<u8>, Vec<u8>, Box<dyn Fn(&[u8]) -> bool>);

#[path = "golden_samples/cache.rs"]
mod cache;
#[path = "golden_samples/cluster.rs"]
mod cluster;
#[path = "golden_samples/trace.rs"]
mod trace;

fn samples() -> Vec<Sample> {
    let limits = Limits::default();
    let mut out: Vec<Sample> = Vec::new();

    let mut kwargs = BTreeMap::new();
    kwargs.insert("sep".to_string(), v(", "));
    kwargs.insert("rows".to_string(), v("fetch.rows.0"));
    let plan = PlanRequest {
        id: 42,
        steps: vec![
            Step::new("first", "echo", vec![v("hi there!")]),
            Step::new("second", "echo", vec![v("first")]),
            Step {
                name: "third".into(),
                fun: "echos".into(),
                args: vec![v("first"), v("second"), v("AND ME TOO")],
                kwargs: kwargs.clone(),
                locs: vec!["gpu".into(), "dataset-a".into()],
                timeout_ms: Some(5000),
                retries: Some(1),
                version: None,
                cache: None,
            },
        ],
        deadline_ms: Some(30_000),
        all_results: true,
        progress: true,
        progress_topic: Some("plans.progress".into()),
        plan: Some("01JQ4Y5VJ7T0D8S3R5Y2M6W8XC".parse().unwrap()),
        trace: false,
    };
    let mut results = BTreeMap::new();
    results.insert(
        "third".to_string(),
        Value::Array(vec![v("hi there!"), v("hi there!"), v("AND ME TOO")]),
    );
    let mut partial = BTreeMap::new();
    partial.insert("first".to_string(), v("hi there!"));
    let mut failed = ErrorReply::new(Some(42), ErrorCode::StepFailed, "boom");
    failed.plan = Some("01JQ4Y5VJ7T0D8S3R5Y2M6W8XB".parse().unwrap());
    failed.step = Some("third".into());
    failed.fun = Some("fail".into());
    failed.worker = Some("node-1".into());
    failed.cause = Some(failure_kind::FUNCTION_ERROR.into());
    failed.partial = partial;
    let mut cycle = ErrorReply::new(Some(7), ErrorCode::PlanCycle, "cycle: a -> b -> a");
    cycle.cycle = Some(vec!["a".into(), "b".into()]);
    let mut no_route = ErrorReply::new(Some(8), ErrorCode::NoRoute, "no worker serves gpu_fn");
    no_route.fun = Some("gpu_fn".into());
    no_route.locs = Some(vec!["gpu".into()]);
    let mut counters = BTreeMap::new();
    counters.insert("plans_accepted".to_string(), 10);
    let mut gauges = BTreeMap::new();
    gauges.insert("plan_bytes_in_flight".to_string(), 4096);
    let mut limit_map = BTreeMap::new();
    limit_map.insert("max_steps".to_string(), 100_000);

    macro_rules! sample {
        ($name:literal, $dir:ident, $msg:expr) => {{
            let msg = $msg;
            let frames = msg.to_frames();
            let expected = msg.clone();
            out.push((
                $name,
                frames[1].clone(),
                frames[2].clone(),
                Box::new(move |body: &[u8]| {
                    $dir::decode(expected.kind().as_bytes(), body, &limits).as_ref()
                        == Ok(&expected)
                }),
            ));
        }};
    }

    sample!(
        "client_to_broker.plan",
        ClientToBroker,
        ClientToBroker::Plan(plan)
    );
    sample!(
        "client_to_broker.cancel",
        ClientToBroker,
        ClientToBroker::Cancel(CancelRequest { id: 42 })
    );
    sample!(
        "client_to_broker.ping",
        ClientToBroker,
        ClientToBroker::Ping(Ping { id: 1 })
    );
    sample!(
        "client_to_broker.heartbeat",
        ClientToBroker,
        ClientToBroker::Heartbeat(ClientHeartbeat {
            id: 0,
            interval_ms: 1000
        })
    );
    sample!(
        "client_to_broker.status",
        ClientToBroker,
        ClientToBroker::Status(StatusRequest { id: 2 })
    );
    sample!(
        "broker_to_client.result",
        BrokerToClient,
        BrokerToClient::Result(PlanResult {
            id: 42,
            plan: Some("01JQ4Y5VJ7T0D8S3R5Y2M6W8XB".parse().unwrap()),
            results,
            trace: None,
        })
    );
    sample!(
        "broker_to_client.progress",
        BrokerToClient,
        BrokerToClient::Progress(Progress {
            id: 42,
            plan: Some("01JQ4Y5VJ7T0D8S3R5Y2M6W8XB".parse().unwrap()),
            step: "first".into(),
            fun: "echo".into(),
            worker: "node-1".into(),
            result: v("hi there!"),
            elapsed_us: 180,
        })
    );
    sample!(
        "broker_to_client.error",
        BrokerToClient,
        BrokerToClient::Error(failed)
    );
    sample!(
        "broker_to_client.error_cycle",
        BrokerToClient,
        BrokerToClient::Error(cycle)
    );
    sample!(
        "broker_to_client.error_no_route",
        BrokerToClient,
        BrokerToClient::Error(no_route)
    );
    sample!(
        "broker_to_client.pong",
        BrokerToClient,
        BrokerToClient::Pong(Pong {
            id: 1,
            broker: "broker-a".into(),
            max_message_bytes: Some(16_777_216),
        })
    );
    sample!(
        "broker_to_client.status",
        BrokerToClient,
        BrokerToClient::Status(StatusReply {
            id: 2,
            broker: "broker-a".into(),
            version: "0.1.0".into(),
            uptime_ms: 1234,
            workers: vec![WorkerStatus {
                name: "node-1".into(),
                functions: vec!["echo".into(), "echos".into()],
                resources: vec!["cpu".into()],
                capacity: 64,
                outstanding: 3,
                draining: false,
            }],
            plans_in_flight: 1,
            tasks_waiting: 0,
            counters,
            gauges,
            limits: limit_map,
        })
    );
    sample!(
        "worker_to_broker.register",
        WorkerToBroker,
        WorkerToBroker::Register(Register {
            node: "node-1".into(),
            functions: vec!["echo".into(), "echos".into()],
            resources: vec!["cpu".into(), "dataset-a".into()],
            capacity: 64,
            versions: Default::default(),
            cacheable: Default::default(),
        })
    );
    sample!(
        "worker_to_broker.heartbeat",
        WorkerToBroker,
        WorkerToBroker::Heartbeat(Heartbeat {})
    );
    sample!(
        "worker_to_broker.result",
        WorkerToBroker,
        WorkerToBroker::Result(TaskResult {
            task: TaskId(9),
            value: v("hi there!"),
            timing: None,
        })
    );
    sample!(
        "worker_to_broker.failure",
        WorkerToBroker,
        WorkerToBroker::Failure(TaskFailure {
            task: TaskId(9),
            kind: failure_kind::FUNCTION_ERROR.into(),
            message: "boom".into(),
        })
    );
    sample!(
        "worker_to_broker.disconnect",
        WorkerToBroker,
        WorkerToBroker::Disconnect(Disconnect {
            reason: "shutting down".into()
        })
    );
    sample!(
        "broker_to_worker.registered",
        BrokerToWorker,
        BrokerToWorker::Registered(Registered {
            broker: "broker-a".into(),
            heartbeat_ms: 1000,
            liveness: 3,
            capacity: 64,
        })
    );
    sample!(
        "broker_to_worker.task",
        BrokerToWorker,
        BrokerToWorker::Task(Task {
            task: TaskId(9),
            fun: Cow::Borrowed("echos"),
            args: Cow::Owned(vec![v("hi there!"), Value::from(3), Value::Nil]),
            kwargs: Cow::Owned(kwargs),
            timeout_ms: Some(5000),
        })
    );
    sample!(
        "broker_to_worker.cancel",
        BrokerToWorker,
        BrokerToWorker::Cancel(CancelTask { task: TaskId(9) })
    );
    sample!(
        "broker_to_worker.heartbeat",
        BrokerToWorker,
        BrokerToWorker::Heartbeat(Heartbeat {})
    );
    sample!(
        "broker_to_worker.reconnect",
        BrokerToWorker,
        BrokerToWorker::Reconnect(Reconnect {
            reason: "unknown worker".into()
        })
    );
    sample!(
        "broker_to_worker.error",
        BrokerToWorker,
        BrokerToWorker::Error(ErrorReply::new(
            None,
            ErrorCode::InvalidBody,
            "field `task`: invalid type"
        ))
    );
    sample!(
        "broker_to_worker.disconnect",
        BrokerToWorker,
        BrokerToWorker::Disconnect(Disconnect {
            reason: "broker shutting down".into()
        })
    );
    let mut headers = BTreeMap::new();
    headers.insert("source".to_string(), "sensor-7".to_string());
    sample!(
        "client_to_broker.subscribe",
        ClientToBroker,
        ClientToBroker::Subscribe(Subscribe {
            id: 11,
            patterns: vec!["orders.*.eu".into(), "alerts.#".into()],
            backlog: true,
            cluster_ack: false,
        })
    );
    sample!(
        "client_to_broker.unsubscribe",
        ClientToBroker,
        ClientToBroker::Unsubscribe(Unsubscribe {
            id: 12,
            sub: "s01JB8ZXK3Q9V6T2M4N7P5R8W0Y".into()
        })
    );
    sample!(
        "client_to_broker.publish",
        ClientToBroker,
        ClientToBroker::Publish(Publish {
            id: 13,
            topic: "orders.42.eu".into(),
            headers: headers.clone(),
            payload: Value::Map(vec![(v("qty"), Value::from(3))]),
            confirm: true,
        })
    );
    sample!(
        "broker_to_client.subscribed",
        BrokerToClient,
        BrokerToClient::Subscribed(Subscribed {
            id: 11,
            sub: "s01JB8ZXK3Q9V6T2M4N7P5R8W0Y".into(),
            events: "tcp://127.0.0.1:7402".into(),
        })
    );
    sample!(
        "broker_to_client.unsubscribed",
        BrokerToClient,
        BrokerToClient::Unsubscribed(Unsubscribed {
            id: 12,
            sub: "s01JB8ZXK3Q9V6T2M4N7P5R8W0Y".into()
        })
    );
    sample!(
        "broker_to_client.published",
        BrokerToClient,
        BrokerToClient::Published(Published {
            id: 13,
            msg: "01JB8ZXM0A1B2C3D4E5F6G7H8J".into(),
            matched: 2
        })
    );
    sample!(
        "event.active",
        Event,
        Event::Active(Active {
            sub: "s01JB8ZXK3Q9V6T2M4N7P5R8W0Y".into(),
            backlog: 1
        })
    );
    sample!(
        "event.message",
        Event,
        Event::Message(TopicMessage {
            sub: "s01JB8ZXK3Q9V6T2M4N7P5R8W0Y".into(),
            seq: 1,
            id: "01JB8ZXM0A1B2C3D4E5F6G7H8J".into(),
            topic: "orders.42.eu".into(),
            headers,
            payload: Value::Map(vec![(v("qty"), Value::from(3))]),
            retained: true,
        })
    );
    sample!(
        "event.lagging",
        Event,
        Event::Lagging(Lagging {
            sub: "s01JB8ZXK3Q9V6T2M4N7P5R8W0Y".into(),
            dropped: 17,
            dropped_total: 40
        })
    );
    sample!(
        "client_to_broker.publish_batch",
        ClientToBroker,
        ClientToBroker::PublishBatch(PublishBatch {
            id: 14,
            messages: vec![
                BatchItem {
                    topic: "orders.42.eu".into(),
                    headers: BTreeMap::new(),
                    payload: Value::from(1)
                },
                BatchItem {
                    topic: "orders.43.us".into(),
                    headers: BTreeMap::new(),
                    payload: Value::from(2)
                },
            ],
            confirm: true,
        })
    );
    sample!(
        "broker_to_client.published_batch",
        BrokerToClient,
        BrokerToClient::PublishedBatch(PublishedBatch {
            id: 14,
            count: 2,
            matched: 3
        })
    );
    sample!(
        "event.messages",
        Event,
        Event::Messages(EventBatch {
            sub: "s01JB8ZXK3Q9V6T2M4N7P5R8W0Y".into(),
            items: vec![
                EventItem {
                    seq: 7,
                    id: "01JB8ZXM0A1B2C3D4E5F6G7H8J".into(),
                    topic: "orders.42.eu".into(),
                    headers: BTreeMap::new(),
                    payload: Value::from(1),
                },
                EventItem {
                    seq: 8,
                    id: "01JB8ZXM0A1B2C3D4E5F6G7H8K".into(),
                    topic: "orders.43.us".into(),
                    headers: BTreeMap::new(),
                    payload: Value::from(2),
                },
            ],
        })
    );
    out
}

fn to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Nil => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Integer(i) => i
            .as_i64()
            .map(J::from)
            .or_else(|| i.as_u64().map(J::from))
            .expect("integer fits i64 or u64"),
        Value::F32(f) => J::from(*f as f64),
        Value::F64(f) => J::from(*f),
        Value::String(s) => J::String(s.as_str().expect("fixtures are UTF-8").to_string()),
        Value::Array(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| (k.as_str().expect("string keys").to_string(), to_json(v)))
                .collect(),
        ),
        // Binary has no JSON form: `{"$bin": "<hex>"}`, as the CLI reads and writes it.
        Value::Binary(bytes) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            serde_json::json!({ "$bin": hex })
        }
        other => panic!("fixtures hold no {other:?}"),
    }
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

#[test]
fn every_message_matches_its_golden_bytes() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let dir = fixture_dir();
    let mut all = samples();
    all.extend(cluster::samples());
    all.extend(cache::samples());
    all.extend(trace::samples());
    for (name, kind, body, decodes_back) in &all {
        let bin_path = dir.join(format!("{name}.msgpack"));
        let json_path = dir.join(format!("{name}.json"));
        let value = rmpv::decode::read_value(&mut &body[..]).expect("body is msgpack");
        let json = serde_json::json!({
            "frames": [std::str::from_utf8(VERSION).unwrap(), std::str::from_utf8(kind).unwrap()],
            "body": to_json(&value),
        });
        let json_text = serde_json::to_string_pretty(&json).unwrap() + "\n";
        if update {
            std::fs::write(&bin_path, body).unwrap();
            std::fs::write(&json_path, &json_text).unwrap();
        }
        let golden = std::fs::read(&bin_path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", bin_path.display()));
        assert_eq!(&golden, body, "{name}: encoding changed");
        assert!(
            decodes_back(&golden),
            "{name}: golden bytes do not decode to the sample"
        );
        let golden_json = std::fs::read_to_string(&json_path).unwrap();
        assert_eq!(golden_json, json_text, "{name}: JSON view changed");
    }
    // Every message type of every direction has a fixture.
    for (dir_name, kinds) in [
        ("client_to_broker", ClientToBroker::KINDS),
        ("broker_to_client", BrokerToClient::KINDS),
        ("worker_to_broker", WorkerToBroker::KINDS),
        ("broker_to_worker", BrokerToWorker::KINDS),
        ("peer", PeerMessage::KINDS),
        ("gossip", Gossip::KINDS),
    ] {
        for kind in kinds {
            let name = format!("{dir_name}.{kind}");
            assert!(
                all.iter().any(|(n, ..)| *n == name),
                "no fixture for {name}"
            );
        }
    }
    // And no stale fixture files remain.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        let stem = file.rsplit_once('.').map(|(s, _)| s).unwrap_or(&file);
        assert!(all.iter().any(|(n, ..)| *n == stem), "stale fixture {file}");
    }
}
