//! What a broker must hold, according to the protocol, rebuilt by the checker from what goes in
//! and out of its engine (never from its internals): the registered workers with their granted
//! capacity and outstanding tasks, the tracked clients, the ready steps not yet dispatched, the
//! plans in flight and the bytes held for them. PROTOCOL.md sections 5, 9 and 10 determine each
//! of them exactly (expiry happens at heartbeat ticks, after `liveness` silent intervals), so
//! the engine's `footprint()` must equal them after every call.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mpreg_broker::engine::{Footprint, CLIENT_HEARTBEAT_MAX, CLIENT_HEARTBEAT_MIN};
use mpreg_protocol::TaskId;

use super::clock::SimTime;
use super::network::ConnId;

/// A plan: the connection that sent it and its request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlanKey {
    /// The client connection.
    pub conn: ConnId,
    /// The request id.
    pub request: u64,
}

impl std::fmt::Display for PlanKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.conn, self.request)
    }
}

/// A registered worker connection.
#[derive(Debug, Clone)]
pub struct WorkerView {
    /// Its node name.
    pub name: String,
    /// Functions it serves.
    pub functions: BTreeSet<String>,
    /// Resources it holds.
    pub resources: BTreeSet<String>,
    /// Capacity granted in `registered`.
    pub capacity: u32,
    /// When the broker last heard from it.
    pub last_heard: SimTime,
    /// It sent `disconnect`.
    pub draining: bool,
    /// Tasks the broker has outstanding on it.
    pub tasks: BTreeSet<TaskId>,
    /// Registration order (the engine's worker id order: it expires workers in this order).
    pub seq: u64,
}

impl WorkerView {
    /// It may take a step of `fun` needing `locs` (ignoring its load).
    pub fn eligible(&self, fun: &str, locs: &[String]) -> bool {
        !self.draining
            && self.functions.contains(fun)
            && locs.iter().all(|l| self.resources.contains(l))
    }

    /// It has a free slot.
    pub fn has_room(&self) -> bool {
        (self.tasks.len() as u64) < u64::from(self.capacity)
    }
}

/// A task outstanding at the broker.
#[derive(Debug, Clone, Copy)]
pub struct TaskView {
    /// Its plan.
    pub plan: PlanKey,
    /// Its step's index.
    pub step: usize,
    /// The worker connection.
    pub conn: ConnId,
    /// When its step timeout passes.
    pub timeout_at: Option<SimTime>,
}

/// A client connection tracked by heartbeat.
#[derive(Debug, Clone, Copy)]
pub struct ClientView {
    /// When the broker last heard from it.
    pub last_heard: SimTime,
    /// Silence after which it is gone.
    pub window: Duration,
}

/// One broker's state as the protocol determines it.
#[derive(Debug, Default)]
pub struct BrokerView {
    /// Registered workers by connection.
    pub workers: BTreeMap<ConnId, WorkerView>,
    /// Outstanding tasks.
    pub tasks: BTreeMap<TaskId, TaskView>,
    /// Tracked clients.
    pub clients: BTreeMap<ConnId, ClientView>,
    /// The engine's next heartbeat tick.
    pub next_heartbeat: SimTime,
    /// Steps whose references all have results, not dispatched, of plans in flight.
    pub ready: BTreeSet<(PlanKey, usize)>,
    /// Plans in flight.
    pub plans_in_flight: usize,
    /// Bytes held for them (bodies and accepted results).
    pub plan_bytes: usize,
    /// Registrations so far (the next one's order).
    pub registrations: u64,
    /// Steps of plans that ended since the last heartbeat tick (stale waiting entries are
    /// pruned at heartbeat ticks, so the waiting queue may hold up to this many more).
    pub stale_steps: usize,
}

impl BrokerView {
    /// A broker that starts at time zero with heartbeat interval `heartbeat`.
    pub fn new(heartbeat: Duration) -> BrokerView {
        BrokerView {
            next_heartbeat: SimTime::ZERO.after(heartbeat),
            ..BrokerView::default()
        }
    }

    /// Something arrived from client `conn`.
    pub fn client_heard(&mut self, conn: ConnId, now: SimTime) {
        if let Some(c) = self.clients.get_mut(&conn) {
            c.last_heard = now;
        }
    }

