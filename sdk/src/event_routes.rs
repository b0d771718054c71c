//! Topic subscriptions on the connection's reactor: their life-cycle, the SUB socket(s)
//! connected to the broker's event endpoint, and the routing of event frames
//! `[token, VERSION, type, body]` to each subscription's bounded buffer by token.
//!
//! A subscription is known by a [`SubscriptionKey`] the client chose, which outlives its
//! tokens: a token dies with the broker that gave it. The life-cycle of one subscription:
//!
//! ```text
//! Subscribing --subscribed--> Activating --active--> Active
//!      ^                           |                    |
//!      |                           +-- connection lost -+--> Lost (re-subscribed when the
//!      +-------------------- connection back -----------------+   connection is back)
//! ```
//!
//! The first `Subscribing -> Active` answers the caller of `subscribe`; any failure then is the
//! caller's error (except a move to another broker: the subscription is then made there and
//! the caller goes on waiting). Later, losing the connection yields a
//! [`Delivery::ConnectionLost`] notice, and the next activation a [`Delivery::Resubscribed`]
//! one, with the broker, the last message delivered before and how long it was down; a
//! re-subscription the broker refuses (or that is never activated) yields its error and ends
//! the stream. Nothing here blocks: deliveries go through each subscription's
//! [`DeliveryBuffer`].

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpreg_protocol::{parse_envelope, Event, Limits};
use mpreg_transport::{Io, SocketId, SocketKind, SocketOptions, SocketSpec};
use tokio::sync::oneshot;

use crate::delivery_buffer::DeliveryBuffer;
use crate::delivery_queue::DeliverySender;
use crate::error::Error;
use crate::link::LinkCounters;
use crate::subscription::{Delivery, LagSource, Lagging, Message};

/// How soon notices owed to a full subscription buffer are tried again (the application may
/// have read in the meantime; nothing else wakes the reactor for it).
pub(crate) const OWED_RETRY: Duration = Duration::from_millis(100);

/// A subscription as this client knows it, whatever token the broker gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SubscriptionKey(pub u64);

/// The first activation of a subscription, for the caller of `subscribe`.
#[derive(Debug)]
pub(crate) struct Activated {
    pub token: String,
    pub backlog: u64,
}

/// Where the caller of `subscribe` waits for the first activation.
pub(crate) type ActivatedSender = oneshot::Sender<Result<Activated, Error>>;

/// A subscription to make.
pub(crate) struct NewSubscription {
    pub key: SubscriptionKey,
    pub patterns: Vec<String>,
    /// Ask for the retained backlog (again at each re-subscription).
    pub backlog: bool,
    /// Ask the broker to answer once every peer of its cluster knows the patterns.
    pub cluster_ack: bool,
    pub deliveries: DeliverySender,
    pub activated: ActivatedSender,
}

/// Where one subscription is in its life.
enum RouteState {
    /// `subscribe` sent; no token yet.
    Subscribing,
    /// The SUB filter is set for `token`; the broker's `active` is due by `deadline`.
    Activating {
        token: String,
        socket: SocketId,
        endpoint: String,
        deadline: Instant,
    },
    /// Events for `token` are delivered.
    Active { token: String, socket: SocketId },
    /// The connection was lost: subscribe again once it is back.
    Lost,
    /// Failed for good: kept only until the error it owes is delivered.
    Ending,
}

struct Route {
    patterns: Vec<String>,
    backlog: bool,
    cluster_ack: bool,
    state: RouteState,
    /// The caller of `subscribe`, until the first activation.
    first: Option<ActivatedSender>,
    buffer: DeliveryBuffer,
    /// The client endpoint of the broker that gave the current token.
    broker: String,
    /// The id of the last message the broker delivered (empty: none yet); its buffer is
    /// reused, so keeping it costs no allocation per message.
    last_id: String,
    /// When the connection was lost, until the subscription is active again.
    lost_at: Option<Instant>,
}

