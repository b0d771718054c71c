//! The plan a client submits, and the results it gets back.

use std::collections::BTreeMap;

use rmpv::Value;
use serde::{Deserialize, Serialize};

use crate::codec::nil_as_default;
use crate::ids::PlanId;

/// One named step of a plan: call `fun` with `args`/`kwargs` on a worker holding every
/// resource in `locs`. String values equal to another step's name (or `name.path`) are
/// references to that step's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Unique in the plan, non-empty, without `.`.
    pub name: String,
    /// The function to call.
    pub fun: String,
    /// Positional arguments (may contain references).
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub args: Vec<Value>,
    /// Keyword arguments (their values may contain references; keys never do).
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub kwargs: BTreeMap<String, Value>,
    /// Resources the worker must hold, all of them.
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub locs: Vec<String>,
    /// Longest this step may run on a worker, in milliseconds (default: no per-step limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// How many times the step is re-dispatched when its worker dies (default: the broker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// The function versions the step accepts, as a semantic version requirement
    /// (`">=1.2, <2"`, `"^1.4"`); default: any version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// How the step uses the result cache: `use` (default), `bypass` or `refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::cache::CacheMode>,
}

impl Step {
    /// A step with positional arguments only.
    pub fn new(name: impl Into<String>, fun: impl Into<String>, args: Vec<Value>) -> Self {
        Step {
            name: name.into(),
            fun: fun.into(),
            args,
            kwargs: BTreeMap::new(),
            locs: Vec::new(),
            timeout_ms: None,
            retries: None,
            version: None,
            cache: None,
        }
    }
}

/// `plan`: run these steps and reply with their results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// Request id chosen by the client, echoed in every reply for this plan.
    pub id: u64,
    /// The steps, in any order.
    #[serde(deserialize_with = "nil_as_default")]
    pub steps: Vec<Step>,
    /// Deadline relative to arrival, in milliseconds (default: the broker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Reply with every step's result instead of the sinks' only.
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "is_false"
    )]
    pub all_results: bool,
    /// Send a `progress` message as each step finishes.
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "is_false"
    )]
    pub progress: bool,
    /// Publish each finished step's progress event to this topic (payload: the `progress`
    /// body as a map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_topic: Option<String>,
    /// A plan id chosen by the client (a ULID), so that the plan can be sent again (to
    /// another broker after a failover, or to the same one after a reconnection) without
    /// running twice where it was seen: a broker that has it in flight sends its replies to
    /// the new connection, one that finished it recently sends its final reply again.
    /// Default: the broker gives the plan an id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanId>,
    /// Ask for the plan's trace: the `result` (or the `error`) then carries `trace`, where and
    /// when each finished step ran. Default false.
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "is_false"
    )]
    pub trace: bool,
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

/// `result`: the plan finished; results by step name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanResult {
    /// The plan's request id.
    pub id: u64,
    /// The plan's id at the broker (its trace id). Absent from brokers before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanId>,
    /// Sink steps' results (or every step's, if asked).
    pub results: BTreeMap<String, Value>,
    /// The plan's trace, when the plan asked for it (`trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Box<crate::trace::PlanTrace>>,
}

/// `progress`: one step of a plan finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The plan's request id.
    pub id: u64,
    /// The plan's id at the broker (its trace id). Absent from brokers before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanId>,
    /// The step that finished.
    pub step: String,
    /// Its function.
    pub fun: String,
    /// The worker that ran it.
    pub worker: String,
    /// Its result.
    pub result: Value,
    /// Time from dispatch to result, in microseconds.
    pub elapsed_us: u64,
}