    /// A client `heartbeat` announcing `interval_ms`: tracked from now on.
    pub fn client_heartbeat(
        &mut self,
        conn: ConnId,
        interval_ms: u64,
        liveness: u32,
        now: SimTime,
    ) {
        let interval =
            Duration::from_millis(interval_ms).clamp(CLIENT_HEARTBEAT_MIN, CLIENT_HEARTBEAT_MAX);
        self.clients.insert(
            conn,
            ClientView {
                last_heard: now,
                window: interval * liveness.max(1),
            },
        );
    }

    /// Workers silent past `silence` at `now` (what a heartbeat tick expires), in the order
    /// the engine expires them.
    pub fn silent_workers(&self, now: SimTime, silence: Duration) -> Vec<ConnId> {
        let Some(cutoff) = now.0.checked_sub(silence.as_micros() as u64) else {
            return Vec::new();
        };
        let mut silent: Vec<(u64, ConnId)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.last_heard.0 < cutoff)
            .map(|(&c, w)| (w.seq, c))
            .collect();
        silent.sort_unstable();
        silent.into_iter().map(|(_, c)| c).collect()
    }

    /// Tracked clients silent past their window at `now`, untracked.
    pub fn expire_clients(&mut self, now: SimTime) -> Vec<ConnId> {
        let gone: Vec<ConnId> = self
            .clients
            .iter()
            .filter(|(_, c)| now.since(c.last_heard) > c.window)
            .map(|(&conn, _)| conn)
            .collect();
        for conn in &gone {
            self.clients.remove(conn);
        }
        gone
    }

    /// A worker that could take a step of `fun` with `locs` now, if any.
    pub fn eligible_worker(&self, fun: &str, locs: &[String]) -> Option<(ConnId, &WorkerView)> {
        self.workers
            .iter()
            .find(|(_, w)| w.eligible(fun, locs))
            .map(|(&c, w)| (c, w))
    }

    /// A worker with a free slot that could take a step of `fun` with `locs`, if any.
    pub fn free_worker(&self, fun: &str, locs: &[String]) -> Option<(ConnId, &WorkerView)> {
        self.workers
            .iter()
            .find(|(_, w)| w.eligible(fun, locs) && w.has_room())
            .map(|(&c, w)| (c, w))
    }

    /// Where the engine's footprint differs from this view (`None`: it matches).
    pub fn footprint_mismatch(&self, fp: &Footprint) -> Option<String> {
        let timeouts = self
            .tasks
            .values()
            .filter(|t| t.timeout_at.is_some())
            .count();
        let plans = self.plans_in_flight;
        let ready = self.ready.len();
        let checks: [(&str, bool, String); 9] = [
            ("plans", fp.plans == plans, format!("{} != {plans}", fp.plans)),
            (
                "plan_indexes",
                fp.plan_indexes >= 2 * plans && fp.plan_indexes <= 3 * plans,
                format!("{} not within 2..=3 x {plans} plans", fp.plan_indexes),
            ),
            ("tasks", fp.tasks == self.tasks.len(), format!("{} != {}", fp.tasks, self.tasks.len())),
            ("timeouts", fp.timeouts == timeouts, format!("{} != {timeouts}", fp.timeouts)),
            ("ready", fp.ready == 0, format!("{} between calls", fp.ready)),
            (
                "workers",
                fp.workers == self.workers.len(),
                format!("{} != {}", fp.workers, self.workers.len()),
            ),
            (
                "clients",
                fp.clients == self.clients.len(),
                format!("{} != {}", fp.clients, self.clients.len()),
            ),
            (
                "plan_bytes",
                fp.plan_bytes == self.plan_bytes,
                format!("{} != {}", fp.plan_bytes, self.plan_bytes),
            ),
            (
                "waiting",
                fp.waiting >= ready && fp.waiting <= ready + self.stale_steps,
                format!(
                    "{} not within {ready} ready steps and {} stale entries: a ready step was lost or waiting entries leak",
                    fp.waiting, self.stale_steps
                ),
            ),
        ];
        let wrong: Vec<String> = checks
            .into_iter()
            .filter(|(_, ok, _)| !ok)
            .map(|(name, _, detail)| format!("{name}: {detail}"))
            .collect();
        (!wrong.is_empty()).then(|| wrong.join("; "))
    }
}
