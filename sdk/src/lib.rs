//! The MPREG Rust SDK: run functions and multi-step plans on an MPREG cluster without knowing
//! which worker holds which function or resource, and publish and subscribe to topics.
//!
//! ```no_run
//! use mpreg::{args, Client};
//!
//! # async fn demo() -> Result<(), mpreg::Error> {
//! let client = Client::connect("tcp://127.0.0.1:7400").await?;
//!
//! // One call.
//! let hi = client.call("echo", args!["hi there!"]).await?;
//!
//! // A plan: `second` and `third` use `first`'s result; only sinks are returned.
//! let results = client
//!     .plan()
//!     .step("first", "echo", args!["hi there!"])
//!     .step("second", "echo", args!["first"])
//!     .step("third", "echos", args!["first", "second", "AND ME TOO"])
//!     .run()
//!     .await?;
//! assert_eq!(results.keys().collect::<Vec<_>>(), ["third"]);
//!
//! // Topics: subscribe (returns once the broker delivers), publish, read in order.
//! let mut orders = client.subscribe(["orders.*.eu"]).await?;
//! client.publish("orders.42.eu", "paid").await?;
//! let message = orders.next_message().await.expect("connection open")?;
//! assert_eq!((message.topic.as_str(), message.seq), ("orders.42.eu", 1));
//! # Ok(()) }
//! ```
//!
//! # When the broker fails
//!
//! The connection watches its socket (libzmq's monitor, through `mpreg-transport`):
//! - **A lost connection** (the broker was killed, restarted, or went silent for the 3 s ZMTP
//!   heartbeat timeout) fails every request in flight at once with
//!   [`Error::ConnectionLost`] (`904 connection_lost`: whether it ran is unknown), instead of
//!   leaving it to its timeout; [`Client::ping`] and [`Client::status`] are sent again once the
//!   connection is back instead. The client reconnects by itself: later requests wait in its
//!   queue and go out when a broker is back.
//! - **Subscriptions survive a restart**: the SDK subscribes again with the same patterns (and
//!   the backlog, if asked for) and says so in the stream ([`Delivery::ConnectionLost`], then
//!   [`Delivery::Resubscribed`]; messages published in between may be missing).
//! - **Heartbeats**: while otherwise idle, the client sends a `heartbeat` every
//!   [`ClientOptions::heartbeat`] (1 s), so a broker cancels the plans of a client that was
//!   killed (after three silent intervals). [`Client::close`] cancels its plans in flight
//!   itself.
//! - **Oversized requests** are refused before they are sent ([`Error::TooLarge`],
//!   `104 message_too_large`), against the limit the broker announced in its `pong`.
//!
//! # Several brokers (failover)
//!
//! [`Client::connect_any`] (or a comma-separated endpoint list) gives the client an ordered
//! list of brokers. It talks to one at a time; when that connection is lost (at once for a
//! killed broker, after [`ClientOptions::failover_silence`], 1 s, for a silent one) it moves
//! to the next broker: plans in flight are sent again there under the plan id the client gave
//! them (a broker that has seen the id never runs the plan twice), `ping`/`status`/`cluster`/
//! `functions` are sent again, other requests in flight fail with [`Error::ConnectionLost`],
//! and subscriptions are made again with a [`Delivery::Resubscribed`] naming the broker and
//! the gap. The client also learns the cluster's other brokers from the one it talks to
//! ([`ClientOptions::learn_brokers`]), so a client given one broker of a cluster can move too.
//!
//! Layout:
//! - [`client`]: [`Client`] (connect, call, plan, status, ping, close) and [`ClientOptions`].
//! - [`plan_builder`]: [`PlanBuilder`] and the progress stream of a running plan.
//! - [`publish`]: [`Client::publish`], [`PublishOptions`] (headers, confirm), [`Client::flush`].
//! - `publish_queue` (private): unconfirmed publishes, bounded in bytes (a publish waits for
//!   room), coalesced into confirmed batches and settled by the broker's answers.
//! - [`subscription`]: [`Client::subscribe`] and the [`Subscription`] stream of [`Delivery`]
//!   items ([`Message`], [`Lagging`] and connection notices); what happens when the
//!   application does not read, and across a broker restart.
//! - [`error`]: [`Error`], with a stable code and kind for every failure, and [`RemoteError`].
//! - [`json`]: JSON <-> msgpack value conversion (what the CLI reads and prints).
//! - `link` (private): the reactor handler that owns the socket, matches replies to requests,
//!   fails or resends them when the connection breaks, and sends heartbeats.
//! - `connection` (private): the connection's life-cycle from the socket's monitor events, and
//!   when a heartbeat is due (pure).
//! - `broker_list` (private): the ordered brokers, given and learned, which to try next and
//!   how long to give it (pure); `link/failover.rs` moves the connection between them.
//! - `pending_reply` (private): the caller's side of a request in flight.
//! - `event_routes` (private): subscriptions on the same reactor: their life-cycle across
//!   reconnections, the SUB socket, and routing deliveries to them by token.
//! - `delivery_buffer` (private): one subscription's bounded buffer, where messages may be
//!   dropped (and counted) but notices never are (pure).
//!
//! The `mpreg` command-line client is the `mpreg-cli` crate (`sdk/cli/`), so that an SDK user
//! does not compile a command-line parser.
//!
//! The one rule: one [`Client`] is one connection owned by one reactor (a thread of its own,
//! or a task of the application's runtime: [`ClientOptions::io_thread`]); every
//! clone, every request and every subscription goes through it, and the reactor answers
//! callers directly.

