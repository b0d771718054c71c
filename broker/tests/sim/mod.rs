//! A deterministic simulation of MPREG, in the spirit of raft-rs's test network and
//! FoundationDB's simulator: the real broker engine, simulated clients and workers, a
//! simulated network and clock, all driven by one `u64` seed. No thread, no sleep, no clock
//! read: time advances only as events are taken off the queue.
//!
//! Layout:
//! - [`rng`]: the seeded generator; [`clock`]: simulated time and the event queue.
//! - [`network`]: links between processes, delays, partitions, loss, reordering, full queues.
//! - [`broker`]: a broker process (the real engine behind a simulated shell);
//!   [`worker`], [`client`]: the other processes, as protocol state machines;
//!   [`messages`]: protocol messages built from their wire fields.
//! - [`functions`]: what workers compute; [`plan_gen`]: random plans; [`model`]: what every
//!   plan must produce, from the plan semantics alone.
//! - The checker: [`properties`] (the properties, the entry points, the checks after each
//!   engine call), [`broker_view`] (what a broker must hold), [`inputs`] (how inputs and ticks
//!   change it), [`replies`] and [`dispatch`] (what the broker sends clients and workers,
//!   judged); [`mutation`]: broken brokers proving that every property can fire.
//! - [`scenario`]: a run's cast and faults from its seed; [`trace`]: the replay trace.
//! - [`cluster`]: several brokers: their peer sockets, crashes and restarts, the cluster
//!   scenario, the cluster's properties and the convergence monitor (see its documentation).
//!
//! Every process is addressed by a [`ProcessId`] and every message travels through the one
//! [`network::Network`] on a connection ([`ConnId`]) between two processes; a broker is one
//! kind of [`Process`]. In a cluster each broker is a `Process::Broker` whose engine is fed its
//! peers' messages through the engine's peer entry points (`on_peer`, `on_gossip`,
//! `on_peer_link`); peer links and gossip are connections of the same network (so partitions,
//! loss and delays apply to them unchanged). A run is either one broker, checked call by call
//! by the strict [`properties::Checker`], or a cluster, checked end to end by
//! [`cluster::check::ClusterChecker`].

pub mod broker;
pub mod broker_view;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod dispatch;
pub mod functions;
pub mod inputs;
pub mod messages;
pub mod model;
pub mod mutation;
pub mod network;
pub mod plan_gen;
pub mod properties;
pub mod replies;
pub mod rng;
pub mod scenario;
pub mod trace;
pub mod worker;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mpreg_broker::outbox::Delivery;
use mpreg_protocol::{BrokerId, Limits};

use broker::BrokerNode;
use client::{ClientNode, ClientTimer};
use clock::{Clock, EventQueue, SimTime};
use cluster::check::{ClusterChecker, ClusterStats};
use cluster::links::Reconnect;
use model::ModelSabotage;
use mutation::{Mutation, MutationState};
use network::{ConnId, ConnKind, Dir, NetStats, Network, ProcessId, Transit, Wire};
use properties::{Checker, Stats, Violation};
use rng::Rng;
use scenario::{Fault, Scenario, BROKER};
use trace::Trace;
use worker::{WorkerNode, WorkerTimer};

/// Events beyond which a run is declared runaway.
const MAX_EVENTS: u64 = 2_000_000;

/// A timer, addressed to one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// The broker's engine is due (`on_tick`); stale tokens are ignored.
    BrokerTick {
        /// Which arming.
        token: u64,
    },
    /// A broker's connection attempt to a peer (stale once it restarted).
    Link {
        /// The broker's start it belongs to.
        incarnation: u32,
        /// Which attempt.
        attempt: u64,
    },
    /// A worker's timer, for one session of one of its connections.
    Worker {
        /// Which broker's session.
        link: u32,
        /// The session it was armed in.
        session: u32,
        /// Which.
        kind: WorkerTimer,
    },
    /// A client's timer.
    Client(ClientTimer),
}

