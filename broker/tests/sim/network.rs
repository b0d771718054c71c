//! The simulated network: one link per connection between a client or worker and a broker,
//! messages carried as the bytes a socket would carry (type and msgpack body, so every message
//! goes through the protocol codec), each with a delay drawn from the seed.
//!
//! By default a link behaves like ZeroMQ over TCP: nothing is lost or reordered within a live
//! connection, so a message never overtakes an earlier one on the same link (but messages of
//! different links interleave arbitrarily). Faults are explicit modes ([`NetFaults`]):
//! partitions hold a process's traffic until they heal (TCP retransmits), loss drops messages,
//! reordering lifts the per-link order, a small high-water mark makes the broker's sends fail
//! with `Full`. A process that closes its end stops receiving; the broker learns of the close
//! one network delay later (then its sends report `Gone`).

use std::collections::BTreeMap;
use std::fmt;

use mpreg_broker::outbox::Delivery;
use mpreg_protocol::{
    encode_body, BrokerToClient, BrokerToWorker, ClientToBroker, DecodeError, Limits, Task,
    WorkerToBroker,
};

use super::clock::SimTime;
use super::rng::Rng;

/// A simulated process: a broker, a client or a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessId(pub u32);

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// One connection (one socket's session): a restarted worker opens a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u32);

impl ConnId {
    /// The routing id the broker's ROUTER gives this connection.
    pub fn routing(self) -> Vec<u8> {
        format!("c{}", self.0).into_bytes()
    }

    /// The connection of a routing id made by [`ConnId::routing`].
    pub fn from_routing(routing: &[u8]) -> ConnId {
        let digits = std::str::from_utf8(&routing[1..]).expect("routing ids are c<number>");
        ConnId(digits.parse().expect("routing ids are c<number>"))
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// Which socket pair a message travels between (a broker-to-broker direction joins here once
/// clusters exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client socket, inbound.
    ClientToBroker,
    /// Client socket, outbound.
    BrokerToClient,
    /// Worker socket, inbound.
    WorkerToBroker,
    /// Worker socket, outbound.
    BrokerToWorker,
}

impl Dir {
    fn toward_broker(self) -> bool {
        matches!(self, Dir::ClientToBroker | Dir::WorkerToBroker)
    }
}

/// A message in transit: its direction, type frame and body.
#[derive(Debug, Clone)]
pub struct Wire {
    /// The direction.
    pub dir: Dir,
    /// The type frame.
    pub kind: &'static str,
    /// The msgpack body.
    pub body: Vec<u8>,
}

impl Wire {
    /// A client request.
    pub fn client(m: &ClientToBroker) -> Wire {
        Wire {
            dir: Dir::ClientToBroker,
            kind: m.kind(),
            body: m.encode_body(),
        }
    }

    /// A reply to a client.
    pub fn to_client(m: &BrokerToClient) -> Wire {
        Wire {
            dir: Dir::BrokerToClient,
            kind: m.kind(),
            body: m.encode_body(),
        }
    }

    /// A worker message.
    pub fn worker(m: &WorkerToBroker) -> Wire {
        Wire {
            dir: Dir::WorkerToBroker,
            kind: m.kind(),
            body: m.encode_body(),
        }
    }

    /// A message to a worker.
    pub fn to_worker(m: &BrokerToWorker) -> Wire {
        Wire {
            dir: Dir::BrokerToWorker,
            kind: m.kind(),
            body: m.encode_body(),
        }
    }

    /// A task, encoded from the engine's borrowed form.
    pub fn task(task: &Task<'_>) -> Wire {
        Wire {
            dir: Dir::BrokerToWorker,
            kind: "task",
            body: encode_body(task),
        }
    }

    /// Decodes a client request.
    pub fn decode_client(&self, limits: &Limits) -> Result<ClientToBroker, DecodeError> {
        ClientToBroker::decode(self.kind.as_bytes(), &self.body, limits)
    }

    /// Decodes a reply to a client.
    pub fn decode_to_client(&self, limits: &Limits) -> Result<BrokerToClient, DecodeError> {
        BrokerToClient::decode(self.kind.as_bytes(), &self.body, limits)
    }

    /// Decodes a worker message.
    pub fn decode_worker(&self, limits: &Limits) -> Result<WorkerToBroker, DecodeError> {
        WorkerToBroker::decode(self.kind.as_bytes(), &self.body, limits)
    }

    /// Decodes a message to a worker.
    pub fn decode_to_worker(&self, limits: &Limits) -> Result<BrokerToWorker, DecodeError> {
        BrokerToWorker::decode(self.kind.as_bytes(), &self.body, limits)
    }
}

/// The fault modes of a run.
#[derive(Debug, Clone, Default)]
pub struct NetFaults {
    /// Shortest and longest one-way delay, microseconds.
    pub delay_us: (u64, u64),
    /// Messages lost, in percent (0: none, as over a live TCP connection).
    pub loss_percent: u64,
    /// Messages of one link may overtake each other.
    pub reorder: bool,
    /// Messages the broker may have in flight to one peer before its sends report `Full`
    /// (`usize::MAX`: unbounded).
    pub hwm: usize,
    /// Partitions: (process, from, until): its traffic is held while cut.
    pub cuts: Vec<(ProcessId, SimTime, SimTime)>,
}

struct Link {
    /// The side that connected (client or worker).
    peer: ProcessId,
    /// The broker.
    broker: ProcessId,
    /// The peer has not closed its end.
    open: bool,
    /// The broker's socket knows the peer closed (its sends report `Gone`).
    broker_knows_closed: bool,
    /// Per direction (0: toward the broker, 1: from it): when the last message arrives.
    last_arrival: [SimTime; 2],
    /// Per direction: messages in flight.
    in_flight: [usize; 2],
}

/// What became of a message handed to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transit {
    /// It arrives at this time.
    Arrives(SimTime),
    /// It is lost (the sender cannot tell).
    Lost,
    /// Refused at once: the sender sees this delivery status.
    Refused(Delivery),
}

