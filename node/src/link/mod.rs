//! The node's reactor: one DEALER per broker, registration, heartbeats both ways, reconnection
//! with backoff, task execution within the node's capacity, graceful drain.
//!
//! Every broker connection is a *session* numbered by its link's `generation`. A session ends
//! when the broker goes silent, says `disconnect`, or says `reconnect` (it no longer knows us,
//! so it has already given up on our tasks and may reuse their ids). Tasks of an ended session
//! are abandoned: queued ones are dropped, running ones are aborted when possible, and no
//! reply is ever sent for them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpreg_protocol::{
    compact_frame, encode_body, parse_envelope, BrokerToWorker, Disconnect, Heartbeat, Limits,
    Register, TaskId,
};
use mpreg_transport::{
    Handler, Io, SocketId, SocketKind, SocketOptions, SocketSpec, WeakReactorHandle,
};
use slog::{debug, error, info, warn, Logger};

use crate::functions::{Function, Outcome};
use crate::metrics::NodeMetrics;

mod tasks;

use tasks::{Queued, Running};

/// First delay before reopening a connection to a broker that went silent.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest delay between reconnection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(32);
/// How often `register` is repeated until the broker answers.
pub const REGISTER_EVERY: Duration = Duration::from_secs(1);
/// How soon `register` is retried while the connection is not up yet (the send fails at once
/// with IMMEDIATE set, so this only costs a failed non-blocking send).
pub const REGISTER_RETRY: Duration = Duration::from_millis(20);
/// After the drain, how long the sockets stay open so that libzmq's I/O thread can write the
/// last results: the reactor closes sockets with LINGER 0, which discards unsent messages.
pub const FLUSH_GRACE: Duration = Duration::from_millis(100);
/// Heartbeat interval assumed before a broker has told us its own, in milliseconds.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Shortest heartbeat interval honoured, whatever a broker asks (bounds the timer rate).
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
/// Disconnect reason sent to brokers at shutdown.
pub const SHUTDOWN_REASON: &str = "shutting down";

/// One task of one broker session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskKey {
    /// Which broker link it came from.
    pub link: usize,
    /// The link's session when the task arrived.
    pub generation: u64,
    /// The broker's task id.
    pub task: TaskId,
}

/// Messages to the node's reactor.
pub enum Command {
    /// A task running off the reactor ended; `None` when it was aborted before finishing.
    Done {
        /// The task.
        key: TaskKey,
        /// Its outcome.
        outcome: Option<Outcome>,
        /// When its function started and returned (`None` when it panicked or was aborted).
        ran: Option<(Instant, Instant)>,
    },
    /// Stop taking tasks, finish the running ones until `deadline`, then end.
    Shutdown {
        /// Drain deadline.
        deadline: Instant,
    },
}

/// Called with a broker endpoint each time the node registers with it.
pub type OnRegistered = Arc<dyn Fn(&str) + Send + Sync>;

struct Link {
    endpoint: String,
    socket: Option<SocketId>,
    generation: u64,
    registered: bool,
    heartbeat: Duration,
    liveness: u32,
    last_heard: Instant,
    next_heartbeat: Instant,
    next_register: Instant,
    reopen_at: Option<Instant>,
    backoff: Duration,
    /// The broker refused our registration as invalid: never reopened.
    refused: bool,
}

impl Link {
    fn new(endpoint: String, now: Instant) -> Link {
        Link {
            endpoint,
            socket: None,
            generation: 0,
            registered: false,
            heartbeat: DEFAULT_HEARTBEAT,
            liveness: 3,
            last_heard: now,
            next_heartbeat: now,
            next_register: now,
            reopen_at: None,
            backoff: BACKOFF_MIN,
            refused: false,
        }
    }

    /// When this link next needs the timer.
    fn deadline(&self) -> Option<Instant> {
        if self.socket.is_none() {
            self.reopen_at
        } else if self.registered {
            Some(
                self.next_heartbeat
                    .min(self.last_heard + self.heartbeat * self.liveness),
            )
        } else {
            Some(self.next_register)
        }
    }
}

/// Where the node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Shutdown asked: no new registrations, running and queued tasks finish until `deadline`.
    Draining {
        deadline: Instant,
    },
    /// Drained: the sockets stay open until `at` so the last replies leave.
    Closing {
        at: Instant,
    },
    Finished,
}

