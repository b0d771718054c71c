//! The plan engine: a synchronous state machine that owns every plan, task and worker of one
//! broker. It runs on the broker's reactor thread; messages go in with the current time, and
//! replies leave through an [`Outbox`]. Nothing here blocks or touches a socket directly.
//!
//! Life of a plan: validate ([`PlanGraph`]) -> dispatch every step whose references have
//! results -> on each result, dispatch the steps that became ready -> reply with the sinks (or
//! all results). A failure, a deadline or a cancel ends the plan with a typed error carrying
//! the results that had finished; its outstanding tasks are cancelled on their workers.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use mpreg_protocol::{
    encode_body, parse_envelope, peek_request_id, router_prefix_len, BrokerToClient, CancelTask,
    ClientToBroker, DecodeError, Disconnect, ErrorCode, ErrorReply, Heartbeat, Limits, PlanRequest,
    PlanResult, Pong, Progress, Published, PublishedBatch, Reconnect, Register, Registered,
    StatusReply, Subscribed, Task, Unsubscribed, Value, WorkerStatus, WorkerToBroker,
};

use crate::access::AccessList;
use crate::exchange::{EventSink, Exchange, ExchangeConfig, SubscribeError};
use crate::plan_graph::{PlanError, PlanGraph};
use crate::registry::{Registry, RoutingId, Selection, WorkerId};
use crate::resolve::{check_footprint, resolve_args, Oversize, Results, Unresolved};

mod dispatch;
mod replies;
mod time;
mod workers;

/// Settings of the engine (a part of the broker's configuration).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The broker's name, reported to clients and workers.
    pub name: String,
    /// The client endpoint, quoted to a client that reached the worker port by mistake.
    pub client_endpoint: String,
    /// The worker endpoint, quoted to a worker that reached the client port by mistake.
    pub worker_endpoint: String,
    /// Size limits on what clients and workers send.
    pub limits: Limits,
    /// Interval of application heartbeats to workers, and the one they are asked to use.
    pub heartbeat: Duration,
    /// Missed heartbeat intervals after which a worker is expired.
    pub liveness: u32,
    /// Deadline of a plan that does not set one.
    pub default_deadline: Duration,
    /// Longest deadline a client may ask for.
    pub max_deadline: Duration,
    /// Re-dispatches of a step whose worker died, when the step does not say.
    pub max_retries: u32,
    /// Plans in flight across all clients.
    pub max_plans_in_flight: usize,
    /// Plans in flight per client: per connection, or per key on a CURVE broker (so opening
    /// more connections does not buy more).
    pub max_plans_per_client: usize,
    /// Bytes held for plans in flight (their bodies and the results received so far), in
    /// total; a plan that would go over it is refused with `402 overloaded`.
    pub max_plan_bytes_in_flight: usize,
    /// The topic exchange.
    pub exchange: ExchangeConfig,
    /// Largest capacity a worker may declare (bigger declarations are capped).
    pub max_worker_capacity: u32,
    /// Missed heartbeat intervals after which a client that sends heartbeats is considered
    /// gone: its plans are cancelled and its subscriptions ended (the grace period).
    pub client_liveness: u32,
}

/// Shortest client heartbeat interval honoured (a client asking for less is given this).
pub const CLIENT_HEARTBEAT_MIN: Duration = Duration::from_millis(100);
/// Longest client heartbeat interval honoured.
pub const CLIENT_HEARTBEAT_MAX: Duration = Duration::from_secs(60);

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            name: "broker".into(),
            client_endpoint: String::new(),
            worker_endpoint: String::new(),
            limits: Limits::default(),
            heartbeat: Duration::from_millis(1000),
            liveness: 3,
            default_deadline: Duration::from_secs(30),
            max_deadline: Duration::from_secs(3600),
            max_retries: 2,
            max_plans_in_flight: 100_000,
            max_plans_per_client: 10_000,
            max_plan_bytes_in_flight: 1 << 30,
            exchange: ExchangeConfig::default(),
            max_worker_capacity: 1024,
            client_liveness: 3,
        }
    }
}