impl Route {
    fn token(&self) -> Option<(&str, SocketId)> {
        match &self.state {
            RouteState::Activating { token, socket, .. } | RouteState::Active { token, socket } => {
                Some((token, *socket))
            }
            _ => None,
        }
    }
}

/// The subscriptions of one connection and the SUB sockets they arrive on.
pub(crate) struct EventRoutes {
    /// One SUB per event endpoint (in practice one: the broker's).
    sockets: Vec<(String, SocketId)>,
    routes: HashMap<SubscriptionKey, Route>,
    by_token: HashMap<String, SubscriptionKey>,
    /// Activation deadlines of the routes in `Activating`.
    activations: BTreeSet<(Instant, SubscriptionKey)>,
    /// Routes whose buffer owes notices, and when to try them again.
    owing: BTreeSet<SubscriptionKey>,
    owed_retry: Option<Instant>,
    /// How long a subscription may take to be activated.
    activation_timeout: Duration,
    limits: Limits,
    /// The connection's CURVE keys: the broker delivers a subscription's events only to a SUB
    /// with the same identity as the connection that subscribed.
    curve: Option<mpreg_transport::Curve>,
    counters: Arc<LinkCounters>,
}

impl EventRoutes {
    pub(crate) fn new(
        limits: Limits,
        curve: Option<mpreg_transport::Curve>,
        activation_timeout: Duration,
        counters: Arc<LinkCounters>,
    ) -> Self {
        EventRoutes {
            sockets: Vec::new(),
            routes: HashMap::new(),
            by_token: HashMap::new(),
            activations: BTreeSet::new(),
            owing: BTreeSet::new(),
            owed_retry: None,
            activation_timeout,
            limits,
            curve,
            counters,
        }
    }

    /// True when `socket` is one of the SUB sockets.
    pub(crate) fn owns(&self, socket: SocketId) -> bool {
        self.sockets.iter().any(|&(_, s)| s == socket)
    }

    /// Starts a subscription; the connection sends its `subscribe`
    /// ([`EventRoutes::subscribe_request`]).
    pub(crate) fn add(&mut self, new: NewSubscription) {
        let route = Route {
            patterns: new.patterns,
            backlog: new.backlog,
            cluster_ack: new.cluster_ack,
            state: RouteState::Subscribing,
            first: Some(new.activated),
            buffer: DeliveryBuffer::new(new.deliveries),
            broker: String::new(),
            last_id: String::new(),
            lost_at: None,
        };
        self.routes.insert(new.key, route);
    }

    /// The patterns, backlog and cluster-ack flags of a subscription to (re-)subscribe,
    /// marking it `Subscribing`; `None` if it is gone.
    pub(crate) fn subscribe_request(
        &mut self,
        key: SubscriptionKey,
    ) -> Option<(Vec<String>, bool, bool)> {
        let route = self.routes.get_mut(&key)?;
        route.state = RouteState::Subscribing;
        Some((route.patterns.clone(), route.backlog, route.cluster_ack))
    }

    /// The subscriptions waiting to be made again after a lost connection.
    pub(crate) fn lost(&self) -> Vec<SubscriptionKey> {
        let mut keys: Vec<SubscriptionKey> = self
            .routes
            .iter()
            .filter(|(_, r)| matches!(r.state, RouteState::Lost))
            .map(|(&k, _)| k)
            .collect();
        keys.sort();
        keys
    }

