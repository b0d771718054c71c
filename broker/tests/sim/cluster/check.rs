//! The properties of a cluster, checked end to end (the broker side is in [`super::judge`]):
//!
//! - P1 (exactly once): every plan a client sent ends exactly once at that client: one final
//!   reply, or the client's own error when no final reply came a grace period after the
//!   deadline counted from its last sending (`904 connection_lost` if it moved to another
//!   broker while the plan was in flight, `901 request_timeout` otherwise), and that only when
//!   a failure explains it: the move, or a message of the client lost or refused at its
//!   high-water mark (the broker drops a reply it cannot queue), or a fault or partition
//!   touching the client. Never two final replies on one connection, never a final reply
//!   after the client gave up, never none. A broker run (one incarnation, one
//!   plan id) emits at most one final reply, besides replays answering the plan sent again.
//!   Plans of a client that vanished need no outcome.
//! - P2 (outcome): see [`super::judge`].
//! - P3 (nothing after the final reply): a broker sends a task only for a plan it runs and has
//!   not answered, or for a forwarded step it serves and has not answered; a `fwd_step` only
//!   for a plan it owns and has not answered.
//! - P4 (no step runs twice at once): two workers never run the same step of the same plan at
//!   once unless a failure explains it: a fault, a lost message or a partition touching the
//!   workers, the brokers that sent them the step or a broker that owned the plan, between
//!   the plan's sending (less the time a failure can stay unnoticed) and the second one's start (a step forwarded before a partition may
//!   arrive after it healed, while its owner already gave it to another peer), or the plan's
//!   client having moved to another broker. And no broker has a worker run more tasks than the capacity it was granted.
//! - P5 (bounded): an engine never holds more plans than its runs and served forwards in
//!   flight; every engine holds nothing for plans once the run drained.
//! - P7 (one hop): no broker forwards a step of a plan it does not own (a forwarded step is
//!   never forwarded again).
//! - P8 (convergence): see [`super::converge`].

use std::collections::{BTreeMap, BTreeSet};

use mpreg_broker::engine::{EngineConfig, Footprint};
use mpreg_protocol::{BrokerId, BrokerToClient, PlanId, PlanRequest, Task, TaskId};

use super::super::clock::SimTime;
use super::super::model::{self, Expectation, ModelSabotage};
use super::super::network::{ConnId, Cut, ProcessId};
use super::super::properties::{Property, Violation};
use super::converge::Monitor;
use super::faults::FaultLog;

/// A plan as its client knows it: the client and the request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientPlan {
    /// The client process.
    pub client: ProcessId,
    /// The request id.
    pub request: u64,
}

impl std::fmt::Display for ClientPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.client, self.request)
    }
}

/// A plan a client sent.
#[derive(Debug)]
pub struct Track {
    /// The plan.
    pub plan: PlanRequest,
    /// What the model says of it.
    pub expect: Expectation,
    /// When it was first sent.
    pub sent: SimTime,
    /// When it was last sent.
    pub last_sent: SimTime,
    /// Its client's final outcome: when, and what.
    pub outcome: Option<(SimTime, String)>,
    /// Its client moved while it was in flight.
    pub moved: bool,
    /// Its client cancelled it.
    pub cancelled: bool,
    /// Its client vanished before it ended.
    pub vanished: bool,
    /// The brokers that admitted it.
    pub owners: BTreeSet<ProcessId>,
    /// Final replies its client received, by connection.
    pub finals: BTreeMap<ConnId, u32>,
}

/// One broker run of a plan: admitted by one incarnation.
#[derive(Debug)]
pub struct Run {
    /// When it was admitted.
    pub admitted: SimTime,
    /// It emitted its final reply.
    pub ended: bool,
    /// Steps with a progress event.
    pub progressed: BTreeSet<String>,
}

/// A step forwarded to a broker, which serves it.
#[derive(Debug, Clone)]
pub struct Served {
    /// The owner's plan id.
    pub plan: PlanId,
    /// The step's name.
    pub step: String,
}

/// A step running on a worker.
#[derive(Debug, Clone, Copy)]
struct Execution {
    worker: ProcessId,
    run: u64,
    broker: ProcessId,
    since: SimTime,
}

