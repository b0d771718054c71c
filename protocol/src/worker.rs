//! Messages between a worker and a broker's worker socket.

use std::borrow::Cow;
use std::collections::BTreeMap;

use rmpv::Value;
use serde::{Deserialize, Serialize};

use crate::codec::nil_as_default;
use crate::ids::TaskId;

/// `register`: a worker announces what it serves. Sent on connect and whenever the broker asks
/// with `reconnect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// The worker's name (for logs, status and errors; need not be unique).
    pub node: String,
    /// Functions it serves.
    #[serde(deserialize_with = "nil_as_default")]
    pub functions: Vec<String>,
    /// Resources it holds.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub resources: Vec<String>,
    /// Tasks it may run at once (the broker may grant fewer).
    pub capacity: u32,
    /// Semantic versions of its functions, by function name (`"1.4.2"`); a function not
    /// listed has no version (steps asking for a version requirement see it as `0.0.0`).
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub versions: BTreeMap<String, String>,
    /// Functions whose results may be cached, by name (each also in `functions`): pure
    /// functions only: the broker answers identical calls from its cache.
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub cacheable: BTreeMap<String, crate::cache::CacheRule>,
}

/// `registered`: the broker accepted a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The broker's name.
    pub broker: String,
    /// Heartbeat interval both sides use, in milliseconds.
    pub heartbeat_ms: u64,
    /// Missed intervals after which a peer is considered dead.
    pub liveness: u32,
    /// Capacity granted (at most the one asked for).
    pub capacity: u32,
}

/// `heartbeat`, in both directions: proof of life when nothing else was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {}

/// `task`: run one step. Borrowed when the broker encodes it, owned when a worker decodes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task<'a> {
    /// Task id, unique per dispatch attempt; echoed in `result` or `failure`.
    pub task: TaskId,
    /// The function to call.
    pub fun: Cow<'a, str>,
    /// Positional arguments, references already resolved.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub args: Cow<'a, [Value]>,
    /// Keyword arguments, references already resolved.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub kwargs: Cow<'a, BTreeMap<String, Value>>,
    /// How long the broker will wait for this task, in milliseconds, if it has a limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `result`: a task's function returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task id.
    pub task: TaskId,
    /// The function's return value.
    pub value: Value,
    /// How long the task waited in the worker's queue and ran (optional; the broker derives
    /// the step's start time from it for traces and metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<crate::trace::TaskTiming>,
}

/// Worker-side error kinds a `failure` may carry.
pub mod failure_kind {
    /// The function ran and returned an error.
    pub const FUNCTION_ERROR: &str = "function_error";
    /// The worker does not serve the function.
    pub const UNKNOWN_FUNCTION: &str = "unknown_function";
    /// The arguments do not fit the function.
    pub const BAD_ARGUMENTS: &str = "bad_arguments";
    /// The function panicked or crashed.
    pub const PANIC: &str = "panic";
}

/// `failure`: a task's function failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// The task id.
    pub task: TaskId,
    /// Error kind (see [`failure_kind`]; workers may use others).
    pub kind: String,
    /// Human-readable message.
    pub message: String,
}

/// `cancel` (broker to worker): the result of this task is no longer wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelTask {
    /// The task id.
    pub task: TaskId,
}

/// `disconnect`: the sender is leaving. A worker that sends it gets no new tasks and should
/// finish the ones it has; a broker that sends it is shutting down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    /// Why.
    pub reason: String,
}

/// `reconnect` (broker to worker): the broker does not know this connection (it restarted, or
/// expired the worker); the worker must send `register` again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconnect {
    /// Why.
    pub reason: String,
}