/// Something that happens at a simulated time.
pub enum Event {
    /// A message reaches the end of its link.
    Deliver {
        /// The link.
        conn: ConnId,
        /// The message.
        wire: Wire,
    },
    /// A timer fires.
    Timer {
        /// Whose.
        to: ProcessId,
        /// Which.
        timer: Timer,
    },
    /// A fault (or a process's start).
    Fault(Fault),
    /// A connection's bound end (a broker) learns that the connecting end closed it.
    Closed(ConnId),
    /// A connection's connecting end learns that it was reset (its bound end died, or a
    /// heartbeat timed out).
    Reset(ConnId),
    /// A partition starts: connections between brokers across it time out unless it heals
    /// first (ZMTP heartbeats).
    CutStarts(usize),
    /// A connection across partition `cut` reaches its heartbeat timeout.
    HeartbeatTimeout {
        /// The connection.
        conn: ConnId,
        /// The partition.
        cut: usize,
    },
    /// The convergence monitor looks at every broker.
    Poll,
    /// A message that waited for its broker to start (a socket connecting to an endpoint
    /// nobody listens on yet queues what it sends) is delivered, if its connection is still
    /// open.
    Redeliver {
        /// The link.
        conn: ConnId,
        /// The message.
        wire: Wire,
    },
}

/// What a process may do while it handles an event.
pub struct Ctx<'w> {
    /// The current time.
    pub now: SimTime,
    /// The process handling the event.
    pub me: ProcessId,
    queue: &'w mut EventQueue<Event>,
    net: &'w mut Network,
    /// The checker of a single broker, told of plans sent and replies received.
    pub checker: &'w mut Checker,
    /// The checker of a cluster.
    pub cluster: &'w mut ClusterChecker,
    /// The trace.
    pub trace: &'w mut Trace,
    /// The brokers running, with their incarnation ids.
    brokers: &'w mut BTreeMap<ProcessId, BrokerId>,
}

