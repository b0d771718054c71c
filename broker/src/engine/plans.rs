//! The plan plane: every plan in flight, from admission to its one final reply (ARCHITECTURE
//! section 3). It owns the plans' state, the per-client quotas, the bytes held and the plan
//! deadlines; it knows nothing of workers or sockets. The engine asks it which steps are
//! ready, tells it which tasks run, and hands it results.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use mpreg_protocol::peer::FwdStep;
use mpreg_protocol::{BrokerId, Limits, PlanId, PlanRequest, Step, TaskId, Value};

use super::failure::Failure;
use crate::outbox::{ClientAddr, RoutingId};
use crate::plan_graph::PlanGraph;
use crate::quote::quote;
use crate::resolve::{check_footprint, resolve_args, Results, Unresolved};
use crate::versions::{parse_requirement, Requirement};

/// A step's index in its plan.
pub use super::timing::StepIx;

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
    bytes: usize,
    /// The plan as sent.
    pub request: PlanRequest,
    graph: PlanGraph,
    /// Each step's version requirement, parsed.
    versions: Vec<Option<Requirement>>,
    pending: Vec<u32>,
    results: Vec<Option<Value>>,
    attempts: Vec<u32>,
    finished: usize,
    /// Tasks running for it, in dispatch order.
    pub tasks: BTreeSet<TaskId>,
    deadline: Instant,
    /// Peers that refused a step (`fwd_reject`): not asked again for that step.
    pub rejected: Vec<(StepIx, BrokerId)>,
    /// The worker that ran the last finished step (what a forwarded step's answer names).
    pub ran_on: String,
    /// The cache keys of its steps of cacheable functions, and their part in the cache.
    pub cache: BTreeMap<StepIx, super::cache_parts::StepCache>,
    /// When it was accepted, and its steps' times when it asked for its trace.
    pub timing: super::timing::PlanTiming,
}

/// Finished results, looked up by step name during resolution.
struct PlanResults<'a> {
    graph: &'a PlanGraph,
    results: &'a [Option<Value>],
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
        self.versions[step as usize].as_ref()
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

    /// Moves out the reply's results: the sinks', or every step's when asked.
    pub fn results(&mut self) -> BTreeMap<String, Value> {
        let all = self.request.all_results;
        let mut out = BTreeMap::new();
        for (i, (step, result)) in self
            .request
            .steps
            .iter()
            .zip(self.results.iter_mut())
            .enumerate()
        {
            if all || self.graph.is_sink(i) {
                out.insert(step.name.clone(), result.take().unwrap_or(Value::Nil));
            }
        }
        out
    }
}

/// What a result did to its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The plan is gone, or the step already had its result: ignored.
    Ignored,
    /// Recorded; steps that became ready were queued.
    Progressed,
    /// That was the last step: the plan is complete.
    Complete,
}

/// Every plan in flight.
pub struct Plans {
    limits: PlanLimits,
    plans: HashMap<PlanId, PlanState>,
    by_request: HashMap<(RoutingId, u64), PlanId>,
    per_client: HashMap<RoutingId, usize>,
    bytes: usize,
    /// Plan deadlines, removed when their plan ends (so the set holds only plans in flight).
    deadlines: BTreeSet<(Instant, PlanId)>,
}

impl Plans {
    /// No plans.
    pub fn new(limits: PlanLimits) -> Plans {
        Plans {
            limits,
            plans: HashMap::new(),
            by_request: HashMap::new(),
            per_client: HashMap::new(),
            bytes: 0,
            deadlines: BTreeSet::new(),
        }
    }