/// What cluster runs did, summed.
#[derive(Debug, Clone, Default)]
pub struct ClusterStats {
    /// Brokers in the runs.
    pub brokers: u64,
    /// Broker crashes.
    pub crashes: u64,
    /// Plans sent by clients.
    pub plans_sent: u64,
    /// Plans sent again after a move.
    pub resent: u64,
    /// Moves of clients to another broker.
    pub moves: u64,
    /// `result` replies received.
    pub results: u64,
    /// `error` replies received, by code (904: the client's own).
    pub errors: BTreeMap<u16, u64>,
    /// Steps run by workers.
    pub executions: u64,
    /// Steps run twice at once, explained by a failure.
    pub duplicates: u64,
    /// Steps forwarded to a peer.
    pub forwarded: u64,
    /// Runs whose views converged, and the sum and longest of the times they took (us).
    pub converged: u64,
    /// Sum of convergence times, microseconds.
    pub converge_us: u64,
    /// Longest convergence time, microseconds.
    pub converge_max_us: u64,
}

impl ClusterStats {
    /// Adds another run's figures.
    pub fn add(&mut self, o: &ClusterStats) {
        self.brokers += o.brokers;
        self.crashes += o.crashes;
        self.plans_sent += o.plans_sent;
        self.resent += o.resent;
        self.moves += o.moves;
        self.results += o.results;
        for (code, n) in &o.errors {
            *self.errors.entry(*code).or_default() += n;
        }
        self.executions += o.executions;
        self.duplicates += o.duplicates;
        self.forwarded += o.forwarded;
        self.converged += o.converged;
        self.converge_us += o.converge_us;
        self.converge_max_us = self.converge_max_us.max(o.converge_max_us);
    }
}

/// Watches a cluster's clients, workers and engine calls; records violations.
pub struct ClusterChecker {
    pub(super) enabled: bool,
    pub(super) config: EngineConfig,
    pub(super) sabotage: ModelSabotage,
    pub(super) fifo: bool,
    pub(super) plans: BTreeMap<ClientPlan, Track>,
    /// Which plan a reply on a connection answers.
    pub(super) by_request: BTreeMap<(ConnId, u64), ClientPlan>,
    pub(super) by_id: BTreeMap<PlanId, ClientPlan>,
    /// Clients that send heartbeats (a broker may find them silent and cancel their plans).
    pub(super) heartbeating: BTreeSet<ProcessId>,
    /// Runs by (broker, incarnation, plan id).
    pub(super) runs: BTreeMap<(ProcessId, BrokerId, PlanId), Run>,
    /// Served forwards by (broker, incarnation, owner process, forward id).
    pub(super) served: BTreeMap<(ProcessId, BrokerId, ProcessId, u64), Served>,
    /// The broker process of every incarnation seen.
    pub(super) incarnations: BTreeMap<BrokerId, ProcessId>,
    live: BTreeMap<(ClientPlan, usize), Vec<Execution>>,
    /// When each task was sent, by connection.
    pub(super) task_sent: BTreeMap<(ConnId, TaskId), SimTime>,
    runs_at: BTreeMap<(ProcessId, u64), (ClientPlan, usize)>,
    pub(super) faults: FaultLog,
    /// The convergence monitor.
    pub monitor: Monitor,
    /// Every violation, in order (the run stops at the first).
    pub violations: Vec<Violation>,
    /// What the run did.
    pub stats: ClusterStats,
}

/// The plan and step a task's tag names (`[client, request, step]`).
pub fn tag_of(task: &Task<'_>) -> Option<(ClientPlan, usize)> {
    let (key, step) = super::super::properties::tag_of(task)?;
    let plan = ClientPlan {
        client: ProcessId(key.conn.0),
        request: key.request,
    };
    Some((plan, step))
}

impl ClusterChecker {
    /// A checker that checks nothing (a run of one broker).
    pub fn disabled() -> ClusterChecker {
        ClusterChecker::new(
            false,
            EngineConfig::default(),
            ModelSabotage::None,
            true,
            Vec::new(),
            Monitor::default(),
        )
    }

