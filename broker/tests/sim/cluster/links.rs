//! A broker's sockets to its peers, simulated as `broker/src/peer_links.rs` uses libzmq: per
//! peer endpoint a pair of DEALERs (control and data) into that peer's ROUTER, opened on
//! demand or when a member is learned, with `IMMEDIATE` (a send before the connection is up
//! fails at once, as `EAGAIN`: [`Delivery::Full`]); a gossip SUB connected to every member's
//! PUB. A connection comes up one round trip after an attempt that finds the peer's process
//! running and reachable; otherwise it is attempted again after a reconnect interval that
//! doubles up to a bound (libzmq's `reconnect_ivl` / `reconnect_ivl_max`, scaled with the
//! simulation's other intervals). The control link's coming up and going down is reported to
//! the engine (`Engine::on_peer_link`), as the shell's socket monitor does. A peer that dies
//! resets the connections (the engine hears the control link go down one delay later);
//! ZeroMQ then reconnects by itself, to whatever incarnation listens there next.

use std::collections::BTreeMap;
use std::time::Duration;

use mpreg_broker::outbox::{Delivery, Link};
use mpreg_protocol::peer::PeerEndpoints;
use mpreg_protocol::{BrokerId, Gossip, PeerMessage};

use super::super::clock::SimTime;
use super::super::network::{ConnId, ConnKind, ProcessId, Wire};
use super::super::{Ctx, Timer};

/// The endpoints of the broker process `p` (stable across its incarnations).
pub fn endpoints_of(p: ProcessId) -> PeerEndpoints {
    PeerEndpoints {
        client: format!("sim://p{}/client", p.0),
        worker: format!("sim://p{}/worker", p.0),
        event: format!("sim://p{}/event", p.0),
        peer: format!("sim://p{}/peer", p.0),
        gossip: format!("sim://p{}/gossip", p.0),
    }
}

/// The broker process an endpoint made by [`endpoints_of`] belongs to.
pub fn process_of(endpoint: &str) -> Option<ProcessId> {
    let rest = endpoint.strip_prefix("sim://p")?;
    let digits = rest.split('/').next()?;
    digits.parse().ok().map(ProcessId)
}

/// Reconnection intervals: libzmq's 100 ms doubling to 5 s, scaled as the engine's.
#[derive(Debug, Clone, Copy)]
pub struct Reconnect {
    /// The first.
    pub first: Duration,
    /// The longest.
    pub max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dealers,
    Subscription,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not connected; the attempt in progress, and the interval before the next one.
    Connecting { backoff: Duration },
    /// Connected: the control and data connections (a subscription uses the first).
    Up { conns: [ConnId; 2] },
}

struct Socket {
    target: ProcessId,
    state: State,
    /// The attempt whose timer may change it (older timers are stale).
    attempt: u64,
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    Connect,
    /// The handshake with this incarnation of the target completes.
    Handshake(BrokerId),
}

/// One broker incarnation's peer sockets.
pub struct PeerShell {
    me: ProcessId,
    my_id: BrokerId,
    incarnation: u32,
    reconnect: Reconnect,
    /// By peer endpoint.
    dealers: BTreeMap<String, Socket>,
    /// By the followed member's peer endpoint.
    following: BTreeMap<String, Socket>,
    pending: BTreeMap<u64, (Kind, String, Stage)>,
    next_attempt: u64,
}

impl PeerShell {
    /// The sockets of incarnation `my_id` (the `incarnation`-th start) of broker `me`.
    pub fn new(me: ProcessId, my_id: BrokerId, incarnation: u32, reconnect: Reconnect) -> Self {
        PeerShell {
            me,
            my_id,
            incarnation,
            reconnect,
            dealers: BTreeMap::new(),
            following: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_attempt: 0,
        }
    }

    fn sockets(&mut self, kind: Kind) -> &mut BTreeMap<String, Socket> {
        match kind {
            Kind::Dealers => &mut self.dealers,
            Kind::Subscription => &mut self.following,
        }
    }

    fn arm(&mut self, ctx: &mut Ctx<'_>, kind: Kind, endpoint: &str, stage: Stage, at: SimTime) {
        self.next_attempt += 1;
        let attempt = self.next_attempt;
        if let Some(socket) = self.sockets(kind).get_mut(endpoint) {
            socket.attempt = attempt;
        }
        self.pending
            .insert(attempt, (kind, endpoint.to_string(), stage));
        let incarnation = self.incarnation;
        ctx.timer_at(
            at,
            Timer::Link {
                incarnation,
                attempt,
            },
        );
    }

    fn open(&mut self, ctx: &mut Ctx<'_>, kind: Kind, endpoint: &str, target: ProcessId) {
        if self.sockets(kind).contains_key(endpoint) {
            return;
        }
        let socket = Socket {
            target,
            state: State::Connecting {
                backoff: self.reconnect.first,
            },
            attempt: 0,
        };
        self.sockets(kind).insert(endpoint.to_string(), socket);
        self.arm(ctx, kind, endpoint, Stage::Connect, ctx.now);
    }

    fn close(&mut self, ctx: &mut Ctx<'_>, kind: Kind, endpoint: &str) {
        if let Some(socket) = self.sockets(kind).remove(endpoint) {
            if let State::Up { conns } = socket.state {
                ctx.close(conns[0]);
                if kind == Kind::Dealers {
                    ctx.close(conns[1]);
                }
            }
        }
    }

