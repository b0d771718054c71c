//! Moving to another broker (issue 11, client failover): one connection at a time to one
//! broker of the client's [`BrokerList`]; when it is lost (the monitor reports the disconnect
//! of a killed broker at once; a silent one is given up after
//! [`ClientOptions::failover_silence`](crate::ClientOptions::failover_silence) without a ZMTP
//! heartbeat answer), or a broker being tried does not come up in time, the socket is closed
//! (nothing still queued in it leaves) and a new one connects to the next broker.
//!
//! What was in flight on the old socket:
//! - if that socket never had a TCP connection, nothing of it reached any broker: every
//!   request is sent again as it was;
//! - else requests that may be sent twice are sent again on the new socket, in request id
//!   order, before anything newer: `ping`, `status`, `cluster`, `functions`, subscriptions
//!   being made, and plans carrying a client-chosen plan id (a broker that has seen the id
//!   sends the running plan's replies, or its kept final reply, to the new connection; one
//!   that has not runs it: at-least-once, like a lost worker's step); the rest fail with
//!   `904 connection_lost` (an unconfirmed outcome must not be repeated: a confirmed publish,
//!   flush's ping, an `unsubscribe` counts as done).
//! - Active subscriptions yield [`Delivery::ConnectionLost`](crate::Delivery::ConnectionLost)
//!   and are made again on the new broker (with the backlog if they asked for it), then yield
//!   [`Delivery::Resubscribed`](crate::Delivery::Resubscribed) naming the broker and the gap.
//!
//! The old socket is closed, so no late reply from the old broker can ever arrive: each
//! request gets at most one final reply, from the broker it was last sent to.
//!
//! **Learning**: after each connection comes up and every [`LEARN_INTERVAL`], the connection
//! asks its broker for the cluster (`cluster`) and adds the other live members' client
//! endpoints after the given ones. Plans carry a client-chosen plan id exactly while there is
//! another broker to move to.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpreg_protocol::peer::MemberState;
use mpreg_protocol::{BrokerToClient, ClientToBroker, ClusterRequest, Limits};
use mpreg_transport::{Curve, Io, SocketEvent, SocketId, SocketKind, SocketOptions, SocketSpec};

use super::{Link, ReplyTo};
use crate::broker_list::{member_client_endpoint, Attempt, BrokerList};
use crate::client_options::LEARN_INTERVAL;
use crate::connection::{Connection, Phase, Transition};
use crate::error::Error;

/// What every clone of the client may read about its brokers.
#[derive(Debug)]
pub(crate) struct SharedBrokers {
    /// Plans are sent with a client-chosen id: true while there is another broker to move to.
    pub plan_ids: AtomicBool,
    /// Moves to another broker so far.
    pub moves: AtomicU64,
    /// The broker in use and the whole list, as the reactor last set them.
    view: Mutex<(String, Vec<String>)>,
}

impl SharedBrokers {
    pub(crate) fn new(brokers: &BrokerList) -> Self {
        SharedBrokers {
            plan_ids: AtomicBool::new(brokers.can_move()),
            moves: AtomicU64::new(0),
            view: Mutex::new((brokers.current().to_string(), brokers.endpoints().to_vec())),
        }
    }

    /// The endpoint of the broker in use (or being tried).
    pub(crate) fn current(&self) -> String {
        self.view.lock().map(|v| v.0.clone()).unwrap_or_default()
    }

    /// Every broker the client may move to, in order: the given ones, then the learned ones.
    pub(crate) fn list(&self) -> Vec<String> {
        self.view.lock().map(|v| v.1.clone()).unwrap_or_default()
    }

    fn update(&self, brokers: &BrokerList) {
        self.plan_ids.store(brokers.can_move(), Ordering::Relaxed);
        if let Ok(mut view) = self.view.lock() {
            *view = (brokers.current().to_string(), brokers.endpoints().to_vec());
        }
    }
}

/// The reactor's side of failover.
pub(crate) struct Failover {
    pub brokers: BrokerList,
    /// [`ClientOptions::failover_silence`](crate::ClientOptions::failover_silence).
    pub silence: Duration,
    /// Ask the broker for the cluster's other brokers.
    pub learn: bool,
    /// The connection's CURVE keys, for every socket it opens.
    pub curve: Option<Curve>,
    /// A broker being tried must have come up by then (only with somewhere else to go).
    attempt_deadline: Option<Instant>,
    /// The current socket got a TCP connection: what was sent on it may have been read.
    tcp_connected: bool,
    /// When to ask the broker for the cluster next.
    next_learn: Option<Instant>,
    /// The request id of the `cluster` request in flight, if any.
    learning: Option<u64>,
    pub shared: Arc<SharedBrokers>,
}