    /// The broker at `broker` answered `subscribed` with `token`: set the SUB filter and wait
    /// for `active`. Returns a token the connection should unsubscribe because nobody wants
    /// it any more (the subscription ended meanwhile, or its SUB socket cannot be used).
    #[must_use]
    pub(crate) fn on_subscribed(
        &mut self,
        io: &mut Io,
        key: SubscriptionKey,
        token: String,
        endpoint: String,
        broker: &str,
        now: Instant,
    ) -> Option<String> {
        if !matches!(
            self.routes.get(&key).map(|r| &r.state),
            Some(RouteState::Subscribing)
        ) {
            return Some(token);
        }
        let socket = match self.socket_for(io, &endpoint) {
            Ok(socket) => socket,
            Err(e) => {
                self.fail(io, key, e);
                return Some(token);
            }
        };
        if let Err(e) = io.subscribe(socket, token.as_bytes()) {
            let error = Error::Connect {
                endpoint,
                reason: format!("cannot subscribe the event socket: {e}"),
            };
            self.fail(io, key, error);
            return Some(token);
        }
        let deadline = now + self.activation_timeout;
        self.activations.insert((deadline, key));
        self.by_token.insert(token.clone(), key);
        if let Some(route) = self.routes.get_mut(&key) {
            route.state = RouteState::Activating {
                token,
                socket,
                endpoint,
                deadline,
            };
            route.broker.clear();
            route.broker.push_str(broker);
        }
        None
    }

    /// The `subscribe` request failed: the broker refused it, it timed out, or the connection
    /// was lost before the answer (then it is made again once the connection is back, unless
    /// it was the first attempt, whose caller gets the error).
    pub(crate) fn on_subscribe_failed(&mut self, io: &mut Io, key: SubscriptionKey, error: Error) {
        let Some(route) = self.routes.get_mut(&key) else {
            return;
        };
        if !matches!(route.state, RouteState::Subscribing) {
            return;
        }
        if route.first.is_none() && matches!(error, Error::ConnectionLost { .. }) {
            route.state = RouteState::Lost;
            return;
        }
        self.fail(io, key, error);
    }

    /// The connection to the broker was lost: every token is dead. Active subscriptions are
    /// told and wait to be made again; subscriptions not activated yet fail with `error`
    /// (their caller is still waiting) or wait too (a re-subscription).
    pub(crate) fn on_lost(&mut self, io: &mut Io, error: &Error) {
        self.lose_tokens(io, Some(error));
    }

    /// The connection moves to another broker: as [`EventRoutes::on_lost`], except that
    /// subscriptions not activated yet are made again there too (their caller goes on
    /// waiting), and the SUB sockets are closed (the next broker has its own event endpoint;
    /// closing also ends the subscriptions at a broker that was only silent).
    pub(crate) fn on_moved(&mut self, io: &mut Io) {
        self.lose_tokens(io, None);
        for (_, socket) in self.sockets.drain(..) {
            io.close(socket);
        }
    }

    /// Every token dies; subscriptions waiting for their first activation fail with `fail_first`
    /// (or, without one, wait to be made again like the others).
    fn lose_tokens(&mut self, io: &mut Io, fail_first: Option<&Error>) {
        let now = io.now();
        let keys: Vec<SubscriptionKey> = self.routes.keys().copied().collect();
        for key in keys {
            let Some(route) = self.routes.get_mut(&key) else {
                continue;
            };
            let was_active = matches!(route.state, RouteState::Active { .. });
            if route.token().is_none() {
                continue;
            }
            if let (Some(_), Some(error)) = (&route.first, fail_first) {
                self.fail(io, key, error.clone());
                continue;
            }
            self.forget_token(io, key);
            let Some(route) = self.routes.get_mut(&key) else {
                continue;
            };
            route.state = RouteState::Lost;
            if was_active {
                route.lost_at = Some(now);
            }
            // A re-subscription that was not active yet already told of this loss.
            if was_active && !route.buffer.notify(Ok(Delivery::ConnectionLost)) {
                self.routes.remove(&key);
            }
            self.track_owing(key);
        }
    }

    /// Ends a subscription (unsubscribed or dropped): removes its SUB filter and returns its
    /// token, if it had one, for the connection to send `unsubscribe`.
    pub(crate) fn remove(&mut self, io: &mut Io, key: SubscriptionKey) -> Option<String> {
        let token = self.forget_token(io, key);
        self.routes.remove(&key);
        self.owing.remove(&key);
        token
    }

