//! A broker as a simulated process: the real [`Engine`] behind a shell that does what the
//! socket shell does (decode frames into typed messages with their origin, encode what the
//! engine emits), with the simulated network in place of sockets and the simulated clock in
//! place of the reactor's timer. Every engine call is reported to the checker with its input,
//! its outputs in order, the counters around it and the footprint after it.
//!
//! In a cluster the broker also has its peer sockets ([`PeerShell`]) and can crash (the engine
//! is dropped, every connection reset) and start again as a new incarnation: a new `Engine`
//! with a new [`BrokerId`] on the same endpoints.

use std::time::SystemTime;

use mpreg_broker::engine::{ClientOrigin, ClusterConfig, Engine, EngineConfig, WorkerOrigin};
use mpreg_broker::ids::IdSource;
use mpreg_broker::outbox::{ClientAddr, Delivery, EventSink, Link, Outbox, WorkerAddr};
use mpreg_protocol::peer::PeerEndpoints;
use mpreg_protocol::{
    BrokerId, BrokerToClient, BrokerToWorker, ClientToBroker, ClusterRequest, EventRef,
    FunctionsRequest, Gossip, Limits, PeerMessage, Task, WorkerToBroker,
};

use super::clock::{Clock, SimTime};
use super::cluster::links::{endpoints_of, PeerShell, Reconnect};
use super::cluster::Observation;
use super::mutation::MutationState;
use super::network::{ConnId, ConnKind, Dir, ProcessId, Wire};
use super::rng::Rng;
use super::{Ctx, Timer};

/// A fixed wall-clock epoch, so plan ids depend only on the seed and the simulated time.
pub const WALL_EPOCH_SECS: u64 = 1_767_225_600;

/// The connection the convergence monitor's requests come from (never a real one).
const OBSERVER: ConnId = ConnId(u32::MAX - 1);

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
    /// A peer's message on one of its links.
    Peer {
        /// The sending incarnation.
        from: BrokerId,
        /// The message.
        message: PeerMessage,
    },
    /// A peer's gossip.
    Gossip(Gossip),
    /// The control link to a peer came up or went down.
    PeerLink {
        /// The peer's endpoint.
        endpoint: String,
        /// Up or down.
        up: bool,
    },
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
    /// To a peer.
    ToPeer {
        /// The peer broker process.
        to: ProcessId,
        /// The message.
        message: PeerMessage,
        /// Its fate.
        delivery: Delivery,
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
    engine: Option<Engine>,
    config: EngineConfig,
    clock: Clock,
    limits: Limits,
    rng: Rng,
    /// The tick scheduled, and its token (older tokens are stale).
    tick: Option<SimTime>,
    tick_token: u64,
    mutation: MutationState,
    /// Starts so far.
    starts: u32,
    /// The current incarnation's id (in a cluster).
    incarnation: Option<BrokerId>,
    shell: Option<PeerShell>,
    /// Peer endpoints of the seeds it is started with (in a cluster).
    seeds: Vec<String>,
    reconnect: Reconnect,
}

impl BrokerNode {
    /// A broker (not started) configured with `config`; in a cluster when `config.cluster` is
    /// set (its identity and endpoints are filled in at each start), with `seeds`.
    pub fn new(
        id: ProcessId,
        config: EngineConfig,
        clock: Clock,
        rng: Rng,
        mutation: MutationState,
        seeds: Vec<ProcessId>,
        reconnect: Reconnect,
    ) -> BrokerNode {
        BrokerNode {
            id,
            limits: config.limits,
            engine: None,
            config,
            clock,
            rng,
            tick: None,
            tick_token: 0,
            mutation,
            starts: 0,
            incarnation: None,
            shell: None,
            seeds: seeds.into_iter().map(|p| endpoints_of(p).peer).collect(),
            reconnect,
        }
    }

    /// What the engine holds now (`None` while crashed).
    pub fn footprint(&self) -> Option<mpreg_broker::engine::Footprint> {
        self.engine.as_ref().map(Engine::footprint)
    }

    /// True while running.
    pub fn is_up(&self) -> bool {
        self.engine.is_some()
    }

