//! Reproducer for two findings in reference resolution (see `fuzz/RESULTS.md`), driving the
//! real [`Engine`] with a worker that echoes: what the broker sends is measured against what
//! it received.
//!
//! 1. Size: every reference to a step is replaced by a full copy of its result, and the task
//!    built from them is neither bounded nor checked against `max_message_bytes`.
//! 2. Depth: a result nested within the limit, substituted into a nested argument or wrapped
//!    in the `result` reply, comes out deeper than the limit its recipient enforces.
//!
//! `cargo run --release --manifest-path fuzz/Cargo.toml --example amplification`

use std::time::Instant;

use mpreg_broker::engine::{ClientAddr, Delivery, Engine, EngineConfig, Outbox};
use mpreg_broker::exchange::EventSink;
use mpreg_protocol::{
    encode_body, BrokerToClient, BrokerToWorker, Limits, PlanRequest, Register, Step, TaskResult,
    Value, VERSION,
};

/// Records the last message to the worker and to the client.
#[derive(Default)]
struct Recorder {
    to_worker: Vec<(String, Vec<u8>)>,
    to_client: Vec<(String, Vec<u8>)>,
}

impl EventSink for Recorder {
    fn to_events(&mut self, _token: &[u8], _kind: &str, _body: &[u8]) -> Delivery {
        Delivery::Sent
    }
}

impl Outbox for Recorder {
    fn to_client(&mut self, _client: &ClientAddr, kind: &str, body: &[u8]) -> Delivery {
        self.to_client.push((kind.to_string(), body.to_vec()));
        Delivery::Sent
    }

    fn to_worker(&mut self, _routing: &[u8], kind: &str, body: &[u8]) -> Delivery {
        self.to_worker.push((kind.to_string(), body.to_vec()));
        Delivery::Sent
    }
}

fn frames(routing: &[u8], kind: &str, body: Vec<u8>) -> Vec<Vec<u8>> {
    vec![
        routing.to_vec(),
        VERSION.to_vec(),
        kind.as_bytes().to_vec(),
        body,
    ]
}

/// An engine with one registered `echo` worker, and the recorder.
fn engine_with_worker() -> (Engine, Recorder, Instant) {
    let now = Instant::now();
    let mut engine = Engine::new(EngineConfig::default(), now);
    let mut out = Recorder::default();
    let register = encode_body(&Register {
        node: "w".into(),
        functions: vec!["echo".into()],
        resources: vec![],
        capacity: 8,
        versions: Default::default(),
        cacheable: Default::default(),
    });
    engine.on_worker_message(&mut out, &frames(b"w", "register", register), now);
    (engine, out, now)
}

fn plan(steps: Vec<Step>) -> Vec<u8> {
    encode_body(&PlanRequest {
        id: 1,
        steps,
        deadline_ms: None,
        all_results: false,
        progress: false,
        progress_topic: None,
        plan: None,
        trace: false,
    })
}

fn nested(depth: usize, inner: Value) -> Value {
    (0..depth).fold(inner, |v, _| Value::Array(vec![v]))
}

fn size_amplification(result_bytes: usize, references: usize) {
    let (mut engine, mut out, now) = engine_with_worker();
    let body = plan(vec![
        Step::new("a", "echo", vec![]),
        Step::new("b", "echo", vec![Value::from("a"); references]),
    ]);
    let plan_len = body.len();
    engine.on_client_message(&mut out, &frames(b"c", "plan", body), now);
    let result = encode_body(&TaskResult {
        task: 1,
        value: Value::Binary(vec![0; result_bytes]),
        timing: None,
    });
    let result_len = result.len();
    engine.on_worker_message(&mut out, &frames(b"w", "result", result), now);
    let (kind, task) = out.to_worker.last().expect("the engine sent a message");
    println!(
        "size: plan {plan_len} B + result {result_len} B -> `{kind}` of {} B to the worker \
         ({}x the bytes received; the limit is {} B)",
        task.len(),
        task.len() / (plan_len + result_len),
        Limits::default().max_message_bytes
    );
}

fn depth_amplification() {
    let limits = Limits::default();
    // A result nested 63 deep: its `result` body (the map, then `value`) is at the limit.
    let deep = nested(limits.max_depth - 1, Value::Nil);
    let (mut engine, mut out, now) = engine_with_worker();
    let body = plan(vec![
        Step::new("a", "echo", vec![]),
        // The reference sits 56 arrays deep: the deepest a plan body of 64 levels allows.
        Step::new("b", "echo", vec![nested(56, Value::from("a"))]),
    ]);
    let plan_check = mpreg_protocol::msgpack_scan::scan(&body, limits.max_depth);
    engine.on_client_message(&mut out, &frames(b"c", "plan", body), now);
    let result = encode_body(&TaskResult {
        task: 1,
        value: deep.clone(),
        timing: None,
    });
    let result_check = mpreg_protocol::msgpack_scan::scan(&result, limits.max_depth);
    engine.on_worker_message(&mut out, &frames(b"w", "result", result), now);
    let (kind, task) = out.to_worker.last().expect("the engine sent a task");
    let decoded = BrokerToWorker::decode(kind.as_bytes(), task, &limits);
    println!(
        "depth: plan {plan_check:?}, result {result_check:?} -> `{kind}` decodes on the \
         worker: {:?}",
        decoded.map(|_| ()).map_err(|e| e.to_string())
    );

    // The same result for a one-step plan: the `result` reply wraps it in two more maps.
    let (mut engine, mut out, now) = engine_with_worker();
    let body = plan(vec![Step::new("a", "echo", vec![])]);
    engine.on_client_message(&mut out, &frames(b"c", "plan", body), now);
    let result = encode_body(&TaskResult {
        task: 1,
        value: deep,
        timing: None,
    });
    engine.on_worker_message(&mut out, &frames(b"w", "result", result), now);
    let (kind, reply) = out.to_client.last().expect("the engine replied");
    let decoded = BrokerToClient::decode(kind.as_bytes(), reply, &limits);
    println!(
        "depth: `{kind}` reply decodes on the client: {:?}",
        decoded.map(|_| ()).map_err(|e| e.to_string())
    );
}

fn main() {
    size_amplification(64 * 1024, 4096);
    depth_amplification();
}