mod broker_list;
mod cache;
pub mod client;
mod client_options;
mod connection;
mod delivery_buffer;
mod delivery_queue;
pub mod error;
mod event_routes;
pub mod json;
mod link;
mod pending_reply;
pub mod plan_builder;
pub mod publish;
mod publish_queue;
pub mod subscription;

pub use client::{
    Client, ClientCounters, ClientOptions, CALL_STEP, CLOSE_LINGER, DEFAULT_ACTIVATION_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEADLINE_MARGIN, DEFAULT_ENDPOINT, DEFAULT_FAILOVER_SILENCE,
    DEFAULT_HEARTBEAT, DEFAULT_PUBLISH_BUFFER, DEFAULT_REQUEST_TIMEOUT, LEARN_INTERVAL,
    MIN_FAILOVER_SILENCE,
};
pub use error::{Error, RemoteError};
pub use mpreg_protocol::{
    CacheInvalidated, CacheMode, CacheStatsReply, ErrorCode, Limits, PlanId, PlanTrace, Pong,
    Progress, StatusReply, Step, StepOutcome, StepTrace, Value, WorkerStatus,
};
pub use mpreg_transport::{Key, KeyError, KeyPair};
pub use plan_builder::{PlanBuilder, PlanEvent, PlanStream, Traced};

/// Reads a CURVE public key given as 40 Z85 characters or as a key file (`.pub` or `.key`).
pub fn load_public_key(key_or_path: &str) -> Result<Key, Error> {
    mpreg_transport::curve::load_public(key_or_path)
        .map_err(|e| Error::Invalid(format!("server key: {e}")))
}
pub use publish::{Outgoing, PublishOptions, Published, PublishedBatch};
pub use subscription::{
    Delivery, LagSource, Lagging, Message, SubscribeOptions, Subscription,
    DEFAULT_SUBSCRIPTION_BUFFER,
};

/// Builds the `Vec<Value>` of a step's arguments from anything `Into<Value>`.
///
/// ```
/// use mpreg::{args, Value};
/// let args = args!["text", 42, -1i64, 2.5, true, vec![0u8, 1]];
/// assert_eq!(args[0], Value::from("text"));
/// assert_eq!(args[5], Value::Binary(vec![0, 1])); // Vec<u8> is binary
/// assert!(args![].is_empty());
/// ```
#[macro_export]
macro_rules! args {
    () => {
        ::std::vec::Vec::<$crate::Value>::new()
    };
    ($($arg:expr),+ $(,)?) => {
        ::std::vec![$(<$crate::Value as ::std::convert::From<_>>::from($arg)),+]
    };
}

/// The README's Rust examples, compiled by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