/// What happened to an outgoing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the peer.
    Sent,
    /// The peer's queue is full (high-water mark); the message was dropped.
    Full,
    /// The peer is not connected.
    Gone,
}

/// Where the engine's messages go: the broker's client, worker and event sockets.
pub trait Outbox: EventSink {
    /// Sends `[prefix.., VERSION, kind, body]` on the client socket.
    fn to_client(&mut self, client: &ClientAddr, kind: &str, body: &[u8]) -> Delivery;
    /// Sends `[routing, VERSION, kind, body]` on the worker socket.
    fn to_worker(&mut self, routing: &[u8], kind: &str, body: &[u8]) -> Delivery;

    /// Sends to a worker in compact form (one frame) when `compact`: workers that register
    /// with compact frames get their tasks that way. The default sends three frames.
    fn to_worker_as(&mut self, routing: &[u8], compact: bool, kind: &str, body: &[u8]) -> Delivery {
        let _ = compact;
        self.to_worker(routing, kind, body)
    }
}

/// A client connection: its routing id, and whether it is a REQ socket (which needs the empty
/// delimiter frame back).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientAddr {
    /// Routing id on the client ROUTER.
    pub routing: RoutingId,
    /// REQ peer: replies carry an empty delimiter after the routing id.
    pub delimiter: bool,
    /// The request came as one compact frame: the reply goes back the same way.
    pub compact: bool,
}

type PlanKey = u64;
type StepIx = u32;

struct PlanState {
    client: ClientAddr,
    /// Whose quota it counts against: the client's key (CURVE) or its connection.
    quota: RoutingId,
    /// Bytes held for it: its body and the results received.
    bytes: usize,
    id: u64,
    request: PlanRequest,
    graph: PlanGraph,
    pending: Vec<u32>,
    results: Vec<Option<Value>>,
    attempts: Vec<u32>,
    finished: usize,
    tasks: HashSet<u64>,
    deadline: Instant,
}

impl PlanState {
    fn partial(&mut self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        for (step, result) in self.request.steps.iter().zip(self.results.iter_mut()) {
            if let Some(value) = result.take() {
                out.insert(step.name.clone(), value);
            }
        }
        out
    }
}

/// Finished results, looked up by step name during resolution.
struct PlanResults<'a> {
    index: &'a HashMap<String, u32>,
    results: &'a [Option<Value>],
}

impl Results for PlanResults<'_> {
    fn result(&self, name: &str) -> Option<&Value> {
        self.index
            .get(name)
            .and_then(|&i| self.results[i as usize].as_ref())
    }
}

/// A client connection that sends heartbeats.
struct TrackedClient {
    last_seen: Instant,
    /// Silence after which it is gone: its interval times `client_liveness`.
    window: Duration,
}

struct TaskState {
    plan: PlanKey,
    step: StepIx,
    worker: WorkerId,
    sent: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Plan(PlanKey),
    Task(u64),
}

/// The broker's state. See the module documentation.
pub struct Engine {
    config: EngineConfig,
    started: Instant,
    registry: Registry,
    plans: HashMap<PlanKey, PlanState>,
    by_request: HashMap<(RoutingId, u64), PlanKey>,
    per_client: HashMap<RoutingId, usize>,
    bytes_in_flight: usize,
    tasks: HashMap<u64, TaskState>,
    waiting: HashMap<String, VecDeque<(PlanKey, StepIx)>>,
    waiting_len: usize,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    next_plan: PlanKey,
    next_task: u64,
    next_heartbeat: Instant,
    shutdown_deadline: Option<Instant>,
    counters: BTreeMap<&'static str, u64>,
    log: slog::Logger,
    exchange: Exchange,
    /// Keys and rules when the broker runs CURVE; `None`: everyone may do everything.
    access: Option<AccessList>,
    /// Client connections that send heartbeats, by routing id.
    clients: HashMap<RoutingId, TrackedClient>,
}

