//! [`ClientOptions`]: how a [`Client`](crate::Client) waits, what it accepts and how often it
//! shows it is alive; their defaults; and the [`ClientCounters`] it keeps.

use std::time::Duration;

use mpreg_protocol::Limits;
use mpreg_transport::{Curve, Key, KeyPair};

#[cfg(doc)]
use crate::Client;

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
/// Default capacity of the command channel to the connection's reactor. Callers wait for
/// room when it is full, so it bounds memory, not the number of requests in flight.
pub const DEFAULT_COMMAND_CAPACITY: usize = 1024;
/// Default time [`Client::subscribe`] waits for the broker to activate a subscription once it
/// exists: the broker's own default for discarding a subscription never activated.
pub const DEFAULT_ACTIVATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ClientOptions::heartbeat`]: one small message a second while the connection is
/// otherwise idle, so a broker cancels the plans of a client that was killed within its grace
/// period (three intervals).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Default [`ClientOptions::failover_silence`]: a client with several brokers gives up on one
/// that stays silent this long (a killed broker's connection closes at once and is given up at
/// once), and on one it tries that does not complete its handshake within it; the move to the
/// next broker then fits in the issue's 1.5 s.
pub const DEFAULT_FAILOVER_SILENCE: Duration = Duration::from_secs(1);
/// Shortest [`ClientOptions::failover_silence`]: below it, a busy machine's scheduling delays
/// would pass for dead brokers.
pub const MIN_FAILOVER_SILENCE: Duration = Duration::from_millis(100);
/// How often a client asks its broker for the cluster's other brokers
/// ([`ClientOptions::learn_brokers`]), besides right after each connection comes up.
pub const LEARN_INTERVAL: Duration = Duration::from_secs(10);
/// Default [`ClientOptions::publish_buffer`]: 8 MiB of encoded messages, about 80,000
/// messages of 64 bytes; enough to keep a broker busy while its confirmations travel back.
pub const DEFAULT_PUBLISH_BUFFER: usize = 8 * 1024 * 1024;

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
    /// Capacity of the command channel to the connection's reactor.
    pub command_capacity: usize,
    /// How long [`Client::subscribe`] waits for the broker's `active` event after the
    /// subscription was created (the time for the SUB socket to reach the event endpoint).
    pub activation_timeout: Duration,
    /// CURVE: the broker's public key and this client's key pair, used on the connection and
    /// on the event (SUB) socket. `None`: plain connection (a broker on loopback without keys).
    pub curve: Option<Curve>,
    /// How often to tell the broker this client is alive when nothing else is sent, so that
    /// the broker cancels its plans and ends its subscriptions when it dies (after three
    /// intervals of silence). `None` (or zero): never; the broker then keeps a killed
    /// client's plans until their deadline.
    pub heartbeat: Option<Duration>,
    /// Bytes of unconfirmed publishes (encoded) the client holds, queued or sent and not yet
    /// confirmed by the broker: beyond it, [`Client::publish`] waits for room. Bounds the
    /// memory a fast publisher can make the client use while the broker is slow.
    pub publish_buffer: usize,
    /// With more than one broker to choose from: how long the connection may stay silent
    /// (no ZMTP heartbeat answered) before the client moves to the next broker, and how long
    /// a broker it tries may take to complete the handshake. At least
    /// [`MIN_FAILOVER_SILENCE`]. A client with one broker keeps the 3 s ZMTP heartbeat
    /// timeout and reconnects to the same broker.
    pub failover_silence: Duration,
    /// Ask the broker, after each connection comes up and every [`LEARN_INTERVAL`], for the
    /// other live brokers of its cluster, and add them after the given ones: a client given
    /// one broker of a cluster can then move to another. Default true.
    pub learn_brokers: bool,
    /// Where the connection's sockets are served. `true` (the default): on a thread of the
    /// client's own (`mpreg-client`), which keeps the connection (heartbeats included) alive
    /// while the runtime's threads are blocked, and lets many clients in one process work in
    /// parallel with the application. `false`: as a task of the tokio runtime the client was
    /// created in (which needs I/O and time enabled: connecting panics otherwise, as tokio's own
    /// I/O types do), its sockets watched by the runtime's I/O
    /// driver, so a request and its reply cross no extra thread. Measured on a 2-core machine
    /// (`mpreg-bench peers --spawned`, calls made from runtime tasks): sequential call p50
    /// about 15 % lower; from a current-thread runtime (as the `mpreg` CLI uses) about 9 %
    /// lower; from the thread blocked in `block_on`, no change; but ten subscribing clients
    /// in one process deliver about 30 % fewer messages per second than on their own threads.
    pub io_thread: bool,
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
            heartbeat: Some(DEFAULT_HEARTBEAT),
            publish_buffer: DEFAULT_PUBLISH_BUFFER,
            failover_silence: DEFAULT_FAILOVER_SILENCE,
            learn_brokers: true,
            io_thread: true,
        }
    }
}

impl ClientOptions {
    /// Sets [`ClientOptions::io_thread`].
    pub fn with_io_thread(mut self, own_thread: bool) -> Self {
        self.io_thread = own_thread;
        self
    }

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

    /// Sets [`ClientOptions::publish_buffer`] (bytes; at least one message is always taken).
    ///
    /// ```
    /// let small = mpreg::ClientOptions::default().with_publish_buffer(1 << 20);
    /// assert_eq!(small.publish_buffer, 1 << 20);
    /// ```
    pub fn with_publish_buffer(mut self, bytes: usize) -> Self {
        self.publish_buffer = bytes;
        self
    }

    /// Sets [`ClientOptions::heartbeat`]; zero turns heartbeats off.
    ///
    /// ```
    /// use std::time::Duration;
    /// let quiet = mpreg::ClientOptions::default().with_heartbeat(Duration::ZERO);
    /// assert_eq!(quiet.heartbeat, None);
    /// ```
    pub fn with_heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = Some(interval).filter(|i| !i.is_zero());
        self
    }

    /// Sets [`ClientOptions::failover_silence`] (raised to [`MIN_FAILOVER_SILENCE`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// let patient = mpreg::ClientOptions::default().with_failover_silence(Duration::from_secs(3));
    /// assert_eq!(patient.failover_silence, Duration::from_secs(3));
    /// ```
    pub fn with_failover_silence(mut self, silence: Duration) -> Self {
        self.failover_silence = silence.max(MIN_FAILOVER_SILENCE);
        self
    }

    /// Sets [`ClientOptions::learn_brokers`].
    pub fn with_learn_brokers(mut self, learn: bool) -> Self {
        self.learn_brokers = learn;
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
    /// Times the connection to the broker was lost (it died, restarted or went silent) after
    /// being up.
    pub connections_lost: u64,
    /// Requests sent again after a reconnection or a move to another broker: idempotent ones
    /// (`ping`, `status`, `cluster`, `functions`), plans under their client-chosen plan id,
    /// subscriptions being made, and, after a move, anything that never reached a broker.
    pub requests_resent: u64,
    /// Times the client moved to another broker of its list (a lost connection, or a broker
    /// tried that did not come up in time).
    pub broker_moves: u64,
    /// Unconfirmed publishes sent before a lost connection and not yet known to be handled:
    /// they may not have reached the broker.
    pub publishes_in_doubt: u64,
}
