//! A simulated worker node: the worker side of PROTOCOL.md section 10 as a state machine, with
//! one session per broker it serves (as `mpreg-node` with several `--broker`s). Each session
//! registers (resending until `registered`), sends heartbeats, obeys most `cancel`s (best
//! effort), registers again on `reconnect`, and when its broker falls silent past the liveness
//! window (or its connection is reset: the broker crashed) closes its connection and opens a
//! fresh one after a doubling backoff. The node runs tasks for a simulated duration and
//! answers `result` or `failure` on the session the task came from.
//!
//! Capacity is the node's, as in `node/src/link/mod.rs`: each broker registered with is told a
//! share (`capacity` divided by the brokers registered with, rounded up), told again when that
//! number changes; the node never runs more than its capacity at once whatever the brokers
//! send (the surplus waits in a queue). A task whose session was lost keeps its slot until it
//! finishes (a running function cannot be stopped); its answer goes nowhere.
//!
//! It can be killed (it vanishes without a word), restarted (new connections) or leave
//! gracefully (`disconnect` on every session, finish its tasks, close).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use mpreg_protocol::{
    failure_kind, BrokerToWorker, Disconnect, Heartbeat, Limits, Task, TaskId, WorkerToBroker,
};

use super::clock::SimTime;
use super::functions;
use super::messages;
use super::network::{ConnId, ProcessId, Wire};
use super::rng::Rng;
use super::{Ctx, Timer};

/// What a worker serves, and where.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Functions.
    pub functions: Vec<String>,
    /// Resources.
    pub resources: Vec<String>,
    /// Capacity of the node (split over the brokers it is registered with).
    pub capacity: u32,
    /// The brokers it serves, one session each.
    pub brokers: Vec<ProcessId>,
}

/// A worker's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerTimer {
    /// Every heartbeat interval: resend `register`, or send a heartbeat and watch the
    /// broker's liveness.
    Beat,
    /// A task's simulated run is over (the run's number).
    TaskDone(u64),
    /// The backoff after a lost connection is over.
    Reconnect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No connection.
    Down,
    /// Connected, `register` sent, no `registered` yet.
    Registering,
    /// Registered.
    Registered,
    /// `disconnect` sent; finishing its tasks.
    Leaving,
}

/// Percent of `cancel`s a worker obeys (the rest run to the end; the answer is ignored).
const OBEY_CANCEL_PERCENT: u64 = 80;

/// One broker's session.
struct Session {
    broker: ProcessId,
    /// Bumped whenever the connection changes: timers of an older session are ignored.
    generation: u32,
    conn: Option<ConnId>,
    phase: Phase,
    heartbeat: Duration,
    liveness: u32,
    backoff: Duration,
    last_heard: SimTime,
    /// Capacity granted in the last `registered`.
    granted: u32,
    /// When it first sent the `register` still unanswered (its `registered` may be lost).
    register_pending: Option<SimTime>,
    /// Tasks this broker has outstanding here: received, neither answered nor cancelled.
    outstanding: BTreeSet<TaskId>,
}

/// A task running on the node.
struct Running {
    link: usize,
    generation: u32,
    task: TaskId,
    answer: WorkerToBroker,
}

/// The worker process.
pub struct WorkerNode {
    /// Its process id.
    pub id: ProcessId,
    rng: Rng,
    spec: WorkerSpec,
    limits: Limits,
    links: Vec<Session>,
    base_heartbeat: Duration,
    base_liveness: u32,
    /// Starts so far (its name changes with each).
    life: u32,
    running: BTreeMap<u64, Running>,
    queue: VecDeque<(usize, u32, Task<'static>)>,
    next_run: u64,
    /// The share last told the brokers.
    told_share: u32,
}

impl WorkerNode {
    /// A worker that will connect to its brokers when started; `heartbeat` and `liveness`
    /// until `registered` says otherwise.
    pub fn new(
        id: ProcessId,
        rng: Rng,
        spec: WorkerSpec,
        limits: Limits,
        heartbeat: Duration,
        liveness: u32,
    ) -> WorkerNode {
        let links = spec
            .brokers
            .iter()
            .map(|&broker| Session {
                broker,
                generation: 0,
                conn: None,
                phase: Phase::Down,
                heartbeat,
                liveness,
                backoff: heartbeat,
                last_heard: SimTime::ZERO,
                granted: 0,
                register_pending: None,
                outstanding: BTreeSet::new(),
            })
            .collect();
        WorkerNode {
            id,
            rng,
            spec,
            limits,
            links,
            base_heartbeat: heartbeat,
            base_liveness: liveness,
            life: 0,
            running: BTreeMap::new(),
            queue: VecDeque::new(),
            next_run: 0,
            told_share: 0,
        }
    }