impl Engine {
    /// An engine with no workers and no plans.
    pub fn new(config: EngineConfig, now: Instant) -> Engine {
        Engine {
            next_heartbeat: now + config.heartbeat,
            exchange: Exchange::new(config.exchange.clone()),
            config,
            started: now,
            registry: Registry::default(),
            plans: HashMap::new(),
            by_request: HashMap::new(),
            per_client: HashMap::new(),
            bytes_in_flight: 0,
            tasks: HashMap::new(),
            waiting: HashMap::new(),
            waiting_len: 0,
            timers: BinaryHeap::new(),
            next_plan: 1,
            next_task: 1,
            shutdown_deadline: None,
            counters: BTreeMap::new(),
            log: slog::Logger::root(slog::Discard, slog::o!()),
            access: None,
            clients: HashMap::new(),
        }
    }

    /// Logs registrations, expiries and shutdown through `log`.
    pub fn with_logger(mut self, log: slog::Logger) -> Engine {
        self.log = log;
        self
    }

    fn count(&mut self, name: &'static str) {
        *self.counters.entry(name).or_default() += 1;
    }

    /// A counter's value (see the `status` reply for the names).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Plans in flight.
    pub fn plans_in_flight(&self) -> usize {
        self.plans.len()
    }

    /// Registered workers.
    pub fn worker_count(&self) -> usize {
        self.registry.len()
    }

    /// When [`Engine::on_tick`] should next run.
    pub fn next_deadline(&self) -> Instant {
        let mut next = self.next_heartbeat;
        if let Some(Reverse((at, _))) = self.timers.peek() {
            next = next.min(*at);
        }
        if let Some(at) = self.shutdown_deadline {
            next = next.min(at);
        }
        next
    }

    // ----- clients -------------------------------------------------------------------------

    /// A message from the client socket, routing id first.
    pub fn on_client_message(&mut self, out: &mut impl Outbox, frames: &[Vec<u8>], now: Instant) {
        self.on_client_message_as(out, frames, None, now);
    }

    /// Enforces access rules from now on (a CURVE broker), replacing earlier ones: requests
    /// are checked against the new rules, and registered workers whose key is no longer
    /// listed are dropped (told with `404 access_denied`, their tasks re-dispatched).
    pub fn set_access(&mut self, out: &mut impl Outbox, access: AccessList, now: Instant) {
        let revoked: Vec<(WorkerId, RoutingId)> = self
            .registry
            .iter()
            .filter(|(_, w)| w.key.as_deref().is_some_and(|k| access.worker(k).is_none()))
            .map(|(id, w)| (id, w.routing.clone()))
            .collect();
        self.access = Some(access);
        for (id, routing) in revoked {
            let reply = ErrorReply::new(
                None,
                ErrorCode::AccessDenied,
                "this worker's key was revoked",
            );
            out.to_worker(&routing, "error", &encode_body(&reply));
            self.count("workers_revoked");
            self.expire_worker(out, id, now);
        }
    }

