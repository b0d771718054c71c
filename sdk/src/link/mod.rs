//! The connection to one broker: a reactor [`Handler`] that owns the DEALER socket, matches
//! replies to requests by id, enforces the client-side timeouts, watches the connection and
//! sends heartbeats. Topic deliveries on the same thread are [`EventRoutes`]' job.
//!
//! Everything here runs on the reactor (the client's own thread, or a task of the application's
//! runtime) and never blocks: replies complete the caller's
//! `oneshot` directly, progress events go into a per-plan channel sized to the plan (the broker
//! sends at most one per step, so it only fills if the broker misbehaves, and then the extra
//! event is dropped and counted), and timeouts are a sorted set the reactor's timer walks.
//!
//! **A lost connection** (the DEALER's monitor reports a disconnect after the handshake: the
//! broker died, restarted, or went silent past the ZMTP heartbeat timeout) fails every request
//! in flight at once with `904 connection_lost`, except idempotent ones (`ping`, `status`) and
//! plans with a client-chosen id, which are sent again once the connection is back; a plan
//! without one is also cancelled, in case it was still queued here and reaches the next
//! broker. Subscriptions are made again ([`EventRoutes`]). Requests sent while the connection
//! is down wait in the socket's queue and go out when it is back.
//!
//! **With several brokers** (`failover.rs`), a lost connection moves to the next broker
//! instead: a new socket, what may be sent twice sent again there, the rest failed with 904.
//!
//! **Unconfirmed publishes** wait in the client's [`PublishQueue`] and leave coalesced into
//! confirmed `publish_batch` requests ([`crate::publish_queue`]; the glue is `publishes.rs`):
//! a batch unanswered when the connection is lost is counted in doubt (`publishes_in_doubt`),
//! what is still queued goes out once the connection is back.
//!
//! **Heartbeats**: while the connection is up, a `heartbeat` goes out whenever nothing else
//! was sent for an interval, so the broker can tell a killed client from a quiet one and
//! cancel its plans.

mod failover;
mod publishes;
mod recovery;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpreg_protocol::{
    parse_envelope, peek_request_id, BrokerToClient, CancelRequest, ClientHeartbeat,
    ClientToBroker, ErrorCode, Limits, Progress, Subscribe, Unsubscribe,
};
use mpreg_transport::{Handler, Io, MonitorEvent, SendError, SocketId};
use tokio::sync::{mpsc, oneshot};

use crate::client::CLOSE_LINGER;
use crate::connection::Connection;
use crate::error::Error;
use crate::event_routes::{EventRoutes, NewSubscription, SubscriptionKey};
use crate::pending_reply::unexpected;
use crate::publish_queue::{Coalescer, PublishQueue};
use crate::subscription::events_endpoint;
pub(crate) use failover::{Failover, SharedBrokers};

/// What a caller gets back for one request: the reply, or why there is none.
pub(crate) type ReplySender = oneshot::Sender<Result<BrokerToClient, Error>>;

/// Where the outcome of [`Command::Unsubscribe`] goes.
pub(crate) type UnsubscribedSender = oneshot::Sender<Result<(), Error>>;

/// Commands from the client's tasks to the reactor.
pub(crate) enum Command {
    /// Send a request and wait for its reply.
    Request(Request),
    /// The caller stopped waiting for this id: forget it, and cancel it if it is a plan.
    Abandon {
        /// The request id.
        id: u64,
    },
    /// Unconfirmed publishes (or requests queued behind them) wait in the publish queue.
    DrainPublishes,
    /// Make a subscription and route its events.
    Subscribe(NewSubscription),
    /// End a subscription: stop routing its events, remove its SUB filter and send
    /// `unsubscribe` for its current token, telling `done` once the broker confirmed.
    Unsubscribe {
        key: SubscriptionKey,
        done: Option<UnsubscribedSender>,
    },
    /// Cancel the plans in flight, fail every request with [`Error::Closed`] and close the
    /// socket (with [`CLOSE_LINGER`]).
    Close,
}

/// How a request may be treated when the connection breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// A plan: cancelled at the broker when the client gives up on it.
    Plan,
    /// A plan with a client-chosen plan id: cancelled like [`RequestKind::Plan`], and sent
    /// again under the same id after a reconnection or a move to another broker (a broker
    /// that has seen the id never runs it twice).
    ResumablePlan,
    /// Safe to send twice (`ping`, `status`): sent again after a reconnection.
    Idempotent,
    /// Anything else: fails with `904 connection_lost` when the connection breaks.
    Other,
}

