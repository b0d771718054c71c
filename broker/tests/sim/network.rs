//! The simulated network: one link per connection, messages carried as the bytes a socket would
//! carry (type and msgpack body, so every message goes through the protocol codec), each with a
//! delay drawn from the seed. A connection has a *connecting* end and a *bound* end (the
//! process whose socket was connected to): a client's or worker's session with a broker (the
//! broker is bound), a broker's peer link into another broker's peer ROUTER (one connection for
//! the control link, one for the data link; the receiving broker is bound), and a broker's
//! gossip subscription to another broker's PUB (the publisher is bound).
//!
//! By default a link behaves like ZeroMQ over TCP: nothing is lost or reordered within a live
//! connection, so a message never overtakes an earlier one on the same link (but messages of
//! different links interleave arbitrarily). Faults are explicit modes ([`NetFaults`]):
//! partitions ([`Cut`]) hold traffic between two groups of processes until they heal (TCP
//! retransmits), loss drops messages (sessions, peer links and gossip each have their own
//! rate), reordering lifts the per-link order, a small high-water mark makes the broker's sends
//! to clients and workers fail with `Full`. A process that closes its end stops receiving; the
//! bound end learns of the close one network delay later (then a broker's sends report
//! `Gone`). A bound end that dies (a broker crash) drops what arrives for it from then on, and
//! the connecting end learns of it one delay later (a TCP reset).

use std::collections::BTreeMap;
use std::fmt;

use std::collections::BTreeSet;

use mpreg_broker::outbox::{Delivery, Link as PeerLink};
use mpreg_protocol::{
    encode_body, BrokerId, BrokerToClient, BrokerToWorker, ClientToBroker, DecodeError, Gossip,
    Limits, PeerMessage, Task, WorkerToBroker,
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

/// Which socket pair a message travels between.
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
    /// A broker's control link into a peer's ROUTER.
    PeerControl,
    /// A broker's data link into a peer's ROUTER.
    PeerData,
    /// A broker's gossip PUB to a subscribed peer.
    Gossip,
}

impl Dir {
    /// True when the message travels from the connecting end to the bound end.
    pub fn toward_bound(self) -> bool {
        matches!(
            self,
            Dir::ClientToBroker | Dir::WorkerToBroker | Dir::PeerControl | Dir::PeerData
        )
    }
}

/// What a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// A client's or worker's session with a broker.
    Session,
    /// A broker's control or data link into a peer; the sender's incarnation and the link, as
    /// the receiving ROUTER reads them from the routing id.
    Peer(BrokerId, PeerLink),
    /// A broker's subscription to a peer's gossip.
    Gossip,
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

    /// A message on a peer link.
    pub fn peer(link: PeerLink, m: &PeerMessage) -> Wire {
        Wire {
            dir: match link {
                PeerLink::Control => Dir::PeerControl,
                PeerLink::Data => Dir::PeerData,
            },
            kind: m.kind(),
            body: m.encode_body(),
        }
    }

    /// A gossip message.
    pub fn gossip(m: &Gossip) -> Wire {
        Wire {
            dir: Dir::Gossip,
            kind: m.kind(),
            body: m.encode_body(),
        }
    }

    /// Decodes a peer message.
    pub fn decode_peer(&self, limits: &Limits) -> Result<PeerMessage, DecodeError> {
        PeerMessage::decode(self.kind.as_bytes(), &self.body, limits)
    }

    /// Decodes a gossip message.
    pub fn decode_gossip(&self, limits: &Limits) -> Result<Gossip, DecodeError> {
        Gossip::decode(self.kind.as_bytes(), &self.body, limits)
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

/// A partition: while it lasts, traffic between a process of `side` and one of `other`
/// (everyone not in `side` when `other` is `None`) is held back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// One side.
    pub side: Vec<ProcessId>,
    /// The other side; `None`: every process not in `side`.
    pub other: Option<Vec<ProcessId>>,
    /// When it starts.
    pub from: SimTime,
    /// When it heals.
    pub until: SimTime,
}

impl Cut {
    /// A process cut off from everyone.
    pub fn isolate(p: ProcessId, from: SimTime, until: SimTime) -> Cut {
        Cut {
            side: vec![p],
            other: None,
            from,
            until,
        }
    }

    /// True when the cut holds traffic between `a` and `b` (at some time).
    pub fn separates(&self, a: ProcessId, b: ProcessId) -> bool {
        let (in_a, in_b) = (self.side.contains(&a), self.side.contains(&b));
        match &self.other {
            None => in_a != in_b,
            Some(other) => (in_a && other.contains(&b)) || (in_b && other.contains(&a)),
        }
    }

    /// True when the cut touches process `p`: `p` is on the named side, or on the other side
    /// when it is named too (a process cut off from everyone touches only itself).
    pub fn touches(&self, p: ProcessId) -> bool {
        self.side.contains(&p) || self.other.as_ref().is_some_and(|o| o.contains(&p))
    }
}