impl Failover {
    pub(crate) fn new(
        brokers: BrokerList,
        silence: Duration,
        learn: bool,
        curve: Option<Curve>,
        shared: Arc<SharedBrokers>,
        now: Instant,
    ) -> Self {
        let attempt = brokers.first_attempt(silence);
        let attempt_deadline = brokers.can_move().then_some(now + attempt.patience);
        Failover {
            brokers,
            silence,
            learn,
            curve,
            attempt_deadline,
            tcp_connected: false,
            next_learn: None,
            learning: None,
            shared,
        }
    }

    /// The socket to open for `endpoint`: a monitored DEALER; with another broker to move to,
    /// ZMTP heartbeats every quarter of the silence window, timing out after it.
    pub(crate) fn dealer_spec(&self, endpoint: &str, limits: &Limits) -> SocketSpec {
        let mut options = SocketOptions::dealer_client()
            .with_curve(self.curve.clone())
            .with_max_frame_bytes(limits.max_message_bytes);
        if self.brokers.can_move() {
            let silence = i32::try_from(self.silence.as_millis()).unwrap_or(i32::MAX);
            options.heartbeat_ms = (silence / 4).max(25);
            options.heartbeat_timeout_ms = silence;
        }
        // Monitored: a lost connection must be acted on at once, not at a request's timeout.
        SocketSpec::new(SocketKind::Dealer, options)
            .connect(endpoint)
            .monitored()
    }

    /// When [`Link::on_failover_timer`] should next run.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        [self.attempt_deadline, self.next_learn]
            .into_iter()
            .flatten()
            .min()
    }
}

impl Link {
    /// A monitor event of the current DEALER.
    pub(super) fn on_connection_event(&mut self, io: &mut Io, event: SocketEvent) {
        if event == SocketEvent::Connected {
            self.failover.tcp_connected = true;
        }
        match self.connection.on_socket_event(event) {
            Transition::FirstUp => self.arrived(io, false),
            Transition::Restored => self.arrived(io, true),
            Transition::Lost if self.failover.brokers.can_move() => self.move_on(io, true),
            Transition::Lost => self.on_lost(io),
            Transition::None => {
                // A broker being tried refused at once: in the first round, try the next one
                // at once; later, libzmq retries it until the attempt's deadline.
                let refused = matches!(
                    event,
                    SocketEvent::ConnectRetried { .. }
                        | SocketEvent::HandshakeFailed(_)
                        | SocketEvent::Disconnected
                );
                if refused
                    && self.connection.phase() == Phase::Connecting
                    && self.failover.brokers.can_move()
                    && self.failover.brokers.first_round()
                {
                    self.move_on(io, false);
                }
            }
        }
    }

    /// The connection is up: the first time, after a move, or back after a loss.
    fn arrived(&mut self, io: &mut Io, restored: bool) {
        self.failover.attempt_deadline = None;
        self.failover.brokers.up();
        self.failover.shared.update(&self.failover.brokers);
        if restored {
            self.on_restored(io);
        } else {
            // Tracked by the broker from the first heartbeat on.
            self.send_heartbeat(io);
        }
        self.send_learn(io);
    }