    /// Admits a plan: checks the quotas and the plan itself, then queues its first ready
    /// steps on `ready`. `Ok(false)`: the plan is empty and already complete (nothing kept).
    #[allow(clippy::too_many_arguments)]
    pub fn admit(
        &mut self,
        id: PlanId,
        client: ClientAddr,
        quota: RoutingId,
        bytes: usize,
        request: PlanRequest,
        limits: &Limits,
        now: Instant,
        ready: &mut VecDeque<(PlanId, StepIx)>,
    ) -> Result<bool, Failure> {
        if self
            .by_request
            .contains_key(&(client.routing.clone(), request.id))
        {
            return Err(Failure::DuplicateRequestId(request.id));
        }
        let client_plans = self.per_client.get(&quota).copied().unwrap_or(0);
        if client_plans >= self.limits.max_plans_per_client
            || self.plans.len() >= self.limits.max_plans_in_flight
        {
            return Err(Failure::TooManyPlans {
                client: client_plans,
                client_limit: self.limits.max_plans_per_client,
                broker_limit: self.limits.max_plans_in_flight,
            });
        }
        if self.bytes.saturating_add(bytes) > self.limits.max_plan_bytes_in_flight {
            return Err(Failure::Overloaded {
                held: self.bytes,
                limit: self.limits.max_plan_bytes_in_flight,
            });
        }
        if let Some(topic) = &request.progress_topic {
            if let Err(reason) = mpreg_protocol::topic::check_topic(topic, limits) {
                return Err(Failure::InvalidTopic {
                    field: "progress_topic".into(),
                    topic: quote(topic),
                    reason,
                    whole_batch: false,
                });
            }
        }
        let graph = PlanGraph::build(&request.steps, limits).map_err(Failure::InvalidPlan)?;
        let versions = parse_versions(&request.steps)?;
        if request.steps.is_empty() {
            return Ok(false);
        }
        let wait = request
            .deadline_ms
            .map_or(self.limits.default_deadline, Duration::from_millis);
        let deadline = now + wait.min(self.limits.max_deadline);
        let n = request.steps.len();
        let timing = super::timing::PlanTiming::new(now, request.trace, n);
        let pending: Vec<u32> = graph.deps.iter().map(|d| d.len() as u32).collect();
        ready.extend(
            (0..n as StepIx)
                .filter(|&i| pending[i as usize] == 0)
                .map(|i| (id, i)),
        );
        *self.per_client.entry(quota.clone()).or_default() += 1;
        self.bytes += bytes;
        self.by_request
            .insert((client.routing.clone(), request.id), id);
        self.deadlines.insert((deadline, id));
        self.plans.insert(
            id,
            PlanState {
                request_id: request.id,
                reply_to: ReplyTo::Client(client),
                quota,
                bytes,
                request,
                graph,
                versions,
                pending,
                results: vec![None; n],
                attempts: vec![0; n],
                finished: 0,
                tasks: BTreeSet::new(),
                deadline,
                rejected: Vec::new(),
                ran_on: String::new(),
                cache: BTreeMap::new(),
                timing,
            },
        );
        Ok(true)
    }

    /// Admits one step forwarded by a peer as a one-step plan answering that peer, with its
    /// remaining time as deadline. Its arguments are data: no reference analysis.
    pub fn admit_forward(
        &mut self,
        id: PlanId,
        from: BrokerId,
        endpoint: String,
        step: FwdStep,
        now: Instant,
        ready: &mut VecDeque<(PlanId, StepIx)>,
    ) -> Result<(), Failure> {
        let quota: RoutingId = from.to_u128().to_be_bytes().to_vec();
        let client_plans = self.per_client.get(&quota).copied().unwrap_or(0);
        if self.plans.len() >= self.limits.max_plans_in_flight
            || client_plans >= self.limits.max_plans_per_client
        {
            return Err(Failure::TooManyPlans {
                client: client_plans,
                client_limit: self.limits.max_plans_per_client,
                broker_limit: self.limits.max_plans_in_flight,
            });
        }
        let graph = PlanGraph::single_resolved(&step.step);
        let version = step
            .version
            .as_deref()
            .map(parse_requirement)
            .transpose()
            .map_err(|message| {
                Failure::InvalidPlan(crate::plan_graph::PlanError {
                    code: mpreg_protocol::ErrorCode::InvalidPlan,
                    message,
                    step: Some(step.step.clone()),
                    cycle: None,
                })
            })?;
        let deadline = now + Duration::from_millis(step.remaining_ms).min(self.limits.max_deadline);
        let request = PlanRequest {
            id: step.fid,
            steps: vec![Step {
                name: step.step,
                fun: step.fun,
                args: step.args,
                kwargs: step.kwargs,
                locs: step.locs,
                timeout_ms: step.timeout_ms,
                retries: None,
                version: step.version,
                cache: step.cache,
            }],
            deadline_ms: Some(step.remaining_ms),
            all_results: true,
            progress: false,
            progress_topic: None,
            plan: None,
            trace: false,
        };
        ready.push_back((id, 0));
        *self.per_client.entry(quota.clone()).or_default() += 1;
        self.deadlines.insert((deadline, id));
        self.plans.insert(
            id,
            PlanState {
                request_id: step.fid,
                reply_to: ReplyTo::Peer {
                    broker: from,
                    endpoint,
                    fid: step.fid,
                },
                quota,
                bytes: 0,
                request,
                graph,
                versions: vec![version],
                pending: vec![0],
                results: vec![None],
                attempts: vec![0],
                finished: 0,
                tasks: BTreeSet::new(),
                deadline,
                rejected: Vec::new(),
                ran_on: String::new(),
                cache: BTreeMap::new(),
                timing: super::timing::PlanTiming::new(now, false, 1),
            },
        );
        Ok(())
    }