    /// A message to the peer at `endpoint` on `link` (its DEALERs opened on demand).
    pub fn send(
        &mut self,
        ctx: &mut Ctx<'_>,
        endpoint: &str,
        link: Link,
        message: &PeerMessage,
    ) -> Delivery {
        let Some(target) = process_of(endpoint) else {
            return Delivery::Gone;
        };
        self.open(ctx, Kind::Dealers, endpoint, target);
        match self.dealers[endpoint].state {
            State::Up { conns } => {
                let conn = match link {
                    Link::Control => conns[0],
                    Link::Data => conns[1],
                };
                ctx.send(conn, Wire::peer(link, message))
            }
            State::Connecting { .. } => Delivery::Full,
        }
    }

    /// Publishes on this broker's PUB: every subscription up receives it.
    pub fn gossip(&mut self, ctx: &mut Ctx<'_>, message: &Gossip) {
        let wire = Wire::gossip(message);
        for conn in ctx.subscribers(self.me) {
            ctx.send(conn, wire.clone());
        }
    }

    /// A new member: open its links and follow its gossip.
    pub fn connect(&mut self, ctx: &mut Ctx<'_>, endpoints: &PeerEndpoints) {
        let Some(target) = process_of(&endpoints.peer) else {
            return;
        };
        self.open(ctx, Kind::Dealers, &endpoints.peer, target);
        self.open(ctx, Kind::Subscription, &endpoints.peer, target);
    }

    /// A member is gone: close its links and stop following its gossip.
    pub fn disconnect(&mut self, ctx: &mut Ctx<'_>, endpoints: &PeerEndpoints) {
        self.close(ctx, Kind::Dealers, &endpoints.peer);
        self.close(ctx, Kind::Subscription, &endpoints.peer);
    }

    /// Closes the links to `endpoint` (opened again, with a fresh connect, by the next message
    /// to it); its gossip stays followed.
    pub fn reset(&mut self, ctx: &mut Ctx<'_>, endpoint: &str) {
        self.close(ctx, Kind::Dealers, endpoint);
    }

    /// Closes every socket (the broker crashed).
    pub fn close_all(&mut self, ctx: &mut Ctx<'_>) {
        let dealers: Vec<String> = self.dealers.keys().cloned().collect();
        for endpoint in dealers {
            self.close(ctx, Kind::Dealers, &endpoint);
        }
        let following: Vec<String> = self.following.keys().cloned().collect();
        for endpoint in following {
            self.close(ctx, Kind::Subscription, &endpoint);
        }
        self.pending.clear();
    }

    /// An attempt's timer fired: the control link's endpoint when a DEALER pair just came up
    /// (the engine is told).
    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, attempt: u64) -> Option<String> {
        let (kind, endpoint, stage) = self.pending.remove(&attempt)?;
        let socket = self.sockets(kind).get(&endpoint)?;
        if socket.attempt != attempt {
            return None;
        }
        let (target, state) = (socket.target, socket.state);
        let State::Connecting { backoff } = state else {
            return None;
        };
        let up = ctx.broker_incarnation(target);
        match (stage, up) {
            (Stage::Connect, Some(id)) if !ctx.cut_between(self.me, target) => {
                let at = ctx.handshake(self.me, target);
                self.arm(ctx, kind, &endpoint, Stage::Handshake(id), at);
                None
            }
            (Stage::Handshake(id), Some(now_id)) if id == now_id => {
                let conns = match kind {
                    Kind::Dealers => [
                        ctx.open(target, ConnKind::Peer(self.my_id, Link::Control)),
                        ctx.open(target, ConnKind::Peer(self.my_id, Link::Data)),
                    ],
                    Kind::Subscription => {
                        let conn = ctx.open(target, ConnKind::Gossip);
                        [conn, conn]
                    }
                };
                if let Some(socket) = self.sockets(kind).get_mut(&endpoint) {
                    socket.state = State::Up { conns };
                }
                (kind == Kind::Dealers).then_some(endpoint)
            }
            _ => {
                let next = (backoff * 2).min(self.reconnect.max);
                if let Some(socket) = self.sockets(kind).get_mut(&endpoint) {
                    socket.state = State::Connecting { backoff: next };
                }
                let at = ctx.now.after(backoff);
                self.arm(ctx, kind, &endpoint, Stage::Connect, at);
                None
            }
        }
    }

    /// One of this broker's connections was reset (its peer died, or a heartbeat timed out):
    /// the socket reconnects by itself; the control link's endpoint when a DEALER pair just
    /// went down (the engine is told).
    pub fn on_reset(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) -> Option<String> {
        for kind in [Kind::Dealers, Kind::Subscription] {
            let found = self.sockets(kind).iter().find_map(|(e, s)| match s.state {
                State::Up { conns } if conns.contains(&conn) => Some(e.clone()),
                _ => None,
            });
            let Some(endpoint) = found else { continue };
            if let Some(State::Up { conns }) = self.sockets(kind).get(&endpoint).map(|s| s.state) {
                // The other link of the pair shares the fate of the first (the peer died, or a
                // partition timed both out): what it had in flight is lost.
                for c in conns {
                    ctx.sever(c);
                }
            }
            let first = self.reconnect.first;
            if let Some(socket) = self.sockets(kind).get_mut(&endpoint) {
                socket.state = State::Connecting { backoff: first };
            }
            let at = ctx.now.after(first);
            self.arm(ctx, kind, &endpoint, Stage::Connect, at);
            return (kind == Kind::Dealers).then_some(endpoint);
        }
        None
    }
}