    fn name(&self) -> String {
        format!("w{}.{}", self.id.0, self.life)
    }

    fn timer(&self, ctx: &mut Ctx<'_>, link: usize, after: Duration, kind: WorkerTimer) {
        let session = self.links[link].generation;
        ctx.timer(
            after,
            Timer::Worker {
                link: link as u32,
                session,
                kind,
            },
        );
    }

    fn send(&mut self, ctx: &mut Ctx<'_>, link: usize, message: &WorkerToBroker) {
        if let Some(conn) = self.links[link].conn {
            ctx.send(conn, Wire::worker(message));
        }
    }

    fn registered_count(&self) -> u32 {
        self.links
            .iter()
            .filter(|s| s.phase == Phase::Registered)
            .count() as u32
    }

    /// Each registered broker's share of the capacity (see the module documentation).
    fn share(&self) -> u32 {
        self.spec
            .capacity
            .max(1)
            .div_ceil(self.registered_count().max(1))
    }

    fn send_register(&mut self, ctx: &mut Ctx<'_>, link: usize) {
        // A broker not yet registered with is counted: it is about to take its share.
        let counted =
            self.registered_count() + u32::from(self.links[link].phase != Phase::Registered);
        let capacity = self.spec.capacity.max(1).div_ceil(counted.max(1));
        let register = WorkerToBroker::Register(messages::register(
            &self.name(),
            &self.spec.functions,
            &self.spec.resources,
            capacity,
        ));
        self.links[link].register_pending.get_or_insert(ctx.now);
        self.send(ctx, link, &register);
    }

    /// Tells the registered brokers their new share when the number of them changed.
    fn reshare(&mut self, ctx: &mut Ctx<'_>) {
        let share = self.share();
        if share == self.told_share {
            return;
        }
        self.told_share = share;
        for link in 0..self.links.len() {
            if self.links[link].phase == Phase::Registered {
                self.send_register(ctx, link);
            }
        }
    }

    /// (Re)starts: a fresh process with a connection to every broker.
    pub fn start(&mut self, ctx: &mut Ctx<'_>) {
        self.kill(ctx);
        self.life += 1;
        self.told_share = 0;
        for link in 0..self.links.len() {
            self.connect(ctx, link);
        }
    }

    fn connect(&mut self, ctx: &mut Ctx<'_>, link: usize) {
        let s = &mut self.links[link];
        s.generation += 1;
        s.conn = Some(ctx.connect(s.broker));
        s.phase = Phase::Registering;
        s.last_heard = ctx.now;
        s.heartbeat = self.base_heartbeat;
        s.liveness = self.base_liveness;
        s.granted = 0;
        s.register_pending = None;
        let heartbeat = s.heartbeat;
        self.send_register(ctx, link);
        self.timer(ctx, link, heartbeat, WorkerTimer::Beat);
    }

    /// Closes one session's connection; its tasks can no longer be answered (those running
    /// keep their slots until they finish).
    fn drop_connection(&mut self, ctx: &mut Ctx<'_>, link: usize) {
        let s = &mut self.links[link];
        if let Some(conn) = s.conn.take() {
            ctx.close(conn);
        }
        let was_registered = s.phase == Phase::Registered;
        s.phase = Phase::Down;
        s.generation += 1;
        s.outstanding.clear();
        self.queue.retain(|(l, _, _)| *l != link);
        if was_registered {
            self.reshare(ctx);
        }
    }

    /// Loses a session (silent or reset broker): a fresh connection after the backoff.
    fn lose(&mut self, ctx: &mut Ctx<'_>, link: usize) {
        self.drop_connection(ctx, link);
        let backoff = self.links[link].backoff;
        self.timer(ctx, link, backoff, WorkerTimer::Reconnect);
        let base = self.base_heartbeat;
        let s = &mut self.links[link];
        s.backoff = (s.backoff * 2).min(base * 32);
    }