    /// A message from the client socket, from a connection authenticated as `user` (the ZAP
    /// `User-Id`; `None` without CURVE).
    pub fn on_client_message_as(
        &mut self,
        out: &mut impl Outbox,
        frames: &[Vec<u8>],
        user: Option<&str>,
        now: Instant,
    ) {
        let prefix = router_prefix_len(frames);
        let Some(routing) = frames.first() else {
            return;
        };
        if let Some(tracked) = self.clients.get_mut(routing) {
            tracked.last_seen = now;
        }
        let mut client = ClientAddr {
            routing: routing.clone(),
            delimiter: prefix == 2,
            compact: false,
        };
        let envelope = match parse_envelope(&frames[prefix..]) {
            Ok(envelope) => {
                client.compact = envelope.compact;
                envelope
            }
            Err(e) => {
                self.count("malformed_messages");
                let id = frames
                    .last()
                    .and_then(|b| peek_request_id(b, &self.config.limits));
                self.reply_error(out, &client, ErrorReply::new(id, e.code(), e.to_string()));
                return;
            }
        };
        let request = match ClientToBroker::decode(
            envelope.kind,
            envelope.body,
            &self.config.limits,
        ) {
            Ok(request) => request,
            Err(e) => {
                self.count("malformed_messages");
                let id = peek_request_id(envelope.body, &self.config.limits);
                let mut reply = ErrorReply::new(id, e.code(), e.to_string());
                if matches!(e, DecodeError::UnknownKind { .. }) {
                    if let Some(kind) = WorkerToBroker::KINDS.iter().find(|k| {
                        k.as_bytes() == envelope.kind && !ClientToBroker::KINDS.contains(k)
                    }) {
                        reply.message = format!(
                                "`{kind}` is a worker message, but this is the broker's client endpoint{}",
                                match self.config.worker_endpoint.as_str() {
                                    "" => String::new(),
                                    e => format!("; workers connect to {e}"),
                                }
                            );
                    }
                }
                if let DecodeError::Field { path, .. } = &e {
                    // A topic or pattern that is not a UTF-8 string is a bad topic.
                    let code = match (envelope.kind, path.as_str()) {
                        (b"publish", "topic") => Some(ErrorCode::InvalidTopic),
                        (b"publish_batch", p)
                            if p.starts_with("messages") && p.ends_with(".topic") =>
                        {
                            Some(ErrorCode::InvalidTopic)
                        }
                        (b"subscribe", p) if p.starts_with("patterns") => {
                            Some(ErrorCode::InvalidPattern)
                        }
                        _ => None,
                    };
                    if let Some(code) = code {
                        reply = ErrorReply::new(id, code, e.to_string());
                    }
                    reply.path = Some(path.clone());
                }
                self.reply_error(out, &client, reply);
                return;
            }
        };
        if let Some(reply) = self.access.as_ref().and_then(|a| a.check(user, &request)) {
            self.count("requests_denied");
            return self.reply_error(out, &client, reply);
        }
        match request {
            ClientToBroker::Plan(plan) => {
                let quota = match user {
                    Some(key) => key.as_bytes().to_vec(),
                    None => client.routing.clone(),
                };
                let bytes = frames.last().map_or(0, Vec::len);
                self.start_plan(out, client, quota, bytes, plan, now)
            }
            ClientToBroker::Cancel(cancel) => {
                if let Some(&key) = self.by_request.get(&(client.routing.clone(), cancel.id)) {
                    self.count("plans_cancelled");
                    let reply = ErrorReply::new(
                        Some(cancel.id),
                        ErrorCode::Cancelled,
                        "the plan was cancelled by its client",
                    );
                    self.fail_plan(out, key, reply);
                }
            }
            ClientToBroker::Ping(ping) => {
                let pong = BrokerToClient::Pong(Pong {
                    id: ping.id,
                    broker: self.config.name.clone(),
                    max_message_bytes: Some(self.config.limits.max_message_bytes as u64),
                });
                self.send_client(out, &client, &pong);
            }
            ClientToBroker::Heartbeat(beat) => {
                let interval = Duration::from_millis(beat.interval_ms)
                    .clamp(CLIENT_HEARTBEAT_MIN, CLIENT_HEARTBEAT_MAX);
                self.clients.insert(
                    client.routing,
                    TrackedClient {
                        last_seen: now,
                        window: interval * self.config.client_liveness.max(1),
                    },
                );
            }
            ClientToBroker::Status(status) => {
                let reply = BrokerToClient::Status(self.status(status.id, now));
                self.send_client(out, &client, &reply);
            }
            ClientToBroker::Subscribe(sub) => {
                let limits = self.config.limits;
                let reply = match self.exchange.subscribe(
                    &client.routing,
                    user,
                    sub.patterns,
                    sub.backlog,
                    &limits,
                    now,
                ) {
                    Ok(token) => BrokerToClient::Subscribed(Subscribed {
                        id: sub.id,
                        sub: token,
                        events: self.exchange.events_endpoint().to_string(),
                    }),
                    Err(e) => BrokerToClient::Error(subscribe_error(sub.id, e)),
                };
                self.send_client(out, &client, &reply);
            }
            ClientToBroker::Unsubscribe(unsub) => {
                let reply = match self.exchange.unsubscribe(&client.routing, &unsub.sub) {
                    Ok(()) => BrokerToClient::Unsubscribed(Unsubscribed {
                        id: unsub.id,
                        sub: unsub.sub,
                    }),
                    Err(e) => BrokerToClient::Error(subscribe_error(unsub.id, e)),
                };
                self.send_client(out, &client, &reply);
            }
            ClientToBroker::PublishBatch(batch) => {
                for (i, item) in batch.messages.iter().enumerate() {
                    if let Err(e) =
                        mpreg_protocol::topic::check_topic(&item.topic, &self.config.limits)
                    {
                        let mut reply = ErrorReply::new(
                            Some(batch.id),
                            ErrorCode::InvalidTopic,
                            format!(
                                "messages[{i}].topic {:?}: {e}; nothing in the batch was published",
                                truncate(&item.topic)
                            ),
                        );
                        reply.path = Some(format!("messages[{i}].topic"));
                        return self.reply_error(out, &client, reply);
                    }
                }
                let count = batch.messages.len() as u64;
                let matched = self.exchange.publish_batch(out, batch.messages, now);
                if batch.confirm {
                    let reply = BrokerToClient::PublishedBatch(PublishedBatch {
                        id: batch.id,
                        count,
                        matched,
                    });
                    self.send_client(out, &client, &reply);
                }
            }
            ClientToBroker::Publish(publish) => {
                if let Err(e) =
                    mpreg_protocol::topic::check_topic(&publish.topic, &self.config.limits)
                {
                    let reply = ErrorReply::new(
                        Some(publish.id),
                        ErrorCode::InvalidTopic,
                        format!("topic {:?}: {e}", truncate(&publish.topic)),
                    );
                    return self.reply_error(out, &client, reply);
                }
                let (msg, matched) = self.exchange.publish(
                    out,
                    &publish.topic,
                    publish.headers,
                    publish.payload,
                    now,
                );
                if publish.confirm {
                    let reply = BrokerToClient::Published(Published {
                        id: publish.id,
                        msg,
                        matched,
                    });
                    self.send_client(out, &client, &reply);
                }
            }
        }
    }

