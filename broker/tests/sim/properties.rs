//! The properties checked on every run, by watching each broker engine call (its input, its
//! outputs in order, its counters and footprint) and what clients receive:
//!
//! - P1: every plan the broker received ends exactly once: one final `result` or `error`, by
//!   the end of the run, and at once when something ended it (a cancel, its deadline, ...).
//! - P2: a `result` equals the model's; an `error` has a code the situation allows (`no_route`
//!   only when no registered worker could serve the ready step, `step_failed` only for the
//!   failure the worker just sent, `plan_timeout` only once the deadline passed, ...), names the
//!   right step, and its `partial` holds exactly the results accepted; tasks carry exactly the
//!   arguments the model resolves; progress events match accepted results.
//! - P3: no task for a plan is sent after its final reply, and a plan that ends leaves no task
//!   outstanding (all cancelled).
//! - P4: a step whose result the broker accepted is never dispatched again, a step is
//!   re-dispatched only after its worker was lost, and a worker never has more tasks
//!   outstanding than the capacity it was granted.
//! - P5: the engine's footprint equals what the protocol leaves in flight after every call
//!   (plans, tasks, timeouts, workers, tracked clients, bytes; waiting steps between the ready
//!   steps and the stale entries of one heartbeat), and drops to zero once the run drains.
//! - P6: routing and liveness as PROTOCOL.md sections 5, 9 and 10 say: tasks only to registered,
//!   non-draining workers serving the function with the resources, never to a worker the same
//!   tick expires; a worker or client expires exactly when silent past its window at a
//!   heartbeat tick; `registered`, `reconnect` and heartbeats when due; no ready step waits
//!   while a matching worker has a free slot.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use mpreg_broker::engine::{Counters, EngineConfig, Footprint};
use mpreg_protocol::{BrokerToClient, PlanRequest, Register, Task, TaskId, Value};

use super::broker::{Input, Output};
use super::broker_view::{BrokerView, PlanKey};
use super::clock::SimTime;
use super::functions::TAG;
use super::model::{self, Expectation, ModelSabotage};
use super::network::{ConnId, ProcessId};

/// One of the properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Property {
    /// P1.
    ExactlyOnce,
    /// P2.
    Outcome,
    /// P3.
    NoTaskAfterFinal,
    /// P4.
    NoRerun,
    /// P5.
    Bounded,
    /// P6.
    Protocol,
    /// P7 (clusters).
    OneHop,
    /// P8 (clusters).
    Converges,
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Property::ExactlyOnce => "P1 (every plan ends exactly once)",
            Property::Outcome => "P2 (results equal the model; errors allowed by the situation)",
            Property::NoTaskAfterFinal => "P3 (no task after a plan's final reply)",
            Property::NoRerun => "P4 (accepted steps never re-run; capacity respected)",
            Property::Bounded => "P5 (engine state bounded and drained)",
            Property::Protocol => "P6 (routing and liveness as the protocol says)",
            Property::OneHop => "P7 (a forwarded step is never forwarded again)",
            Property::Converges => "P8 (membership and catalogues converge after the last fault)",
        })
    }
}

/// A property that failed.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which.
    pub property: Property,
    /// When.
    pub at: SimTime,
    /// What happened.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} violated at {}: {}",
            self.property, self.at, self.message
        )
    }
}

/// One step of a tracked plan.
#[derive(Debug, Clone, Default)]
pub struct StepTrack {
    /// Tasks sent for it.
    pub dispatches: u32,
    /// Its task outstanding at the broker.
    pub outstanding: Option<TaskId>,
    /// Its tasks lost with their worker.
    pub orphaned: u32,
    /// Its result, once the broker accepted it.
    pub accepted: Option<Value>,
    /// Steps it references still without a result.
    pub pending: usize,
}

/// A plan some client sent.
#[derive(Debug)]
pub struct PlanTrack {
    /// The plan.
    pub plan: PlanRequest,
    /// What the model says of it.
    pub expect: Expectation,
    /// Which broker received it, and when.
    pub received: Option<(ProcessId, SimTime)>,
    /// Its deadline.
    pub deadline_at: SimTime,
    /// Admitted and not yet ended.
    pub in_flight: bool,
    /// Its body's size.
    pub bytes: usize,
    /// Sizes of the results accepted.
    pub result_bytes: usize,
    /// Final replies the broker emitted.
    pub finals: u32,
    /// Final replies its client received.
    pub client_finals: u32,
    /// Its steps.
    pub steps: Vec<StepTrack>,
    /// For each step, the steps referencing it.
    pub dependents: Vec<Vec<usize>>,
    /// Steps with a progress event.
    pub progressed: BTreeSet<usize>,
}