    /// A checker of brokers configured with `config`, on a network with these partitions.
    pub fn new(
        enabled: bool,
        config: EngineConfig,
        sabotage: ModelSabotage,
        fifo: bool,
        cuts: Vec<Cut>,
        monitor: Monitor,
    ) -> ClusterChecker {
        ClusterChecker {
            enabled,
            config,
            sabotage,
            fifo,
            plans: BTreeMap::new(),
            by_request: BTreeMap::new(),
            by_id: BTreeMap::new(),
            heartbeating: BTreeSet::new(),
            runs: BTreeMap::new(),
            served: BTreeMap::new(),
            incarnations: BTreeMap::new(),
            live: BTreeMap::new(),
            task_sent: BTreeMap::new(),
            runs_at: BTreeMap::new(),
            faults: FaultLog::new(cuts),
            monitor,
            violations: Vec::new(),
            stats: ClusterStats::default(),
        }
    }

    pub(super) fn fail(&mut self, property: Property, at: SimTime, message: String) {
        self.violations.push(Violation {
            property,
            at,
            message,
        });
    }

    /// A fault of process `p`.
    pub fn fault(&mut self, at: SimTime, p: ProcessId) {
        if self.enabled {
            self.faults.fault(at, p);
        }
    }

    /// A message between `a` and `b` was lost.
    pub fn lost(&mut self, at: SimTime, a: ProcessId, b: ProcessId) {
        if self.enabled {
            self.faults.lost(at, a, b);
        }
    }

    /// Client `client` sends `plan` on `conn` (the first time).
    pub fn plan_sent(&mut self, client: ProcessId, conn: ConnId, plan: PlanRequest, now: SimTime) {
        let key = ClientPlan {
            client,
            request: plan.id,
        };
        let expect = model::evaluate(&plan, &self.config.limits, self.sabotage);
        self.stats.plans_sent += 1;
        self.by_request.insert((conn, plan.id), key);
        if let Some(id) = plan.plan {
            self.by_id.insert(id, key);
        }
        self.plans.insert(
            key,
            Track {
                plan,
                expect,
                sent: now,
                last_sent: now,
                outcome: None,
                moved: false,
                cancelled: false,
                vanished: false,
                owners: BTreeSet::new(),
                finals: BTreeMap::new(),
            },
        );
    }

    /// Client `client` sends plan `request` again on `conn`, after a move.
    pub fn plan_resent(&mut self, client: ProcessId, request: u64, conn: ConnId, now: SimTime) {
        let key = ClientPlan { client, request };
        self.stats.resent += 1;
        self.by_request.insert((conn, request), key);
        if let Some(track) = self.plans.get_mut(&key) {
            track.last_sent = now;
        }
    }

    /// Client `client` cancels plan `request`.
    pub fn cancel_sent(&mut self, client: ProcessId, request: u64) {
        if let Some(track) = self.plans.get_mut(&ClientPlan { client, request }) {
            track.cancelled = true;
        }
    }

    /// Client `client` sends heartbeats.
    pub fn heartbeats(&mut self, client: ProcessId) {
        self.heartbeating.insert(client);
    }

    /// Client `client` moves to another broker: its plans in flight may end with `904`.
    pub fn client_moved(&mut self, client: ProcessId, now: SimTime) {
        self.stats.moves += 1;
        self.faults.fault(now, client);
        for (key, track) in self.plans.range_mut(ClientPlan { client, request: 0 }..) {
            if key.client != client {
                break;
            }
            if track.outcome.is_none() {
                track.moved = true;
            }
        }
    }

    /// Client `client` vanished: its plans in flight need no outcome.
    pub fn client_vanished(&mut self, client: ProcessId) {
        if !self.enabled {
            return;
        }
        for (key, track) in self.plans.range_mut(ClientPlan { client, request: 0 }..) {
            if key.client != client {
                break;
            }
            if track.outcome.is_none() {
                track.vanished = true;
            }
        }
    }