    /// True while it has a session or a task running (a restart then kills it first).
    pub fn is_up(&self) -> bool {
        self.links.iter().any(|s| s.phase != Phase::Down) || !self.running.is_empty()
    }

    /// Killed: gone without a word.
    pub fn kill(&mut self, ctx: &mut Ctx<'_>) {
        for link in 0..self.links.len() {
            if self.links[link].phase != Phase::Down {
                let s = &mut self.links[link];
                if let Some(conn) = s.conn.take() {
                    ctx.close(conn);
                }
                s.phase = Phase::Down;
            }
            let s = &mut self.links[link];
            s.generation += 1;
            s.outstanding.clear();
            s.backoff = self.base_heartbeat;
        }
        let me = self.id;
        for (run, _) in std::mem::take(&mut self.running) {
            ctx.cluster.run_ended(me, run, ctx.now);
        }
        self.queue.clear();
    }

    /// Leaves gracefully: `disconnect` on every registered session, then close each once its
    /// tasks are answered.
    pub fn leave(&mut self, ctx: &mut Ctx<'_>) {
        for link in 0..self.links.len() {
            if self.links[link].phase != Phase::Registered {
                continue;
            }
            let bye = WorkerToBroker::Disconnect(Disconnect {
                reason: "leaving".into(),
            });
            self.send(ctx, link, &bye);
            self.links[link].phase = Phase::Leaving;
            self.close_if_done(ctx, link);
        }
    }

    fn close_if_done(&mut self, ctx: &mut Ctx<'_>, link: usize) {
        let s = &self.links[link];
        let busy = self.running.values().any(|r| r.link == link) || !s.outstanding.is_empty();
        if s.phase == Phase::Leaving && !busy {
            self.drop_connection(ctx, link);
        }
    }

    fn link_of(&self, conn: ConnId) -> Option<usize> {
        self.links.iter().position(|s| s.conn == Some(conn))
    }

    /// The broker end of `conn` was reset (the broker crashed).
    pub fn on_closed(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        if let Some(link) = self.link_of(conn) {
            if self.links[link].phase == Phase::Leaving {
                self.drop_connection(ctx, link);
            } else {
                self.lose(ctx, link);
            }
        }
    }

    /// A message from a broker on `conn`.
    pub fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, wire: Wire) {
        let Some(link) = self.link_of(conn) else {
            return;
        };
        let message = wire
            .decode_to_worker(&self.limits)
            .expect("the broker sends valid messages");
        self.links[link].last_heard = ctx.now;
        match message {
            BrokerToWorker::Registered(r) => {
                let s = &mut self.links[link];
                s.granted = r.capacity;
                s.register_pending = None;
                if s.phase == Phase::Registering {
                    s.phase = Phase::Registered;
                    s.heartbeat = Duration::from_millis(r.heartbeat_ms);
                    s.liveness = r.liveness;
                    s.backoff = self.base_heartbeat;
                    self.reshare(ctx);
                }
            }
            BrokerToWorker::Task(task) => self.take(ctx, link, task),
            BrokerToWorker::Cancel(c) => {
                self.links[link].outstanding.remove(&c.task);
                if self.rng.percent(OBEY_CANCEL_PERCENT) {
                    self.queue
                        .retain(|(l, _, t)| !(*l == link && t.task == c.task));
                    let run = self
                        .running
                        .iter()
                        .find(|(_, r)| r.link == link && r.task == c.task)
                        .map(|(&n, _)| n);
                    if let Some(run) = run {
                        self.running.remove(&run);
                        ctx.cluster.run_ended(self.id, run, ctx.now);
                        self.start_queued(ctx);
                    }
                }
                self.close_if_done(ctx, link);
            }
            BrokerToWorker::Heartbeat(_) => {}
            BrokerToWorker::Reconnect(_) => {
                let s = &mut self.links[link];
                if s.phase != Phase::Leaving {
                    let was_registered = s.phase == Phase::Registered;
                    s.phase = Phase::Registering;
                    s.outstanding.clear();
                    if was_registered {
                        self.reshare(ctx);
                    }
                    self.send_register(ctx, link);
                }
            }
            BrokerToWorker::Error(e) => {
                let name = self.name();
                ctx.trace
                    .line(ctx.now, || format!("{name} was sent an error: {e:?}"));
            }
            BrokerToWorker::Disconnect(_) => self.lose(ctx, link),
        }
    }

