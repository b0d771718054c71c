//! Plan traces: where and when each step of a plan ran, asked for with `plan.trace` and carried
//! by the plan's `result` (or its `error`, for the steps that finished), and the timing a
//! worker reports with each task `result`.
//!
//! Time base: every `*_us` field of a [`StepTrace`] counts microseconds since the owning
//! broker accepted the plan (read the `plan` request), on that broker's monotonic clock;
//! [`PlanTrace::accepted_unix_us`] is the same instant on the broker's wall clock
//! (microseconds since the Unix epoch), so a trace can be placed in time and lined up with
//! logs.

use serde::{Deserialize, Serialize};

use crate::codec::nil_as_default;
use crate::ids::PlanId;

/// A worker's account of one task, sent as `result.timing`: how long the task waited in the
/// worker's own queue (its capacity was taken) and how long the function ran. Optional: a
/// worker that does not send it leaves the step's `started_us` unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTiming {
    /// Microseconds from the worker reading the `task` to the function starting.
    pub queued_us: u64,
    /// Microseconds the function ran.
    pub ran_us: u64,
}

/// How a traced step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// A worker (here or on a peer broker) returned its result.
    Ok,
    /// The broker's result cache answered it (a hit, or a call in flight it waited on).
    Cached,
    /// It failed (its function failed, it timed out, its worker was lost): the plan's error.
    Failed,
}

/// One step of a traced plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTrace {
    /// The step's name.
    pub step: String,
    /// Its function.
    pub fun: String,
    /// The broker whose worker ran it: the owning broker's name, or the peer's it was
    /// forwarded to (for a cache answer, the owning broker).
    pub broker: String,
    /// The worker that ran it (`cache` for a cache answer).
    pub worker: String,
    /// How it ended.
    pub outcome: StepOutcome,
    /// When every step it references had a result (it joined the ready queue).
    pub ready_us: u64,
    /// When its task was sent to the worker or forwarded to the peer (the last attempt);
    /// absent for a cache answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_us: Option<u64>,
    /// When the function started on the worker: `finished_us` minus the run time the worker
    /// reported (so the trip back counts as waiting, not running); absent when the worker
    /// reported no timing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_us: Option<u64>,
    /// When the result (or the failure) reached the owning broker.
    pub finished_us: u64,
    /// How long the task waited in the worker's queue, as the worker reported it (for a
    /// forwarded step: from the peer accepting it to the function starting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_us: Option<u64>,
    /// Re-dispatches after its worker (or peer) was lost.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The trace of a plan, in its `result` or `error` when the plan asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanTrace {
    /// The plan's id (a ULID; also in the reply's `plan` and in the broker's log lines).
    pub plan: PlanId,
    /// The broker that owned the plan (the one the client sent it to).
    pub broker: String,
    /// When that broker accepted the plan, in microseconds since the Unix epoch (its wall
    /// clock). Every `*_us` of the steps counts from this instant.
    pub accepted_unix_us: u64,
    /// Microseconds from accepting the plan to sending this reply.
    pub total_us: u64,
    /// The steps that finished (with a result, or with the failure that ended the plan), in
    /// the order they finished. Steps still running when a plan failed are left out.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub steps: Vec<StepTrace>,
}
