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
//!
//! Every process is addressed by a [`ProcessId`] and every message travels through the one
//! [`network::Network`] on a connection ([`ConnId`]) between two processes; a broker is one
//! kind of [`Process`]. A second broker is another `Process::Broker` with its own id, fed its
//! peers' messages through the engine's peer entry point: clients and workers already name
//! the broker they connect to, the checker already keeps one [`broker_view::BrokerView`] per
//! broker and records which broker received each plan, and broker-to-broker traffic becomes
//! one more pair of [`network::Dir`]s on the same network (so partitions, loss and delays
//! apply to it unchanged).

pub mod broker;
pub mod broker_view;
pub mod client;
pub mod clock;
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

use std::time::{Duration, Instant};

use mpreg_broker::outbox::Delivery;
use mpreg_protocol::Limits;

use broker::BrokerNode;
use client::{ClientNode, ClientTimer};
use clock::{Clock, EventQueue, SimTime};
use model::ModelSabotage;
use mutation::{Mutation, MutationState};
use network::{ConnId, Dir, NetStats, Network, ProcessId, Transit, Wire};
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
    /// A worker's timer, for one session of its connection.
    Worker {
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
    /// A fault (or a worker's start).
    Fault(Fault),
    /// A broker's socket learns that the peer closed `conn`.
    Closed(ConnId),
}

/// What a process may do while it handles an event.
pub struct Ctx<'w> {
    /// The current time.
    pub now: SimTime,
    /// The process handling the event.
    pub me: ProcessId,
    queue: &'w mut EventQueue<Event>,
    net: &'w mut Network,
    /// The checker, told of plans sent and replies received.
    pub checker: &'w mut Checker,
    /// The trace.
    pub trace: &'w mut Trace,
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
                Delivery::Sent
            }
            Transit::Refused(delivery) => {
                let kind = wire.kind;
                self.trace.line(self.now, || {
                    format!("{conn} refused ({delivery:?}): {kind}")
                });
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

    /// Opens a connection to `broker`.
    pub fn connect(&mut self, broker: ProcessId) -> ConnId {
        let conn = self.net.connect(self.me, broker);
        let me = self.me;
        self.trace
            .line(self.now, || format!("{conn} opened: {me} -> {broker}"));
        conn
    }

    /// Closes `conn` from this end.
    pub fn close(&mut self, conn: ConnId) {
        if let Some(at) = self.net.close(self.now, conn) {
            self.queue.at(at, Event::Closed(conn));
            self.trace.line(self.now, || format!("{conn} closed"));
        }
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
}

/// What a run did, and the first property it broke.
#[derive(Debug)]
pub struct Report {
    /// The first violation.
    pub violation: Option<Violation>,
    /// What happened.
    pub stats: Stats,
    /// What the network did.
    pub net: NetStats,
    /// Events handled.
    pub events: u64,
    /// A digest of every message delivered (equal for equal seeds).
    pub digest: u64,
}

struct World {
    queue: EventQueue<Event>,
    net: Network,
    checker: Checker,
    trace: Trace,
    processes: Vec<Process>,
    limits: Limits,
}

impl World {
    fn with<R>(&mut self, p: ProcessId, f: impl FnOnce(&mut Process, &mut Ctx<'_>) -> R) -> R {
        let mut ctx = Ctx {
            now: self.queue.now(),
            me: p,
            queue: &mut self.queue,
            net: &mut self.net,
            checker: &mut self.checker,
            trace: &mut self.trace,
        };
        f(&mut self.processes[p.0 as usize], &mut ctx)
    }

    fn describe(&self, wire: &Wire) -> String {
        let text = match wire.dir {
            Dir::ClientToBroker => format!("{:?}", wire.decode_client(&self.limits)),
            Dir::BrokerToClient => format!("{:?}", wire.decode_to_client(&self.limits)),
            Dir::WorkerToBroker => format!("{:?}", wire.decode_worker(&self.limits)),
            Dir::BrokerToWorker => format!("{:?}", wire.decode_to_worker(&self.limits)),
        };
        text.chars().take(400).collect()
    }

    fn handle(&mut self, event: Event) {
        let now = self.queue.now();
        match event {
            Event::Deliver { conn, wire } => {
                let delivered = self.net.arrive(conn, wire.dir);
                let Some((peer, broker)) = self.net.ends(conn) else {
                    return;
                };
                let (from, to) = match wire.dir {
                    Dir::ClientToBroker | Dir::WorkerToBroker => (peer, broker),
                    Dir::BrokerToClient | Dir::BrokerToWorker => (broker, peer),
                };
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
            Event::Timer { to, timer } => self.with(to, |p, ctx| match (p, timer) {
                (Process::Broker(b), Timer::BrokerTick { token }) => b.on_timer(ctx, token),
                (Process::Worker(w), Timer::Worker { session, kind }) => {
                    w.on_timer(ctx, session, kind)
                }
                (Process::Client(c), Timer::Client(t)) => c.on_timer(ctx, t),
                (_, timer) => panic!("{timer:?} armed for the wrong process {to}"),
            }),
            Event::Fault(fault) => {
                self.trace.line(now, || format!("fault: {fault:?}"));
                let (Fault::Kill(p) | Fault::Restart(p) | Fault::Leave(p)) = fault;
                self.with(p, |process, ctx| match (process, fault) {
                    (Process::Worker(w), Fault::Kill(_)) => w.kill(ctx),
                    (Process::Worker(w), Fault::Restart(_)) => w.start(ctx),
                    (Process::Worker(w), Fault::Leave(_)) => w.leave(ctx),
                    _ => panic!("{fault:?} for a process that is not a worker"),
                });
            }
            Event::Closed(conn) => {
                self.trace
                    .line(now, || format!("{conn}: the broker sees the peer closed"));
                self.net.closed_seen(conn);
            }
        }
    }
}

/// Runs one seed to its horizon and checks every property.
pub fn run(sim: SimConfig) -> Report {
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
    let mut processes = vec![Process::Broker(Box::new(BrokerNode::new(
        BROKER,
        config.clone(),
        clock,
        rng.next_u64(),
        MutationState::new(sim.mutation),
    )))];
    for spec in &scenario.workers {
        let id = ProcessId(processes.len() as u32);
        processes.push(Process::Worker(WorkerNode::new(
            id,
            BROKER,
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
            BROKER,
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
        trace,
        processes,
        limits,
    };
    world.with(BROKER, |p, ctx| {
        if let Process::Broker(b) = p {
            b.start(ctx);
        }
    });
    let mut events = 0u64;
    while let Some(event) = world.queue.pop_until(scenario.horizon) {
        events += 1;
        world.handle(event);
        if !world.checker.violations.is_empty() {
            break;
        }
        if events > MAX_EVENTS {
            let now = world.queue.now();
            world.checker.violations.push(Violation {
                property: properties::Property::Bounded,
                at: now,
                message: format!(
                    "runaway: {MAX_EVENTS} events, {} pending",
                    world.queue.len()
                ),
            });
            break;
        }
    }
    let footprints: Vec<(ProcessId, _)> = world
        .processes
        .iter()
        .filter_map(|p| match p {
            Process::Broker(b) => Some((b.id, b.footprint())),
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
        net: world.net.stats,
        events,
        digest: world.trace.digest(),
    }
}
