//! A broker as a simulated process: the real [`Engine`] behind a shell that does what the
//! socket shell does (decode frames into typed messages with their origin, encode what the
//! engine emits), with the simulated network in place of sockets and the simulated clock in
//! place of the reactor's timer. Every engine call is reported to the checker with its input,
//! its outputs in order, the counters around it and the footprint after it.

use std::time::SystemTime;

use mpreg_broker::engine::{ClientOrigin, Engine, EngineConfig, WorkerOrigin};
use mpreg_broker::ids::IdSource;
use mpreg_broker::outbox::{ClientAddr, Delivery, EventSink, Outbox, WorkerAddr};
use mpreg_protocol::{
    BrokerToClient, BrokerToWorker, ClientToBroker, EventRef, Limits, Task, WorkerToBroker,
};

use super::clock::{Clock, SimTime};
use super::mutation::MutationState;
use super::network::{ConnId, Dir, ProcessId, Wire};
use super::{Ctx, Timer};

/// A fixed wall-clock epoch, so plan ids depend only on the seed and the simulated time.
const WALL_EPOCH_SECS: u64 = 1_767_225_600;

/// What one engine call was given.
#[derive(Debug, Clone)]
pub enum Input {
    /// A client request.
    Client {
        /// Its connection.
        conn: ConnId,
        /// The request.
        message: ClientToBroker,
        /// Its body's size.
        bytes: usize,
    },
    /// A worker message.
    Worker {
        /// Its connection.
        conn: ConnId,
        /// The message.
        message: WorkerToBroker,
        /// Its body's size.
        bytes: usize,
    },
    /// Time passed: `on_tick`.
    Tick,
}

/// One message an engine call emitted, with what the network made of it.
#[derive(Debug, Clone)]
pub enum Output {
    /// To a client.
    Reply {
        /// The connection.
        conn: ConnId,
        /// The message.
        message: BrokerToClient,
    },
    /// A task to a worker.
    Task {
        /// The connection.
        conn: ConnId,
        /// The task.
        task: Task<'static>,
        /// Its fate.
        delivery: Delivery,
    },
    /// Another message to a worker.
    ToWorker {
        /// The connection.
        conn: ConnId,
        /// The message.
        message: BrokerToWorker,
    },
}

/// A task with its borrowed parts copied.
pub fn owned(task: &Task<'_>) -> Task<'static> {
    Task {
        task: task.task,
        fun: task.fun.to_string().into(),
        args: task.args.to_vec().into(),
        kwargs: std::borrow::Cow::Owned(task.kwargs.clone().into_owned()),
        timeout_ms: task.timeout_ms,
    }
}

/// The broker process.
pub struct BrokerNode {
    /// Its process id.
    pub id: ProcessId,
    engine: Engine,
    clock: Clock,
    limits: Limits,
    /// The tick scheduled, and its token (older tokens are stale).
    tick: Option<SimTime>,
    tick_token: u64,
    mutation: MutationState,
}

impl BrokerNode {
    /// A broker whose engine takes its ids from `seed`.
    pub fn new(
        id: ProcessId,
        config: EngineConfig,
        clock: Clock,
        seed: u64,
        mutation: MutationState,
    ) -> BrokerNode {
        let wall = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(WALL_EPOCH_SECS);
        let ids = IdSource::seeded(seed, clock.epoch(), wall);
        let limits = config.limits;
        BrokerNode {
            id,
            engine: Engine::new(config, clock.instant(SimTime::ZERO), ids),
            clock,
            limits,
            tick: None,
            tick_token: 0,
            mutation,
        }
    }

    /// What the engine holds now.
    pub fn footprint(&self) -> mpreg_broker::engine::Footprint {
        self.engine.footprint()
    }

    /// Arms the first tick.
    pub fn start(&mut self, ctx: &mut Ctx<'_>) {
        self.schedule_tick(ctx);
    }

    /// A message arrived on `conn`.
    pub fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, wire: Wire) {
        let bytes = wire.body.len();
        let input = match wire.dir {
            Dir::ClientToBroker => Input::Client {
                conn,
                message: wire
                    .decode_client(&self.limits)
                    .expect("clients send valid messages"),
                bytes,
            },
            Dir::WorkerToBroker => Input::Worker {
                conn,
                message: wire
                    .decode_worker(&self.limits)
                    .expect("workers send valid messages"),
                bytes,
            },
            other => panic!("a broker received a {other:?} message"),
        };
        self.call(ctx, input);
    }

    /// A timer fired.
    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        if token != self.tick_token {
            return;
        }
        self.tick = None;
        self.call(ctx, Input::Tick);
    }

    fn call(&mut self, ctx: &mut Ctx<'_>, input: Input) {
        let now = self.clock.instant(ctx.now);
        if let Some((origin, plan)) = self.mutation.hidden_plan(&input) {
            let mut out = SimOutbox {
                ctx,
                outputs: Vec::new(),
                mutation: &mut self.mutation,
            };
            self.engine
                .on_client(&mut out, origin, ClientToBroker::Plan(plan), now);
        }
        let before = self.engine.counters().clone();
        let mut out = SimOutbox {
            ctx,
            outputs: Vec::new(),
            mutation: &mut self.mutation,
        };
        match &input {
            Input::Client {
                conn,
                message,
                bytes,
            } => {
                out.mutation.client_input(*conn, message);
                let origin = ClientOrigin {
                    addr: client_addr(*conn),
                    user: None,
                    bytes: *bytes,
                };
                self.engine
                    .on_client(&mut out, origin, message.clone(), now);
            }
            Input::Worker {
                conn,
                message,
                bytes,
            } => {
                let origin = WorkerOrigin {
                    addr: worker_addr(*conn),
                    user: None,
                    bytes: *bytes,
                };
                self.engine
                    .on_worker(&mut out, origin, message.clone(), now);
            }
            Input::Tick => self.engine.on_tick(&mut out, now),
        }
        let outputs = std::mem::take(&mut out.outputs);
        if ctx.trace.enabled() {
            trace_call(ctx, &input, &outputs);
        }
        let after = self.engine.counters().clone();
        let footprint = self.engine.footprint();
        let broker = self.id;
        let at = ctx.now;
        ctx.checker
            .after_call(broker, at, &input, &outputs, &before, &after, &footprint);
        self.schedule_tick(ctx);
    }

    /// Arms a tick at the engine's next deadline, unless one is armed for then already.
    fn schedule_tick(&mut self, ctx: &mut Ctx<'_>) {
        let at = self.clock.sim(self.engine.next_deadline()).max(ctx.now);
        if self.tick == Some(at) {
            return;
        }
        self.tick = Some(at);
        self.tick_token += 1;
        let timer = Timer::BrokerTick {
            token: self.tick_token,
        };
        ctx.timer_at(at, timer);
    }
}