    /// Removes `key`'s token: SUB filter, routing entry, activation deadline.
    fn forget_token(&mut self, io: &mut Io, key: SubscriptionKey) -> Option<String> {
        let route = self.routes.get(&key)?;
        let (token, socket) = route.token()?;
        let token = token.to_string();
        if let RouteState::Activating { deadline, .. } = route.state {
            self.activations.remove(&(deadline, key));
        }
        // Only fails for a closed socket, which has no filter left to remove. Removing the
        // filter also ends the subscription at the broker.
        let _ = io.unsubscribe(socket, token.as_bytes());
        self.by_token.remove(&token);
        Some(token)
    }

    /// The subscription failed for good: its caller gets `error` if it is still waiting for
    /// the first activation, else the stream yields `error` and ends.
    fn fail(&mut self, io: &mut Io, key: SubscriptionKey, error: Error) {
        self.forget_token(io, key);
        let Some(mut route) = self.routes.remove(&key) else {
            return;
        };
        self.owing.remove(&key);
        if let Some(first) = route.first.take() {
            let _ = first.send(Err(error));
            return;
        }
        if route.buffer.notify(Err(error)) && route.buffer.owes() {
            // Dropping the route closes the stream: only once the error is out.
            route.state = RouteState::Ending;
            self.routes.insert(key, route);
            self.track_owing(key);
        }
    }

    fn track_owing(&mut self, key: SubscriptionKey) {
        match self.routes.get(&key) {
            Some(route) if route.buffer.owes() => {
                self.owing.insert(key);
            }
            Some(route) if matches!(route.state, RouteState::Ending) => {
                self.routes.remove(&key);
                self.owing.remove(&key);
            }
            _ => {
                self.owing.remove(&key);
            }
        }
    }

    fn socket_for(&mut self, io: &mut Io, endpoint: &str) -> Result<SocketId, Error> {
        if let Some(&(_, socket)) = self.sockets.iter().find(|(e, _)| e == endpoint) {
            return Ok(socket);
        }
        let options = SocketOptions::default()
            .with_curve(self.curve.clone())
            .with_max_frame_bytes(self.limits.max_message_bytes);
        let spec = SocketSpec::new(SocketKind::Sub, options).connect(endpoint);
        let socket = io.open(&spec).map_err(|e| Error::Connect {
            endpoint: endpoint.to_string(),
            reason: format!("cannot open the event socket: {e}"),
        })?;
        self.sockets.push((endpoint.to_string(), socket));
        Ok(socket)
    }