    /// A task arrives on session `link`: run at once if the node has a free slot, else queue.
    fn take(&mut self, ctx: &mut Ctx<'_>, link: usize, task: Task<'static>) {
        let s = &mut self.links[link];
        s.outstanding.insert(task.task);
        let (granted, conn, broker) = (s.granted, s.conn, s.broker);
        let register_pending = s.register_pending.unwrap_or(ctx.now);
        let outstanding: Vec<TaskId> = s.outstanding.iter().copied().collect();
        if let Some(conn) = conn {
            let now = ctx.now;
            ctx.cluster.task_received(
                self.id,
                broker,
                conn,
                &task,
                &outstanding,
                (granted, register_pending),
                now,
            );
        }
        let generation = self.links[link].generation;
        self.queue.push_back((link, generation, task));
        self.start_queued(ctx);
    }

    fn start_queued(&mut self, ctx: &mut Ctx<'_>) {
        while (self.running.len() as u32) < self.spec.capacity.max(1) {
            let Some((link, generation, task)) = self.queue.pop_front() else {
                return;
            };
            self.run(ctx, link, generation, task);
        }
    }

    fn run(&mut self, ctx: &mut Ctx<'_>, link: usize, generation: u32, task: Task<'static>) {
        let answer = if self.spec.functions.iter().any(|f| *f == task.fun) {
            match functions::call(&task.fun, &task.args, &task.kwargs) {
                Ok(value) => messages::result(task.task, value),
                Err(f) => messages::failure(task.task, f.kind, &f.message),
            }
        } else {
            let message = format!("{} does not serve {}", self.name(), task.fun);
            messages::failure(task.task, failure_kind::UNKNOWN_FUNCTION, &message)
        };
        let micros = functions::run_ms(&task.fun, &task.args) * 1000 + self.rng.range(50, 15_000);
        self.next_run += 1;
        let run = self.next_run;
        let broker = self.links[link].broker;
        ctx.cluster
            .run_started(self.id, run, broker, &task, ctx.now);
        self.running.insert(
            run,
            Running {
                link,
                generation,
                task: task.task,
                answer,
            },
        );
        self.timer(
            ctx,
            link,
            Duration::from_micros(micros),
            WorkerTimer::TaskDone(run),
        );
    }

    /// One of its timers fired (`session` is the generation of session `link` it was armed
    /// in; a task's end is the node's, whatever became of its session).
    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, link: u32, session: u32, kind: WorkerTimer) {
        let link = link as usize;
        if let WorkerTimer::TaskDone(run) = kind {
            let Some(r) = self.running.remove(&run) else {
                return;
            };
            ctx.cluster.run_ended(self.id, run, ctx.now);
            let s = &mut self.links[r.link];
            if s.generation == r.generation {
                s.outstanding.remove(&r.task);
                self.send(ctx, r.link, &r.answer);
                self.close_if_done(ctx, r.link);
            }
            self.start_queued(ctx);
            return;
        }
        if session != self.links[link].generation {
            return;
        }
        match kind {
            WorkerTimer::Beat => {
                let s = &self.links[link];
                let heartbeat = s.heartbeat;
                match s.phase {
                    Phase::Down => return,
                    Phase::Registering => self.send_register(ctx, link),
                    Phase::Registered | Phase::Leaving => {
                        if ctx.now.since(s.last_heard) > s.heartbeat * s.liveness {
                            // The broker is gone: a fresh socket after the backoff.
                            self.lose(ctx, link);
                            return;
                        }
                        self.send(ctx, link, &WorkerToBroker::Heartbeat(Heartbeat {}));
                    }
                }
                self.timer(ctx, link, heartbeat, WorkerTimer::Beat);
            }
            WorkerTimer::Reconnect => {
                if self.links[link].phase == Phase::Down {
                    self.connect(ctx, link);
                }
            }
            WorkerTimer::TaskDone(_) => {}
        }
    }
}