/// What the node serves and how it reports.
pub(crate) struct NodeSetup {
    pub(crate) name: String,
    pub(crate) functions: HashMap<String, Function>,
    /// Semantic versions of some functions.
    pub(crate) versions: HashMap<String, String>,
    /// Functions declared cacheable.
    pub(crate) cacheable: HashMap<String, mpreg_protocol::CacheRule>,
    pub(crate) resources: Vec<String>,
    pub(crate) capacity: u32,
    pub(crate) brokers: Vec<String>,
    /// CURVE: the brokers' public key and this node's key pair.
    pub(crate) curve: Option<mpreg_transport::Curve>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) on_registered: Option<OnRegistered>,
    /// Number of brokers the node is registered with now.
    pub(crate) registered: tokio::sync::watch::Sender<usize>,
    /// Set once every broker refused the registration as invalid.
    pub(crate) refused: tokio::sync::watch::Sender<Option<String>>,
    pub(crate) log: Logger,
    /// Updated as tasks come and go; read by the HTTP endpoint.
    pub(crate) metrics: Arc<NodeMetrics>,
}

/// The node's state on its reactor thread.
pub struct NodeHandler {
    setup: NodeSetup,
    /// What the node registers with (the capacity is each broker's share, see
    /// [`NodeHandler::share`]).
    register: Register,
    /// The share the brokers were last told.
    told_share: u32,
    links: Vec<Link>,
    running: HashMap<TaskKey, Running>,
    queue: VecDeque<Queued>,
    phase: Phase,
    limits: Limits,
    /// The reactor's own handle, for the tasks that report back to it.
    own: WeakReactorHandle<Command>,
}

impl NodeHandler {
    /// A handler for these brokers; one socket per broker opens now.
    pub(crate) fn new(
        setup: NodeSetup,
        own: WeakReactorHandle<Command>,
        io: &mut Io,
    ) -> Result<NodeHandler, mpreg_transport::TransportError> {
        let now = io.now();
        let mut functions: Vec<String> = setup.functions.keys().cloned().collect();
        functions.sort();
        let mut resources = setup.resources.clone();
        resources.sort();
        resources.dedup();
        let register = Register {
            node: setup.name.clone(),
            functions,
            resources,
            capacity: setup.capacity.max(1),
            versions: setup.versions.clone().into_iter().collect(),
            cacheable: setup
                .cacheable
                .iter()
                .filter(|(f, _)| setup.functions.contains_key(*f))
                .map(|(f, r)| (f.clone(), r.clone()))
                .collect(),
        };
        let links = setup
            .brokers
            .iter()
            .map(|endpoint| Link::new(endpoint.clone(), now))
            .collect();
        let mut handler = NodeHandler {
            told_share: register.capacity,
            setup,
            register,
            links,
            running: HashMap::new(),
            queue: VecDeque::new(),
            phase: Phase::Serving,
            limits: Limits::default(),
            own,
        };
        for i in 0..handler.links.len() {
            handler.open(io, i)?;
        }
        Ok(handler)
    }

    fn capacity(&self) -> usize {
        self.setup.capacity.max(1) as usize
    }

    /// Tasks running and queued, for the metrics.
    fn update_gauges(&self) {
        let m = &self.setup.metrics;
        m.running.set(self.running.len() as i64);
        m.queued.set(self.queue.len() as i64);
    }

    fn open(&mut self, io: &mut Io, i: usize) -> Result<(), mpreg_transport::TransportError> {
        let options = SocketOptions {
            // Messages go only to a completed connection: a `register` sent before the broker
            // is up fails at once instead of piling up and being delivered in a burst.
            immediate: true,
            ..SocketOptions::dealer_client()
        }
        .with_curve(self.setup.curve.clone())
        .with_max_frame_bytes(self.limits.max_message_bytes.saturating_add(1 << 20));
        let socket = io.open(
            &SocketSpec::new(SocketKind::Dealer, options).connect(self.links[i].endpoint.clone()),
        )?;
        let now = io.now();
        let link = &mut self.links[i];
        link.socket = Some(socket);
        link.generation += 1;
        link.registered = false;
        link.last_heard = now;
        link.reopen_at = None;
        self.send_register(io, i);
        Ok(())
    }

