//! One plan in flight ([`PlanState`]): its request, graph, results and attempts, and what the
//! plan plane asks of it (a step's resolved arguments, the results to reply with).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use mpreg_protocol::{BrokerId, Limits, PlanRequest, Step, TaskId, Value};

use super::{Failure, StepIx};
use crate::outbox::{ClientAddr, RoutingId};
use crate::plan_graph::PlanGraph;
use crate::resolve::{check_footprint, resolve_args, Results, Unresolved};
use crate::versions::Requirement;

/// Where a plan's replies go: the client that sent it, or the peer broker that forwarded
/// its one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyTo {
    /// A local client connection.
    Client(ClientAddr),
    /// A peer broker that owns the plan and forwarded one step of it here (the plan here is
    /// that one step; it runs on this broker's workers only, never forwarded again).
    Peer {
        /// The owner.
        broker: BrokerId,
        /// The owner's peer endpoint (where the answer goes).
        endpoint: String,
        /// The forward's id at the owner.
        fid: u64,
    },
}

/// Admission limits of the plan plane.
#[derive(Debug, Clone)]
pub struct PlanLimits {
    /// Plans in flight, in total.
    pub max_plans_in_flight: usize,
    /// Plans in flight per client (connection, or key under CURVE).
    pub max_plans_per_client: usize,
    /// Bytes held for plans in flight, in total.
    pub max_plan_bytes_in_flight: usize,
    /// Deadline of a plan that sets none.
    pub default_deadline: Duration,
    /// Longest deadline a plan may ask for.
    pub max_deadline: Duration,
}

/// One plan in flight.
#[derive(Debug)]
pub struct PlanState {
    /// The client's request id.
    pub request_id: u64,
    /// Where its replies go.
    pub reply_to: ReplyTo,
    /// Whose quota it counts against: the client's CURVE key, or its connection.
    pub quota: RoutingId,
    pub(super) bytes: usize,
    /// The plan as sent.
    pub request: PlanRequest,
    pub(super) graph: PlanGraph,
    /// Each step's version requirement, parsed; empty when no step has one.
    pub(super) versions: Vec<Option<Requirement>>,
    pub(super) pending: Vec<u32>,
    pub(super) results: Vec<Option<Value>>,
    pub(super) attempts: Vec<u32>,
    pub(super) finished: usize,
    /// Tasks running for it, in dispatch order.
    pub tasks: BTreeSet<TaskId>,
    pub(super) deadline: Instant,
    /// Peers that refused a step (`fwd_reject`): not asked again for that step.
    pub rejected: Vec<(StepIx, BrokerId)>,
    /// The worker that ran the last finished step (what a forwarded step's answer names).
    pub ran_on: String,
    /// The cache keys of its steps of cacheable functions, and their part in the cache.
    pub cache: BTreeMap<StepIx, super::super::cache_parts::StepCache>,
    /// When it was accepted, and its steps' times when it asked for its trace.
    pub timing: super::super::timing::PlanTiming,
}

/// Finished results, looked up by step name during resolution.
pub(super) struct PlanResults<'a> {
    pub(super) graph: &'a PlanGraph,
    pub(super) results: &'a [Option<Value>],
}

impl Results for PlanResults<'_> {
    fn result(&self, name: &str) -> Option<&Value> {
        self.graph
            .index
            .get(name)
            .and_then(|&i| self.results[i as usize].as_ref())
    }
}

/// A task's arguments, borrowed from the plan when the step has no references.
pub struct TaskArgs<'a> {
    /// Positional arguments, references resolved.
    pub args: Cow<'a, [Value]>,
    /// Keyword arguments, references resolved.
    pub kwargs: Cow<'a, BTreeMap<String, Value>>,
}

impl PlanState {
    /// A step's definition.
    pub fn step(&self, step: StepIx) -> &Step {
        &self.request.steps[step as usize]
    }

    /// Bytes held for the plan: its body and the results received (an upper bound of what
    /// its final reply carries).
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// The steps whose results a step's references read.
    pub fn deps(&self, step: StepIx) -> &[u32] {
        &self.graph.deps[step as usize]
    }

    /// A step's version requirement, if it has one.
    pub fn version(&self, step: StepIx) -> Option<&Requirement> {
        self.versions.get(step as usize).and_then(Option::as_ref)
    }

    /// The remaining time before the deadline.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }

    /// Steps finished so far, and in total.
    pub fn progress(&self) -> (usize, usize) {
        (self.finished, self.results.len())
    }

    /// True once the step has its result.
    pub fn is_done(&self, step: StepIx) -> bool {
        self.results[step as usize].is_some()
    }

    /// The arguments of a ready step with its references resolved, measured first so that a
    /// few bytes of references cannot build a task larger than the limits (the task's body
    /// map and its `args` take two levels).
    pub fn task_args(&self, step: StepIx, limits: &Limits) -> Result<TaskArgs<'_>, Failure> {
        let def = self.step(step);
        if !self.graph.has_refs[step as usize] {
            return Ok(TaskArgs {
                args: Cow::Borrowed(&def.args),
                kwargs: Cow::Borrowed(&def.kwargs),
            });
        }
        let results = PlanResults {
            graph: &self.graph,
            results: &self.results,
        };
        check_footprint(
            &def.args,
            &def.kwargs,
            &results,
            limits.max_message_bytes,
            limits.max_depth.saturating_sub(2),
        )
        .map_err(|over| Failure::TaskTooLarge {
            step: def.name.clone(),
            fun: def.fun.clone(),
            over,
        })?;
        let (args, kwargs) = resolve_args(&def.args, &def.kwargs, &results).map_err(
            |Unresolved { reference, reason }| Failure::Unresolved {
                step: def.name.clone(),
                reference,
                reason,
            },
        )?;
        Ok(TaskArgs {
            args: Cow::Owned(args),
            kwargs: Cow::Owned(kwargs),
        })
    }

    /// Moves out the results of the finished steps (for an error's `partial`).
    pub fn partial(&mut self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        for (step, result) in self.request.steps.iter().zip(self.results.iter_mut()) {
            if let Some(value) = result.take() {
                out.insert(step.name.clone(), value);
            }
        }
        out
    }

    /// Moves out the reply's results: the sinks', or every step's when asked, keyed by the
    /// step names, which are moved out too. For a plan that has ended (removed from the plan
    /// plane): its steps have empty names afterwards.
    pub fn results(&mut self) -> BTreeMap<String, Value> {
        let all = self.request.all_results;
        let mut out = BTreeMap::new();
        for (i, (step, result)) in self
            .request
            .steps
            .iter_mut()
            .zip(self.results.iter_mut())
            .enumerate()
        {
            if all || self.graph.is_sink(i) {
                let name = std::mem::take(&mut step.name);
                out.insert(name, result.take().unwrap_or(Value::Nil));
            }
        }
        out
    }
}