    /// Client `client` received `message` on `conn`; `waiting`: it had the plan in flight.
    pub fn client_received(
        &mut self,
        client: ProcessId,
        conn: ConnId,
        message: &BrokerToClient,
        waiting: bool,
        now: SimTime,
    ) {
        let (request, what) = match message {
            BrokerToClient::Result(r) => {
                self.stats.results += 1;
                (r.id, "result".to_string())
            }
            BrokerToClient::Error(e) => {
                *self.stats.errors.entry(e.code).or_default() += 1;
                let Some(id) = e.id else {
                    return self.fail(
                        Property::Outcome,
                        now,
                        format!("{client} received an error without id: {e:?}"),
                    );
                };
                (id, format!("error {} {}", e.code, e.kind))
            }
            _ => return,
        };
        let key = ClientPlan { client, request };
        let (default, max) = (self.config.default_deadline, self.config.max_deadline);
        let grace = self.monitor.grace;
        let Some(track) = self.plans.get_mut(&key) else {
            return self.fail(
                Property::ExactlyOnce,
                now,
                format!("{client} received {what} for {key}, which it never sent"),
            );
        };
        let on_conn = track.finals.entry(conn).or_default();
        *on_conn += 1;
        let problem = if *on_conn > 1 {
            Some(format!("a second final reply ({what}) on {conn}"))
        } else if let Some((at, first)) = &track.outcome {
            Some(format!("{what} after it ended at {at} with {first}"))
        } else if !waiting {
            Some(format!("{what}, the client no longer waiting for it"))
        } else {
            let deadline = track
                .plan
                .deadline_ms
                .map_or(default, std::time::Duration::from_millis)
                .min(max);
            let late = track.last_sent.after(deadline + grace);
            (!track.moved && now > late).then(|| {
                format!("{what} at {now}, after its deadline and grace ({late}) with no failover")
            })
        };
        if let Some(why) = problem {
            return self.fail(Property::ExactlyOnce, now, format!("{key}: {why}"));
        }
        track.outcome = Some((now, what));
    }

    /// Client `client` gave up on plan `request` (its own deadline passed): `904
    /// connection_lost` if it `moved` while the plan was in flight, else `901
    /// request_timeout`. Allowed only when a failure explains the missing reply: the client
    /// moved, or a message to or from the client was lost (or refused at its high-water mark),
    /// or a partition or fault touched it, since it last sent the plan.
    pub fn client_gave_up(&mut self, client: ProcessId, request: u64, moved: bool, now: SimTime) {
        let key = ClientPlan { client, request };
        let code = if moved { 904 } else { 901 };
        *self.stats.errors.entry(code).or_default() += 1;
        let Some(track) = self.plans.get_mut(&key) else {
            return;
        };
        let explained = track.moved || self.faults.touched(&[client], track.last_sent, now);
        let problem = if !explained {
            Some(format!(
                "no final reply by its deadline and grace, and no failure explains it (last sent {})",
                track.last_sent
            ))
        } else {
            track
                .outcome
                .as_ref()
                .map(|(at, first)| format!("{code} after it ended at {at} with {first}"))
        };
        if let Some(why) = problem {
            return self.fail(Property::ExactlyOnce, now, format!("{key}: {why}"));
        }
        track.outcome = Some((now, format!("{code} (the client's own)")));
    }

    /// Worker `worker` received `task` from `broker` on `conn`, with `outstanding` the tasks
    /// of that broker's it holds now, and the capacity granted in the last `registered` it
    /// received, its last `register` sent at `register_sent`.
    ///
    /// The broker's count of a worker's tasks and the worker's grant match only over a
    /// session that lost nothing: a cancel lost or refused at the high-water mark leaves the
    /// worker running a task the broker counts as gone, a lost `registered` leaves the worker
    /// with an older grant (or none), and a task refused as full makes the engine drop the
    /// worker and take its next registration as a fresh one, as does a partition that makes
    /// the worker look silent. So a surplus is allowed only when a failure came between the
    /// two (a message lost or refused, a partition, a fault of either) since the worker last
    /// registered or the broker sent the oldest of those tasks, whichever came first.
    #[allow(clippy::too_many_arguments)]
    pub fn task_received(
        &mut self,
        worker: ProcessId,
        broker: ProcessId,
        conn: ConnId,
        task: &Task<'_>,
        outstanding: &[TaskId],
        (granted, register_sent): (u32, SimTime),
        now: SimTime,
    ) {
        if !(self.enabled && self.fifo && outstanding.len() > granted as usize) {
            return;
        }
        let since = outstanding
            .iter()
            .map(|t| {
                self.task_sent
                    .get(&(conn, *t))
                    .copied()
                    .unwrap_or(SimTime::ZERO)
            })
            .min()
            .unwrap_or(now)
            .min(register_sent);
        if !self.faults.between(worker, broker, since, now) {
            let message = format!(
                "{broker} sent task {} to {worker} on {conn} with {} outstanding there, capacity granted {granted}",
                task.task,
                outstanding.len() - 1
            );
            self.fail(Property::NoRerun, now, message);
        }
    }

