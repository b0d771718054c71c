//! The connection to one broker: a reactor [`Handler`] that owns the DEALER socket, matches
//! replies to requests by id, and enforces the client-side timeouts. Topic deliveries on the
//! same thread are [`EventRoutes`]' job.
//!
//! Everything here runs on the reactor thread and never blocks: replies complete the caller's
//! `oneshot` directly, progress events go into a per-plan channel sized to the plan (the broker
//! sends at most one per step, so it only fills if the broker misbehaves, and then the extra
//! event is dropped and counted), and timeouts are a sorted set the reactor's timer walks.
//! [`PendingReply`] is the caller's side of one request: dropping it before the reply arrives
//! makes the reactor forget the request and cancel it at the broker if it is a plan.
//!
//! Unconfirmed publishes get no reply unless the broker rejects them. The broker handles one
//! connection's requests in order and answers on a FIFO pipe, so once any request is answered,
//! every error about a publish sent before it has arrived: the reactor remembers unconfirmed
//! publishes (in send order, at most [`MAX_UNCONFIRMED`]) only until then, and an error
//! matching one is counted as a publish error instead of an unmatched reply.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpreg_protocol::{
    parse_envelope, peek_request_id, BrokerToClient, CancelRequest, ClientToBroker, ErrorCode,
    Limits, Progress,
};
use mpreg_transport::{Handler, Io, ReactorHandle, SendError, SocketId};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::event_routes::{Attach, EventRoutes};

/// Unconfirmed publishes remembered for a possible error: enough for a burst between two
/// answered requests (16 bytes each). An error about an older one counts as an unmatched
/// reply.
pub(crate) const MAX_UNCONFIRMED: usize = 65_536;

/// What a caller gets back for one request: the reply, or why there is none.
pub(crate) type ReplySender = oneshot::Sender<Result<BrokerToClient, Error>>;

/// Commands from the client's tasks to the reactor.
pub(crate) enum Command {
    /// Send a request and wait for its reply.
    Request(Request),
    /// The caller stopped waiting for this id: forget it, and cancel it if it is a plan.
    Abandon {
        /// The request id.
        id: u64,
    },
    /// Send an unconfirmed publish (encoded by the caller); only an error comes back.
    Publish {
        /// The request id.
        id: u64,
        frames: Vec<u8>,
    },
    /// Route a subscription's events.
    Attach(Attach),
    /// Stop routing a subscription's events, and send `unsubscribe` if given (its answer is
    /// not awaited).
    Detach {
        token: String,
        unsubscribe: Option<Request>,
    },
    /// Fail everything in flight with [`Error::Closed`] and close the socket.
    Close,
}

/// One request, already encoded by the caller's task (so the reactor does no msgpack work).
pub(crate) struct Request {
    pub id: u64,
    pub frames: Vec<u8>,
    /// When the client stops waiting.
    pub deadline: Instant,
    /// How long that is from the send (for the timeout error).
    pub wait: Duration,
    /// A plan: cancel it at the broker when the client gives up.
    pub is_plan: bool,
    pub reply: ReplySender,
    /// Where progress events for this plan go, if the caller wants them.
    pub progress: Option<mpsc::Sender<Progress>>,
}

struct Waiter {
    /// Position of the request among everything sent (for [`Link::forget_unconfirmed`]).
    sent: u64,
    deadline: Instant,
    wait: Duration,
    is_plan: bool,
    reply: ReplySender,
    progress: Option<mpsc::Sender<Progress>>,
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
    pub closed: AtomicBool,
}

/// The reactor handler of one client connection.
pub(crate) struct Link {
    socket: Option<SocketId>,
    endpoint: String,
    limits: Limits,
    waiters: HashMap<u64, Waiter>,
    timers: BTreeSet<(Instant, u64)>,
    /// Messages sent on the DEALER so far.
    sent: u64,
    /// Unconfirmed publishes that may still be answered with an error: `(sent, id)`, oldest
    /// first.
    unconfirmed: VecDeque<(u64, u64)>,
    events: EventRoutes,
    counters: Arc<LinkCounters>,
}

