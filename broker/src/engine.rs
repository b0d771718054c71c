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

/// Settings of the engine (a part of the broker's configuration).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The broker's name, reported to clients and workers.
    pub name: String,
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            name: "broker".into(),
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
        let request =
            match ClientToBroker::decode(envelope.kind, envelope.body, &self.config.limits) {
                Ok(request) => request,
                Err(e) => {
                    self.count("malformed_messages");
                    let id = peek_request_id(envelope.body, &self.config.limits);
                    let mut reply = ErrorReply::new(id, e.code(), e.to_string());
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
                });
                self.send_client(out, &client, &pong);
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

    // ----- dispatch ------------------------------------------------------------------------

    /// Finds a worker for a ready step and sends it, or queues it while matching workers are
    /// all busy, or fails the plan when nobody can run it.
    fn dispatch(&mut self, out: &mut impl Outbox, key: PlanKey, step: StepIx, now: Instant) {
        let Some(plan) = self.plans.get(&key) else {
            return;
        };
        let def = &plan.request.steps[step as usize];
        match self.registry.select(&def.fun, &def.locs) {
            Selection::Worker(worker) => self.send_task(out, key, step, worker, now),
            Selection::Busy => {
                self.waiting
                    .entry(def.fun.clone())
                    .or_default()
                    .push_back((key, step));
                self.waiting_len += 1;
            }
            Selection::NoRoute => {
                let retried = plan.attempts[step as usize] > 0;
                let (code, message) = if retried {
                    (
                        ErrorCode::WorkerLost,
                        format!(
                            "the worker running step `{}` was lost and no other worker serves `{}`",
                            def.name, def.fun
                        ),
                    )
                } else if def.locs.is_empty() {
                    (
                        ErrorCode::NoRoute,
                        format!("no worker serves `{}`", def.fun),
                    )
                } else {
                    (
                        ErrorCode::NoRoute,
                        format!(
                            "no worker serves `{}` with resources [{}]",
                            def.fun,
                            def.locs.join(", ")
                        ),
                    )
                };
                let mut reply = ErrorReply::new(Some(plan.id), code, message)
                    .with_step(def.name.clone())
                    .with_fun(def.fun.clone());
                if !retried {
                    reply.locs = Some(def.locs.clone());
                }
                self.count("plans_no_route");
                self.fail_plan(out, key, reply);
            }
        }
    }

    fn send_task(
        &mut self,
        out: &mut impl Outbox,
        key: PlanKey,
        step: StepIx,
        worker: WorkerId,
        now: Instant,
    ) {
        let Some(plan) = self.plans.get(&key) else {
            return;
        };
        let task_id = self.next_task;
        let def = &plan.request.steps[step as usize];
        let body = if plan.graph.has_refs[step as usize] {
            let results = PlanResults {
                index: &plan.graph.index,
                results: &plan.results,
            };
            // A few bytes of references can name a large result many times over: measure
            // first, copy only what fits in a task (its body map and `args` are 2 levels).
            let limits = &self.config.limits;
            let footprint = check_footprint(
                &def.args,
                &def.kwargs,
                &results,
                limits.max_message_bytes,
                limits.max_depth.saturating_sub(2),
            );
            if let Err(over) = footprint {
                let (code, what) = match over {
                    Oversize::Bytes(n) => (
                        ErrorCode::MessageTooLarge,
                        format!("would exceed {n} bytes (max_message_bytes)"),
                    ),
                    Oversize::Depth(n) => (
                        ErrorCode::NestingTooDeep,
                        format!("would nest deeper than max_depth (arguments: {n} levels)"),
                    ),
                };
                let reply = ErrorReply::new(
                    Some(plan.id),
                    code,
                    format!(
                        "step `{}`: its arguments with references resolved {what}",
                        def.name
                    ),
                )
                .with_step(def.name.clone())
                .with_fun(def.fun.clone());
                self.count("tasks_too_large");
                self.fail_plan(out, key, reply);
                return;
            }
            match resolve_args(&def.args, &def.kwargs, &results) {
                Ok((args, kwargs)) => encode_body(&Task {
                    task: task_id,
                    fun: Cow::Borrowed(&def.fun),
                    args: Cow::Owned(args),
                    kwargs: Cow::Owned(kwargs),
                    timeout_ms: def.timeout_ms,
                }),
                Err(Unresolved { reference, reason }) => {
                    let mut reply = ErrorReply::new(
                        Some(plan.id),
                        ErrorCode::UnresolvedReference,
                        format!(
                            "step `{}`: reference `{reference}` does not resolve: {reason}",
                            def.name
                        ),
                    )
                    .with_step(def.name.clone());
                    reply.path = Some(reference);
                    self.fail_plan(out, key, reply);
                    return;
                }
            }
        } else {
            encode_body(&Task {
                task: task_id,
                fun: Cow::Borrowed(&def.fun),
                args: Cow::Borrowed(&def.args),
                kwargs: Cow::Borrowed(&def.kwargs),
                timeout_ms: def.timeout_ms,
            })
        };
        let step_timeout = def.timeout_ms.map(Duration::from_millis);
        let Some(w) = self.registry.get_mut(worker) else {
            return;
        };
        match out.to_worker_as(&w.routing, w.compact, "task", &body) {
            Delivery::Sent => {
                self.next_task += 1;
                w.tasks.insert(task_id);
                self.tasks.insert(
                    task_id,
                    TaskState {
                        plan: key,
                        step,
                        worker,
                        sent: now,
                    },
                );
                if let Some(plan) = self.plans.get_mut(&key) {
                    plan.tasks.insert(task_id);
                }
                if let Some(timeout) = step_timeout {
                    self.timers
                        .push(Reverse((now + timeout, Timer::Task(task_id))));
                }
                self.count("tasks_dispatched");
            }
            Delivery::Full | Delivery::Gone => {
                // A worker whose queue is full or whose connection is gone cannot be trusted
                // with more: expire it (its tasks move elsewhere) and route this step again.
                self.expire_worker(out, worker, now);
                self.dispatch(out, key, step, now);
            }
        }
    }

    /// Sends waiting steps to a worker that has free slots.
    fn fill_worker(&mut self, out: &mut impl Outbox, worker: WorkerId, now: Instant) {
        let Some(w) = self.registry.get(worker) else {
            return;
        };
        if self.waiting_len == 0 || w.draining {
            return;
        }
        let functions = w.functions.clone();
        for fun in functions {
            loop {
                let Some(w) = self.registry.get(worker) else {
                    return;
                };
                if w.draining || w.tasks.len() as u64 >= u64::from(w.capacity) {
                    return;
                }
                let Some(queue) = self.waiting.get_mut(&fun) else {
                    break;
                };
                // Drop entries of plans that ended; take the first the worker can run.
                let mut pick = None;
                let mut i = 0;
                while i < queue.len() {
                    let (key, step) = queue[i];
                    match self.plans.get(&key) {
                        None => {
                            queue.remove(i);
                            self.waiting_len -= 1;
                        }
                        Some(plan) if w.holds(&plan.request.steps[step as usize].locs) => {
                            queue.remove(i);
                            self.waiting_len -= 1;
                            pick = Some((key, step));
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                if queue.is_empty() {
                    self.waiting.remove(&fun);
                }
                match pick {
                    Some((key, step)) => self.send_task(out, key, step, worker, now),
                    None => break,
                }
            }
        }
    }

    // ----- results -------------------------------------------------------------------------

    fn complete_step(
        &mut self,
        out: &mut impl Outbox,
        task: TaskState,
        value: Value,
        now: Instant,
    ) {
        let worker_name = self
            .registry
            .get(task.worker)
            .map(|w| w.name.clone())
            .unwrap_or_default();
        let Some(plan) = self.plans.get_mut(&task.plan) else {
            return;
        };
        let step = task.step as usize;
        if plan.results[step].is_some() {
            return;
        }
        if plan.request.progress || plan.request.progress_topic.is_some() {
            let event = Progress {
                id: plan.id,
                step: plan.request.steps[step].name.clone(),
                fun: plan.request.steps[step].fun.clone(),
                worker: worker_name,
                result: value.clone(),
                elapsed_us: now.saturating_duration_since(task.sent).as_micros() as u64,
            };
            let client = plan.client.clone();
            let topic = plan.request.progress_topic.clone();
            let to_client = plan.request.progress;
            if let Some(topic) = topic {
                // The progress body as a named map (what a client's `progress` message holds).
                let payload = rmpv::decode::read_value(&mut encode_body(&event).as_slice())
                    .unwrap_or(Value::Nil);
                let headers = BTreeMap::from([("plan".to_string(), event.id.to_string())]);
                self.exchange.publish(out, &topic, headers, payload, now);
            }
            if to_client {
                self.send_client(out, &client, &BrokerToClient::Progress(event));
            }
        }
        let Some(plan) = self.plans.get_mut(&task.plan) else {
            return;
        };
        plan.results[step] = Some(value);
        plan.finished += 1;
        if plan.finished == plan.results.len() {
            return self.finish_plan(out, task.plan);
        }
        let mut ready = Vec::new();
        for &d in &plan.graph.dependents[step] {
            plan.pending[d as usize] -= 1;
            if plan.pending[d as usize] == 0 {
                ready.push(d);
            }
        }
        for d in ready {
            if !self.plans.contains_key(&task.plan) {
                break;
            }
            self.dispatch(out, task.plan, d, now);
        }
    }

    fn finish_plan(&mut self, out: &mut impl Outbox, key: PlanKey) {
        let Some(mut plan) = self.forget_plan(key) else {
            return;
        };
        self.count("plans_completed");
        let mut results = BTreeMap::new();
        for (i, (step, result)) in plan
            .request
            .steps
            .iter()
            .zip(plan.results.iter_mut())
            .enumerate()
        {
            if plan.request.all_results || plan.graph.is_sink(i) {
                results.insert(step.name.clone(), result.take().unwrap_or(Value::Nil));
            }
        }
        let reply = BrokerToClient::Result(PlanResult {
            id: plan.id,
            results,
        });
        self.send_client(out, &plan.client, &reply);
    }

    /// Removes a plan from every index and cancels its outstanding tasks.
    fn forget_plan(&mut self, key: PlanKey) -> Option<PlanState> {
        let plan = self.plans.remove(&key)?;
        self.by_request
            .remove(&(plan.client.routing.clone(), plan.id));
        if let Some(n) = self.per_client.get_mut(&plan.quota) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&plan.quota);
            }
        }
        self.bytes_in_flight = self.bytes_in_flight.saturating_sub(plan.bytes);
        Some(plan)
    }

    fn fail_plan(&mut self, out: &mut impl Outbox, key: PlanKey, mut reply: ErrorReply) {
        let Some(mut plan) = self.forget_plan(key) else {
            return;
        };
        self.count("plans_failed");
        let mut freed = Vec::new();
        for task in plan.tasks.drain() {
            if let Some(state) = self.tasks.remove(&task) {
                if let Some(w) = self.registry.get_mut(state.worker) {
                    w.tasks.remove(&task);
                    let routing = w.routing.clone();
                    out.to_worker(&routing, "cancel", &encode_body(&CancelTask { task }));
                    freed.push(state.worker);
                }
            }
        }
        reply.partial = plan.partial();
        self.reply_error(out, &plan.client, reply);
        let now = Instant::now();
        freed.sort_unstable();
        freed.dedup();
        for worker in freed {
            self.after_task_freed(out, worker, now);
        }
    }

    /// A worker has one task fewer: remove it if it is draining and idle, else fill it.
    fn after_task_freed(&mut self, out: &mut impl Outbox, worker: WorkerId, now: Instant) {
        match self.registry.get(worker) {
            Some(w) if w.draining && w.tasks.is_empty() => {
                self.registry.remove(worker);
            }
            Some(_) => self.fill_worker(out, worker, now),
            None => {}
        }
    }

    // ----- workers -------------------------------------------------------------------------

    /// A message from the worker socket, routing id first.
    pub fn on_worker_message(&mut self, out: &mut impl Outbox, frames: &[Vec<u8>], now: Instant) {
        self.on_worker_message_as(out, frames, None, now);
    }

    /// A message from the worker socket, from a connection authenticated as `user`.
    pub fn on_worker_message_as(
        &mut self,
        out: &mut impl Outbox,
        frames: &[Vec<u8>],
        user: Option<&str>,
        now: Instant,
    ) {
        let Some(routing) = frames.first() else {
            return;
        };
        let known = self.registry.find(routing);
        if let Some(id) = known {
            if let Some(w) = self.registry.get_mut(id) {
                w.last_seen = now;
            }
        }
        // A result is sent on to the client inside two more maps (`result` -> `results` -> value):
        // one level less than clients accept for the worker's body keeps every reply readable.
        let limits = Limits {
            max_depth: self.config.limits.max_depth.saturating_sub(1),
            ..self.config.limits
        };
        let mut compact = false;
        let message = match parse_envelope(&frames[1..]) {
            Ok(env) => {
                compact = env.compact;
                WorkerToBroker::decode(env.kind, env.body, &limits).map_err(|e| {
                    let id = peek_request_id(env.body, &limits);
                    Box::new(ErrorReply::new(id, e.code(), e.to_string()))
                })
            }
            Err(e) => Err(Box::new(ErrorReply::new(None, e.code(), e.to_string()))),
        };
        let message = match message {
            Ok(message) => message,
            Err(reply) => {
                self.count("malformed_messages");
                out.to_worker(routing, "error", &encode_body(&*reply));
                return;
            }
        };
        match (message, known) {
            (WorkerToBroker::Register(register), _) => {
                let listed = match (&self.access, user) {
                    (None, _) => true,
                    (Some(access), Some(key)) => access.worker(key).is_some(),
                    (Some(_), None) => false,
                };
                if !listed {
                    self.count("requests_denied");
                    let reply = ErrorReply::new(
                        None,
                        ErrorCode::AccessDenied,
                        "this key is not (or no longer) allowed as a worker",
                    );
                    out.to_worker(routing, "error", &encode_body(&reply));
                    return;
                }
                let key = user.map(str::to_owned);
                let routing = routing.clone();
                self.register(out, routing.clone(), register, now);
                if let Some(w) = self
                    .registry
                    .find(&routing)
                    .and_then(|id| self.registry.get_mut(id))
                {
                    w.key = key;
                    w.compact = compact;
                }
            }
            (WorkerToBroker::Heartbeat(_), Some(_)) => {}
            (WorkerToBroker::Result(result), Some(worker)) => {
                if let Some(task) = self.take_task(worker, result.task) {
                    let bytes = frames.last().map_or(0, Vec::len);
                    if let Some(plan) = self.plans.get_mut(&task.plan) {
                        plan.bytes += bytes;
                        self.bytes_in_flight += bytes;
                    }
                    self.complete_step(out, task, result.value, now);
                    self.after_task_freed(out, worker, now);
                }
            }
            (WorkerToBroker::Failure(failure), Some(worker)) => {
                if let Some(task) = self.take_task(worker, failure.task) {
                    let worker_name = self
                        .registry
                        .get(worker)
                        .map(|w| w.name.clone())
                        .unwrap_or_default();
                    if let Some(plan) = self.plans.get(&task.plan) {
                        let def = &plan.request.steps[task.step as usize];
                        let mut reply = ErrorReply::new(
                            Some(plan.id),
                            ErrorCode::StepFailed,
                            format!(
                                "step `{}` ({}) failed on {worker_name}: {}",
                                def.name, def.fun, failure.message
                            ),
                        )
                        .with_step(def.name.clone())
                        .with_fun(def.fun.clone());
                        reply.worker = Some(worker_name);
                        reply.cause = Some(failure.kind);
                        self.count("steps_failed");
                        self.fail_plan(out, task.plan, reply);
                    }
                    self.after_task_freed(out, worker, now);
                }
            }
            (WorkerToBroker::Disconnect(_), Some(worker)) => {
                if let Some(w) = self.registry.get_mut(worker) {
                    w.draining = true;
                }
                self.after_task_freed(out, worker, now);
            }
            (WorkerToBroker::Disconnect(_), None) => {}
            (_, None) => {
                let reconnect = Reconnect {
                    reason: "this broker does not know you; register again".into(),
                };
                out.to_worker(routing, "reconnect", &encode_body(&reconnect));
            }
        }
    }

    fn register(
        &mut self,
        out: &mut impl Outbox,
        routing: RoutingId,
        register: Register,
        now: Instant,
    ) {
        let limits = &self.config.limits;
        let too_long = |s: &String| s.is_empty() || s.len() > limits.max_name_bytes;
        if register.functions.iter().any(too_long)
            || register.resources.iter().any(too_long)
            || register.node.len() > limits.max_name_bytes
        {
            let reply = ErrorReply::new(
                None,
                ErrorCode::InvalidBody,
                "register: empty or over-long function or resource name",
            );
            out.to_worker(&routing, "error", &encode_body(&reply));
            return;
        }
        let capacity = register
            .capacity
            .clamp(1, self.config.max_worker_capacity.max(1));
        let id = self.registry.register(
            routing.clone(),
            register.node,
            register.functions,
            register.resources,
            capacity,
            now,
        );
        self.count("workers_registered");
        if let Some(w) = self.registry.get(id) {
            slog::info!(self.log, "worker registered"; "worker" => &w.name, "functions" => w.functions.len(), "capacity" => capacity);
        }
        let reply = Registered {
            broker: self.config.name.clone(),
            heartbeat_ms: self.config.heartbeat.as_millis() as u64,
            liveness: self.config.liveness,
            capacity,
        };
        out.to_worker(&routing, "registered", &encode_body(&reply));
        self.fill_worker(out, id, now);
    }

    /// Removes a task answered by `worker`; `None` if unknown or answered by someone else.
    fn take_task(&mut self, worker: WorkerId, task: u64) -> Option<TaskState> {
        if self.tasks.get(&task)?.worker != worker {
            return None;
        }
        let state = self.tasks.remove(&task)?;
        if let Some(w) = self.registry.get_mut(worker) {
            w.tasks.remove(&task);
        }
        if let Some(plan) = self.plans.get_mut(&state.plan) {
            plan.tasks.remove(&task);
        }
        Some(state)
    }

    /// Removes a dead worker and re-dispatches its tasks (bounded retries per step).
    fn expire_worker(&mut self, out: &mut impl Outbox, worker: WorkerId, now: Instant) {
        let Some(w) = self.registry.remove(worker) else {
            return;
        };
        self.count("workers_expired");
        slog::warn!(self.log, "worker lost"; "worker" => &w.name, "tasks" => w.tasks.len());
        for task in w.tasks {
            let Some(state) = self.tasks.remove(&task) else {
                continue;
            };
            let Some(plan) = self.plans.get_mut(&state.plan) else {
                continue;
            };
            plan.tasks.remove(&task);
            let step = state.step as usize;
            plan.attempts[step] += 1;
            let allowed = plan.request.steps[step]
                .retries
                .unwrap_or(self.config.max_retries);
            if plan.attempts[step] > allowed {
                let def = &plan.request.steps[step];
                let mut reply = ErrorReply::new(
                    Some(plan.id),
                    ErrorCode::WorkerLost,
                    format!(
                        "step `{}`: worker {} was lost and the step was retried {allowed} times",
                        def.name, w.name
                    ),
                )
                .with_step(def.name.clone())
                .with_fun(def.fun.clone());
                reply.worker = Some(w.name.clone());
                self.fail_plan(out, state.plan, reply);
            } else {
                self.count("tasks_retried");
                self.dispatch(out, state.plan, state.step, now);
            }
        }
    }

    // ----- time ----------------------------------------------------------------------------

    /// Runs what is due: heartbeats, worker expiry, plan deadlines, step timeouts, shutdown.
    pub fn on_tick(&mut self, out: &mut impl Outbox, now: Instant) {
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.config.heartbeat;
            self.exchange.on_tick(now);
            let body = encode_body(&Heartbeat {});
            let routings: Vec<RoutingId> = self
                .registry
                .iter()
                .map(|(_, w)| w.routing.clone())
                .collect();
            for routing in routings {
                out.to_worker(&routing, "heartbeat", &body);
            }
            let silence = self.config.heartbeat * self.config.liveness;
            if let Some(cutoff) = now.checked_sub(silence) {
                for worker in self.registry.silent_since(cutoff) {
                    self.expire_worker(out, worker, now);
                }
            }
        }
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Plan(key) => {
                    let Some(plan) = self.plans.get(&key) else {
                        continue;
                    };
                    if plan.deadline > now {
                        continue;
                    }
                    let waiting_for: Vec<&str> = plan
                        .tasks
                        .iter()
                        .filter_map(|t| self.tasks.get(t))
                        .map(|t| plan.request.steps[t.step as usize].name.as_str())
                        .take(5)
                        .collect();
                    let reply = ErrorReply::new(
                        Some(plan.id),
                        ErrorCode::PlanTimeout,
                        format!(
                            "the plan's deadline passed with {} of {} steps finished (running: {})",
                            plan.finished,
                            plan.results.len(),
                            waiting_for.join(", ")
                        ),
                    );
                    self.count("plans_timed_out");
                    self.fail_plan(out, key, reply);
                }
                Timer::Task(task) => {
                    let Some(state) = self.tasks.get(&task) else {
                        continue;
                    };
                    let Some(plan) = self.plans.get(&state.plan) else {
                        continue;
                    };
                    let def = &plan.request.steps[state.step as usize];
                    let reply = ErrorReply::new(
                        Some(plan.id),
                        ErrorCode::StepTimeout,
                        format!(
                            "step `{}` ran longer than its timeout of {} ms",
                            def.name,
                            def.timeout_ms.unwrap_or(0)
                        ),
                    )
                    .with_step(def.name.clone())
                    .with_fun(def.fun.clone());
                    let key = state.plan;
                    self.count("steps_timed_out");
                    self.fail_plan(out, key, reply);
                }
            }
        }
        if self.shutdown_deadline.is_some_and(|at| now >= at) {
            let keys: Vec<PlanKey> = self.plans.keys().copied().collect();
            for key in keys {
                let id = self.plans.get(&key).map(|p| p.id);
                let reply = ErrorReply::new(
                    id,
                    ErrorCode::ShuttingDown,
                    "the broker shut down before the plan finished",
                );
                self.fail_plan(out, key, reply);
            }
        }
    }

    /// Stops accepting plans; plans in flight have until `deadline` to finish.
    pub fn begin_shutdown(&mut self, deadline: Instant) {
        self.shutdown_deadline = Some(deadline);
    }

    /// True once shutdown was asked for.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown_deadline.is_some()
    }

    /// True once shutdown was asked for and no plan is left.
    pub fn is_drained(&self) -> bool {
        self.shutdown_deadline.is_some() && self.plans.is_empty()
    }

    /// Tells every worker the broker is leaving.
    pub fn disconnect_workers(&mut self, out: &mut impl Outbox) {
        let body = encode_body(&Disconnect {
            reason: "broker shutting down".into(),
        });
        for (_, w) in self.registry.iter() {
            out.to_worker(&w.routing, "disconnect", &body);
        }
    }

    // ----- replies -------------------------------------------------------------------------

    fn status(&self, id: u64, now: Instant) -> StatusReply {
        let limits = &self.config.limits;
        StatusReply {
            id,
            broker: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            workers: self
                .registry
                .iter()
                .map(|(_, w)| {
                    let mut resources: Vec<String> = w.resources.iter().cloned().collect();
                    resources.sort();
                    WorkerStatus {
                        name: w.name.clone(),
                        functions: w.functions.clone(),
                        resources,
                        capacity: w.capacity,
                        outstanding: w.tasks.len() as u32,
                        draining: w.draining,
                    }
                })
                .collect(),
            plans_in_flight: self.plans.len() as u64,
            tasks_waiting: self.waiting_len as u64,
            counters: {
                let mut counters: BTreeMap<String, u64> = self
                    .counters
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect();
                let topics = self.exchange.counters();
                counters.insert("topic_published".into(), topics.published);
                counters.insert("topic_delivered".into(), topics.delivered);
                counters.insert("topic_dropped_hwm".into(), topics.dropped);
                counters.insert("plan_bytes_in_flight".into(), self.bytes_in_flight as u64);
                counters.insert(
                    "subscriptions".into(),
                    self.exchange.subscription_count() as u64,
                );
                counters
            },
            limits: BTreeMap::from([
                (
                    "max_message_bytes".to_string(),
                    limits.max_message_bytes as u64,
                ),
                ("max_depth".to_string(), limits.max_depth as u64),
                ("max_steps".to_string(), limits.max_steps as u64),
                ("max_name_bytes".to_string(), limits.max_name_bytes as u64),
                ("max_locs".to_string(), limits.max_locs as u64),
                ("max_topic_bytes".to_string(), limits.max_topic_bytes as u64),
                ("max_topic_words".to_string(), limits.max_topic_words as u64),
                ("max_patterns".to_string(), limits.max_patterns as u64),
                (
                    "max_subscriptions_per_client".to_string(),
                    self.config.exchange.max_subscriptions_per_client as u64,
                ),
                (
                    "max_plans_per_client".to_string(),
                    self.config.max_plans_per_client as u64,
                ),
                (
                    "max_plans_in_flight".to_string(),
                    self.config.max_plans_in_flight as u64,
                ),
                (
                    "max_plan_bytes_in_flight".to_string(),
                    self.config.max_plan_bytes_in_flight as u64,
                ),
                (
                    "max_worker_capacity".to_string(),
                    u64::from(self.config.max_worker_capacity),
                ),
            ]),
        }
    }

    fn reply_error(&mut self, out: &mut impl Outbox, client: &ClientAddr, reply: ErrorReply) {
        self.send_client(out, client, &BrokerToClient::Error(reply));
    }

    fn send_client(
        &mut self,
        out: &mut impl Outbox,
        client: &ClientAddr,
        message: &BrokerToClient,
    ) {
        let mut body = message.encode_body();
        if body.len() > self.config.limits.max_message_bytes {
            // A reply the client would refuse: say so instead (results are not resent).
            let mut reply = ErrorReply::new(
                message.request_id(),
                ErrorCode::MessageTooLarge,
                format!(
                    "the {} reply of {} bytes exceeds the limit of {} bytes",
                    message.kind(),
                    body.len(),
                    self.config.limits.max_message_bytes
                ),
            );
            if let BrokerToClient::Error(original) = message {
                reply.step = original.step.clone();
            }
            body = encode_body(&reply);
            self.count("replies_too_large");
            return self.deliver(out, client, "error", &body);
        }
        self.deliver(out, client, message.kind(), &body);
    }

    fn deliver(&mut self, out: &mut impl Outbox, client: &ClientAddr, kind: &str, body: &[u8]) {
        match out.to_client(client, kind, body) {
            Delivery::Sent => {}
            Delivery::Full => self.count("client_replies_dropped_hwm"),
            Delivery::Gone => self.count("client_replies_undeliverable"),
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