    /// Sends to a broker; false if the message was dropped. A full or not yet connected pipe
    /// drops it: registration and heartbeats are repeated, and a lost result is re-run by the
    /// broker after it expires us.
    fn send(&self, io: &mut Io, i: usize, kind: &str, body: &[u8]) -> bool {
        self.send_frame(io, i, compact_frame(kind.as_bytes(), body))
    }

    /// Sends one compact frame (`MPREG/1 NUL type NUL body`) instead of three: the broker
    /// answers in kind, and under CURVE every frame is a separate encryption.
    fn send_frame(&self, io: &mut Io, i: usize, frame: Vec<u8>) -> bool {
        match self.links[i].socket {
            Some(socket) => io.send(socket, &[frame]).is_ok(),
            None => false,
        }
    }

    /// Each broker's share of the capacity: the node splits it over the brokers it is
    /// registered with (rounding up, at least 1), so their views of its load add up to what it
    /// can run; it never runs more than its capacity in total whatever they send (the
    /// surplus waits in its queue). A broker lost or back changes every share.
    fn share(&self) -> u32 {
        let registered = self.links.iter().filter(|l| l.registered).count() as u32;
        self.setup.capacity.max(1).div_ceil(registered.max(1))
    }

    /// Tells the registered brokers their new share when it changed.
    fn reshare(&mut self, io: &mut Io) {
        let share = self.share();
        if share == self.told_share || self.phase != Phase::Serving {
            return;
        }
        self.told_share = share;
        info!(self.setup.log, "capacity split over the brokers"; "share" => share);
        for i in 0..self.links.len() {
            if self.links[i].registered {
                self.send_register(io, i);
            }
        }
    }

    fn send_register(&mut self, io: &mut Io, i: usize) {
        // A broker not yet registered with is counted: it is about to take its share.
        let registered = self.links.iter().filter(|l| l.registered).count() as u32;
        let counted = registered + u32::from(!self.links[i].registered);
        self.register.capacity = self.setup.capacity.max(1).div_ceil(counted.max(1));
        let body = encode_body(&self.register);
        let retry = if self.send(io, i, "register", &body) {
            REGISTER_EVERY
        } else {
            REGISTER_RETRY
        };
        self.links[i].next_register = io.now() + retry;
    }

    fn link_of(&self, socket: SocketId) -> Option<usize> {
        self.links.iter().position(|l| l.socket == Some(socket))
    }

    fn set_unregistered(&mut self, i: usize) {
        if std::mem::replace(&mut self.links[i].registered, false) {
            self.setup
                .registered
                .send_modify(|n| *n = n.saturating_sub(1));
        }
    }

    /// Ends the link's session: its tasks are abandoned and a new session starts.
    fn end_session(&mut self, i: usize) {
        self.set_unregistered(i);
        let link = &mut self.links[i];
        let old = link.generation;
        link.generation += 1;
        let before = self.queue.len();
        self.queue
            .retain(|q| !(q.key.link == i && q.key.generation == old));
        self.setup
            .metrics
            .abandoned
            .inc_by((before - self.queue.len()) as u64);
        for (key, running) in self.running.iter_mut() {
            if key.link == i && key.generation == old && !running.abandoned {
                running.abandoned = true;
                running.abort.abort();
            }
        }
    }

    /// Forgets a broker connection and schedules a fresh one (new routing id) after the backoff.
    fn drop_link(&mut self, io: &mut Io, i: usize, why: &str) {
        self.end_session(i);
        let now = io.now();
        let link = &mut self.links[i];
        if let Some(socket) = link.socket.take() {
            io.close(socket);
        }
        link.reopen_at = Some(now + link.backoff);
        self.setup.metrics.connections_lost.inc();
        warn!(self.setup.log, "broker connection lost";
            "broker" => &link.endpoint, "why" => why,
            "retry_in_ms" => link.backoff.as_millis() as u64);
        link.backoff = (link.backoff * 2).min(BACKOFF_MAX);
        self.reshare(io);
    }