/// What the runs did, summed.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Plans sent by clients.
    pub plans_sent: u64,
    /// Plans the broker received.
    pub plans_received: u64,
    /// `result` replies.
    pub results: u64,
    /// `error` replies by code.
    pub errors: BTreeMap<u16, u64>,
    /// Tasks dispatched.
    pub tasks: u64,
    /// Tasks lost with their worker.
    pub orphaned: u64,
    /// Workers expired.
    pub workers_expired: u64,
    /// Clients expired.
    pub clients_expired: u64,
    /// Engine calls.
    pub calls: u64,
}

impl Stats {
    /// Adds another run's figures.
    pub fn add(&mut self, other: &Stats) {
        self.plans_sent += other.plans_sent;
        self.plans_received += other.plans_received;
        self.results += other.results;
        for (code, n) in &other.errors {
            *self.errors.entry(*code).or_default() += n;
        }
        self.tasks += other.tasks;
        self.orphaned += other.orphaned;
        self.workers_expired += other.workers_expired;
        self.clients_expired += other.clients_expired;
        self.calls += other.calls;
    }
}

/// What one engine call did, as far as the properties go.
pub(super) struct Call {
    pub(super) broker: ProcessId,
    pub(super) now: SimTime,
    pub(super) tick: bool,
    pub(super) heartbeat_tick: bool,
    pub(super) plan_arrived: Option<PlanKey>,
    pub(super) cancel: Option<PlanKey>,
    pub(super) register: Option<(ConnId, Register)>,
    pub(super) registered_seen: bool,
    pub(super) reconnect_due: Option<ConnId>,
    pub(super) reconnect_seen: bool,
    pub(super) accepted_result: Option<(PlanKey, usize)>,
    pub(super) accepted_failure: Option<(PlanKey, usize, String, String)>,
    pub(super) expired: Vec<ConnId>,
    /// Workers silent past their window at this heartbeat tick, in the engine's order
    /// (registration order), not yet expired: the engine expires them one by one, and what
    /// one expiry does (a plan failing, its tasks cancelled, freed slots refilled) happens
    /// before the next.
    pub(super) pending_expiry: Vec<ConnId>,
    pub(super) gone_clients: BTreeSet<ConnId>,
    pub(super) timed_out: BTreeSet<(PlanKey, usize)>,
    pub(super) must_end: BTreeMap<PlanKey, &'static str>,
    pub(super) ended: BTreeSet<PlanKey>,
    pub(super) heartbeat_due: BTreeSet<ConnId>,
    pub(super) heartbeat_sent: BTreeSet<ConnId>,
}

pub(super) fn violation(property: Property, at: SimTime, message: String) -> Violation {
    Violation {
        property,
        at,
        message,
    }
}

pub(super) fn tag_of(task: &Task<'_>) -> Option<(PlanKey, usize)> {
    let tag = task.kwargs.get(TAG)?.as_array()?;
    match tag.as_slice() {
        [c, r, i] => Some((
            PlanKey {
                conn: ConnId(u32::try_from(c.as_u64()?).ok()?),
                request: r.as_u64()?,
            },
            usize::try_from(i.as_u64()?).ok()?,
        )),
        _ => None,
    }
}

/// Watches every broker call and client delivery; records violations.
pub struct Checker {
    pub(super) config: EngineConfig,
    pub(super) sabotage: ModelSabotage,
    /// Messages keep their order per connection (no reordering fault).
    pub(super) fifo: bool,
    pub(super) plans: BTreeMap<PlanKey, PlanTrack>,
    pub(super) views: BTreeMap<ProcessId, BrokerView>,
    /// Every violation, in order (the run stops at the first).
    pub violations: Vec<Violation>,
    /// What the run did.
    pub stats: Stats,
}