impl RequestKind {
    /// A plan, resumable or not.
    pub(crate) fn is_plan(self) -> bool {
        matches!(self, RequestKind::Plan | RequestKind::ResumablePlan)
    }

    /// May be sent again after the connection broke.
    pub(crate) fn resendable(self) -> bool {
        matches!(self, RequestKind::Idempotent | RequestKind::ResumablePlan)
    }
}

/// One request, already encoded by the caller's task (so the reactor does no msgpack work).
pub(crate) struct Request {
    pub id: u64,
    pub frames: Vec<u8>,
    /// When the client stops waiting.
    pub deadline: Instant,
    /// How long that is from the send (for the timeout error).
    pub wait: Duration,
    pub kind: RequestKind,
    pub reply: ReplySender,
    /// Where progress events for this plan go, if the caller wants them.
    pub progress: Option<mpsc::Sender<Progress>>,
}

/// Who the answer to a request is for.
enum ReplyTo {
    /// The task that sent it.
    Caller(ReplySender),
    /// A subscription's `subscribe` (first or again after a reconnection).
    Subscribe(SubscriptionKey),
    /// A subscription's `unsubscribe`, with whoever waits for it.
    Unsubscribe(Option<UnsubscribedSender>),
    /// The connection's own `cluster` request, to learn the cluster's other brokers.
    Learn,
}

struct Waiter {
    /// Position of the request among everything sent on the DEALER.
    sent: u64,
    deadline: Instant,
    wait: Duration,
    kind: RequestKind,
    /// The request as sent, to send it again after a reconnection or a move (kept, not
    /// copied: the socket copies what it sends).
    frames: Vec<u8>,
    /// In flight when the connection was lost: send again once it is back.
    resend: bool,
    reply: ReplyTo,
    progress: Option<mpsc::Sender<Progress>>,
    /// A resumable plan's steps already reported by progress events: a broker that runs it
    /// again after a move reports them again, and the caller hears of each step once.
    steps_seen: Option<HashSet<String>>,
}

/// Counters the reactor keeps and any clone of the client can read.
#[derive(Debug, Default)]
pub(crate) struct LinkCounters {
    pub in_flight: AtomicU64,
    pub unmatched_replies: AtomicU64,
    pub malformed_replies: AtomicU64,
    pub progress_dropped: AtomicU64,
    pub publish_errors: AtomicU64,
    pub last_publish_error: Mutex<Option<Error>>,
    pub events_dropped: AtomicU64,
    pub unrouted_events: AtomicU64,
    pub malformed_events: AtomicU64,
    pub connections_lost: AtomicU64,
    pub requests_resent: AtomicU64,
    pub publishes_in_doubt: AtomicU64,
    /// The broker's `max_message_bytes`, from its latest `pong`; 0 until one said.
    pub broker_max_message_bytes: AtomicU64,
    pub closed: AtomicBool,
}

/// What the connection needs to know besides its socket.
pub(crate) struct LinkConfig {
    /// The brokers and how to move between them.
    pub failover: Failover,
    pub limits: Limits,
    pub curve: Option<mpreg_transport::Curve>,
    /// How long internal requests (re-subscriptions, unsubscriptions) wait for their answer.
    pub request_timeout: Duration,
    pub activation_timeout: Duration,
    /// Heartbeat interval; `None` or zero: no heartbeats.
    pub heartbeat: Option<Duration>,
    /// The client's request id counter, shared: internal requests take their ids from it.
    pub next_id: Arc<AtomicU64>,
    pub counters: Arc<LinkCounters>,
    /// Unconfirmed publishes handed over by the client's tasks.
    pub publishes: Arc<PublishQueue>,
}

/// The reactor handler of one client connection.
pub(crate) struct Link {
    socket: Option<SocketId>,
    endpoint: String,
    limits: Limits,
    request_timeout: Duration,
    waiters: HashMap<u64, Waiter>,
    timers: BTreeSet<(Instant, u64)>,
    /// Messages sent on the DEALER so far.
    sent: u64,
    /// Unconfirmed publishes: coalesced into batches, remembered until answered.
    publishes: Coalescer,
    /// When to try again to send a batch the socket refused (its queue was full).
    publish_retry: Option<Instant>,
    connection: Connection,
    /// The encoded `heartbeat` (always the same).
    heartbeat_frame: Option<Vec<u8>>,
    events: EventRoutes,
    next_id: Arc<AtomicU64>,
    counters: Arc<LinkCounters>,
    /// The brokers and where the connection is among them.
    failover: Failover,
}