    /// The plans serving steps forwarded by `peer`, in id order.
    pub fn of_peer(&self, peer: BrokerId) -> Vec<PlanId> {
        let mut ids: Vec<PlanId> = self
            .plans
            .iter()
            .filter(|(_, p)| matches!(p.reply_to, ReplyTo::Peer { broker, .. } if broker == peer))
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The plan serving forward `fid` of `peer`, if it is in flight.
    pub fn forward_of(&self, peer: BrokerId, fid: u64) -> Option<PlanId> {
        self.plans
            .iter()
            .find(|(_, p)| {
                matches!(&p.reply_to, ReplyTo::Peer { broker, fid: f, .. } if *broker == peer && *f == fid)
            })
            .map(|(&id, _)| id)
    }

    /// The plan a connection sent with this request id, if it is in flight.
    pub fn find(&self, routing: &[u8], request_id: u64) -> Option<PlanId> {
        self.by_request
            .get(&(routing.to_vec(), request_id))
            .copied()
    }

    /// Sends the replies of a plan in flight to another client connection (the client sent
    /// the same plan id again after a reconnection). False if the plan is not a client's, or
    /// (under CURVE, where `key` is the sender's) another key's.
    pub fn retarget(
        &mut self,
        id: PlanId,
        client: ClientAddr,
        key: Option<&str>,
        request_id: u64,
    ) -> bool {
        let Some(plan) = self.plans.get_mut(&id) else {
            return false;
        };
        if key.is_some_and(|k| k.as_bytes() != plan.quota.as_slice()) {
            return false;
        }
        let ReplyTo::Client(old) = &plan.reply_to else {
            return false;
        };
        self.by_request
            .remove(&(old.routing.clone(), plan.request_id));
        self.by_request
            .insert((client.routing.clone(), request_id), id);
        plan.request_id = request_id;
        plan.reply_to = ReplyTo::Client(client);
        true
    }

    /// The plans a connection has in flight, in request id order.
    pub fn of_connection(&self, routing: &[u8]) -> Vec<PlanId> {
        let mut found: Vec<(u64, PlanId)> = self
            .by_request
            .iter()
            .filter(|((r, _), _)| r.as_slice() == routing)
            .map(|((_, request), &id)| (*request, id))
            .collect();
        found.sort_unstable();
        found.into_iter().map(|(_, id)| id).collect()
    }

    /// Every plan in flight, oldest id first.
    pub fn ids(&self) -> Vec<PlanId> {
        let mut ids: Vec<PlanId> = self.plans.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// A plan in flight.
    pub fn get(&self, id: PlanId) -> Option<&PlanState> {
        self.plans.get(&id)
    }

    /// A plan in flight, to change its bookkeeping (not its request or results).
    pub fn get_mut(&mut self, id: PlanId) -> Option<&mut PlanState> {
        self.plans.get_mut(&id)
    }

    /// Records that a task now runs the step.
    pub fn task_started(&mut self, id: PlanId, task: TaskId) {
        if let Some(plan) = self.plans.get_mut(&id) {
            plan.tasks.insert(task);
        }
    }

    /// Remembers that `peer` refused step `step`.
    pub fn rejected_by(&mut self, id: PlanId, step: StepIx, peer: BrokerId) {
        if let Some(plan) = self.plans.get_mut(&id) {
            plan.rejected.push((step, peer));
        }
    }

    /// Remembers the worker that ran a step (for a forwarded step's answer).
    pub fn ran_on(&mut self, id: PlanId, worker: &str) {
        if let Some(plan) = self.plans.get_mut(&id) {
            plan.ran_on.clear();
            plan.ran_on.push_str(worker);
        }
    }

    /// Records that a task no longer runs (answered, lost or cancelled).
    pub fn task_ended(&mut self, id: PlanId, task: TaskId) {
        if let Some(plan) = self.plans.get_mut(&id) {
            plan.tasks.remove(&task);
        }
    }

    /// Counts one more attempt at the step after its worker was lost; returns whether a
    /// retry is allowed (`Err(allowed)` when not).
    pub fn retry(&mut self, id: PlanId, step: StepIx, default_retries: u32) -> Result<(), u32> {
        let Some(plan) = self.plans.get_mut(&id) else {
            return Ok(());
        };
        let allowed = plan.request.steps[step as usize]
            .retries
            .unwrap_or(default_retries);
        plan.attempts[step as usize] += 1;
        if plan.attempts[step as usize] > allowed {
            Err(allowed)
        } else {
            Ok(())
        }
    }

    /// True when the step was dispatched before and lost its worker.
    pub fn was_retried(&self, id: PlanId, step: StepIx) -> bool {
        self.plans
            .get(&id)
            .is_some_and(|p| p.attempts[step as usize] > 0)
    }

    /// Records a step's result (`bytes`: what the result's message took, now held) and queues
    /// the steps that became ready.
    pub fn record(
        &mut self,
        id: PlanId,
        step: StepIx,
        value: Value,
        bytes: usize,
        ready: &mut VecDeque<(PlanId, StepIx)>,
    ) -> Recorded {
        let Some(plan) = self.plans.get_mut(&id) else {
            return Recorded::Ignored;
        };
        let at = step as usize;
        if plan.results[at].is_some() {
            return Recorded::Ignored;
        }
        plan.results[at] = Some(value);
        plan.finished += 1;
        plan.bytes += bytes;
        self.bytes += bytes;
        if plan.finished == plan.results.len() {
            return Recorded::Complete;
        }
        for &d in &plan.graph.dependents[at] {
            plan.pending[d as usize] -= 1;
            if plan.pending[d as usize] == 0 {
                ready.push_back((id, d));
            }
        }
        Recorded::Progressed
    }

    /// Removes a plan from every index and returns it (its tasks are the caller's to cancel).
    pub fn remove(&mut self, id: PlanId) -> Option<PlanState> {
        let plan = self.plans.remove(&id)?;
        if let ReplyTo::Client(client) = &plan.reply_to {
            self.by_request
                .remove(&(client.routing.clone(), plan.request_id));
        }
        if let Some(n) = self.per_client.get_mut(&plan.quota) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&plan.quota);
            }
        }
        self.bytes = self.bytes.saturating_sub(plan.bytes);
        self.deadlines.remove(&(plan.deadline, id));
        Some(plan)
    }

    /// The next plan whose deadline has passed at `now`, if any.
    pub fn due(&self, now: Instant) -> Option<PlanId> {
        self.deadlines
            .first()
            .filter(|(at, _)| *at <= now)
            .map(|&(_, id)| id)
    }

    /// When the earliest deadline passes.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Plans in flight.
    pub fn len(&self) -> usize {
        self.plans.len()
    }

    /// True when no plan is in flight.
    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// Bytes held for plans in flight.
    pub fn bytes_in_flight(&self) -> usize {
        self.bytes
    }

    /// Sizes of the indexes (for the footprint: each must drop back to zero when idle).
    pub fn footprint(&self) -> [usize; 4] {
        [
            self.plans.len(),
            self.by_request.len(),
            self.per_client.len(),
            self.deadlines.len(),
        ]
    }
}

/// Parses every step's version requirement; an invalid one is a plan error naming the step.
fn parse_versions(steps: &[Step]) -> Result<Vec<Option<Requirement>>, Failure> {
    steps
        .iter()
        .map(|s| {
            s.version
                .as_deref()
                .map(|text| {
                    parse_requirement(text).map_err(|message| {
                        Failure::InvalidPlan(crate::plan_graph::PlanError {
                            code: mpreg_protocol::ErrorCode::InvalidPlan,
                            message: format!("step `{}`: {message}", quote(&s.name)),
                            step: Some(s.name.clone()),
                            cycle: None,
                        })
                    })
                })
                .transpose()
        })
        .collect()
}