impl Checker {
    /// A checker for brokers configured with `config`.
    pub fn new(config: EngineConfig, sabotage: ModelSabotage, fifo: bool) -> Checker {
        Checker {
            config,
            sabotage,
            fifo,
            plans: BTreeMap::new(),
            views: BTreeMap::new(),
            violations: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub(super) fn fail(&mut self, property: Property, at: SimTime, message: String) {
        self.violations.push(violation(property, at, message));
    }

    pub(super) fn view(&mut self, broker: ProcessId) -> &mut BrokerView {
        let heartbeat = self.config.heartbeat;
        self.views
            .entry(broker)
            .or_insert_with(|| BrokerView::new(heartbeat))
    }

    /// A client sends `plan` on its connection: the model's expectation is computed now.
    pub fn plan_sent(&mut self, key: PlanKey, plan: PlanRequest) {
        let expect = model::evaluate(&plan, &self.config.limits, self.sabotage);
        let (steps, dependents) = match &expect {
            Expectation::Runs(run) => {
                let n = run.graph.names.len();
                let mut dependents = vec![Vec::new(); n];
                for (i, deps) in run.graph.deps.iter().enumerate() {
                    for &d in deps {
                        dependents[d].push(i);
                    }
                }
                let steps = run
                    .graph
                    .deps
                    .iter()
                    .map(|d| StepTrack {
                        pending: d.len(),
                        ..StepTrack::default()
                    })
                    .collect();
                (steps, dependents)
            }
            _ => (Vec::new(), Vec::new()),
        };
        self.stats.plans_sent += 1;
        self.plans.insert(
            key,
            PlanTrack {
                plan,
                expect,
                received: None,
                deadline_at: SimTime::ZERO,
                in_flight: false,
                bytes: 0,
                result_bytes: 0,
                finals: 0,
                client_finals: 0,
                steps,
                dependents,
                progressed: BTreeSet::new(),
            },
        );
    }

    /// One engine call of `broker` at `now`: its input, outputs, counters and footprint.
    #[allow(clippy::too_many_arguments)]
    pub fn after_call(
        &mut self,
        broker: ProcessId,
        now: SimTime,
        input: &Input,
        outputs: &[Output],
        before: &Counters,
        after: &Counters,
        footprint: &Footprint,
    ) {
        self.stats.calls += 1;
        self.view(broker);
        let mut call = Call {
            broker,
            now,
            tick: matches!(input, Input::Tick),
            heartbeat_tick: false,
            plan_arrived: None,
            cancel: None,
            register: None,
            registered_seen: false,
            reconnect_due: None,
            reconnect_seen: false,
            accepted_result: None,
            accepted_failure: None,
            expired: Vec::new(),
            pending_expiry: Vec::new(),
            gone_clients: BTreeSet::new(),
            timed_out: BTreeSet::new(),
            must_end: BTreeMap::new(),
            ended: BTreeSet::new(),
            heartbeat_due: BTreeSet::new(),
            heartbeat_sent: BTreeSet::new(),
        };
        self.apply_input(&mut call, input);
        if call.tick {
            self.apply_tick(&mut call);
        }
        for output in outputs {
            if !self.violations.is_empty() {
                return;
            }
            self.settle_expiries(&mut call, output);
            self.apply_output(&mut call, output);
        }
        let pending = std::mem::take(&mut call.pending_expiry);
        for conn in pending {
            self.expire_worker(&mut call, conn);
        }
        if self.violations.is_empty() {
            self.close_call(&mut call, before, after, footprint);
        }
    }

    fn close_call(&mut self, call: &mut Call, before: &Counters, after: &Counters, fp: &Footprint) {
        let now = call.now;
        let expired = after.workers_expired - before.workers_expired;
        if expired != call.expired.len() as u64 {
            return self.fail(
                Property::Protocol,
                now,
                format!(
                    "the engine expired {expired} workers; the protocol expires {:?} (silent past liveness x heartbeat at a heartbeat tick, or a failed send)",
                    call.expired
                ),
            );
        }
        let gone = after.clients_expired - before.clients_expired;
        if gone != call.gone_clients.len() as u64 {
            return self.fail(
                Property::Protocol,
                now,
                format!(
                    "the engine found {gone} clients gone; the protocol says {:?}",
                    call.gone_clients
                ),
            );
        }
        if let (Some((conn, _)), false) = (&call.register, call.registered_seen) {
            return self.fail(
                Property::Protocol,
                now,
                format!("{conn}'s register was not answered with registered"),
            );
        }
        if let (Some(conn), false) = (call.reconnect_due, call.reconnect_seen) {
            return self.fail(
                Property::Protocol,
                now,
                format!("{conn} is not registered and was not told to reconnect"),
            );
        }
        if call.heartbeat_tick && call.heartbeat_sent != call.heartbeat_due {
            return self.fail(
                Property::Protocol,
                now,
                format!(
                    "heartbeats went to {:?}; registered: {:?}",
                    call.heartbeat_sent, call.heartbeat_due
                ),
            );
        }
        for (key, why) in &call.must_end {
            if !call.ended.contains(key) {
                let message = format!("{key} got no final reply although {why}");
                return self.fail(Property::ExactlyOnce, now, message);
            }
        }
        for key in &call.ended {
            let outstanding = self.plans[key].steps.iter().find_map(|s| s.outstanding);
            if let Some(task) = outstanding {
                let message = format!("{key} ended but its task {task} was not cancelled");
                return self.fail(Property::NoTaskAfterFinal, now, message);
            }
        }
        if let Some((key, ix)) = call.accepted_result {
            let track = &self.plans[&key];
            if track.plan.progress && track.in_flight && !track.progressed.contains(&ix) {
                let message = format!("{key} asked for progress; step {ix}'s result got none");
                return self.fail(Property::Outcome, now, message);
            }
        }
        let view = self
            .views
            .get_mut(&call.broker)
            .expect("created by after_call");
        // A draining worker is forgotten once it has nothing left to answer.
        view.workers
            .retain(|_, w| !(w.draining && w.tasks.is_empty()));
        if let Some(diff) = view.footprint_mismatch(fp) {
            let message = format!("the engine holds what the protocol does not: {diff} ({fp:?})");
            return self.fail(Property::Bounded, now, message);
        }
        let view = &self.views[&call.broker];
        for &(key, ix) in &view.ready {
            let def = &self.plans[&key].plan.steps[ix];
            if let Some((c, w)) = view.free_worker(&def.fun, &def.locs) {
                let message = format!(
                    "step {:?} of {key} waits while worker {} ({c}) serves `{}` with {}/{} tasks",
                    def.name,
                    w.name,
                    def.fun,
                    w.tasks.len(),
                    w.capacity
                );
                return self.fail(Property::Protocol, now, message);
            }
        }
    }

    /// A client received `message` on `conn`.
    pub fn client_received(&mut self, conn: ConnId, message: &BrokerToClient, now: SimTime) {
        let (id, is_final) = match message {
            BrokerToClient::Progress(p) => (p.id, false),
            BrokerToClient::Result(r) => (r.id, true),
            BrokerToClient::Error(e) => (e.id.unwrap_or(u64::MAX), true),
            other => {
                return self.fail(
                    Property::Outcome,
                    now,
                    format!("{conn} received {}", other.kind()),
                );
            }
        };
        let key = PlanKey { conn, request: id };
        let fifo = self.fifo;
        let Some(track) = self.plans.get_mut(&key) else {
            return self.fail(
                Property::Outcome,
                now,
                format!("{conn} received a reply for {key}, never sent"),
            );
        };
        if is_final {
            track.client_finals += 1;
            if track.client_finals > 1 {
                self.fail(
                    Property::ExactlyOnce,
                    now,
                    format!("{conn} received a second final reply for {key}"),
                );
            }
        } else if fifo && track.client_finals > 0 {
            self.fail(
                Property::ExactlyOnce,
                now,
                format!("{conn} received progress for {key} after its final reply"),
            );
        }
    }

    /// The run is over (every deadline has passed): every received plan has its one final
    /// reply, and every broker holds nothing for plans.
    pub fn finish(&mut self, now: SimTime, footprints: &[(ProcessId, Footprint)]) {
        if !self.violations.is_empty() {
            return;
        }
        let unanswered: Vec<PlanKey> = self
            .plans
            .iter()
            .filter(|(_, t)| t.received.is_some() && t.finals == 0)
            .map(|(k, _)| *k)
            .collect();
        if let Some(key) = unanswered.first() {
            let message = format!(
                "{} plans never got a final reply, e.g. {key}: {:?}",
                unanswered.len(),
                self.plans[key].plan
            );
            return self.fail(Property::ExactlyOnce, now, message);
        }
        for (broker, fp) in footprints {
            let drained = Footprint {
                workers: fp.workers,
                subscriptions: fp.subscriptions,
                ..Footprint::default()
            };
            if *fp != drained {
                let message = format!("after the run drained, broker {broker} still holds {fp:?}");
                return self.fail(Property::Bounded, now, message);
            }
            let registered = self.views.get(broker).map_or(0, |v| v.workers.len());
            if fp.workers != registered {
                let message = format!(
                    "broker {broker} has {} workers, the protocol {registered}",
                    fp.workers
                );
                return self.fail(Property::Bounded, now, message);
            }
        }
    }
}