/// The fault modes of a run.
#[derive(Debug, Clone, Default)]
pub struct NetFaults {
    /// Shortest and longest one-way delay, microseconds.
    pub delay_us: (u64, u64),
    /// Messages lost on client and worker sessions, in percent (0: none, as over a live TCP
    /// connection).
    pub loss_percent: u64,
    /// Messages lost on peer links, in percent.
    pub peer_loss_percent: u64,
    /// Messages lost on gossip subscriptions, in percent.
    pub gossip_loss_percent: u64,
    /// Messages are lost only when sent before this time: a cluster's network heals (its
    /// partitions end and it stops losing messages) before its convergence is judged. A lossy
    /// network never stops making SWIM suspect someone: a lost probe and a lost indirect
    /// probe are a failed probe, which is what suspicion is for.
    pub loss_until: SimTime,
    /// Messages of one link may overtake each other.
    pub reorder: bool,
    /// Messages the broker may have in flight to one client or worker before its sends report
    /// `Full` (`usize::MAX`: unbounded).
    pub hwm: usize,
    /// Partitions.
    pub cuts: Vec<Cut>,
}

struct Link {
    /// The connecting end (client, worker, or the broker that opened a peer link or a gossip
    /// subscription).
    peer: ProcessId,
    /// The bound end (the broker).
    broker: ProcessId,
    kind: ConnKind,
    /// The connecting end has not closed it.
    open: bool,
    /// The bound end has not died.
    bound_open: bool,
    /// The bound end's socket knows the peer closed (its sends report `Gone`).
    broker_knows_closed: bool,
    /// Per direction (0: toward the bound end, 1: from it): when the last message arrives.
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
    /// Sent on a closed socket: it goes nowhere.
    Void,
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
    /// Messages on peer links.
    pub peer: u64,
    /// Gossip messages.
    pub gossip: u64,
}

impl NetStats {
    /// Adds another run's figures.
    pub fn add(&mut self, other: &NetStats) {
        self.sent += other.sent;
        self.lost += other.lost;
        self.held += other.held;
        self.full += other.full;
        self.dropped_closed += other.dropped_closed;
        self.peer += other.peer;
        self.gossip += other.gossip;
    }
}