    /// Worker `worker` starts run `run` of `task`, sent by `broker`.
    pub fn run_started(
        &mut self,
        worker: ProcessId,
        run: u64,
        broker: ProcessId,
        task: &Task<'_>,
        now: SimTime,
    ) {
        if !self.enabled {
            return;
        }
        let Some((key, step)) = tag_of(task) else {
            return;
        };
        self.stats.executions += 1;
        self.runs_at.insert((worker, run), (key, step));
        let Some(track) = self.plans.get(&key) else {
            return;
        };
        let owners: Vec<ProcessId> = track.owners.iter().copied().collect();
        let (moved, sent) = (track.moved, track.sent);
        // A failure shortly before the plan came may still be unnoticed when its steps are
        // placed (a step forwarded to a peer that crashed is re-run once its death is known).
        let since = SimTime(sent.0.saturating_sub(self.unnoticed().as_micros() as u64));
        let live = self.live.entry((key, step)).or_default();
        let mut unexplained = None;
        for other in live.iter() {
            let mut involved = vec![other.worker, other.broker, worker, broker];
            involved.extend(&owners);
            if moved || self.faults.touched(&involved, since, now) {
                self.stats.duplicates += 1;
            } else {
                unexplained = Some(*other);
            }
        }
        live.push(Execution {
            worker,
            run,
            broker,
            since: now,
        });
        if let Some(other) = unexplained {
            let message = format!(
                "step {step} of {key} runs on {worker} (sent by {broker}) while it runs on {} (sent by {} at {}), and no failure explains it",
                other.worker, other.broker, other.since
            );
            self.fail(Property::NoRerun, now, message);
        }
    }

    /// Worker `worker`'s run `run` ended (answered, cancelled, or the worker died).
    pub fn run_ended(&mut self, worker: ProcessId, run: u64, _now: SimTime) {
        if let Some(at) = self.runs_at.remove(&(worker, run)) {
            if let Some(live) = self.live.get_mut(&at) {
                live.retain(|e| !(e.worker == worker && e.run == run));
                if live.is_empty() {
                    self.live.remove(&at);
                }
            }
        }
    }

    /// True once every plan has its outcome (or its client vanished).
    pub fn settled(&self) -> bool {
        self.plans
            .values()
            .all(|t| t.outcome.is_some() || t.vanished)
    }

    /// The run is over: every plan has its outcome, every engine holds nothing for plans.
    pub fn finish(&mut self, now: SimTime, footprints: &[(ProcessId, Footprint)]) {
        if !self.violations.is_empty() {
            return;
        }
        let open: Vec<ClientPlan> = self
            .plans
            .iter()
            .filter(|(_, t)| t.outcome.is_none() && !t.vanished)
            .map(|(k, _)| *k)
            .collect();
        if let Some(key) = open.first() {
            let t = &self.plans[key];
            let message = format!(
                "{} plans never ended at their client, e.g. {key} (plan id {:?}, last sent {}, moved {}, owners {:?})",
                open.len(),
                t.plan.plan,
                t.last_sent,
                t.moved,
                t.owners,
            );
            return self.fail(Property::ExactlyOnce, now, message);
        }
        for (broker, fp) in footprints {
            if !drained(fp) {
                let message = format!("after the run drained, broker {broker} still holds {fp:?}");
                return self.fail(Property::Bounded, now, message);
            }
        }
        self.monitor
            .finish(now, &mut self.violations, &mut self.stats);
    }
}

/// True when `fp` holds nothing for plans (workers and subscriptions stay).
pub fn drained(fp: &Footprint) -> bool {
    *fp == Footprint {
        workers: fp.workers,
        subscriptions: fp.subscriptions,
        ..Footprint::default()
    }
}
