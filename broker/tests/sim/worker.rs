//! A simulated worker: the worker side of PROTOCOL.md section 10 as a state machine. It
//! registers (resending until `registered`), sends heartbeats, runs tasks for a simulated
//! duration and answers `result` or `failure`, obeys most `cancel`s (best effort), registers
//! again on `reconnect`, and when the broker falls silent past its liveness window closes its
//! connection and opens a fresh one after a doubling backoff. It can be killed (it vanishes
//! without a word), restarted (a new connection) or leave gracefully (`disconnect`, finish its
//! tasks, close).

use std::collections::BTreeMap;
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

/// What a worker serves.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Functions.
    pub functions: Vec<String>,
    /// Resources.
    pub resources: Vec<String>,
    /// Capacity asked for.
    pub capacity: u32,
}

/// A worker's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerTimer {
    /// Every heartbeat interval: resend `register`, or send a heartbeat and watch the
    /// broker's liveness.
    Beat,
    /// A task's simulated run is over.
    TaskDone(TaskId),
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

/// The worker process.
pub struct WorkerNode {
    /// Its process id.
    pub id: ProcessId,
    broker: ProcessId,
    rng: Rng,
    spec: WorkerSpec,
    limits: Limits,
    /// Bumped whenever the connection changes: timers of an older session are ignored.
    session: u32,
    conn: Option<ConnId>,
    phase: Phase,
    heartbeat: Duration,
    liveness: u32,
    base_backoff: Duration,
    backoff: Duration,
    last_heard: SimTime,
    running: BTreeMap<TaskId, WorkerToBroker>,
}

impl WorkerNode {
    /// A worker that will connect to `broker` when started; `heartbeat` and `liveness` until
    /// `registered` says otherwise.
    pub fn new(
        id: ProcessId,
        broker: ProcessId,
        rng: Rng,
        spec: WorkerSpec,
        limits: Limits,
        heartbeat: Duration,
        liveness: u32,
    ) -> WorkerNode {
        WorkerNode {
            id,
            broker,
            rng,
            spec,
            limits,
            session: 0,
            conn: None,
            phase: Phase::Down,
            heartbeat,
            liveness,
            base_backoff: heartbeat,
            backoff: heartbeat,
            last_heard: SimTime::ZERO,
            running: BTreeMap::new(),
        }
    }

    fn name(&self) -> String {
        format!("w{}.{}", self.id.0, self.session)
    }

    fn timer(&self, ctx: &mut Ctx<'_>, after: Duration, kind: WorkerTimer) {
        ctx.timer(
            after,
            Timer::Worker {
                session: self.session,
                kind,
            },
        );
    }

    fn send(&mut self, ctx: &mut Ctx<'_>, message: &WorkerToBroker) {
        if let Some(conn) = self.conn {
            ctx.send(conn, Wire::worker(message));
        }
    }

    fn send_register(&mut self, ctx: &mut Ctx<'_>) {
        let register = WorkerToBroker::Register(messages::register(
            &self.name(),
            &self.spec.functions,
            &self.spec.resources,
            self.spec.capacity,
        ));
        self.send(ctx, &register);
    }

    /// (Re)starts: a fresh connection, `register`, the beat.
    pub fn start(&mut self, ctx: &mut Ctx<'_>) {
        if self.phase != Phase::Down {
            self.drop_connection(ctx);
        }
        self.session += 1;
        self.conn = Some(ctx.connect(self.broker));
        self.phase = Phase::Registering;
        self.last_heard = ctx.now;
        self.send_register(ctx);
        self.timer(ctx, self.heartbeat, WorkerTimer::Beat);
    }

    /// Closes the connection and forgets its tasks (a dead socket cannot answer them).
    fn drop_connection(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(conn) = self.conn.take() {
            ctx.close(conn);
        }
        self.phase = Phase::Down;
        self.running.clear();
        self.session += 1;
    }

    /// Killed: gone without a word.
    pub fn kill(&mut self, ctx: &mut Ctx<'_>) {
        if self.phase != Phase::Down {
            self.drop_connection(ctx);
        }
    }

    /// Leaves gracefully: `disconnect`, then close once its tasks are answered.
    pub fn leave(&mut self, ctx: &mut Ctx<'_>) {
        if self.phase != Phase::Registered {
            return;
        }
        let bye = WorkerToBroker::Disconnect(Disconnect {
            reason: "leaving".into(),
        });
        self.send(ctx, &bye);
        self.phase = Phase::Leaving;
        self.close_if_done(ctx);
    }

    fn close_if_done(&mut self, ctx: &mut Ctx<'_>) {
        if self.phase == Phase::Leaving && self.running.is_empty() {
            self.drop_connection(ctx);
        }
    }

    /// A message from the broker on `conn`.
    pub fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, wire: Wire) {
        if self.conn != Some(conn) {
            return;
        }
        let message = wire
            .decode_to_worker(&self.limits)
            .expect("the broker sends valid messages");
        self.last_heard = ctx.now;
        match message {
            BrokerToWorker::Registered(r) => {
                if self.phase == Phase::Registering {
                    self.phase = Phase::Registered;
                    self.heartbeat = Duration::from_millis(r.heartbeat_ms);
                    self.liveness = r.liveness;
                    self.backoff = self.base_backoff;
                }
            }
            BrokerToWorker::Task(task) => self.run(ctx, task),
            BrokerToWorker::Cancel(c) => {
                if self.rng.percent(OBEY_CANCEL_PERCENT) {
                    self.running.remove(&c.task);
                    self.close_if_done(ctx);
                }
            }
            BrokerToWorker::Heartbeat(_) => {}
            BrokerToWorker::Reconnect(_) => {
                if self.phase != Phase::Leaving {
                    self.phase = Phase::Registering;
                    self.send_register(ctx);
                }
            }
            BrokerToWorker::Error(e) => {
                let name = self.name();
                ctx.trace
                    .line(ctx.now, || format!("{name} was sent an error: {e:?}"));
            }
            BrokerToWorker::Disconnect(_) => {
                self.drop_connection(ctx);
                self.timer(ctx, self.backoff, WorkerTimer::Reconnect);
            }
        }
    }

    fn run(&mut self, ctx: &mut Ctx<'_>, task: Task<'static>) {
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
        self.running.insert(task.task, answer);
        self.timer(
            ctx,
            Duration::from_micros(micros),
            WorkerTimer::TaskDone(task.task),
        );
    }

    /// One of its timers fired.
    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, session: u32, kind: WorkerTimer) {
        if session != self.session {
            return;
        }
        match kind {
            WorkerTimer::Beat => {
                match self.phase {
                    Phase::Down => return,
                    Phase::Registering => self.send_register(ctx),
                    Phase::Registered | Phase::Leaving => {
                        if ctx.now.since(self.last_heard) > self.heartbeat * self.liveness {
                            // The broker is gone: a fresh socket after the backoff.
                            self.drop_connection(ctx);
                            self.timer(ctx, self.backoff, WorkerTimer::Reconnect);
                            self.backoff = (self.backoff * 2).min(self.base_backoff * 32);
                            return;
                        }
                        self.send(ctx, &WorkerToBroker::Heartbeat(Heartbeat {}));
                    }
                }
                self.timer(ctx, self.heartbeat, WorkerTimer::Beat);
            }
            WorkerTimer::TaskDone(task) => {
                if let Some(answer) = self.running.remove(&task) {
                    self.send(ctx, &answer);
                    self.close_if_done(ctx);
                }
            }
            WorkerTimer::Reconnect => {
                if self.phase == Phase::Down {
                    self.start(ctx);
                }
            }
        }
    }
}
