//! [`Client`]: one connection to a broker, shared by every clone, carrying many requests at once.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mpreg_protocol::{
    BrokerToClient, ClientToBroker, Limits, Ping, Pong, Progress, StatusReply, StatusRequest, Step,
};
use mpreg_transport::{
    Context, Curve, Key, KeyPair, ReactorHandle, SocketKind, SocketOptions, SocketSpec,
};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::link::{unexpected, Command, Link, LinkCounters, PendingReply, Request};
use crate::plan_builder::PlanBuilder;
use crate::Value;

/// The broker endpoint the CLI and examples use when none is given.
pub const DEFAULT_ENDPOINT: &str = "tcp://127.0.0.1:7400";
/// Default time [`Client::connect`] waits for the broker to answer its first ping: long enough
/// for a TCP connect and a busy broker, short enough that a wrong address fails fast.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time a request waits for its reply when the plan sets no deadline.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default extra time the client waits beyond a plan's deadline, so the broker's own
/// `plan_timeout` reply (which carries partial results) arrives before the client gives up.
pub const DEFAULT_DEADLINE_MARGIN: Duration = Duration::from_secs(1);
/// Default capacity of the command channel to the connection's reactor thread. Callers wait for
/// room when it is full, so it bounds memory, not the number of requests in flight.
pub const DEFAULT_COMMAND_CAPACITY: usize = 1024;
/// Default time [`Client::subscribe`] waits for the broker to activate a subscription once it
/// exists: the broker's own default for discarding a subscription never activated.
pub const DEFAULT_ACTIVATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait the client tracks: anything longer (`Duration::MAX`) is capped here, which is
/// as good as no limit and cannot overflow the clock.
const MAX_WAIT: Duration = Duration::from_secs(365 * 86_400);
/// The step name [`Client::call`] gives its one-step plan. An argument equal to it (or starting
/// with it and a `.`) would be read as a reference to the step itself, so it is a name no one
/// passes by accident.
pub const CALL_STEP: &str = "~call";

/// How a [`Client`] waits and what it accepts.
///
/// ```
/// use std::time::Duration;
/// let options = mpreg::ClientOptions::default()
///     .with_connect_timeout(Duration::from_secs(1))
///     .with_request_timeout(Duration::from_secs(10));
/// assert_eq!(options.request_timeout, Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClientOptions {
    /// How long [`Client::connect`] waits for the broker's first `pong`.
    pub connect_timeout: Duration,
    /// How long a request waits for its reply when no deadline is set.
    pub request_timeout: Duration,
    /// How much longer than a plan's deadline the client waits.
    pub deadline_margin: Duration,
    /// Limits applied to every reply (size and nesting).
    pub limits: Limits,
    /// Capacity of the command channel to the connection's reactor thread.
    pub command_capacity: usize,
    /// How long [`Client::subscribe`] waits for the broker's `active` event after the
    /// subscription was created (the time for the SUB socket to reach the event endpoint).
    pub activation_timeout: Duration,
    /// CURVE: the broker's public key and this client's key pair, used on the connection and
    /// on the event (SUB) socket. `None`: plain connection (a broker on loopback without keys).
    pub curve: Option<Curve>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            deadline_margin: DEFAULT_DEADLINE_MARGIN,
            limits: Limits::default(),
            command_capacity: DEFAULT_COMMAND_CAPACITY,
            activation_timeout: DEFAULT_ACTIVATION_TIMEOUT,
            curve: None,
        }
    }
}