    /// Starts (again): a new engine, and in a cluster a new incarnation id.
    pub fn start(&mut self, ctx: &mut Ctx<'_>) {
        if self.engine.is_some() {
            self.kill(ctx);
        }
        self.starts += 1;
        let wall = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(WALL_EPOCH_SECS);
        let ids = IdSource::seeded(self.rng.next_u64(), self.clock.epoch(), wall);
        let mut config = self.config.clone();
        config.name = format!("b{}", self.id.0);
        if let Some(template) = &self.config.cluster {
            let ms = WALL_EPOCH_SECS * 1000 + ctx.now.0 / 1000;
            let random = u128::from(self.rng.next_u64()) << 16 | u128::from(self.starts as u16);
            let me = BrokerId(ulid::Ulid::from_parts(ms, random));
            let endpoints: PeerEndpoints = endpoints_of(self.id);
            let mut cluster =
                ClusterConfig::new(template.cluster.clone(), me, endpoints, self.seeds.clone());
            cluster.swim = template.swim.clone();
            cluster.digest_interval = template.digest_interval;
            cluster.hello_interval = template.hello_interval;
            cluster.ack_timeout = template.ack_timeout;
            config.cluster = Some(cluster);
            self.incarnation = Some(me);
            self.shell = Some(PeerShell::new(self.id, me, self.starts, self.reconnect));
            ctx.broker_started(self.id, me);
            let who = self.id;
            ctx.trace.line(ctx.now, || {
                format!("broker {who} starts as incarnation {me}")
            });
        }
        self.engine = Some(Engine::new(config, self.clock.instant(ctx.now), ids));
        self.tick = None;
        self.schedule_tick(ctx);
    }

    /// Crashes: the engine is dropped, every connection reset.
    pub fn kill(&mut self, ctx: &mut Ctx<'_>) {
        if self.engine.take().is_none() {
            return;
        }
        self.tick_token += 1;
        self.tick = None;
        if let Some(mut shell) = self.shell.take() {
            shell.close_all(ctx);
        }
        ctx.reset_connections(self.id);
        ctx.broker_stopped(self.id);
        self.incarnation = None;
    }