    /// An event frame from a SUB socket.
    pub(crate) fn on_event(&mut self, io: &mut Io, frames: Vec<Vec<u8>>) {
        let Some((token, protocol)) = frames.split_first() else {
            self.counters
                .malformed_events
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(key) = std::str::from_utf8(token)
            .ok()
            .and_then(|t| self.by_token.get(t))
            .copied()
        else {
            // Events still in flight for a subscription just ended land here.
            self.counters
                .unrouted_events
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let event = parse_envelope(protocol)
            .map_err(|e| (e.code(), e.to_string()))
            .and_then(|envelope| {
                Event::decode(envelope.kind, envelope.body, &self.limits).map_err(|e| {
                    let kind = String::from_utf8_lossy(envelope.kind).into_owned();
                    (e.code(), format!("`{kind}` event: {e}"))
                })
            });
        let Some(route) = self.routes.get_mut(&key) else {
            return;
        };
        let counters = &self.counters;
        let open = match event {
            Err((code, message)) => {
                counters.malformed_events.fetch_add(1, Ordering::Relaxed);
                route
                    .buffer
                    .push(Err(Error::Protocol { code, message }), counters)
            }
            Ok(Event::Active(active)) => {
                let RouteState::Activating {
                    token,
                    socket,
                    deadline,
                    ..
                } = &route.state
                else {
                    return;
                };
                self.activations.remove(&(*deadline, key));
                let token = token.clone();
                route.state = RouteState::Active {
                    token: token.clone(),
                    socket: *socket,
                };
                match route.first.take() {
                    Some(first) => {
                        // If the caller is gone, its `Subscription`'s drop ends this one.
                        let _ = first.send(Ok(Activated {
                            token,
                            backlog: active.backlog,
                        }));
                        !route.buffer.is_closed()
                    }
                    None => {
                        let down_for = route
                            .lost_at
                            .take()
                            .map_or(Duration::ZERO, |at| io.now().saturating_duration_since(at));
                        let last_message_id =
                            (!route.last_id.is_empty()).then(|| route.last_id.clone());
                        route.buffer.notify(Ok(Delivery::Resubscribed {
                            id: token,
                            backlog: active.backlog,
                            broker: route.broker.clone(),
                            last_message_id,
                            down_for,
                        }))
                    }
                }
            }
            Ok(Event::Message(message)) => {
                route.last_id.clear();
                route.last_id.push_str(&message.id);
                route
                    .buffer
                    .push(Ok(Delivery::Message(Message::from(message))), counters)
            }
            Ok(Event::Messages(batch)) => {
                if let Some(last) = batch.items.last() {
                    route.last_id.clear();
                    route.last_id.push_str(&last.id);
                }
                let items = batch.items.into_iter();
                route.buffer.push_all(
                    items.map(|item| Ok(Delivery::Message(Message::from(item)))),
                    counters,
                )
            }
            Ok(Event::Lagging(lagging)) => {
                let notice = Lagging {
                    dropped: lagging.dropped,
                    dropped_total: lagging.dropped_total,
                    source: LagSource::Broker,
                };
                route.buffer.push(Ok(Delivery::Lagging(notice)), counters)
            }
        };
        if open {
            self.track_owing(key);
        } else {
            // The subscription was dropped: removing its filter ends it at the broker.
            self.remove(io, key);
        }
    }

    /// Subscriptions not activated in time fail; owed notices are tried again. Returns the
    /// tokens of the failed ones, for the connection to send `unsubscribe`.
    #[must_use]
    pub(crate) fn on_timer(&mut self, io: &mut Io, now: Instant) -> Vec<String> {
        let mut expired = Vec::new();
        while let Some(&(deadline, key)) = self.activations.first() {
            if deadline > now {
                break;
            }
            self.activations.remove(&(deadline, key));
            let Some(RouteState::Activating {
                token, endpoint, ..
            }) = self.routes.get(&key).map(|r| &r.state)
            else {
                continue;
            };
            let error = Error::Connect {
                endpoint: endpoint.clone(),
                reason: format!(
                    "the subscription was not activated within {:.3}s: the SUB socket did not \
                     reach the broker's event endpoint",
                    self.activation_timeout.as_secs_f64()
                ),
            };
            expired.push(token.clone());
            self.fail(io, key, error);
        }
        if self.owed_retry.is_some_and(|at| at <= now) || self.owed_retry.is_none() {
            let owing: Vec<SubscriptionKey> = self.owing.iter().copied().collect();
            for key in owing {
                let open = self
                    .routes
                    .get_mut(&key)
                    .is_some_and(|route| route.buffer.flush());
                if open {
                    self.track_owing(key);
                } else {
                    self.remove(io, key);
                }
            }
            self.owed_retry = (!self.owing.is_empty()).then(|| now + OWED_RETRY);
        }
        expired
    }

    /// When [`EventRoutes::on_timer`] should next run.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let activation = self.activations.first().map(|&(at, _)| at);
        let owed = if self.owing.is_empty() {
            None
        } else {
            // Right away the first time, then every OWED_RETRY.
            Some(self.owed_retry.unwrap_or_else(Instant::now))
        };
        activation.into_iter().chain(owed).min()
    }

    /// Closes every SUB socket; subscriptions waiting for their first activation fail with
    /// [`Error::Closed`], and every stream ends.
    pub(crate) fn close_all(&mut self, io: &mut Io) {
        for (_, route) in self.routes.drain() {
            if let Some(tx) = route.first {
                let _ = tx.send(Err(Error::Closed));
            }
        }
        self.by_token.clear();
        self.activations.clear();
        self.owing.clear();
        for (_, socket) in self.sockets.drain(..) {
            io.close(socket);
        }
    }
}