impl ClientOptions {
    /// Sets [`ClientOptions::connect_timeout`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`ClientOptions::request_timeout`].
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`ClientOptions::deadline_margin`].
    pub fn with_deadline_margin(mut self, margin: Duration) -> Self {
        self.deadline_margin = margin;
        self
    }

    /// Sets [`ClientOptions::activation_timeout`].
    pub fn with_activation_timeout(mut self, timeout: Duration) -> Self {
        self.activation_timeout = timeout;
        self
    }

    /// Connects with CURVE to a broker whose public key is `server`, as `own` (whose public
    /// key must be listed as a client in the broker's access file; docs/SECURITY.md).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), mpreg::Error> {
    /// use mpreg::{Client, ClientOptions, Key, KeyPair};
    /// let server = mpreg::load_public_key("/etc/mpreg/broker.pub")?;
    /// let own = KeyPair::load("alice.key").map_err(|e| mpreg::Error::Invalid(e.to_string()))?;
    /// let client = Client::connect_with("tcp://broker:7400", ClientOptions::default().with_curve(server, own)).await?;
    /// # let _: Key = server; Ok(()) }
    /// ```
    pub fn with_curve(mut self, server: Key, own: KeyPair) -> Self {
        self.curve = Some(Curve::Client { server, own });
        self
    }

    /// Sets [`ClientOptions::limits`].
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// What the connection has seen, read with [`Client::counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ClientCounters {
    /// Requests waiting for their reply now.
    pub in_flight: u64,
    /// Replies that matched no request in flight (late answers to requests that timed out or
    /// were cancelled, or errors about requests the broker could not read).
    pub unmatched_replies: u64,
    /// Replies that could not be decoded.
    pub malformed_replies: u64,
    /// Progress events dropped because the plan's progress buffer was full (more events than
    /// steps: a broker bug).
    pub progress_dropped: u64,
    /// Unconfirmed publishes the broker rejected (or that could not be sent); the latest is
    /// [`Client::last_publish_error`].
    pub publish_errors: u64,
    /// Topic deliveries dropped because a subscription's buffer was full (the application did
    /// not read; each shows as a sequence gap and a client-side lagging notice).
    pub events_dropped: u64,
    /// Event frames for no subscription of this client (in flight when it ended).
    pub unrouted_events: u64,
    /// Event frames that could not be read.
    pub malformed_events: u64,
}