    /// A message arrived on `conn`.
    pub fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, wire: Wire) {
        if self.engine.is_none() {
            return;
        }
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
            Dir::PeerControl | Dir::PeerData => {
                let Some(ConnKind::Peer(from, _)) = ctx.conn_kind(conn) else {
                    panic!("a peer message on {conn}, not a peer link");
                };
                Input::Peer {
                    from,
                    message: wire
                        .decode_peer(&self.limits)
                        .expect("brokers send valid peer messages"),
                }
            }
            Dir::Gossip => Input::Gossip(
                wire.decode_gossip(&self.limits)
                    .expect("brokers send valid gossip"),
            ),
            other => panic!("a broker received a {other:?} message"),
        };
        self.call(ctx, input);
    }

    /// A timer fired.
    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: Timer) {
        match timer {
            Timer::BrokerTick { token } => {
                if token != self.tick_token || self.engine.is_none() {
                    return;
                }
                self.tick = None;
                self.call(ctx, Input::Tick);
            }
            Timer::Link {
                incarnation,
                attempt,
            } => {
                let Some(shell) = self.shell.as_mut().filter(|_| incarnation == self.starts) else {
                    return;
                };
                if let Some(endpoint) = shell.on_timer(ctx, attempt) {
                    self.call(ctx, Input::PeerLink { endpoint, up: true });
                }
            }
            other => panic!("{other:?} armed for broker {}", self.id),
        }
    }

    /// One of the connections this broker opened was reset.
    pub fn on_reset(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        let Some(shell) = self.shell.as_mut() else {
            return;
        };
        if let Some(endpoint) = shell.on_reset(ctx, conn) {
            self.call(
                ctx,
                Input::PeerLink {
                    endpoint,
                    up: false,
                },
            );
        }
    }

    /// What this broker says of its cluster (`cluster` and `functions`), asked out of band
    /// (an operator's instant look, not a client on the network).
    pub fn observe(&mut self, ctx: &mut Ctx<'_>) -> Option<Observation> {
        let engine = self.engine.as_mut()?;
        let now = self.clock.instant(ctx.now);
        let mut out = SimOutbox {
            ctx,
            outputs: Vec::new(),
            mutation: &mut self.mutation,
            shell: self.shell.as_mut(),
            captured: Vec::new(),
        };
        let origin = || ClientOrigin {
            addr: client_addr(OBSERVER),
            user: None,
            bytes: 0,
        };
        engine.on_client(
            &mut out,
            origin(),
            ClientToBroker::Cluster(ClusterRequest { id: 1 }),
            now,
        );
        engine.on_client(
            &mut out,
            origin(),
            ClientToBroker::Functions(FunctionsRequest { id: 2 }),
            now,
        );
        let mut cluster = None;
        let mut functions = None;
        for reply in std::mem::take(&mut out.captured) {
            match reply {
                BrokerToClient::Cluster(c) => cluster = Some(c),
                BrokerToClient::Functions(f) => functions = Some(f),
                _ => {}
            }
        }
        let outputs = std::mem::take(&mut out.outputs);
        if !outputs.is_empty() {
            let (broker, id, at) = (self.id, self.incarnation, ctx.now);
            let footprint = engine.footprint();
            ctx.cluster
                .after_call(broker, id, at, &Input::Tick, &outputs, &footprint);
        }
        Some(Observation {
            cluster: cluster?,
            functions: functions?,
        })
    }

    fn call(&mut self, ctx: &mut Ctx<'_>, input: Input) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        let now = self.clock.instant(ctx.now);
        if let Some((origin, plan)) = self.mutation.hidden_plan(&input) {
            let mut out = SimOutbox {
                ctx,
                outputs: Vec::new(),
                mutation: &mut self.mutation,
                shell: self.shell.as_mut(),
                captured: Vec::new(),
            };
            engine.on_client(&mut out, origin, ClientToBroker::Plan(plan), now);
        }
        let before = engine.counters().clone();
        let mut out = SimOutbox {
            ctx,
            outputs: Vec::new(),
            mutation: &mut self.mutation,
            shell: self.shell.as_mut(),
            captured: Vec::new(),
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
                engine.on_client(&mut out, origin, message.clone(), now);
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
                engine.on_worker(&mut out, origin, message.clone(), now);
            }
            Input::Tick => engine.on_tick(&mut out, now),
            Input::Peer { from, message } => {
                out.mutation.peer_input(message);
                engine.on_peer(&mut out, *from, message.clone(), now);
            }
            Input::Gossip(message) => engine.on_gossip(&mut out, message.clone(), now),
            Input::PeerLink { endpoint, up } => engine.on_peer_link(&mut out, endpoint, *up, now),
        }
        let outputs = std::mem::take(&mut out.outputs);
        if ctx.trace.enabled() {
            trace_call(ctx, &input, &outputs);
        }
        let broker = self.id;
        let at = ctx.now;
        if self.shell.is_some() {
            let id = self.incarnation;
            let footprint = engine.footprint();
            ctx.cluster
                .after_call(broker, id, at, &input, &outputs, &footprint);
        } else {
            let after = engine.counters().clone();
            let footprint = engine.footprint();
            ctx.checker
                .after_call(broker, at, &input, &outputs, &before, &after, &footprint);
        }
        self.schedule_tick(ctx);
    }

    /// Arms a tick at the engine's next deadline, unless one is armed for then already.
    fn schedule_tick(&mut self, ctx: &mut Ctx<'_>) {
        let Some(engine) = &self.engine else {
            return;
        };
        let at = self.clock.sim(engine.next_deadline()).max(ctx.now);
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
        Input::Peer { from, message } => format!("{message:?} from {from}"),
        Input::Gossip(g) => format!("gossip {g:?}"),
        Input::PeerLink { endpoint, up } => format!("link to {endpoint} up: {up}"),
    };
    let what: String = what.chars().take(300).collect();
    let me = ctx.me;
    ctx.trace.line(ctx.now, || {
        format!("engine {me}: {what}: {} outputs", outputs.len())
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
            Output::ToPeer {
                to,
                message,
                delivery,
            } => format!("  -> {to} {message:?} ({delivery:?})"),
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
    shell: Option<&'a mut PeerShell>,
    /// Replies to the observer.
    captured: Vec<BrokerToClient>,
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

    /// Sends a peer message (when this broker is in a cluster), recording it.
    pub fn send_peer(&mut self, endpoint: &str, link: Link, message: &PeerMessage) -> Delivery {
        let Some(shell) = self.shell.as_deref_mut() else {
            return Delivery::Gone;
        };
        let delivery = shell.send(self.ctx, endpoint, link, message);
        if let Some(to) = super::cluster::links::process_of(endpoint) {
            self.outputs.push(Output::ToPeer {
                to,
                message: message.clone(),
                delivery,
            });
        }
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
        if conn == OBSERVER {
            self.captured.push(message.clone());
            return Delivery::Sent;
        }
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
        if let Some((endpoint, forward)) = self.mutation.reforward(task, &*self.ctx) {
            // A forwarded step forwarded again instead of run here.
            self.send_peer(&endpoint, Link::Data, &forward);
            return Delivery::Sent;
        }
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

    fn to_peer(&mut self, peer_endpoint: &str, link: Link, message: &PeerMessage) -> Delivery {
        let tamper = self.mutation.peer(peer_endpoint, message, &*self.ctx);
        if tamper.drop {
            return Delivery::Sent;
        }
        let delivery = self.send_peer(peer_endpoint, link, message);
        for (endpoint, extra) in tamper.also {
            self.send_peer(&endpoint, link, &extra);
        }
        delivery
    }

    fn gossip(&mut self, message: &Gossip) {
        if let Some(shell) = self.shell.as_deref_mut() {
            shell.gossip(self.ctx, message);
        }
    }

    fn connect_peer(&mut self, endpoints: &PeerEndpoints) {
        if let Some(shell) = self.shell.as_deref_mut() {
            shell.connect(self.ctx, endpoints);
        }
    }

    fn disconnect_peer(&mut self, endpoints: &PeerEndpoints) {
        if let Some(shell) = self.shell.as_deref_mut() {
            shell.disconnect(self.ctx, endpoints);
        }
    }

    fn reset_peer(&mut self, peer_endpoint: &str) {
        if let Some(shell) = self.shell.as_deref_mut() {
            shell.reset(self.ctx, peer_endpoint);
        }
    }
}