impl Link {
    pub(crate) fn new(
        socket: SocketId,
        endpoint: String,
        limits: Limits,
        curve: Option<mpreg_transport::Curve>,
        counters: Arc<LinkCounters>,
    ) -> Self {
        Link {
            socket: Some(socket),
            endpoint,
            limits,
            waiters: HashMap::new(),
            timers: BTreeSet::new(),
            sent: 0,
            unconfirmed: VecDeque::new(),
            events: EventRoutes::new(limits, curve, Arc::clone(&counters)),
            counters,
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

    fn send_cancel(&self, io: &mut Io, id: u64) {
        if let Some(socket) = self.socket {
            // Best effort: if the broker is not reading, its own deadline ends the plan.
            let _ = io.send(
                socket,
                &[ClientToBroker::Cancel(CancelRequest { id }).to_compact_frame()],
            );
        }
    }

    fn start(&mut self, io: &mut Io, request: Request) {
        let Some(socket) = self.socket else {
            let _ = request.reply.send(Err(Error::Closed));
            return;
        };
        let sent = match self.send_frames(io, socket, &request.frames) {
            Ok(sent) => sent,
            Err(e) => {
                let _ = request.reply.send(Err(e));
                return;
            }
        };
        self.timers.insert((request.deadline, request.id));
        let previous = self.waiters.insert(
            request.id,
            Waiter {
                sent,
                deadline: request.deadline,
                wait: request.wait,
                is_plan: request.is_plan,
                reply: request.reply,
                progress: request.progress,
            },
        );
        if let Some(previous) = previous {
            // Ids come from one counter per client, so this is a bug; fail the older request
            // rather than leave it waiting for a reply that will go to the newer one.
            self.timers.remove(&(previous.deadline, request.id));
            let _ = previous.reply.send(Err(Error::Invalid(format!(
                "request id {} was reused while in flight",
                request.id
            ))));
        }
        self.publish_in_flight();
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
        Ok(self.sent)
    }

    fn publish(&mut self, io: &mut Io, id: u64, frame: &[u8]) {
        let sent = match self.socket {
            Some(socket) => self.send_frames(io, socket, frame),
            None => Err(Error::Closed),
        };
        match sent {
            Ok(sent) => {
                if self.unconfirmed.len() == MAX_UNCONFIRMED {
                    self.unconfirmed.pop_front();
                }
                self.unconfirmed.push_back((sent, id));
            }
            Err(e) => self.publish_failed(e),
        }
    }

    fn publish_failed(&self, error: Error) {
        self.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.counters.last_publish_error.lock() {
            *last = Some(error);
        }
    }

    /// A request sent as message `sent` was answered: the broker has handled everything sent
    /// before it, so no error can follow for those publishes.
    fn forget_unconfirmed(&mut self, sent: u64) {
        while self.unconfirmed.front().is_some_and(|&(s, _)| s < sent) {
            self.unconfirmed.pop_front();
        }
    }

    fn close_all(&mut self, io: &mut Io) {
        for (_, waiter) in self.waiters.drain() {
            let _ = waiter.reply.send(Err(Error::Closed));
        }
        self.timers.clear();
        self.publish_in_flight();
        self.unconfirmed.clear();
        self.events.close_all(io);
        if let Some(socket) = self.socket.take() {
            io.close(socket);
        }
        self.counters.closed.store(true, Ordering::Release);
    }

    fn on_reply(&mut self, message: BrokerToClient) {
        let Some(id) = message.request_id() else {
            // An error about a request the broker could not read: nothing to match it to.
            self.counters
                .unmatched_replies
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        if let BrokerToClient::Progress(progress) = message {
            let Some(waiter) = self.waiters.get(&id) else {
                self.counters
                    .unmatched_replies
                    .fetch_add(1, Ordering::Relaxed);
                return;
            };
            if let Some(tx) = &waiter.progress {
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(progress) {
                    self.counters
                        .progress_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        match self.take_waiter(id) {
            Some(waiter) => {
                self.forget_unconfirmed(waiter.sent);
                let _ = waiter.reply.send(Ok(message));
            }
            None => match message {
                BrokerToClient::Error(e) if self.take_unconfirmed(id) => {
                    self.publish_failed(Error::from(e));
                }
                // Late answers to requests that timed out or were abandoned land here.
                _ => {
                    self.counters
                        .unmatched_replies
                        .fetch_add(1, Ordering::Relaxed);
                }
            },
        }
    }

    fn take_unconfirmed(&mut self, id: u64) -> bool {
        match self.unconfirmed.iter().position(|&(_, i)| i == id) {
            Some(at) => {
                self.unconfirmed.remove(at);
                true
            }
            None => false,
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
            Ok(message) => self.on_reply(message),
            Err(e) => {
                self.counters
                    .malformed_replies
                    .fetch_add(1, Ordering::Relaxed);
                let id = peek_request_id(envelope.body, &self.limits);
                if let Some(waiter) = id.and_then(|id| self.take_waiter(id)) {
                    let kind = String::from_utf8_lossy(envelope.kind);
                    let _ = waiter.reply.send(Err(Error::Protocol {
                        code: e.code(),
                        message: format!("`{kind}` reply: {e}"),
                    }));
                }
            }
        }
    }

    fn on_command(&mut self, io: &mut Io, command: Command) {
        match command {
            Command::Request(request) => self.start(io, request),
            Command::Abandon { id } => {
                if let Some(waiter) = self.take_waiter(id) {
                    if waiter.is_plan {
                        self.send_cancel(io, id);
                    }
                }
            }
            Command::Publish { id, frames } => self.publish(io, id, &frames),
            Command::Attach(attach) if self.socket.is_none() => {
                let _ = attach.active.send(Err(Error::Closed));
            }
            Command::Attach(attach) => self.events.attach(io, attach),
            Command::Detach { token, unsubscribe } => {
                if let Some(request) = unsubscribe {
                    self.start(io, request);
                }
                self.events.detach(io, &token);
            }
            Command::Close => self.close_all(io),
        }
    }

    fn on_timer(&mut self, io: &mut Io) {
        let now = io.now();
        while let Some(&(deadline, id)) = self.timers.first() {
            if deadline > now {
                break;
            }
            if let Some(waiter) = self.take_waiter(id) {
                if waiter.is_plan {
                    self.send_cancel(io, id);
                }
                let _ = waiter
                    .reply
                    .send(Err(Error::Timeout { after: waiter.wait }));
            } else {
                self.timers.remove(&(deadline, id));
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|&(deadline, _)| deadline)
    }

    fn on_handles_dropped(&mut self, io: &mut Io) {
        self.close_all(io);
    }

    fn is_finished(&self) -> bool {
        self.socket.is_none()
    }
}

/// A request in flight. Dropping it before the reply arrives tells the connection to forget
/// the request (and to cancel it at the broker if it is a plan).
pub(crate) struct PendingReply {
    rx: oneshot::Receiver<Result<BrokerToClient, Error>>,
    guard: AbandonGuard,
}

impl fmt::Debug for PendingReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingReply")
            .field("id", &self.guard.id)
            .finish_non_exhaustive()
    }
}

impl PendingReply {
    pub(crate) fn new(
        id: u64,
        rx: oneshot::Receiver<Result<BrokerToClient, Error>>,
        handle: Arc<ReactorHandle<Command>>,
    ) -> Self {
        PendingReply {
            rx,
            guard: AbandonGuard {
                id,
                handle: Some(handle),
            },
        }
    }

    /// Waits for the reply.
    pub(crate) async fn wait(mut self) -> Result<BrokerToClient, Error> {
        let reply = (&mut self.rx).await;
        // The connection has already forgotten this id, whatever the outcome.
        self.guard.handle = None;
        // A dropped sender means the reactor is gone.
        reply.unwrap_or(Err(Error::Closed))
    }
}

struct AbandonGuard {
    id: u64,
    /// Shared, not cloned: dropping a `ReactorHandle` clone wakes the reactor, which would cost
    /// a wake-up per reply.
    handle: Option<Arc<ReactorHandle<Command>>>,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // If the channel is full, the request's own timeout cleans it up instead.
            let _ = handle.try_send(Command::Abandon { id: self.id });
        }
    }
}

/// The reply kind a request expected did not come: a broker bug, reported as such.
pub(crate) fn unexpected(expected: &str, got: &BrokerToClient) -> Error {
    Error::Protocol {
        code: ErrorCode::UnknownMessageType,
        message: format!("expected a `{expected}` reply, got `{}`", got.kind()),
    }
}