    /// Gives up the current broker (`was_up`: its connection was up, else it was being tried
    /// and did not come up) and connects to the next one, sending again what may be sent.
    pub(super) fn move_on(&mut self, io: &mut Io, was_up: bool) {
        let Some(old) = self.socket else {
            return;
        };
        let reached = was_up || self.failover.tcp_connected;
        let lost = Error::ConnectionLost {
            endpoint: self.endpoint.clone(),
        };
        // The new socket first: if none can be opened (the process is out of descriptors),
        // the client cannot go on.
        let mut opened: Option<(SocketId, Attempt)> = None;
        let mut why = String::new();
        for _ in 0..self.failover.brokers.endpoints().len() {
            let attempt = self.failover.brokers.advance(self.failover.silence);
            match io.open(&self.failover.dealer_spec(&attempt.endpoint, &self.limits)) {
                Ok(socket) => {
                    opened = Some((socket, attempt));
                    break;
                }
                Err(e) => why = e.to_string(),
            }
        }
        let Some((socket, attempt)) = opened else {
            let error = Error::Connect {
                endpoint: self.endpoint.clone(),
                reason: format!("cannot open a socket to another broker: {why}"),
            };
            self.fail_all(io, &error);
            return self.close_all(io);
        };
        io.close(old);
        self.socket = Some(socket);
        self.endpoint = attempt.endpoint;
        let now = io.now();
        self.connection = Connection::new(self.connection.heartbeat(), now);
        self.failover.tcp_connected = false;
        self.failover.attempt_deadline = Some(now + attempt.patience);
        self.failover.learning = None;
        self.failover.next_learn = None;
        self.failover.shared.moves.fetch_add(1, Ordering::Relaxed);
        self.failover.shared.update(&self.failover.brokers);
        if was_up {
            self.counters
                .connections_lost
                .fetch_add(1, Ordering::Relaxed);
        }

        // Unanswered publishes are settled in doubt before any request fails (as in
        // `recovery.rs`): a `904` is seen with the counters already updated.
        self.publishes.on_lost();
        let mut ids: Vec<u64> = self.waiters.keys().copied().collect();
        ids.sort_unstable();
        let mut again = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(waiter) = self.waiters.get(&id) else {
                continue;
            };
            let safe = waiter.kind.resendable() || matches!(waiter.reply, ReplyTo::Subscribe(_));
            if !reached || safe {
                again.push(id);
            } else if let Some(waiter) = self.take_waiter(id) {
                // No cancel: the old socket is closed, nothing of it leaves any more.
                self.fail_waiter(io, waiter, lost.clone());
            }
        }
        self.events.on_moved(io);
        for id in again {
            self.send_again(io, socket, id);
        }
        for key in self.events.lost() {
            self.send_subscribe(io, key);
        }
        self.drain_publishes(io);
    }

    /// Sends a request in flight again, as it was, on `socket`.
    pub(super) fn send_again(&mut self, io: &mut Io, socket: SocketId, id: u64) {
        let Some(frames) = self
            .waiters
            .get_mut(&id)
            .map(|w| std::mem::take(&mut w.frames))
        else {
            return;
        };
        let sent = self.send_frames(io, socket, &frames);
        self.counters
            .requests_resent
            .fetch_add(1, Ordering::Relaxed);
        match sent {
            Ok(sent) => {
                if let Some(waiter) = self.waiters.get_mut(&id) {
                    waiter.sent = sent;
                    waiter.resend = false;
                    waiter.frames = frames;
                }
            }
            Err(e) => {
                if let Some(waiter) = self.take_waiter(id) {
                    self.fail_waiter(io, waiter, e);
                }
            }
        }
    }

    /// Every request in flight fails with `error`.
    fn fail_all(&mut self, io: &mut Io, error: &Error) {
        let mut ids: Vec<u64> = self.waiters.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(waiter) = self.take_waiter(id) {
                self.fail_waiter(io, waiter, error.clone());
            }
        }
    }

    /// A broker being tried did not come up in time; the cluster is due to be asked.
    pub(super) fn on_failover_timer(&mut self, io: &mut Io, now: Instant) {
        if self.failover.attempt_deadline.is_some_and(|at| at <= now) {
            self.failover.attempt_deadline = None;
            if self.connection.phase() == Phase::Connecting && self.failover.brokers.can_move() {
                self.move_on(io, false);
            }
        }
        if self.failover.next_learn.is_some_and(|at| at <= now) {
            self.failover.next_learn = None;
            self.send_learn(io);
        }
    }

    /// Asks the broker for its cluster (when learning is on, the connection is up and no
    /// such request is in flight), and schedules the next time.
    fn send_learn(&mut self, io: &mut Io) {
        if !self.failover.learn || self.connection.phase() != Phase::Up {
            return;
        }
        self.failover.next_learn = Some(io.now() + LEARN_INTERVAL);
        if self.failover.learning.is_some() {
            return;
        }
        let id = self.next_id();
        self.failover.learning = Some(id);
        let message = ClientToBroker::Cluster(ClusterRequest { id });
        self.send_internal(io, message, ReplyTo::Learn);
    }

    /// The answer to the `cluster` request (or its failure: `None`).
    pub(super) fn on_learned(&mut self, reply: Option<BrokerToClient>) {
        self.failover.learning = None;
        // An older broker without clusters answers with an error: nothing to learn.
        let Some(BrokerToClient::Cluster(cluster)) = reply else {
            return;
        };
        let alive = cluster
            .members
            .iter()
            .filter(|m| m.state == MemberState::Alive && m.name != cluster.self_name)
            .filter_map(|m| member_client_endpoint(&m.endpoints.client, &m.endpoints.peer));
        if self.failover.brokers.learn(alive) {
            self.failover.shared.update(&self.failover.brokers);
        }
    }
}
