//! What the engine's tests share: an outbox that records everything the engine emits (typed,
//! and as the bytes a shell would send, for determinism checks), and helpers that feed the
//! engine typed messages.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::time::{Instant, SystemTime};

use mpreg_broker::engine::{ClientOrigin, Engine, EngineConfig, WorkerOrigin};
use mpreg_broker::ids::IdSource;
use mpreg_broker::outbox::{ClientAddr, Delivery, EventSink, Outbox, WorkerAddr};
use mpreg_protocol::*;

/// Everything the engine sent, in order.
pub struct Recorder {
    /// (worker routing, task) in send order.
    pub tasks: Vec<(Vec<u8>, Task<'static>)>,
    /// Cancelled task ids, in order.
    pub cancels: Vec<TaskId>,
    /// Replies to clients, with the connection, in order.
    pub client: Vec<(Vec<u8>, BrokerToClient)>,
    /// Other messages to workers.
    pub worker: Vec<(Vec<u8>, BrokerToWorker)>,
    /// Every output as bytes: destination, type and body, in order.
    pub log: Vec<u8>,
    /// What the recorder reports for every message.
    pub delivery: Delivery,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            tasks: Vec::new(),
            cancels: Vec::new(),
            client: Vec::new(),
            worker: Vec::new(),
            log: Vec::new(),
            delivery: Delivery::Sent,
        }
    }
}

impl Recorder {
    fn note(&mut self, to: &[u8], kind: &str, body: &[u8]) {
        for part in [to, kind.as_bytes(), body] {
            self.log
                .extend_from_slice(&(part.len() as u32).to_le_bytes());
            self.log.extend_from_slice(part);
        }
    }

    /// The replies to clients without their connections.
    pub fn replies(&self) -> Vec<&BrokerToClient> {
        self.client.iter().map(|(_, m)| m).collect()
    }
}

impl EventSink for Recorder {
    fn event(&mut self, event: &EventRef<'_>) -> Delivery {
        let body = event.encode_body();
        self.note(event.token().as_bytes(), event.kind(), &body);
        self.delivery
    }
}

impl Outbox for Recorder {
    fn reply(&mut self, client: &ClientAddr, message: &BrokerToClient) -> Delivery {
        self.note(&client.routing, message.kind(), &message.encode_body());
        self.client.push((client.routing.clone(), message.clone()));
        self.delivery
    }

    fn task(&mut self, to: &WorkerAddr, task: &Task<'_>) -> Delivery {
        self.note(&to.routing, "task", &encode_body(task));
        if self.delivery == Delivery::Sent {
            self.tasks.push((to.routing.clone(), owned(task)));
        }
        self.delivery
    }

    fn to_worker(&mut self, to: &WorkerAddr, message: &BrokerToWorker) -> Delivery {
        self.note(&to.routing, message.kind(), &message.encode_body());
        if let BrokerToWorker::Cancel(c) = message {
            self.cancels.push(c.task);
        }
        self.worker.push((to.routing.clone(), message.clone()));
        self.delivery
    }
}

/// A task with its borrowed parts copied.
pub fn owned(task: &Task<'_>) -> Task<'static> {
    Task {
        task: task.task,
        fun: Cow::Owned(task.fun.to_string()),
        args: Cow::Owned(task.args.to_vec()),
        kwargs: Cow::Owned(task.kwargs.clone().into_owned()),
        timeout_ms: task.timeout_ms,
    }
}

/// A fixed wall-clock epoch, so ids depend only on the seed and the simulated time.
pub const WALL_EPOCH: u64 = 1_767_225_600;

/// An engine with `config`, ids from `seed`.
pub fn engine(config: EngineConfig, now: Instant, seed: u64) -> Engine {
    let wall = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(WALL_EPOCH);
    Engine::new(config, now, IdSource::seeded(seed, now, wall))
}

/// A client connection's origin.
pub fn client(routing: &[u8]) -> ClientOrigin {
    ClientOrigin {
        addr: ClientAddr {
            routing: routing.to_vec(),
            delimiter: false,
            compact: false,
        },
        user: None,
        bytes: 0,
    }
}

/// A worker connection's origin.
pub fn worker(routing: &[u8]) -> WorkerOrigin {
    WorkerOrigin {
        addr: WorkerAddr {
            routing: routing.to_vec(),
            compact: false,
        },
        user: None,
        bytes: 0,
    }
}

/// Registers a worker serving `funs` with `capacity`.
pub fn register(
    e: &mut Engine,
    out: &mut Recorder,
    routing: &[u8],
    funs: &[&str],
    capacity: u32,
    now: Instant,
) {
    let m = WorkerToBroker::Register(Register {
        node: String::from_utf8_lossy(routing).into(),
        functions: funs.iter().map(|s| s.to_string()).collect(),
        resources: vec![],
        capacity,
        versions: Default::default(),
        cacheable: Default::default(),
    });
    e.on_worker(out, worker(routing), m, now);
}

/// A plan request with default settings.
pub fn plan(id: u64, steps: Vec<Step>) -> PlanRequest {
    PlanRequest {
        id,
        steps,
        deadline_ms: None,
        all_results: false,
        progress: false,
        progress_topic: None,
        plan: None,
        trace: false,
    }
}

/// Submits a plan from the connection `client`.
pub fn submit(e: &mut Engine, out: &mut Recorder, plan: PlanRequest, now: Instant) {
    e.on_client(out, client(b"client"), ClientToBroker::Plan(plan), now);
}

/// A worker answers a task with a value.
pub fn answer(
    e: &mut Engine,
    out: &mut Recorder,
    routing: &[u8],
    task: TaskId,
    value: Value,
    now: Instant,
) {
    let m = WorkerToBroker::Result(TaskResult {
        task,
        value,
        timing: None,
    });
    e.on_worker(out, worker(routing), m, now);
}