impl Link {
    pub(crate) fn new(socket: SocketId, config: LinkConfig, now: Instant) -> Self {
        let connection = Connection::new(config.heartbeat, now);
        let heartbeat_frame = connection.heartbeat().map(|interval| {
            ClientToBroker::Heartbeat(ClientHeartbeat {
                id: 0,
                interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            })
            .to_compact_frame()
        });
        Link {
            socket: Some(socket),
            endpoint: config.failover.brokers.current().to_string(),
            limits: config.limits,
            request_timeout: config.request_timeout,
            waiters: HashMap::new(),
            timers: BTreeSet::new(),
            sent: 0,
            publishes: Coalescer::new(
                config.publishes,
                Arc::clone(&config.next_id),
                Arc::clone(&config.counters),
            ),
            publish_retry: None,
            connection,
            heartbeat_frame,
            events: EventRoutes::new(
                config.limits,
                config.curve,
                config.activation_timeout,
                Arc::clone(&config.counters),
            ),
            next_id: config.next_id,
            counters: config.counters,
            failover: config.failover,
        }
    }

    fn take_waiter(&mut self, id: u64) -> Option<Waiter> {
        let waiter = self.waiters.remove(&id)?;
        self.timers.remove(&(waiter.deadline, id));
        self.publish_in_flight();
        Some(waiter)
    }

    fn publish_in_flight(&self) {
        self.counters
            .in_flight
            .store(self.waiters.len() as u64, Ordering::Relaxed);
    }

    fn send_cancel(&mut self, io: &mut Io, id: u64) {
        if let Some(socket) = self.socket {
            // Best effort: if the broker is not reading, its own deadline ends the plan.
            let frame = ClientToBroker::Cancel(CancelRequest { id }).to_compact_frame();
            let _ = self.send_frames(io, socket, &frame);
        }
    }

    fn start(&mut self, io: &mut Io, request: Request) {
        let steps_seen = (request.kind == RequestKind::ResumablePlan && request.progress.is_some())
            .then(HashSet::new);
        let waiter = Waiter {
            sent: 0,
            deadline: request.deadline,
            wait: request.wait,
            kind: request.kind,
            frames: request.frames,
            resend: false,
            reply: ReplyTo::Caller(request.reply),
            progress: request.progress,
            steps_seen,
        };
        self.send_request(io, request.id, waiter);
    }

    /// Sends a request and remembers its waiter; a request that cannot be sent fails at once.
    fn send_request(&mut self, io: &mut Io, id: u64, mut waiter: Waiter) {
        let sent = match self.socket {
            Some(socket) => self.send_frames(io, socket, &waiter.frames),
            None => Err(Error::Closed),
        };
        waiter.sent = match sent {
            Ok(sent) => sent,
            Err(e) => return self.fail_waiter(io, waiter, e),
        };
        self.timers.insert((waiter.deadline, id));
        if let Some(previous) = self.waiters.insert(id, waiter) {
            // Ids come from one counter per client, so this is a bug; fail the older request
            // rather than leave it waiting for a reply that will go to the newer one.
            self.timers.remove(&(previous.deadline, id));
            let error = Error::Invalid(format!("request id {id} was reused while in flight"));
            self.fail_waiter(io, previous, error);
        }
        self.publish_in_flight();
    }