impl Ctx<'_> {
    /// Sends `wire` on `conn`; what the sender's socket reports.
    pub fn send(&mut self, conn: ConnId, wire: Wire) -> Delivery {
        match self.net.send(self.now, conn, wire.dir) {
            Transit::Arrives(at) => {
                self.queue.at(at, Event::Deliver { conn, wire });
                Delivery::Sent
            }
            Transit::Lost => {
                let kind = wire.kind;
                self.trace.line(self.now, || format!("{conn} lost: {kind}"));
                if let Some((a, b)) = self.net.ends(conn) {
                    self.cluster.lost(self.now, a, b);
                }
                Delivery::Sent
            }
            Transit::Void => Delivery::Sent,
            Transit::Refused(delivery) => {
                let kind = wire.kind;
                self.trace.line(self.now, || {
                    format!("{conn} refused ({delivery:?}): {kind}")
                });
                if delivery == Delivery::Full {
                    // A full queue (the high-water-mark mode) is a failure like a lost
                    // message: the engine drops a worker it cannot send to, and its steps may
                    // end with `worker_lost`.
                    if let Some((a, b)) = self.net.ends(conn) {
                        self.cluster.lost(self.now, a, b);
                    }
                }
                delivery
            }
        }
    }

    /// Arms `timer` after `after`.
    pub fn timer(&mut self, after: Duration, timer: Timer) {
        self.queue.after(after, Event::Timer { to: self.me, timer });
    }

    /// Arms `timer` at `at`.
    pub fn timer_at(&mut self, at: SimTime, timer: Timer) {
        self.queue.at(at, Event::Timer { to: self.me, timer });
    }

    /// Opens a session to `broker`.
    pub fn connect(&mut self, broker: ProcessId) -> ConnId {
        self.open(broker, ConnKind::Session)
    }

    /// Opens a connection of `kind` to the bound end `to`.
    pub fn open(&mut self, to: ProcessId, kind: ConnKind) -> ConnId {
        let conn = self.net.open(self.me, to, kind);
        let me = self.me;
        self.trace.line(self.now, || {
            format!("{conn} opened: {me} -> {to} ({kind:?})")
        });
        conn
    }

    /// Closes `conn` from this (connecting) end.
    pub fn close(&mut self, conn: ConnId) {
        if let Some(at) = self.net.close(self.now, conn) {
            self.queue.at(at, Event::Closed(conn));
            self.trace.line(self.now, || format!("{conn} closed"));
        }
    }

    /// Gives `conn` up at both ends at once: what it has in flight is lost.
    pub fn sever(&mut self, conn: ConnId) {
        if self.net.sever(conn) {
            self.trace.line(self.now, || format!("{conn} severed"));
        }
    }

    /// This process (a broker) dies: every connection it is the bound end of is reset (the
    /// connecting ends learn of it one delay later); those it opened are closed.
    pub fn reset_connections(&mut self, me: ProcessId) {
        for (conn, bound) in self.net.open_conns_of(me) {
            if bound {
                if let Some(at) = self.net.close_bound(self.now, conn) {
                    self.queue.at(at, Event::Reset(conn));
                }
            } else {
                self.close(conn);
            }
        }
    }

    /// What a connection carries.
    pub fn conn_kind(&self, conn: ConnId) -> Option<ConnKind> {
        self.net.kind(conn)
    }

    /// The open gossip subscriptions to `publisher`.
    pub fn subscribers(&self, publisher: ProcessId) -> Vec<ConnId> {
        self.net.subscribers(publisher)
    }

    /// The brokers running now.
    pub fn live_brokers(&self) -> Vec<ProcessId> {
        self.brokers.keys().copied().collect()
    }

    /// The incarnation of broker `p` running now, if it runs.
    pub fn broker_incarnation(&self, p: ProcessId) -> Option<BrokerId> {
        self.brokers.get(&p).copied()
    }

    /// True while a partition holds traffic between this process and `other`.
    pub fn cut_between(&self, a: ProcessId, b: ProcessId) -> bool {
        self.net.cut_between(self.now, a, b)
    }

    /// When a connection attempt from `a` to `b` made now completes its handshake.
    pub fn handshake(&mut self, a: ProcessId, b: ProcessId) -> SimTime {
        self.net.handshake(self.now, a, b)
    }

    /// Broker `p` started as incarnation `id`.
    pub fn broker_started(&mut self, p: ProcessId, id: BrokerId) {
        self.brokers.insert(p, id);
    }

    /// Broker `p` stopped.
    pub fn broker_stopped(&mut self, p: ProcessId) {
        self.brokers.remove(&p);
    }
}

/// A simulated process.
pub enum Process {
    /// A broker.
    Broker(Box<BrokerNode>),
    /// A worker.
    Worker(WorkerNode),
    /// A client.
    Client(ClientNode),
}

/// How to run one seed.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// Print every event.
    pub trace: bool,
    /// Break the broker (or the model) on purpose.
    pub mutation: Mutation,
    /// `None`: one broker, checked call by call; `Some((lo, hi))`: a cluster of `lo..=hi`
    /// brokers (drawn from the seed), checked end to end.
    pub cluster: Option<(u32, u32)>,
}

/// What a run did, and the first property it broke.
#[derive(Debug)]
pub struct Report {
    /// The first violation.
    pub violation: Option<Violation>,
    /// What happened (one broker).
    pub stats: Stats,
    /// What happened (a cluster).
    pub cluster: ClusterStats,
    /// What the network did.
    pub net: NetStats,
    /// Events handled.
    pub events: u64,
    /// A digest of every message delivered (equal for equal seeds).
    pub digest: u64,
}

