//! [`Client`]: one connection to a broker, shared by every clone, carrying many requests at once.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mpreg_protocol::{
    BrokerToClient, ClientToBroker, ClusterReply, ClusterRequest, FunctionsReply, FunctionsRequest,
    Ping, PlanId, Pong, Progress, StatusReply, StatusRequest, Step,
};
use mpreg_transport::{Context, ReactorHandle};
use tokio::sync::{mpsc, oneshot};
use ulid::Ulid;

use crate::broker_list::BrokerList;
pub use crate::broker_list::{MAX_GIVEN_BROKERS, MAX_LEARNED_BROKERS, MAX_PATIENCE};
pub use crate::client_options::{
    ClientCounters, ClientOptions, DEFAULT_ACTIVATION_TIMEOUT, DEFAULT_COMMAND_CAPACITY,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEADLINE_MARGIN, DEFAULT_ENDPOINT, DEFAULT_FAILOVER_SILENCE,
    DEFAULT_HEARTBEAT, DEFAULT_PUBLISH_BUFFER, DEFAULT_REQUEST_TIMEOUT, LEARN_INTERVAL,
    MIN_FAILOVER_SILENCE,
};
use crate::error::Error;
use crate::link::{
    Command, Failover, Link, LinkConfig, LinkCounters, Request, RequestKind, SharedBrokers,
};
use crate::pending_reply::{unexpected, PendingReply};
use crate::plan_builder::PlanBuilder;
use crate::publish_queue::PublishQueue;
use crate::Value;

/// How long what is still queued for the broker (the `cancel` of every plan in flight, the
/// last publishes) may take to leave when the client closes. Bounded, so closing never hangs on
/// a broker that is gone.
pub const CLOSE_LINGER: Duration = Duration::from_millis(500);
/// How much longer than [`CLOSE_LINGER`] [`Client::close`] waits for the connection's thread
/// to end, for the thread itself to notice the close.
const CLOSE_MARGIN: Duration = Duration::from_millis(500);
/// Longest wait the client tracks: anything longer (`Duration::MAX`) is capped here, which is
/// as good as no limit and cannot overflow the clock.
const MAX_WAIT: Duration = Duration::from_secs(365 * 86_400);
/// The step name [`Client::call`] gives its one-step plan. An argument equal to it (or starting
/// with it and a `.`) would be read as a reference to the step itself, so it is a name no one
/// passes by accident.
pub const CALL_STEP: &str = "~call";