    /// A request the connection makes by itself, answered to `reply`.
    fn send_internal(&mut self, io: &mut Io, message: ClientToBroker, reply: ReplyTo) {
        let id = message.request_id();
        let wait = self.request_timeout;
        let waiter = Waiter {
            sent: 0,
            deadline: io.now() + wait,
            wait,
            kind: RequestKind::Other,
            frames: message.to_compact_frame(),
            resend: false,
            reply,
            progress: None,
            steps_seen: None,
        };
        self.send_request(io, id, waiter);
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends (or sends again) a subscription's `subscribe`.
    fn send_subscribe(&mut self, io: &mut Io, key: SubscriptionKey) {
        let Some((patterns, backlog, cluster_ack)) = self.events.subscribe_request(key) else {
            return;
        };
        let message = ClientToBroker::Subscribe(Subscribe {
            id: self.next_id(),
            patterns,
            backlog,
            cluster_ack,
        });
        self.send_internal(io, message, ReplyTo::Subscribe(key));
    }

    /// Sends `unsubscribe` for a token nobody waits for.
    fn send_unsubscribe(&mut self, io: &mut Io, token: String, done: Option<UnsubscribedSender>) {
        let message = ClientToBroker::Unsubscribe(Unsubscribe {
            id: self.next_id(),
            sub: token,
        });
        self.send_internal(io, message, ReplyTo::Unsubscribe(done));
    }

    /// Sends on the DEALER; returns the message's position among everything sent.
    fn send_frames(&mut self, io: &mut Io, socket: SocketId, frame: &[u8]) -> Result<u64, Error> {
        io.send(socket, &[frame]).map_err(|e| {
            let reason = match e {
                SendError::WouldBlock => {
                    "the queue to the broker is full: it is not reading (is it running?)"
                        .to_string()
                }
                other => other.to_string(),
            };
            Error::Connect {
                endpoint: self.endpoint.clone(),
                reason,
            }
        })?;
        self.sent += 1;
        self.connection.sent(io.now());
        Ok(self.sent)
    }

    fn send_heartbeat(&mut self, io: &mut Io) {
        if let (Some(socket), Some(frame)) = (self.socket, self.heartbeat_frame.take()) {
            // A full queue means the broker is not reading: it will learn soon enough.
            let _ = self.send_frames(io, socket, &frame);
            self.heartbeat_frame = Some(frame);
        }
        // Sent or not, the next one is due an interval from now (a failed send must not make
        // the timer fire again at once).
        self.connection.sent(io.now());
    }

    /// A request ends without an answer.
    fn fail_waiter(&mut self, io: &mut Io, waiter: Waiter, error: Error) {
        match waiter.reply {
            ReplyTo::Caller(reply) => {
                let _ = reply.send(Err(error));
            }
            ReplyTo::Subscribe(key) => self.events.on_subscribe_failed(io, key, error),
            ReplyTo::Unsubscribe(done) => {
                // The SUB filter is gone already, which ends the subscription at any broker
                // that still has it; a lost connection took it with it.
                let result = match error {
                    Error::ConnectionLost { .. } => Ok(()),
                    other => Err(other),
                };
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
            ReplyTo::Learn => self.on_learned(None),
        }
    }

    /// A request is answered.
    fn answer(&mut self, io: &mut Io, waiter: Waiter, message: BrokerToClient) {
        match waiter.reply {
            ReplyTo::Caller(reply) => {
                let _ = reply.send(Ok(message));
            }
            ReplyTo::Subscribe(key) => match message {
                BrokerToClient::Subscribed(subscribed) => {
                    let endpoint = events_endpoint(&self.endpoint, &subscribed.events);
                    let now = io.now();
                    let broker = &self.endpoint;
                    if let Some(orphan) =
                        self.events
                            .on_subscribed(io, key, subscribed.sub, endpoint, broker, now)
                    {
                        self.send_unsubscribe(io, orphan, None);
                    }
                }
                BrokerToClient::Error(e) => self.events.on_subscribe_failed(io, key, e.into()),
                other => {
                    let error = unexpected("subscribed", &other);
                    self.events.on_subscribe_failed(io, key, error);
                }
            },
            ReplyTo::Unsubscribe(done) => {
                let result = match message {
                    BrokerToClient::Unsubscribed(_) => Ok(()),
                    // Already ended (its SUB filter went first): what was asked.
                    BrokerToClient::Error(e)
                        if e.error_code() == Some(ErrorCode::UnknownSubscription) =>
                    {
                        Ok(())
                    }
                    BrokerToClient::Error(e) => Err(e.into()),
                    other => Err(unexpected("unsubscribed", &other)),
                };
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
            ReplyTo::Learn => self.on_learned(Some(message)),
        }
    }

    fn close_all(&mut self, io: &mut Io) {
        let mut waiters: Vec<(u64, Waiter)> = self.waiters.drain().collect();
        waiters.sort_by_key(|&(id, _)| id);
        self.timers.clear();
        self.publish_in_flight();
        for (id, waiter) in waiters {
            if waiter.kind.is_plan() {
                // Queued before the socket closes, and given CLOSE_LINGER to leave.
                self.send_cancel(io, id);
            }
            self.fail_waiter(io, waiter, Error::Closed);
        }
        self.close_publishes(io);
        self.events.close_all(io);
        if let Some(socket) = self.socket.take() {
            io.close_with_linger(socket, CLOSE_LINGER);
        }
        self.counters.closed.store(true, Ordering::Release);
    }

    fn on_reply(&mut self, io: &mut Io, message: BrokerToClient) {
        let Some(id) = message.request_id() else {
            // An error about a request the broker could not read: nothing to match it to.
            self.counters
                .unmatched_replies
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        if let BrokerToClient::Progress(progress) = message {
            let Some(waiter) = self.waiters.get_mut(&id) else {
                self.counters
                    .unmatched_replies
                    .fetch_add(1, Ordering::Relaxed);
                return;
            };
            if let Some(seen) = &mut waiter.steps_seen {
                if !seen.insert(progress.step.clone()) {
                    // Run again after a move: this step was reported already.
                    return;
                }
            }
            if let Some(tx) = &waiter.progress {
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(progress) {
                    self.counters
                        .progress_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        if let BrokerToClient::Pong(pong) = &message {
            if let Some(limit) = pong.max_message_bytes {
                self.counters
                    .broker_max_message_bytes
                    .store(limit, Ordering::Relaxed);
            }
        }
        if self.publishes.owns(id) {
            return self.on_publishes_answered(io, id, message);
        }
        match self.take_waiter(id) {
            Some(waiter) => self.answer(io, waiter, message),
            // Late answers to requests that timed out or were abandoned land here.
            None => {
                self.counters
                    .unmatched_replies
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Handler for Link {
    type Command = Command;

    fn on_message(&mut self, io: &mut Io, socket: SocketId, frames: Vec<Vec<u8>>) {
        if self.events.owns(socket) {
            self.events.on_event(io, frames);
            return;
        }
        let envelope = match parse_envelope(&frames) {
            Ok(envelope) => envelope,
            Err(_) => {
                self.counters
                    .malformed_replies
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        match BrokerToClient::decode(envelope.kind, envelope.body, &self.limits) {
            Ok(message) => self.on_reply(io, message),
            Err(e) => {
                self.counters
                    .malformed_replies
                    .fetch_add(1, Ordering::Relaxed);
                let id = peek_request_id(envelope.body, &self.limits);
                if let Some(waiter) = id.and_then(|id| self.take_waiter(id)) {
                    let kind = String::from_utf8_lossy(envelope.kind);
                    let error = Error::Protocol {
                        code: e.code(),
                        message: format!("`{kind}` reply: {e}"),
                    };
                    self.fail_waiter(io, waiter, error);
                }
            }
        }
    }

    fn on_command(&mut self, io: &mut Io, command: Command) {
        match command {
            Command::Request(request) => self.start(io, request),
            Command::Abandon { id } => {
                if let Some(waiter) = self.take_waiter(id) {
                    if waiter.kind.is_plan() {
                        self.send_cancel(io, id);
                    }
                }
            }
            Command::DrainPublishes => self.drain_publishes(io),
            Command::Subscribe(new) if self.socket.is_none() => {
                let _ = new.activated.send(Err(Error::Closed));
            }
            Command::Subscribe(new) => {
                let key = new.key;
                self.events.add(new);
                self.send_subscribe(io, key);
            }
            Command::Unsubscribe { key, done } => {
                let token = self.events.remove(io, key);
                match (token, done) {
                    (Some(token), done) => self.send_unsubscribe(io, token, done),
                    (None, Some(done)) if self.socket.is_none() => {
                        let _ = done.send(Err(Error::Closed));
                    }
                    // No token: never made, or lost with the broker. A `subscribed` still
                    // to come is unsubscribed when it arrives.
                    (None, Some(done)) => {
                        let _ = done.send(Ok(()));
                    }
                    (None, None) => {}
                }
            }
            Command::Close => self.close_all(io),
        }
    }

    fn on_socket_event(&mut self, io: &mut Io, event: MonitorEvent) {
        if Some(event.socket) != self.socket {
            return;
        }
        self.on_connection_event(io, event.event);
    }

    fn on_timer(&mut self, io: &mut Io) {
        let now = io.now();
        while let Some(&(deadline, id)) = self.timers.first() {
            if deadline > now {
                break;
            }
            if let Some(waiter) = self.take_waiter(id) {
                if waiter.kind.is_plan() {
                    self.send_cancel(io, id);
                }
                let error = Error::Timeout { after: waiter.wait };
                self.fail_waiter(io, waiter, error);
            } else {
                self.timers.remove(&(deadline, id));
            }
        }
        if self
            .connection
            .heartbeat_due()
            .is_some_and(|due| due <= now)
        {
            self.send_heartbeat(io);
        }
        for token in self.events.on_timer(io, now) {
            self.send_unsubscribe(io, token, None);
        }
        if self.publish_retry.is_some_and(|at| at <= now) {
            self.publish_retry = None;
            self.drain_publishes(io);
        }
        self.on_failover_timer(io, now);
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.timers.first().map(|&(deadline, _)| deadline),
            self.connection.heartbeat_due(),
            self.events.next_deadline(),
            self.publish_retry,
            self.failover.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_handles_dropped(&mut self, io: &mut Io) {
        self.close_all(io);
    }

    fn is_finished(&self) -> bool {
        self.socket.is_none()
    }
}