    fn on_broker_message(&mut self, io: &mut Io, i: usize, frames: Vec<Vec<u8>>) {
        self.links[i].last_heard = io.now();
        let message = match parse_envelope(&frames) {
            Ok(env) => BrokerToWorker::decode(env.kind, env.body, &self.limits),
            Err(e) => {
                warn!(self.setup.log, "malformed message from broker"; "error" => %e);
                return;
            }
        };
        match message {
            Ok(BrokerToWorker::Registered(r)) => self.on_registered(io, i, r),
            Ok(BrokerToWorker::Task(task)) => {
                self.setup.metrics.received.inc();
                if matches!(self.phase, Phase::Closing { .. } | Phase::Finished) {
                    // Too late to run anything: the broker re-dispatches it when we vanish.
                    debug!(self.setup.log, "task refused while closing"; "task" => %task.task);
                    self.setup.metrics.abandoned.inc();
                    return;
                }
                let key = TaskKey {
                    link: i,
                    generation: self.links[i].generation,
                    task: task.task,
                };
                let received = Instant::now();
                self.queue.push_back(Queued {
                    key,
                    task,
                    received,
                });
                self.pump(io);
            }
            Ok(BrokerToWorker::Cancel(cancel)) => {
                let key = TaskKey {
                    link: i,
                    generation: self.links[i].generation,
                    task: cancel.task,
                };
                let before = self.queue.len();
                self.queue.retain(|q| q.key != key);
                self.setup
                    .metrics
                    .abandoned
                    .inc_by((before - self.queue.len()) as u64);
                if let Some(running) = self.running.get_mut(&key) {
                    // The slot frees when the aborted task's `Done` arrives.
                    running.abandoned = true;
                    running.abort.abort();
                }
            }
            Ok(BrokerToWorker::Heartbeat(_)) => {}
            Ok(BrokerToWorker::Reconnect(r)) => {
                info!(self.setup.log, "broker asks to register again";
                    "broker" => &self.links[i].endpoint, "reason" => r.reason);
                self.end_session(i);
                if self.phase == Phase::Serving {
                    self.send_register(io, i);
                }
            }
            Ok(BrokerToWorker::Disconnect(d)) => {
                let why = format!("broker disconnected: {}", d.reason);
                self.drop_link(io, i, &why);
            }
            Ok(BrokerToWorker::Error(e))
                if !self.links[i].registered
                    && e.error_code() == Some(mpreg_protocol::ErrorCode::InvalidBody) =>
            {
                // The registration itself is invalid (a name over the broker's limit, say):
                // sending it again cannot help.
                error!(self.setup.log, "broker refused the registration; not retrying it";
                    "broker" => &self.links[i].endpoint, "code" => e.code, "message" => &e.message);
                self.end_session(i);
                let link = &mut self.links[i];
                link.refused = true;
                if let Some(socket) = link.socket.take() {
                    io.close(socket);
                }
                if self.links.iter().all(|l| l.refused) {
                    let reason = format!(
                        "{} refused the registration: {}",
                        self.links[i].endpoint, e.message
                    );
                    self.setup.refused.send_replace(Some(reason));
                }
                self.reshare(io);
            }
            Ok(BrokerToWorker::Error(e)) => {
                warn!(self.setup.log, "broker reported an error";
                    "broker" => &self.links[i].endpoint, "code" => e.code,
                    "kind" => e.kind, "message" => e.message)
            }
            Err(e) => warn!(self.setup.log, "undecodable message from broker";
                "broker" => &self.links[i].endpoint, "error" => %e),
        }
    }

    fn on_registered(&mut self, io: &mut Io, i: usize, r: mpreg_protocol::Registered) {
        let now = io.now();
        if self.phase != Phase::Serving {
            // A late answer to a `register` sent before shutdown: leave at once.
            let body = encode_body(&Disconnect {
                reason: SHUTDOWN_REASON.into(),
            });
            self.send(io, i, "disconnect", &body);
            return;
        }
        let link = &mut self.links[i];
        link.heartbeat = Duration::from_millis(r.heartbeat_ms).max(MIN_HEARTBEAT);
        link.liveness = r.liveness.max(1);
        link.backoff = BACKOFF_MIN;
        if link.registered {
            return; // An answer to a repeated `register`: nothing new.
        }
        link.registered = true;
        link.next_heartbeat = now + link.heartbeat;
        self.setup.registered.send_modify(|n| *n += 1);
        info!(self.setup.log, "registered";
            "broker" => &r.broker, "endpoint" => &link.endpoint,
            "heartbeat_ms" => r.heartbeat_ms, "capacity" => r.capacity);
        if let Some(callback) = &self.setup.on_registered {
            callback(&self.links[i].endpoint);
        }
        self.reshare(io);
    }