/// Every link, and the fault modes.
pub struct Network {
    rng: Rng,
    faults: NetFaults,
    links: BTreeMap<ConnId, Link>,
    next_conn: u32,
    /// Open gossip subscriptions, by publisher.
    subscribers: BTreeMap<ProcessId, BTreeSet<ConnId>>,
    /// Every connection a process is an end of.
    by_process: BTreeMap<ProcessId, Vec<ConnId>>,
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
            subscribers: BTreeMap::new(),
            by_process: BTreeMap::new(),
            stats: NetStats::default(),
        }
    }

    /// The fault modes.
    pub fn faults(&self) -> &NetFaults {
        &self.faults
    }

    /// Opens a connection of `kind` from `peer` to the bound end `broker`.
    pub fn open(&mut self, peer: ProcessId, broker: ProcessId, kind: ConnKind) -> ConnId {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        self.links.insert(
            conn,
            Link {
                peer,
                broker,
                kind,
                open: true,
                bound_open: true,
                broker_knows_closed: false,
                last_arrival: [SimTime::ZERO; 2],
                in_flight: [0; 2],
            },
        );
        if kind == ConnKind::Gossip {
            self.subscribers.entry(broker).or_default().insert(conn);
        }
        self.by_process.entry(peer).or_default().push(conn);
        self.by_process.entry(broker).or_default().push(conn);
        conn
    }

    /// The two ends of a connection: (connecting end, bound end).
    pub fn ends(&self, conn: ConnId) -> Option<(ProcessId, ProcessId)> {
        self.links.get(&conn).map(|l| (l.peer, l.broker))
    }

    /// What a connection carries.
    pub fn kind(&self, conn: ConnId) -> Option<ConnKind> {
        self.links.get(&conn).map(|l| l.kind)
    }

    /// The open gossip subscriptions to `publisher`'s PUB.
    pub fn subscribers(&self, publisher: ProcessId) -> Vec<ConnId> {
        self.subscribers
            .get(&publisher)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The connections `p` is an end of and that are open at both ends, with `p`'s role
    /// (true: bound end).
    pub fn open_conns_of(&self, p: ProcessId) -> Vec<(ConnId, bool)> {
        self.by_process
            .get(&p)
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let l = &self.links[c];
                (l.open && l.bound_open).then_some((*c, l.broker == p))
            })
            .collect()
    }

    /// The open connections of `kind` class (`peer_or_gossip`: peer links and gossip; else
    /// sessions) whose ends `cut` separates.
    pub fn crossing(&self, cut: &Cut, peer_or_gossip: bool) -> Vec<ConnId> {
        self.links
            .iter()
            .filter(|(_, l)| {
                l.open
                    && l.bound_open
                    && (l.kind != ConnKind::Session) == peer_or_gossip
                    && cut.separates(l.peer, l.broker)
            })
            .map(|(c, _)| *c)
            .collect()
    }

    fn delay(&mut self) -> u64 {
        let (lo, hi) = self.faults.delay_us;
        self.rng.range(lo, hi)
    }

    /// A one-way delay between `a` and `b` sent at `now`, held back by partitions: when a
    /// connection attempt from `a` to `b` made now completes its handshake (a round trip).
    pub fn handshake(&mut self, now: SimTime, a: ProcessId, b: ProcessId) -> SimTime {
        let there = self.delay();
        let there = self.through_cuts(a, b, now, there);
        let back = self.delay();
        self.through_cuts(a, b, there, back)
    }

    /// True when a partition holds traffic between `a` and `b` at `now`.
    pub fn cut_between(&self, now: SimTime, a: ProcessId, b: ProcessId) -> bool {
        self.faults
            .cuts
            .iter()
            .any(|c| c.from <= now && now < c.until && c.separates(a, b))
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
                .filter(|c| c.from <= arrival && c.until > start && c.separates(a, b))
                .map(|c| c.until)
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
        let up = dir.toward_bound();
        let index = usize::from(!up);
        let hwm = self.faults.hwm;
        let reorder = self.faults.reorder;
        let Some(link) = self.links.get(&conn) else {
            return Transit::Refused(Delivery::Gone);
        };
        let loss = match link.kind {
            ConnKind::Session => self.faults.loss_percent,
            ConnKind::Peer(..) => {
                self.stats.peer += 1;
                self.faults.peer_loss_percent
            }
            ConnKind::Gossip => {
                self.stats.gossip += 1;
                self.faults.gossip_loss_percent
            }
        };
        if !up && link.broker_knows_closed {
            return Transit::Refused(Delivery::Gone);
        }
        if (!link.open && up) || (!link.bound_open && !up) {
            // A closed socket sends nothing.
            return Transit::Void;
        }
        if !up && link.kind == ConnKind::Session && link.in_flight[index] >= hwm {
            self.stats.full += 1;
            return Transit::Refused(Delivery::Full);
        }
        if loss > 0 && now < self.faults.loss_until && self.rng.percent(loss) {
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
        let up = dir.toward_bound();
        let Some(link) = self.links.get_mut(&conn) else {
            return false;
        };
        let index = usize::from(!up);
        link.in_flight[index] = link.in_flight[index].saturating_sub(1);
        if (!up && !link.open) || (up && !link.bound_open) {
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
        if link.kind == ConnKind::Gossip {
            if let Some(s) = self.subscribers.get_mut(&b) {
                s.remove(&conn);
            }
        }
        Some(arrival.max(link.last_arrival[0]))
    }

    /// The bound end dies at `now` (a broker crash): what arrives for it from now on is
    /// dropped; returns when the connecting end learns of it (after what the bound end sent
    /// before, like a TCP reset), `None` if either end was closed already.
    pub fn close_bound(&mut self, now: SimTime, conn: ConnId) -> Option<SimTime> {
        let link = self.links.get(&conn)?;
        if !link.open || !link.bound_open {
            return None;
        }
        let (a, b) = (link.peer, link.broker);
        let delay = self.delay();
        let arrival = self.through_cuts(a, b, now, delay);
        let link = self.links.get_mut(&conn)?;
        link.bound_open = false;
        link.broker_knows_closed = true;
        if let Some(s) = self.subscribers.get_mut(&b) {
            s.remove(&conn);
        }
        Some(arrival.max(link.last_arrival[1]))
    }

    /// Both ends give the connection up at once (a ZMTP heartbeat timeout during a
    /// partition): everything in flight is lost. False if it was closed already.
    pub fn sever(&mut self, conn: ConnId) -> bool {
        let Some(link) = self.links.get_mut(&conn) else {
            return false;
        };
        if !link.open || !link.bound_open {
            return false;
        }
        link.open = false;
        link.bound_open = false;
        link.broker_knows_closed = true;
        let b = link.broker;
        if let Some(s) = self.subscribers.get_mut(&b) {
            s.remove(&conn);
        }
        true
    }

    /// True while both ends of `conn` are open.
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.links
            .get(&conn)
            .is_some_and(|l| l.open && l.bound_open)
    }

    /// The broker's socket learns that `conn` was closed.
    pub fn closed_seen(&mut self, conn: ConnId) {
        if let Some(link) = self.links.get_mut(&conn) {
            link.broker_knows_closed = true;
        }
    }
}