/// Every process, the network, the clock and the checkers of one run.
pub struct World {
    /// Pending events.
    pub queue: EventQueue<Event>,
    /// The network.
    pub net: Network,
    /// The checker of a single broker.
    pub checker: Checker,
    /// The checker of a cluster.
    pub cluster: ClusterChecker,
    /// The trace.
    pub trace: Trace,
    /// Every process, by id.
    pub processes: Vec<Process>,
    /// The brokers running, with their incarnation ids.
    pub brokers: BTreeMap<ProcessId, BrokerId>,
    /// Limits of the codec.
    pub limits: Limits,
    /// How long a partition lasts before the brokers' connections across it time out.
    pub heartbeat_timeout: Option<Duration>,
    /// Clients act until then (a cluster run).
    pub cluster_active: SimTime,
    /// Everything settled: the run may stop.
    pub finished: bool,
    /// Messages waiting for a broker that does not run (on sessions opened while it was
    /// down), by broker.
    pub parked: BTreeMap<ProcessId, Vec<(ConnId, Wire)>>,
}

impl World {
    /// Runs `f` on process `p` with a context.
    pub fn with<R>(&mut self, p: ProcessId, f: impl FnOnce(&mut Process, &mut Ctx<'_>) -> R) -> R {
        let mut ctx = Ctx {
            now: self.queue.now(),
            me: p,
            queue: &mut self.queue,
            net: &mut self.net,
            checker: &mut self.checker,
            cluster: &mut self.cluster,
            trace: &mut self.trace,
            brokers: &mut self.brokers,
        };
        f(&mut self.processes[p.0 as usize], &mut ctx)
    }

    fn describe(&self, wire: &Wire) -> String {
        let text = match wire.dir {
            Dir::ClientToBroker => format!("{:?}", wire.decode_client(&self.limits)),
            Dir::BrokerToClient => format!("{:?}", wire.decode_to_client(&self.limits)),
            Dir::WorkerToBroker => format!("{:?}", wire.decode_worker(&self.limits)),
            Dir::BrokerToWorker => format!("{:?}", wire.decode_to_worker(&self.limits)),
            Dir::PeerControl | Dir::PeerData => format!("{:?}", wire.decode_peer(&self.limits)),
            Dir::Gossip => format!("{:?}", wire.decode_gossip(&self.limits)),
        };
        text.chars().take(400).collect()
    }

    /// The first violation either checker found.
    pub fn violated(&self) -> bool {
        !self.checker.violations.is_empty() || !self.cluster.violations.is_empty()
    }

    /// Handles one event.
    pub fn handle(&mut self, event: Event) {
        let now = self.queue.now();
        match event {
            Event::Deliver { conn, wire } => {
                let delivered = self.net.arrive(conn, wire.dir);
                self.deliver(conn, wire, delivered);
            }
            Event::Redeliver { conn, wire } => {
                let open = self.net.is_open(conn);
                self.deliver(conn, wire, open);
            }
            Event::Timer { to, timer } => self.with(to, |p, ctx| match (p, timer) {
                (Process::Broker(b), timer) => b.on_timer(ctx, timer),
                (
                    Process::Worker(w),
                    Timer::Worker {
                        link,
                        session,
                        kind,
                    },
                ) => w.on_timer(ctx, link, session, kind),
                (Process::Client(c), Timer::Client(t)) => c.on_timer(ctx, t),
                (_, timer) => panic!("{timer:?} armed for the wrong process {to}"),
            }),
            Event::Fault(fault) => {
                self.trace.line(now, || format!("fault: {fault:?}"));
                let (Fault::Kill(p) | Fault::Restart(p) | Fault::Leave(p)) = fault;
                let up = match &self.processes[p.0 as usize] {
                    Process::Worker(w) => w.is_up(),
                    Process::Broker(b) => b.is_up(),
                    Process::Client(_) => false,
                };
                if !matches!(fault, Fault::Restart(_)) || up {
                    // A start follows a logged kill or departure (or is the first), unless
                    // the process still runs: then the restart kills it first.
                    self.cluster.fault(now, p);
                }
                self.with(p, |process, ctx| match (process, fault) {
                    (Process::Worker(w), Fault::Kill(_)) => w.kill(ctx),
                    (Process::Worker(w), Fault::Restart(_)) => w.start(ctx),
                    (Process::Worker(w), Fault::Leave(_)) => w.leave(ctx),
                    (Process::Broker(b), Fault::Kill(_)) => b.kill(ctx),
                    (Process::Broker(b), Fault::Restart(_)) => b.start(ctx),
                    _ => panic!("{fault:?} for a client"),
                });
                if let (Fault::Restart(_), Some(waiting)) = (fault, self.parked.remove(&p)) {
                    for (conn, wire) in waiting {
                        self.queue.at(now, Event::Redeliver { conn, wire });
                    }
                }
            }
            Event::Closed(conn) => {
                self.trace
                    .line(now, || format!("{conn}: the bound end sees it closed"));
                self.net.closed_seen(conn);
            }
            Event::Reset(conn) => self.reset(conn),
            Event::CutStarts(cut) => {
                let Some(timeout) = self.heartbeat_timeout else {
                    return;
                };
                let c = self.net.faults().cuts[cut].clone();
                for conn in self.net.crossing(&c, true) {
                    let at = c.from.after(timeout);
                    self.queue.at(at, Event::HeartbeatTimeout { conn, cut });
                }
            }
            Event::HeartbeatTimeout { conn, cut } => {
                let healed = self.net.faults().cuts[cut].until <= now;
                if !healed && self.net.sever(conn) {
                    self.trace.line(now, || {
                        format!("{conn}: heartbeat timeout across a partition")
                    });
                    self.reset(conn);
                }
            }
            Event::Poll => self.poll(),
        }
    }

    /// A message reaches the end of `conn` (`delivered`: the end is still open there).
    fn deliver(&mut self, conn: ConnId, wire: Wire, delivered: bool) {
        let now = self.queue.now();
        let Some((peer, bound)) = self.net.ends(conn) else {
            return;
        };
        let (from, to) = if wire.dir.toward_bound() {
            (peer, bound)
        } else {
            (bound, peer)
        };
        let parks = delivered
            && wire.dir.toward_bound()
            && self.net.kind(conn) == Some(ConnKind::Session)
            && matches!(&self.processes[to.0 as usize], Process::Broker(b) if !b.is_up());
        if parks {
            self.trace.line(now, || {
                format!("{conn} {from} -> {to}: waits for {to} to start")
            });
            self.parked.entry(to).or_default().push((conn, wire));
            return;
        }
        if self.trace.enabled() {
            let text = self.describe(&wire);
            let fate = if delivered { "" } else { " (dropped: closed)" };
            self.trace
                .line(now, || format!("{conn} {from} -> {to}{fate}: {text}"));
        }
        if !delivered {
            return;
        }
        self.trace.digest_bytes(&now.0.to_le_bytes());
        self.trace.digest_bytes(&conn.0.to_le_bytes());
        self.trace.digest_bytes(wire.kind.as_bytes());
        self.trace.digest_bytes(&wire.body);
        self.with(to, |p, ctx| match p {
            Process::Broker(b) => b.on_message(ctx, conn, wire),
            Process::Worker(w) => w.on_message(ctx, conn, wire),
            Process::Client(c) => c.on_message(ctx, conn, wire),
        });
    }

    /// The connecting end of `conn` learns it was reset.
    fn reset(&mut self, conn: ConnId) {
        let now = self.queue.now();
        let Some((peer, _)) = self.net.ends(conn) else {
            return;
        };
        self.trace
            .line(now, || format!("{conn}: {peer} sees it reset"));
        self.with(peer, |p, ctx| match p {
            Process::Broker(b) => b.on_reset(ctx, conn),
            Process::Worker(w) => w.on_closed(ctx, conn),
            Process::Client(c) => c.on_closed(ctx, conn),
        });
    }

    /// Runs events until `horizon` (or the first violation, or `stop` says so); the events
    /// handled.
    pub fn run_until(&mut self, horizon: SimTime, mut stop: impl FnMut(&World) -> bool) -> u64 {
        let mut events = 0u64;
        while let Some(event) = self.queue.pop_until(horizon) {
            events += 1;
            self.handle(event);
            if self.violated() || stop(self) {
                break;
            }
            if events > MAX_EVENTS {
                let now = self.queue.now();
                self.checker.violations.push(Violation {
                    property: properties::Property::Bounded,
                    at: now,
                    message: format!("runaway: {MAX_EVENTS} events, {} pending", self.queue.len()),
                });
                break;
            }
        }
        events
    }
}

/// Runs one seed to its horizon and checks every property.
pub fn run(sim: SimConfig) -> Report {
    if sim.cluster.is_some() {
        return cluster::run::run(sim);
    }
    let mut rng = Rng::new(sim.seed);
    let scenario = Scenario::generate(&mut rng);
    let mut trace = Trace::new(sim.trace);
    trace.line(SimTime::ZERO, || format!("seed {}\n{scenario}", sim.seed));
    let sabotage = match sim.mutation {
        Mutation::WrongModel => ModelSabotage::WrongEcho,
        _ => ModelSabotage::None,
    };
    let config = scenario.config.clone();
    let limits = config.limits;
    let checker = Checker::new(config.clone(), sabotage, !scenario.net.reorder);
    let clock = Clock::new(Instant::now());
    let reconnect = Reconnect {
        first: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };
    let mut processes = vec![Process::Broker(Box::new(BrokerNode::new(
        BROKER,
        config.clone(),
        clock,
        rng.fork(),
        MutationState::new(sim.mutation),
        Vec::new(),
        reconnect,
    )))];
    for spec in &scenario.workers {
        let id = ProcessId(processes.len() as u32);
        processes.push(Process::Worker(WorkerNode::new(
            id,
            rng.fork(),
            spec.clone(),
            limits,
            config.heartbeat,
            config.liveness,
        )));
    }
    let mut queue = EventQueue::new();
    for (start, script) in &scenario.clients {
        let id = ProcessId(processes.len() as u32);
        processes.push(Process::Client(ClientNode::new(
            id,
            rng.fork(),
            limits,
            script.clone(),
        )));
        queue.at(
            *start,
            Event::Timer {
                to: id,
                timer: Timer::Client(ClientTimer::Start),
            },
        );
    }
    for &(at, fault) in &scenario.faults {
        queue.at(at, Event::Fault(fault));
    }
    let mut world = World {
        queue,
        net: Network::new(rng.fork(), scenario.net.clone()),
        checker,
        cluster: ClusterChecker::disabled(),
        trace,
        processes,
        brokers: BTreeMap::new(),
        limits,
        heartbeat_timeout: None,
        cluster_active: SimTime::ZERO,
        finished: false,
        parked: BTreeMap::new(),
    };
    world.with(BROKER, |p, ctx| {
        if let Process::Broker(b) = p {
            b.start(ctx);
        }
    });
    let events = world.run_until(scenario.horizon, |_| false);
    let footprints: Vec<(ProcessId, _)> = world
        .processes
        .iter()
        .filter_map(|p| match p {
            Process::Broker(b) => Some((b.id, b.footprint()?)),
            _ => None,
        })
        .collect();
    world.checker.finish(scenario.horizon, &footprints);
    let violation = world.checker.violations.first().cloned();
    if let Some(v) = &violation {
        world.trace.line(v.at, || format!("VIOLATION {v}"));
    }
    Report {
        violation,
        stats: world.checker.stats.clone(),
        cluster: ClusterStats::default(),
        net: world.net.stats,
        events,
        digest: world.trace.digest(),
    }
}
