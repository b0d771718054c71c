//! The plan plane: every plan in flight, from admission to its one final reply (ARCHITECTURE
//! section 3). It owns the plans' state, the per-client quotas, the bytes held and the plan
//! deadlines; it knows nothing of workers or sockets. The engine asks it which steps are
//! ready, tells it which tasks run, and hands it results.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use mpreg_protocol::peer::FwdStep;
use mpreg_protocol::{BrokerId, Limits, PlanId, PlanRequest, Step, TaskId, Value};

use super::failure::Failure;
use crate::fast_hash::FastMap;
use crate::outbox::{ClientAddr, RoutingId};
use crate::plan_graph::PlanGraph;
use crate::quote::quote;
use crate::versions::{parse_requirement, Requirement};

/// A step's index in its plan.
pub use super::timing::StepIx;

mod state;

pub use state::{PlanLimits, PlanState, ReplyTo};

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
    plans: FastMap<PlanId, PlanState>,
    by_request: FastMap<(RoutingId, u64), PlanId>,
    per_client: FastMap<RoutingId, usize>,
    bytes: usize,
    /// Plan deadlines, removed when their plan ends (so the set holds only plans in flight).
    deadlines: BTreeSet<(Instant, PlanId)>,
}

impl Plans {
    /// No plans.
    pub fn new(limits: PlanLimits) -> Plans {
        Plans {
            limits,
            plans: FastMap::default(),
            by_request: FastMap::default(),
            per_client: FastMap::default(),
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
        let request_key = (client.routing.clone(), request.id);
        if self.by_request.contains_key(&request_key) {
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
        count_plan(&mut self.per_client, &quota);
        self.bytes += bytes;
        self.by_request.insert(request_key, id);
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
        count_plan(&mut self.per_client, &quota);
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
/// One more plan in flight for `quota` (its key copied only when it had none).
fn count_plan(per_client: &mut FastMap<RoutingId, usize>, quota: &RoutingId) {
    match per_client.get_mut(quota) {
        Some(n) => *n += 1,
        None => {
            per_client.insert(quota.clone(), 1);
        }
    }
}

/// Each step's version requirement, parsed; empty when no step has one (most plans).
fn parse_versions(steps: &[Step]) -> Result<Vec<Option<Requirement>>, Failure> {
    if steps.iter().all(|s| s.version.is_none()) {
        return Ok(Vec::new());
    }
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