    /// A message from the event (XPUB) socket: a SUB subscribing or leaving.
    pub fn on_event_message(&mut self, out: &mut impl Outbox, frames: &[Vec<u8>], now: Instant) {
        self.on_event_message_as(out, frames, None, now);
    }

    /// A subscription frame from a SUB authenticated as `user` (`None` without CURVE).
    pub fn on_event_message_as(
        &mut self,
        out: &mut impl Outbox,
        frames: &[Vec<u8>],
        user: Option<&str>,
        now: Instant,
    ) {
        if let Some(frame) = frames.first() {
            self.exchange.on_subscription_frame(out, frame, user, now);
        }
    }

    fn start_plan(
        &mut self,
        out: &mut impl Outbox,
        client: ClientAddr,
        quota: RoutingId,
        bytes: usize,
        request: PlanRequest,
        now: Instant,
    ) {
        self.count("plans_received");
        let id = request.id;
        let refuse = |code: ErrorCode, message: String| ErrorReply::new(Some(id), code, message);
        if self.shutdown_deadline.is_some() {
            let reply = refuse(
                ErrorCode::ShuttingDown,
                "the broker is shutting down".into(),
            );
            return self.reply_error(out, &client, reply);
        }
        if self.by_request.contains_key(&(client.routing.clone(), id)) {
            let reply = refuse(
                ErrorCode::DuplicateRequestId,
                format!("plan id {id} is already in flight on this connection"),
            );
            return self.reply_error(out, &client, reply);
        }
        let client_plans = self.per_client.get(&quota).copied().unwrap_or(0);
        if client_plans >= self.config.max_plans_per_client
            || self.plans.len() >= self.config.max_plans_in_flight
        {
            self.count("plans_refused_quota");
            let reply = refuse(
                ErrorCode::TooManyPlans,
                format!(
                    "too many plans in flight (this client: {client_plans}, limit {}; broker limit {})",
                    self.config.max_plans_per_client, self.config.max_plans_in_flight
                ),
            );
            return self.reply_error(out, &client, reply);
        }
        if self.bytes_in_flight.saturating_add(bytes) > self.config.max_plan_bytes_in_flight {
            self.count("plans_refused_bytes");
            let reply = refuse(
                ErrorCode::Overloaded,
                format!(
                    "the broker holds {} bytes for plans in flight and this plan would take it over its limit of {}; retry later",
                    self.bytes_in_flight, self.config.max_plan_bytes_in_flight
                ),
            );
            return self.reply_error(out, &client, reply);
        }
        if let Some(topic) = &request.progress_topic {
            if let Err(e) = mpreg_protocol::topic::check_topic(topic, &self.config.limits) {
                let reply = refuse(
                    ErrorCode::InvalidTopic,
                    format!("progress_topic {:?}: {e}", truncate(topic)),
                );
                return self.reply_error(out, &client, reply);
            }
        }
        let graph = match PlanGraph::build(&request.steps, &self.config.limits) {
            Ok(graph) => graph,
            Err(PlanError {
                code,
                message,
                step,
                cycle,
            }) => {
                self.count("plans_rejected");
                let mut reply = refuse(code, message);
                reply.step = step;
                reply.cycle = cycle;
                return self.reply_error(out, &client, reply);
            }
        };
        if request.steps.is_empty() {
            self.count("plans_completed");
            let result = BrokerToClient::Result(PlanResult {
                id,
                results: BTreeMap::new(),
            });
            return self.send_client(out, &client, &result);
        }
        let deadline_ms = request
            .deadline_ms
            .map_or(self.config.default_deadline, Duration::from_millis);
        let deadline = now + deadline_ms.min(self.config.max_deadline);
        let n = request.steps.len();
        let key = self.next_plan;
        self.next_plan += 1;
        let pending: Vec<u32> = graph.deps.iter().map(|d| d.len() as u32).collect();
        let ready: Vec<StepIx> = (0..n as u32)
            .filter(|&i| pending[i as usize] == 0)
            .collect();
        *self.per_client.entry(quota.clone()).or_default() += 1;
        self.bytes_in_flight += bytes;
        self.by_request.insert((client.routing.clone(), id), key);
        self.timers.push(Reverse((deadline, Timer::Plan(key))));
        self.plans.insert(
            key,
            PlanState {
                client,
                quota,
                bytes,
                id,
                request,
                graph,
                pending,
                results: vec![None; n],
                attempts: vec![0; n],
                finished: 0,
                tasks: HashSet::new(),
                deadline,
            },
        );
        for step in ready {
            if !self.plans.contains_key(&key) {
                break;
            }
            self.dispatch(out, key, step, now);
        }
    }
}

fn subscribe_error(id: u64, e: SubscribeError) -> ErrorReply {
    match e {
        SubscribeError::InvalidPattern(m) => {
            ErrorReply::new(Some(id), ErrorCode::InvalidPattern, m)
        }
        SubscribeError::TooMany(n) => ErrorReply::new(
            Some(id),
            ErrorCode::TooManySubscriptions,
            format!("this connection already has {n} subscriptions, the limit"),
        ),
        SubscribeError::Unknown => ErrorReply::new(
            Some(id),
            ErrorCode::UnknownSubscription,
            "no subscription with this token on this connection",
        ),
    }
}

/// At most 64 characters of `s`, for error messages that quote client input.
pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}