/// Counts of what the network did, for the run's summary.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetStats {
    /// Messages handed to the network.
    pub sent: u64,
    /// Lost to the loss fault mode.
    pub lost: u64,
    /// Held back by a partition.
    pub held: u64,
    /// Refused as full (high-water mark).
    pub full: u64,
    /// Dropped because the receiving end was closed.
    pub dropped_closed: u64,
}

impl NetStats {
    /// Adds another run's figures.
    pub fn add(&mut self, other: &NetStats) {
        self.sent += other.sent;
        self.lost += other.lost;
        self.held += other.held;
        self.full += other.full;
        self.dropped_closed += other.dropped_closed;
    }
}

/// Every link, and the fault modes.
pub struct Network {
    rng: Rng,
    faults: NetFaults,
    links: BTreeMap<ConnId, Link>,
    next_conn: u32,
    /// What happened so far.
    pub stats: NetStats,
}

impl Network {
    /// No links yet.
    pub fn new(rng: Rng, faults: NetFaults) -> Network {
        Network {
            rng,
            faults,
            links: BTreeMap::new(),
            next_conn: 0,
            stats: NetStats::default(),
        }
    }

    /// Opens a connection from `peer` to `broker`.
    pub fn connect(&mut self, peer: ProcessId, broker: ProcessId) -> ConnId {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        self.links.insert(
            conn,
            Link {
                peer,
                broker,
                open: true,
                broker_knows_closed: false,
                last_arrival: [SimTime::ZERO; 2],
                in_flight: [0; 2],
            },
        );
        conn
    }

    /// The two ends of a connection: (peer, broker).
    pub fn ends(&self, conn: ConnId) -> Option<(ProcessId, ProcessId)> {
        self.links.get(&conn).map(|l| (l.peer, l.broker))
    }

    fn delay(&mut self) -> u64 {
        let (lo, hi) = self.faults.delay_us;
        self.rng.range(lo, hi)
    }

    /// When something sent at `sent` with `delay` arrives, held back while either end is cut.
    fn through_cuts(&mut self, a: ProcessId, b: ProcessId, sent: SimTime, delay: u64) -> SimTime {
        let mut start = sent;
        let mut arrival = SimTime(sent.0 + delay);
        loop {
            let blocking = self
                .faults
                .cuts
                .iter()
                .filter(|(p, from, until)| {
                    (*p == a || *p == b) && *from <= arrival && *until > start
                })
                .map(|&(_, _, until)| until)
                .max();
            match blocking {
                Some(until) => {
                    self.stats.held += 1;
                    start = until;
                    arrival = SimTime(until.0 + self.delay());
                }
                None => return arrival,
            }
        }
    }

    /// Hands a message to the network at `now`, on `conn`, in the direction `dir` says.
    pub fn send(&mut self, now: SimTime, conn: ConnId, dir: Dir) -> Transit {
        self.stats.sent += 1;
        let up = dir.toward_broker();
        let index = usize::from(!up);
        let hwm = self.faults.hwm;
        let (loss, reorder) = (self.faults.loss_percent, self.faults.reorder);
        let Some(link) = self.links.get(&conn) else {
            return Transit::Refused(Delivery::Gone);
        };
        if !up && link.broker_knows_closed {
            return Transit::Refused(Delivery::Gone);
        }
        if !link.open && up {
            // A closed socket sends nothing.
            return Transit::Lost;
        }
        if !up && link.in_flight[index] >= hwm {
            self.stats.full += 1;
            return Transit::Refused(Delivery::Full);
        }
        if loss > 0 && self.rng.percent(loss) {
            self.stats.lost += 1;
            return Transit::Lost;
        }
        let (a, b) = (link.peer, link.broker);
        let delay = self.delay();
        let mut arrival = self.through_cuts(a, b, now, delay);
        let link = self.links.get_mut(&conn).expect("looked up above");
        if !reorder {
            arrival = arrival.max(link.last_arrival[index]);
        }
        link.last_arrival[index] = link.last_arrival[index].max(arrival);
        link.in_flight[index] += 1;
        Transit::Arrives(arrival)
    }

    /// A message on `conn` in direction `dir` reaches its end: whether it is delivered (the
    /// receiving end may have closed meanwhile).
    pub fn arrive(&mut self, conn: ConnId, dir: Dir) -> bool {
        let up = dir.toward_broker();
        let Some(link) = self.links.get_mut(&conn) else {
            return false;
        };
        let index = usize::from(!up);
        link.in_flight[index] = link.in_flight[index].saturating_sub(1);
        if !up && !link.open {
            self.stats.dropped_closed += 1;
            return false;
        }
        true
    }

    /// The peer closes its end at `now`: returns when the broker's socket learns of it (after
    /// the data sent before the close, like a TCP FIN).
    pub fn close(&mut self, now: SimTime, conn: ConnId) -> Option<SimTime> {
        let link = self.links.get(&conn)?;
        if !link.open {
            return None;
        }
        let (a, b) = (link.peer, link.broker);
        let delay = self.delay();
        let arrival = self.through_cuts(a, b, now, delay);
        let link = self.links.get_mut(&conn)?;
        link.open = false;
        Some(arrival.max(link.last_arrival[0]))
    }

    /// The broker's socket learns that `conn` was closed.
    pub fn closed_seen(&mut self, conn: ConnId) {
        if let Some(link) = self.links.get_mut(&conn) {
            link.broker_knows_closed = true;
        }
    }
}