/// Prints what one engine call emitted, in order (a replay's view of the engine).
fn trace_call(ctx: &mut Ctx<'_>, input: &Input, outputs: &[Output]) {
    let what = match input {
        Input::Client { conn, message, .. } => format!("{} from {conn}", message.kind()),
        Input::Worker { conn, message, .. } => format!("{} from {conn}", message.kind()),
        Input::Tick => "tick".to_string(),
    };
    ctx.trace.line(ctx.now, || {
        format!("engine: {what}: {} outputs", outputs.len())
    });
    for output in outputs {
        let line = match output {
            Output::Reply { conn, message } => format!("  -> {conn} {message:?}"),
            Output::Task {
                conn,
                task,
                delivery,
            } => format!("  -> {conn} task {} {} ({delivery:?})", task.task, task.fun),
            Output::ToWorker { conn, message } => format!("  -> {conn} {message:?}"),
        };
        let line: String = line.chars().take(300).collect();
        ctx.trace.line(ctx.now, || line);
    }
}

fn client_addr(conn: ConnId) -> ClientAddr {
    ClientAddr {
        routing: conn.routing(),
        delimiter: false,
        compact: false,
    }
}

fn worker_addr(conn: ConnId) -> WorkerAddr {
    WorkerAddr {
        routing: conn.routing(),
        compact: false,
    }
}

/// The engine's outbox: encodes every message onto the simulated network, records it for the
/// checker, and lets a mutation (a deliberately broken broker) tamper with it.
struct SimOutbox<'a, 'w> {
    ctx: &'a mut Ctx<'w>,
    outputs: Vec<Output>,
    mutation: &'a mut MutationState,
}

impl SimOutbox<'_, '_> {
    fn send_reply(&mut self, conn: ConnId, message: &BrokerToClient) -> Delivery {
        let delivery = self.ctx.send(conn, Wire::to_client(message));
        self.outputs.push(Output::Reply {
            conn,
            message: message.clone(),
        });
        delivery
    }

    fn send_task(&mut self, conn: ConnId, task: &Task<'_>) -> Delivery {
        let delivery = self.ctx.send(conn, Wire::task(task));
        self.outputs.push(Output::Task {
            conn,
            task: owned(task),
            delivery,
        });
        delivery
    }
}

impl EventSink for SimOutbox<'_, '_> {
    fn event(&mut self, _event: &EventRef<'_>) -> Delivery {
        // The simulation uses no topics.
        Delivery::Sent
    }
}

impl Outbox for SimOutbox<'_, '_> {
    fn reply(&mut self, to: &ClientAddr, message: &BrokerToClient) -> Delivery {
        let conn = ConnId::from_routing(&to.routing);
        if self.mutation.is_hidden(conn) {
            return Delivery::Sent;
        }
        let plan = self.mutation.reply(conn, message);
        let delivery = match &plan.replace {
            Some(replacement) => self.send_reply(conn, replacement),
            None if plan.drop => Delivery::Sent,
            None => self.send_reply(conn, message),
        };
        for _ in 0..plan.repeat {
            self.send_reply(conn, message);
        }
        for (worker, task) in plan.then_tasks {
            self.send_task(worker, &task);
        }
        delivery
    }

    fn task(&mut self, to: &WorkerAddr, task: &Task<'_>) -> Delivery {
        let conn = ConnId::from_routing(&to.routing);
        if self.mutation.is_hidden_task(task) {
            return Delivery::Sent;
        }
        self.mutation.task(conn, task);
        self.send_task(conn, task)
    }

    fn to_worker(&mut self, to: &WorkerAddr, message: &BrokerToWorker) -> Delivery {
        let conn = ConnId::from_routing(&to.routing);
        let replaced = self.mutation.worker_message(message);
        let message = replaced.as_ref().unwrap_or(message);
        let delivery = self.ctx.send(conn, Wire::to_worker(message));
        self.outputs.push(Output::ToWorker {
            conn,
            message: message.clone(),
        });
        delivery
    }
}