/// A connection to one broker. Cheap to clone: clones share the connection, and many requests
/// from any number of tasks are in flight on it at once, matched to their replies by id.
/// Dropping the last clone closes the connection.
///
/// Each `Client` runs one reactor that owns its ZeroMQ sockets: by default on a thread of its
/// own, or as a task of the tokio runtime it was created in ([`ClientOptions::io_thread`]
/// `false`: lower latency for calls made from runtime tasks).
///
/// ```no_run
/// # async fn demo() -> Result<(), mpreg::Error> {
/// use mpreg::{args, Client};
///
/// let client = Client::connect("tcp://127.0.0.1:7400").await?;
/// let reply = client.call("echo", args!["hi there!"]).await?;
/// assert_eq!(reply.as_str(), Some("hi there!"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    handle: Arc<ReactorHandle<Command>>,
    /// Shared with the connection, which takes ids for its own requests.
    next_id: Arc<AtomicU64>,
    endpoint: String,
    broker: OnceLock<String>,
    options: ClientOptions,
    counters: Arc<LinkCounters>,
    /// Unconfirmed publishes on their way to the reactor (`publish.rs`).
    publishes: Arc<PublishQueue>,
    /// The brokers, as the connection last saw them (failover).
    brokers: Arc<SharedBrokers>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.endpoint)
            .field("broker", &self.inner.broker)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the broker at `endpoint` (`tcp://host:port`) with default options and waits
    /// until it answers a ping. A comma-separated list (`"tcp://a:7400,tcp://b:7400"`) is an
    /// ordered list of brokers to fail over between, as with [`Client::connect_any`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), mpreg::Error> {
    /// let client = mpreg::Client::connect("tcp://127.0.0.1:7400").await?;
    /// println!("connected to {}", client.broker_name());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// - [`Error::Invalid`]: `endpoint` is not a valid endpoint (or list of them).
    /// - [`Error::Connect`]: no broker answered within the connect timeout.
    pub async fn connect(endpoint: &str) -> Result<Client, Error> {
        Client::connect_with(endpoint, ClientOptions::default()).await
    }

    /// [`Client::connect`] with explicit options.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect_with(endpoint: &str, options: ClientOptions) -> Result<Client, Error> {
        Client::connect_any_with([endpoint], options).await
    }

    /// Connects to the first broker of `endpoints` that answers, and fails over between them:
    /// one connection at a time; when it is lost (a killed broker at once, a silent one after
    /// [`ClientOptions::failover_silence`]), the client moves to the next broker of the list
    /// (wrapping around). Plans in flight are sent again there under the plan id the client
    /// gave them (a broker that has seen the id never runs the plan twice; one that has not
    /// runs it: at-least-once, as for a lost worker); `ping`, `status`, `cluster` and
    /// `functions` are sent again; other requests in flight fail with
    /// [`Error::ConnectionLost`] (904); subscriptions are made again on the new broker and say
    /// so ([`Delivery::Resubscribed`](crate::Delivery::Resubscribed)). Each request gets one
    /// answer or one typed error, never two. The client also learns the other brokers of the
    /// cluster from the one it talks to ([`ClientOptions::learn_brokers`]).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), mpreg::Error> {
    /// let client = mpreg::Client::connect_any(["tcp://10.0.0.1:7400", "tcp://10.0.0.2:7400"]).await?;
    /// println!("on {} of {:?}", client.current_broker(), client.brokers());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// - [`Error::Invalid`]: no endpoint, or one that is not valid.
    /// - [`Error::Connect`]: no broker answered within the connect timeout.
    pub async fn connect_any<I, S>(endpoints: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Client::connect_any_with(endpoints, ClientOptions::default()).await
    }

    /// [`Client::connect_any`] with explicit options.
    ///
    /// # Errors
    /// As [`Client::connect_any`].
    pub async fn connect_any_with<I, S>(
        endpoints: I,
        options: ClientOptions,
    ) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let brokers = BrokerList::parse(endpoints)?;
        let endpoint = brokers.endpoints().join(",");
        let connect_timeout = options.connect_timeout;
        let client = Client::open_list(brokers, options)?;
        let pong = match client.ping_within(connect_timeout).await {
            Ok(pong) => pong,
            Err(Error::Timeout { after }) => {
                return Err(Error::Connect {
                    endpoint: endpoint.to_string(),
                    reason: format!("no answer to ping within {:.3}s", after.as_secs_f64()),
                })
            }
            Err(Error::Closed) => {
                return Err(Error::Connect {
                    endpoint: endpoint.to_string(),
                    reason: "the connection closed during the handshake".to_string(),
                })
            }
            Err(other) => return Err(other),
        };
        // The first ping of a fresh client: nothing else can have set the name.
        let _ = client.inner.broker.set(pong.broker);
        Ok(client)
    }

    /// Opens the connection without checking that anyone answers (libzmq connects lazily and
    /// queues requests until it does).
    #[cfg(test)]
    pub(crate) fn open(endpoint: &str, options: ClientOptions) -> Result<Client, Error> {
        Client::open_list(BrokerList::parse([endpoint])?, options)
    }

    /// [`Client::open`] with a list of brokers.
    pub(crate) fn open_list(brokers: BrokerList, options: ClientOptions) -> Result<Client, Error> {
        let endpoint = brokers.endpoints().join(",");
        let shared = Arc::new(SharedBrokers::new(&brokers));
        let failover = Failover::new(
            brokers,
            options.failover_silence.max(MIN_FAILOVER_SILENCE),
            options.learn_brokers,
            options.curve.clone(),
            Arc::clone(&shared),
            Instant::now(),
        );
        let spec = failover.dealer_spec(failover.brokers.current(), &options.limits);
        let counters = Arc::new(LinkCounters::default());
        let next_id = Arc::new(AtomicU64::new(1));
        let publishes = Arc::new(PublishQueue::new(options.publish_buffer));
        let config = LinkConfig {
            failover,
            limits: options.limits,
            curve: options.curve.clone(),
            request_timeout: options.request_timeout.min(MAX_WAIT),
            activation_timeout: options.activation_timeout.min(MAX_WAIT),
            heartbeat: options.heartbeat,
            next_id: Arc::clone(&next_id),
            counters: Arc::clone(&counters),
            publishes: Arc::clone(&publishes),
        };
        // Brief: init opens one socket and starts a non-blocking connect.
        let init = move |io: &mut mpreg_transport::Io, _| {
            let socket = io.open(&spec)?;
            Ok(Link::new(socket, config, io.now()))
        };
        let capacity = options.command_capacity;
        let started = if options.io_thread {
            mpreg_transport::spawn_with_handle("mpreg-client", &Context::new(), capacity, init)
                .map(|(handle, _thread)| handle)
        } else {
            mpreg_transport::spawn_task(&Context::new(), capacity, init)
                .map(|(handle, _task)| handle)
        };
        let handle = started.map_err(|e| Error::Connect {
            endpoint: endpoint.clone(),
            reason: e.to_string(),
        })?;
        // The reactor (task or thread) ends by itself once every handle is dropped; it is not
        // joined.
        Ok(Client {
            inner: Arc::new(Inner {
                handle: Arc::new(handle),
                next_id,
                endpoint,
                broker: OnceLock::new(),
                options,
                counters,
                publishes,
                brokers: shared,
            }),
        })
    }

    /// Runs `fun(args...)` as a one-step plan and returns its result.
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// use mpreg::args;
    /// let both = client.call("echos", args!["a", 2]).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Remote`] when the broker reports a failure (`no_route`, `step_failed`, ...);
    /// [`Error::Timeout`] when no reply arrives within the request timeout;
    /// [`Error::ConnectionLost`] (904) at once when the connection to the broker breaks while
    /// the call is in flight and there is no other broker to send it to
    /// ([`Client::connect_any`]); [`Error::TooLarge`] (104) when the request is over the broker's
    /// size limit (not sent); [`Error::Closed`] when the client was closed.
    pub async fn call(&self, fun: impl Into<String>, args: Vec<Value>) -> Result<Value, Error> {
        self.call_with(Step::new(CALL_STEP, fun, args)).await
    }

    /// Runs one step (with kwargs, locs, timeout or retries) as a plan and returns its result.
    /// An error about a step named [`CALL_STEP`] is reported without a step name.
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// use mpreg::{args, Step, CALL_STEP};
    /// let mut step = Step::new(CALL_STEP, "echo", args!["hi"]);
    /// step.locs = vec!["gpu".into()];
    /// let reply = client.call_with(step).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn call_with(&self, step: Step) -> Result<Value, Error> {
        let name = step.name.clone();
        run_one(self.plan().step_with(step), &name).await
    }

    /// Starts building a plan; see [`PlanBuilder`].
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// use mpreg::args;
    /// let results = client
    ///     .plan()
    ///     .step("first", "echo", args!["hi there!"])
    ///     .step("second", "echos", args!["first", "AND ME TOO"])
    ///     .run()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn plan(&self) -> PlanBuilder {
        PlanBuilder::new(self.clone())
    }

    /// Asks the broker for its status: workers, counters, limits. A status in flight when the
    /// connection is lost is sent again once it is back.
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// let status = client.status().await?;
    /// println!("{} workers, {} plans in flight", status.workers.len(), status.plans_in_flight);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Timeout`] when no reply arrives within the request timeout; [`Error::Closed`].
    pub async fn status(&self) -> Result<StatusReply, Error> {
        let id = self.next_id();
        let message = ClientToBroker::Status(StatusRequest { id });
        let timeout = self.inner.options.request_timeout;
        let pending = self
            .request_as(message, RequestKind::Idempotent, timeout, None)
            .await?;
        match pending.wait().await? {
            BrokerToClient::Status(status) => Ok(status),
            BrokerToClient::Error(e) => Err(e.into()),
            other => Err(unexpected("status", &other)),
        }
    }

    /// How the broker sees its cluster: every member (itself included) with its state,
    /// endpoints and functions. A broker on its own answers with itself only.
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// for member in client.cluster().await?.members {
    ///     println!("{} {:?} {}", member.name, member.state, member.endpoints.client);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Closed`], as for [`Client::status`].
    pub async fn cluster(&self) -> Result<ClusterReply, Error> {
        let id = self.next_id();
        let message = ClientToBroker::Cluster(ClusterRequest { id });
        let timeout = self.inner.options.request_timeout;
        let pending = self
            .request_as(message, RequestKind::Idempotent, timeout, None)
            .await?;
        match pending.wait().await? {
            BrokerToClient::Cluster(reply) => Ok(reply),
            BrokerToClient::Error(e) => Err(e.into()),
            other => Err(unexpected("cluster", &other)),
        }
    }

    /// The cluster's catalogue: every function the cluster's workers serve, with its versions,
    /// resource sets, brokers and capacity.
    ///
    /// # Errors
    /// As [`Client::status`].
    pub async fn functions(&self) -> Result<FunctionsReply, Error> {
        let id = self.next_id();
        let message = ClientToBroker::Functions(FunctionsRequest { id });
        let timeout = self.inner.options.request_timeout;
        let pending = self
            .request_as(message, RequestKind::Idempotent, timeout, None)
            .await?;
        match pending.wait().await? {
            BrokerToClient::Functions(reply) => Ok(reply),
            BrokerToClient::Error(e) => Err(e.into()),
            other => Err(unexpected("functions", &other)),
        }
    }

    /// Pings the broker.
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// let started = std::time::Instant::now();
    /// let pong = client.ping().await?;
    /// println!("{} answered in {:?}", pong.broker, started.elapsed());
    /// # Ok(()) }
    /// ```
    ///
    /// A ping in flight when the connection is lost is sent again once it is back.
    ///
    /// # Errors
    /// [`Error::Timeout`] when no reply arrives within the request timeout; [`Error::Closed`].
    pub async fn ping(&self) -> Result<Pong, Error> {
        self.ping_within(self.inner.options.request_timeout).await
    }

    async fn ping_within(&self, timeout: Duration) -> Result<Pong, Error> {
        self.ping_as(RequestKind::Idempotent, timeout).await
    }

    /// A ping that is (`Idempotent`) or is not (`Other`) sent again after a reconnection.
    pub(crate) async fn ping_as(
        &self,
        kind: RequestKind,
        timeout: Duration,
    ) -> Result<Pong, Error> {
        let id = self.next_id();
        let message = ClientToBroker::Ping(Ping { id });
        match self
            .request_as(message, kind, timeout, None)
            .await?
            .wait()
            .await?
        {
            BrokerToClient::Pong(pong) => Ok(pong),
            BrokerToClient::Error(e) => Err(e.into()),
            other => Err(unexpected("pong", &other)),
        }
    }

    /// Closes the connection for every clone: plans in flight are cancelled at the broker,
    /// requests in flight fail with [`Error::Closed`], and so does every later request. Returns
    /// once the cancels have left (or could not within [`CLOSE_LINGER`]).
    ///
    /// Dropping the last clone closes the connection the same way, without waiting: call
    /// `close` before a program exits so that the broker hears about its abandoned plans.
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) {
    /// client.close().await;
    /// assert!(client.is_closed());
    /// # }
    /// ```
    pub async fn close(&self) {
        // An error means the reactor is already gone, which is what was asked.
        let _ = self.inner.handle.send(Command::Close).await;
        let _ = tokio::time::timeout(CLOSE_LINGER + CLOSE_MARGIN, self.inner.handle.closed()).await;
    }

    /// The endpoint this client was given (a list of them joined by commas).
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The endpoint of the broker the client talks to now (or is trying to reach).
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) {
    /// println!("talking to {}", client.current_broker());
    /// # }
    /// ```
    pub fn current_broker(&self) -> String {
        self.inner.brokers.current()
    }

    /// Every broker the client may move to, in order: the ones it was given, then the ones it
    /// learned from the cluster ([`ClientOptions::learn_brokers`]).
    pub fn brokers(&self) -> Vec<String> {
        self.inner.brokers.list()
    }

    /// The broker's name, from its answer to the first ping.
    pub fn broker_name(&self) -> &str {
        self.inner.broker.get().map_or("", String::as_str)
    }

    /// The options this client was opened with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// What the connection has seen so far.
    pub fn counters(&self) -> ClientCounters {
        let c = &self.inner.counters;
        ClientCounters {
            in_flight: c.in_flight.load(Ordering::Relaxed),
            unmatched_replies: c.unmatched_replies.load(Ordering::Relaxed),
            malformed_replies: c.malformed_replies.load(Ordering::Relaxed),
            progress_dropped: c.progress_dropped.load(Ordering::Relaxed),
            publish_errors: c.publish_errors.load(Ordering::Relaxed),
            events_dropped: c.events_dropped.load(Ordering::Relaxed),
            unrouted_events: c.unrouted_events.load(Ordering::Relaxed),
            malformed_events: c.malformed_events.load(Ordering::Relaxed),
            connections_lost: c.connections_lost.load(Ordering::Relaxed),
            requests_resent: c.requests_resent.load(Ordering::Relaxed),
            broker_moves: self.inner.brokers.moves.load(Ordering::Relaxed),
            publishes_in_doubt: c.publishes_in_doubt.load(Ordering::Relaxed),
        }
    }

    /// True once the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.counters.closed.load(Ordering::Acquire) || self.inner.handle.is_closed()
    }

    #[cfg(test)]
    pub(crate) fn link_counters(&self) -> Arc<LinkCounters> {
        Arc::clone(&self.inner.counters)
    }

    pub(crate) fn link_counters_ref(&self) -> &LinkCounters {
        &self.inner.counters
    }

    pub(crate) fn publish_queue(&self) -> &PublishQueue {
        &self.inner.publishes
    }

    /// Sends a command to the connection's reactor, waiting for room.
    pub(crate) async fn command(&self, command: Command) -> Result<(), Error> {
        self.inner
            .handle
            .send(command)
            .await
            .map_err(|_| Error::Closed)
    }

    /// Sends a command if there is room now (from `Drop`, which cannot wait).
    pub(crate) fn try_command(&self, command: Command) -> Result<(), Error> {
        self.inner
            .handle
            .try_send(command)
            .map_err(|_| Error::Closed)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The largest request body the broker accepts: what its latest `pong` said (the first
    /// one is [`Client::connect`]'s), else [`ClientOptions::limits`]. A larger request fails
    /// at once with [`Error::TooLarge`] (104) without being sent.
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) {
    /// println!("requests up to {} bytes", client.max_request_bytes());
    /// # }
    /// ```
    pub fn max_request_bytes(&self) -> usize {
        match self
            .inner
            .counters
            .broker_max_message_bytes
            .load(Ordering::Relaxed)
        {
            0 => self.inner.options.limits.max_message_bytes,
            said => usize::try_from(said).unwrap_or(usize::MAX),
        }
    }

    /// Encodes a request in the compact frame, refusing it if its body is over the broker's
    /// limit (the broker would refuse it anyway, after receiving all of it).
    pub(crate) fn encode(&self, message: &ClientToBroker) -> Result<Vec<u8>, Error> {
        let (frame, body) = message.encode_compact();
        let limit = self.max_request_bytes();
        if body > limit {
            return Err(Error::TooLarge {
                kind: message.kind(),
                size: body,
                limit,
            });
        }
        Ok(frame)
    }

    /// Sends a request; the returned [`PendingReply`] resolves to its reply. `wait` is how long
    /// the client waits for it.
    pub(crate) async fn request(
        &self,
        message: ClientToBroker,
        wait: Duration,
        progress: Option<mpsc::Sender<Progress>>,
    ) -> Result<PendingReply, Error> {
        let mut message = message;
        let kind = match &mut message {
            // With another broker to move to, a plan carries an id of the client's choosing,
            // so that it can be sent again there without running twice where it was seen.
            ClientToBroker::Plan(plan) => {
                if plan.plan.is_none() && self.inner.brokers.plan_ids.load(Ordering::Relaxed) {
                    plan.plan = Some(PlanId(Ulid::new()));
                }
                match plan.plan {
                    Some(_) => RequestKind::ResumablePlan,
                    None => RequestKind::Plan,
                }
            }
            _ => RequestKind::Other,
        };
        self.request_as(message, kind, wait, progress).await
    }

    /// [`Client::request`] with an explicit [`RequestKind`].
    pub(crate) async fn request_as(
        &self,
        message: ClientToBroker,
        kind: RequestKind,
        wait: Duration,
        progress: Option<mpsc::Sender<Progress>>,
    ) -> Result<PendingReply, Error> {
        let (request, pending) = self.prepare(message, kind, wait, progress)?;
        self.command(Command::Request(request)).await?;
        Ok(pending)
    }

    /// [`Client::request_as`] for a request that must not overtake the unconfirmed publishes
    /// still queued in the client (a confirmed publish, a batch, flush's ping).
    pub(crate) async fn request_behind_publishes(
        &self,
        message: ClientToBroker,
        kind: RequestKind,
        wait: Duration,
    ) -> Result<PendingReply, Error> {
        let (request, pending) = self.prepare(message, kind, wait, None)?;
        if let Some(request) = self.inner.publishes.push_request(request)? {
            self.command(Command::Request(request)).await?;
        }
        Ok(pending)
    }

    /// Encodes a request and pairs it with the caller's side of its reply.
    fn prepare(
        &self,
        message: ClientToBroker,
        kind: RequestKind,
        wait: Duration,
        progress: Option<mpsc::Sender<Progress>>,
    ) -> Result<(Request, PendingReply), Error> {
        let id = message.request_id();
        let frames = self.encode(&message)?;
        let (reply, rx) = oneshot::channel();
        let request = Request {
            id,
            frames,
            deadline: Instant::now() + wait.min(MAX_WAIT),
            wait,
            kind,
            reply,
            progress,
        };
        Ok((
            request,
            PendingReply::new(id, rx, Arc::clone(&self.inner.handle)),
        ))
    }
}

/// Runs a plan of one step named `name` and returns that step's result; an error about a step
/// named [`CALL_STEP`] loses the step name, which the caller never chose (what
/// [`Client::call`] does, for callers that need the builder's settings, such as a deadline).
///
/// # Errors
/// As [`PlanBuilder::run`].
pub async fn run_one(plan: PlanBuilder, name: &str) -> Result<Value, Error> {
    let mut results = plan.run().await.map_err(|mut err| {
        if let Error::Remote(remote) = &mut err {
            if remote.step.as_deref() == Some(CALL_STEP) {
                remote.step = None;
            }
        }
        err
    })?;
    results.remove(name).ok_or_else(|| Error::Protocol {
        code: mpreg_protocol::ErrorCode::InvalidBody,
        message: format!("the result has no entry for step `{name}`"),
    })
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