    /// While draining: once nothing is left (or the deadline passed), start closing.
    fn check_drained(&mut self, now: Instant) {
        let Phase::Draining { deadline } = self.phase else {
            return;
        };
        let idle = self.running.is_empty() && self.queue.is_empty();
        if !idle && now < deadline {
            return;
        }
        if !idle {
            warn!(self.setup.log, "drain deadline passed; abandoning tasks";
                "running" => self.running.len(), "queued" => self.queue.len());
        }
        let dropped = self.running.len() + self.queue.len();
        self.setup.metrics.abandoned.inc_by(dropped as u64);
        for (_, running) in self.running.drain() {
            running.abort.abort();
        }
        self.queue.clear();
        self.phase = Phase::Closing {
            at: now + FLUSH_GRACE,
        };
    }

    fn start_drain(&mut self, io: &mut Io, deadline: Instant) {
        if self.phase != Phase::Serving {
            return;
        }
        let body = encode_body(&Disconnect {
            reason: SHUTDOWN_REASON.into(),
        });
        for i in 0..self.links.len() {
            if self.links[i].registered {
                self.send(io, i, "disconnect", &body);
            }
        }
        info!(self.setup.log, "draining";
            "running" => self.running.len(), "queued" => self.queue.len());
        self.phase = Phase::Draining { deadline };
        self.check_drained(io.now());
    }
}

impl Handler for NodeHandler {
    type Command = Command;

    fn on_message(&mut self, io: &mut Io, socket: SocketId, frames: Vec<Vec<u8>>) {
        if let Some(i) = self.link_of(socket) {
            self.on_broker_message(io, i, frames);
        }
        self.update_gauges();
    }

    fn on_command(&mut self, io: &mut Io, command: Command) {
        match command {
            Command::Done { key, outcome, ran } => {
                if let Some(running) = self.running.remove(&key) {
                    if let (false, Some(outcome)) = (running.abandoned, outcome) {
                        let timing = ran.map(|(started, ended)| {
                            self.timing(&running.fun, running.received, started, ended)
                        });
                        self.reply(io, key, outcome, timing);
                    } else {
                        self.setup.metrics.abandoned.inc();
                    }
                }
                self.pump(io);
                self.check_drained(io.now());
            }
            Command::Shutdown { deadline } => self.start_drain(io, deadline),
        }
        self.update_gauges();
    }

    fn on_timer(&mut self, io: &mut Io) {
        let now = io.now();
        if let Phase::Closing { at } = self.phase {
            if now >= at {
                self.phase = Phase::Finished;
            }
            return;
        }
        let serving = self.phase == Phase::Serving;
        let heartbeat = encode_body(&Heartbeat {});
        for i in 0..self.links.len() {
            let link = &self.links[i];
            if link.socket.is_none() {
                if serving && link.reopen_at.is_some_and(|at| now >= at) {
                    if let Err(e) = self.open(io, i) {
                        warn!(self.setup.log, "cannot reconnect";
                            "broker" => &self.links[i].endpoint, "error" => %e);
                        let link = &mut self.links[i];
                        link.reopen_at = Some(now + link.backoff);
                        link.backoff = (link.backoff * 2).min(BACKOFF_MAX);
                    }
                }
                continue;
            }
            if link.registered {
                if now >= link.last_heard + link.heartbeat * link.liveness {
                    self.drop_link(io, i, "no message within the liveness window");
                    continue;
                }
                if now >= link.next_heartbeat {
                    self.send(io, i, "heartbeat", &heartbeat);
                    let link = &mut self.links[i];
                    link.next_heartbeat = now + link.heartbeat;
                }
            } else if now >= link.next_register {
                if serving {
                    self.send_register(io, i);
                } else {
                    // Draining: never register again; park the timer.
                    self.links[i].next_register = now + REGISTER_EVERY;
                }
            }
        }
        self.check_drained(now);
    }

    fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Closing { at } => return Some(at),
            Phase::Finished => return None,
            Phase::Serving | Phase::Draining { .. } => {}
        }
        let drain = match self.phase {
            Phase::Draining { deadline } => Some(deadline),
            _ => None,
        };
        let serving = self.phase == Phase::Serving;
        self.links
            .iter()
            .filter(|l| serving || l.socket.is_some())
            .filter_map(Link::deadline)
            .chain(drain)
            .min()
    }

    fn on_handles_dropped(&mut self, io: &mut Io) {
        self.start_drain(io, io.now());
    }

    fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }
}