/// A connection to one broker. Cheap to clone: clones share the connection, and many requests
/// from any number of tasks are in flight on it at once, matched to their replies by id.
/// Dropping the last clone closes the connection.
///
/// Each `Client` runs one reactor thread that owns its ZeroMQ socket.
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
    next_id: AtomicU64,
    endpoint: String,
    broker: OnceLock<String>,
    options: ClientOptions,
    counters: Arc<LinkCounters>,
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
    /// until it answers a ping.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), mpreg::Error> {
    /// let client = mpreg::Client::connect("tcp://127.0.0.1:7400").await?;
    /// println!("connected to {}", client.broker_name());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// - [`Error::Invalid`]: `endpoint` is not a valid endpoint.
    /// - [`Error::Connect`]: the broker did not answer within the connect timeout.
    pub async fn connect(endpoint: &str) -> Result<Client, Error> {
        Client::connect_with(endpoint, ClientOptions::default()).await
    }

    /// [`Client::connect`] with explicit options.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect_with(endpoint: &str, options: ClientOptions) -> Result<Client, Error> {
        let connect_timeout = options.connect_timeout;
        let client = Client::open(endpoint, options)?;
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
    pub(crate) fn open(endpoint: &str, options: ClientOptions) -> Result<Client, Error> {
        mpreg_transport::endpoint::validate(endpoint)
            .map_err(|e| Error::Invalid(format!("broker endpoint: {e}")))?;
        let counters = Arc::new(LinkCounters::default());
        let socket_options = SocketOptions::dealer_client()
            .with_curve(options.curve.clone())
            .with_max_frame_bytes(options.limits.max_message_bytes);
        let curve = options.curve.clone();
        let spec = SocketSpec::new(SocketKind::Dealer, socket_options).connect(endpoint);
        let link_endpoint = endpoint.to_string();
        let link_counters = Arc::clone(&counters);
        let limits = options.limits;
        // Brief: init opens one socket and starts a non-blocking connect.
        let (handle, _thread) = mpreg_transport::spawn(
            "mpreg-client",
            &Context::new(),
            options.command_capacity,
            move |io| {
                let socket = io.open(&spec)?;
                Ok(Link::new(
                    socket,
                    link_endpoint,
                    limits,
                    curve,
                    link_counters,
                ))
            },
        )
        .map_err(|e| Error::Connect {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        })?;
        // The reactor thread ends by itself once every handle is dropped; it is not joined.
        Ok(Client {
            inner: Arc::new(Inner {
                handle: Arc::new(handle),
                next_id: AtomicU64::new(1),
                endpoint: endpoint.to_string(),
                broker: OnceLock::new(),
                options,
                counters,
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
    /// [`Error::Timeout`] when no reply arrives within the request timeout; [`Error::Closed`]
    /// when the client was closed.
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

    /// Asks the broker for its status: workers, counters, limits.
    ///
    /// # Errors
    /// [`Error::Timeout`] when no reply arrives within the request timeout; [`Error::Closed`].
    pub async fn status(&self) -> Result<StatusReply, Error> {
        let id = self.next_id();
        let message = ClientToBroker::Status(StatusRequest { id });
        let timeout = self.inner.options.request_timeout;
        match self.request(message, timeout, None).await?.wait().await? {
            BrokerToClient::Status(status) => Ok(status),
            BrokerToClient::Error(e) => Err(e.into()),
            other => Err(unexpected("status", &other)),
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
    /// # Errors
    /// [`Error::Timeout`] when no reply arrives within the request timeout; [`Error::Closed`].
    pub async fn ping(&self) -> Result<Pong, Error> {
        self.ping_within(self.inner.options.request_timeout).await
    }

    async fn ping_within(&self, timeout: Duration) -> Result<Pong, Error> {
        let id = self.next_id();
        let message = ClientToBroker::Ping(Ping { id });
        match self.request(message, timeout, None).await?.wait().await? {
            BrokerToClient::Pong(pong) => Ok(pong),
            BrokerToClient::Error(e) => Err(e.into()),
            other => Err(unexpected("pong", &other)),
        }
    }

    /// Closes the connection for every clone: requests in flight fail with [`Error::Closed`],
    /// and so does every later request. (Dropping the last clone also closes it.)
    pub async fn close(&self) {
        // An error means the reactor is already gone, which is what was asked.
        let _ = self.inner.handle.send(Command::Close).await;
    }

    /// The endpoint this client connected to.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
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

    /// A request whose answer nobody waits for: the reactor matches and discards it (so it is
    /// not counted as unmatched), or forgets it after the request timeout.
    pub(crate) fn unanswered_request(&self, message: ClientToBroker) -> Request {
        let (reply, _) = oneshot::channel();
        let wait = self.inner.options.request_timeout;
        Request {
            id: message.request_id(),
            frames: message.to_compact_frame(),
            deadline: Instant::now() + wait.min(MAX_WAIT),
            wait,
            is_plan: false,
            reply,
            progress: None,
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a request; the returned [`PendingReply`] resolves to its reply. `wait` is how long
    /// the client waits for it.
    pub(crate) async fn request(
        &self,
        message: ClientToBroker,
        wait: Duration,
        progress: Option<mpsc::Sender<Progress>>,
    ) -> Result<PendingReply, Error> {
        let id = message.request_id();
        let is_plan = matches!(message, ClientToBroker::Plan(_));
        let frames = message.to_compact_frame();
        let (reply, rx) = oneshot::channel();
        let request = Request {
            id,
            frames,
            deadline: Instant::now() + wait.min(MAX_WAIT),
            wait,
            is_plan,
            reply,
            progress,
        };
        self.inner
            .handle
            .send(Command::Request(request))
            .await
            .map_err(|_| Error::Closed)?;
        Ok(PendingReply::new(id, rx, Arc::clone(&self.inner.handle)))
    }
}

/// Runs a plan of one step named `name` and returns that step's result; an error about a step
/// named [`CALL_STEP`] loses the step name, which the caller never chose.
pub(crate) async fn run_one(plan: PlanBuilder, name: &str) -> Result<Value, Error> {
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
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::args;

    /// Nothing listens on the discard port: requests queue and never get an answer.
    const SILENT: &str = "tcp://127.0.0.1:9";

    fn offline(request_timeout: Duration) -> Client {
        Client::open(
            SILENT,
            ClientOptions::default().with_request_timeout(request_timeout),
        )
        .unwrap()
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let started = Instant::now();
        while !check() {
            assert!(started.elapsed() < Duration::from_secs(5), "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn connect_without_a_broker_fails_within_the_timeout() {
        let options = ClientOptions::default().with_connect_timeout(Duration::from_millis(200));
        let started = Instant::now();
        let err = Client::connect_with(SILENT, options).await.unwrap_err();
        assert_eq!((err.code(), err.kind()), (900, "connection_failed"));
        assert!(err.message().contains(SILENT), "{err}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn bad_endpoints_are_invalid_input() {
        for endpoint in ["127.0.0.1:7400", "tcp://nohost", "udp://h:1"] {
            let err = Client::connect(endpoint).await.unwrap_err();
            assert_eq!(err.code(), 902, "{endpoint}: {err}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unanswered_requests_time_out_each_on_its_own() {
        let client = offline(Duration::from_millis(300));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..500u32 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    client.call("echo", args![i]).await.map(|_| ())
                } else {
                    client.ping().await.map(|_| ())
                }
            }));
        }
        for task in tasks {
            let err = task.await.unwrap().unwrap_err();
            assert_eq!((err.code(), err.kind()), (901, "request_timeout"), "{err}");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(client.counters().in_flight, 0);
    }

    #[tokio::test]
    async fn a_deadline_sets_the_wait() {
        let client = offline(Duration::from_secs(30));
        let started = Instant::now();
        let err = client
            .plan()
            .step("a", "sleep", args![10])
            .deadline(Duration::from_millis(100))
            .run()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        // deadline + the default 1 s margin, not the 30 s request timeout
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1100) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn dropping_a_request_forgets_it() {
        let client = offline(Duration::from_secs(30));
        let waiting = client.clone();
        let task = tokio::spawn(async move { waiting.ping().await });
        eventually("request registered", || client.counters().in_flight == 1).await;
        task.abort();
        eventually("request forgotten", || client.counters().in_flight == 0).await;

        let stream = client
            .plan()
            .step("a", "f", args![])
            .stream()
            .await
            .unwrap();
        eventually("plan registered", || client.counters().in_flight == 1).await;
        drop(stream);
        eventually("plan forgotten", || client.counters().in_flight == 0).await;
    }

    #[tokio::test]
    async fn close_fails_requests_in_flight_and_later_ones() {
        let client = offline(Duration::from_secs(30));
        let waiting = client.clone();
        let task = tokio::spawn(async move { waiting.status().await });
        eventually("request registered", || client.counters().in_flight == 1).await;
        client.close().await;
        assert_eq!(task.await.unwrap().unwrap_err(), Error::Closed);
        eventually("closed", || client.is_closed()).await;
        let err = client.call("echo", args![]).await.unwrap_err();
        assert_eq!((err.code(), err.kind()), (903, "connection_closed"));
    }

    #[tokio::test]
    async fn dropping_the_last_clone_closes_the_connection() {
        let client = offline(Duration::from_secs(30));
        let counters = client.link_counters();
        let other = client.clone();
        drop(client);
        assert!(!counters.closed.load(Ordering::Acquire));
        drop(other);
        eventually("reactor closed", || counters.closed.load(Ordering::Acquire)).await;
    }

    #[test]
    fn clients_are_send_and_sync() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Client>();
        check::<crate::PlanBuilder>();
        fn check_send<T: Send + 'static>() {}
        check_send::<crate::PlanStream>();
    }
}
