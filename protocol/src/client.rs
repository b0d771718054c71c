//! Messages between a client and a broker's client socket.

use std::collections::BTreeMap;

use rmpv::Value;
use serde::{Deserialize, Serialize};

use crate::error_code::ErrorCode;
use crate::ids::PlanId;

/// `cancel`: stop a plan in flight; the broker answers the plan's id with a `cancelled` error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// The request id of the plan to cancel.
    pub id: u64,
}

/// `ping`: liveness probe; answered by `pong` with the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Request id.
    pub id: u64,
}

/// `pong`: answer to `ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The ping's id.
    pub id: u64,
    /// The broker's name.
    pub broker: String,
    /// The largest body this broker accepts (`max_message_bytes`), so a client can refuse a
    /// larger request at once instead of sending it. Absent from brokers before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<u64>,
}

/// `heartbeat` (client to broker, never answered): the client is alive. Optional: a client
/// that sends one is tracked from then on, and when nothing at all arrives from it for the
/// broker's `client_liveness` intervals, the broker cancels its plans and ends its
/// subscriptions. A client that never sends one is never tracked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHeartbeat {
    /// Request id (not answered; any value).
    pub id: u64,
    /// How often the client sends heartbeats, in milliseconds (the broker clamps it).
    pub interval_ms: u64,
}

/// `status`: ask for the broker's workers and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {
    /// Request id.
    pub id: u64,
}

/// One registered worker as the broker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// The worker's name.
    pub name: String,
    /// Functions it serves.
    pub functions: Vec<String>,
    /// Resources it holds.
    pub resources: Vec<String>,
    /// Tasks it may run at once.
    pub capacity: u32,
    /// Tasks it is running now.
    pub outstanding: u32,
    /// True once it announced it is leaving.
    pub draining: bool,
}

/// `status` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The request id.
    pub id: u64,
    /// The broker's name.
    pub broker: String,
    /// The broker's version.
    pub version: String,
    /// Milliseconds since the broker started.
    pub uptime_ms: u64,
    /// Registered workers.
    pub workers: Vec<WorkerStatus>,
    /// Plans in flight across all clients.
    pub plans_in_flight: u64,
    /// Tasks waiting for worker capacity.
    pub tasks_waiting: u64,
    /// Monotonic counters (plans accepted, failed, tasks dispatched, replies dropped, ...).
    pub counters: BTreeMap<String, u64>,
    /// Gauges: values that go up and down (bytes held for plans, subscriptions, clients
    /// tracked by heartbeat). Absent from brokers before it existed.
    #[serde(default, deserialize_with = "crate::codec::nil_as_default")]
    pub gauges: BTreeMap<String, u64>,
    /// The limits this broker enforces.
    pub limits: BTreeMap<String, u64>,
}

/// `error`: a request failed. Every field but `id`, `code`, `kind` and `message` is present
/// only when it applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The request id, or nil when it could not be read from the request.
    pub id: Option<u64>,
    /// Stable numeric code (see the error table).
    pub code: u16,
    /// Stable snake_case name of the code.
    pub kind: String,
    /// Human-readable explanation.
    pub message: String,
    /// The step the error is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The function the error is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fun: Option<String>,
    /// The resources that were asked for (`no_route`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locs: Option<Vec<String>>,
    /// The worker involved (`step_failed`, `worker_lost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The error kind the worker reported (`step_failed`), e.g. `function_error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The field path that did not resolve (`unresolved_reference`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The steps forming a cycle, in order (`plan_cycle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<Vec<String>>,
    /// Results of the steps that finished before the failure.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partial: BTreeMap<String, Value>,
    /// The id the broker gave the plan (its trace id), on errors about a plan it read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanId>,
    /// The trace of the plan's finished steps, when the plan asked for it (`plan.trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Box<crate::trace::PlanTrace>>,
}

impl ErrorReply {
    /// An error with only the mandatory fields.
    pub fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            id,
            code: code.code(),
            kind: code.name().to_string(),
            message: message.into(),
            step: None,
            fun: None,
            locs: None,
            worker: None,
            cause: None,
            path: None,
            cycle: None,
            partial: BTreeMap::new(),
            plan: None,
            trace: None,
        }
    }

    /// The code as an enum, if this peer knows it.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }

    /// Sets `step`.
    pub fn with_step(mut self, step: impl Into<String>) -> Self {
        self.step = Some(step.into());
        self
    }

    /// Sets `fun`.
    pub fn with_fun(mut self, fun: impl Into<String>) -> Self {
        self.fun = Some(fun.into());
        self
    }
}

/// `cluster`: ask how this broker sees its cluster. Answered by `cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRequest {
    /// Request id.
    pub id: u64,
}

/// One member of the cluster as the answering broker sees it (itself included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    /// Its name.
    pub name: String,
    /// Its incarnation id (a ULID minted at its start).
    pub incarnation: String,
    /// `alive`, `suspect` or `dead`.
    pub state: crate::peer::MemberState,
    /// Where it listens.
    pub endpoints: crate::peer::PeerEndpoints,
    /// The functions its workers serve, sorted.
    #[serde(default, deserialize_with = "crate::codec::nil_as_default")]
    pub functions: Vec<String>,
}

/// `cluster` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterReply {
    /// The request id.
    pub id: u64,
    /// The cluster's name (empty for a broker on its own).
    pub cluster: String,
    /// The answering broker's name.
    #[serde(rename = "self")]
    pub self_name: String,
    /// Every member, the answering broker included, by name.
    #[serde(default, deserialize_with = "crate::codec::nil_as_default")]
    pub members: Vec<ClusterMember>,
}

/// `functions`: ask for the cluster's catalogue. Answered by `functions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionsRequest {
    /// Request id.
    pub id: u64,
}

/// One function of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionEntry {
    /// The function.
    pub fun: String,
    /// Versions registered (empty string: unversioned), sorted.
    #[serde(default, deserialize_with = "crate::codec::nil_as_default")]
    pub versions: Vec<String>,
    /// The distinct resource sets of the workers serving it, each sorted.
    #[serde(default, deserialize_with = "crate::codec::nil_as_default")]
    pub resources: Vec<Vec<String>>,
    /// The brokers whose workers serve it, by name.
    #[serde(default, deserialize_with = "crate::codec::nil_as_default")]
    pub brokers: Vec<String>,
    /// Tasks those workers run at once, summed.
    pub capacity: u64,
}

/// `functions` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionsReply {
    /// The request id.
    pub id: u64,
    /// The functions, sorted by name.
    #[serde(default, deserialize_with = "crate::codec::nil_as_default")]
    pub functions: Vec<FunctionEntry>,
}
