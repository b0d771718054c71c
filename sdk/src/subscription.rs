//! Subscribing to topics: [`Client::subscribe`], the [`Subscription`] stream and what it
//! yields ([`Delivery`]: a [`Message`], or a notice: [`Lagging`], [`Delivery::ConnectionLost`],
//! [`Delivery::Resubscribed`]).
//!
//! A subscription is created on the client connection (`subscribe` -> `subscribed` with a
//! token), then the connection's SUB socket subscribes to the token on the broker's event
//! endpoint and [`Client::subscribe`] returns once the broker has sent `active`: from then on
//! every matching publish is delivered. One SUB socket per client carries every subscription;
//! the connection's reactor routes event frames to subscriptions by token.
//!
//! # A subscriber that does not read
//!
//! Each subscription has a bounded buffer ([`SubscribeOptions::buffer`]). The reactor keeps
//! reading the SUB socket whatever the application does (the same thread answers calls and
//! plans, and one slow subscription must not stall the others), so when a buffer is full the
//! SDK drops the delivery for that subscription only, counts it
//! ([`ClientCounters::events_dropped`](crate::ClientCounters::events_dropped)) and yields a
//! [`Lagging`] notice from [`LagSource::Client`] before the next delivery that fits. If the
//! client as a whole falls behind the broker, the SUB socket's queue fills and the broker drops
//! instead: it counts the drops (`topic_dropped_hwm` in its status) and sends a `lagging`
//! notice ([`LagSource::Broker`]). Either way the dropped messages leave a gap in
//! [`Message::seq`], which is the authoritative signal: a lagging notice that itself finds the
//! buffer full is merged into the next one.
//!
//! # A broker restart, or a move to another broker
//!
//! A subscription's token dies with the broker that gave it. When the client's connection is
//! lost (the broker died, restarted or went silent), the stream yields
//! [`Delivery::ConnectionLost`]; once the connection is back (to the same broker, or to the
//! next one of the client's list), the SDK subscribes again with the same patterns (and the
//! backlog, if the subscription asked for it), and the stream yields
//! [`Delivery::Resubscribed`] with the new token, the broker, the last message delivered
//! before and how long it was down, when the broker activated it. Messages published in
//! between may be missing (unless retained and asked for with the backlog); sequence numbers
//! start again at 1. If the broker refuses the new subscription (or it is not activated in
//! time), the stream yields that error and ends. These notices are never dropped: when the
//! buffer is full they wait for room, ahead of any later message.

use std::collections::BTreeMap;
use std::fmt;

use mpreg_protocol::{EventItem, TopicMessage};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::delivery_queue::{delivery_queue, DeliveryReceiver};

use crate::client::Client;
use crate::error::Error;
use crate::event_routes::{NewSubscription, SubscriptionKey};
use crate::link::Command;
use crate::Value;

/// Default [`SubscribeOptions::buffer`]: deliveries held per subscription before the SDK drops
/// (a few batches' worth; a `messages` event is expanded into one delivery per message).
pub const DEFAULT_SUBSCRIPTION_BUFFER: usize = 4096;

/// How to subscribe.
///
/// ```
/// let options = mpreg::SubscribeOptions::default().with_backlog(true);
/// assert!(options.backlog);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Deliver the broker's retained messages matching the patterns first (in publish order),
    /// then live ones, with no gap or duplicate in between.
    pub backlog: bool,
    /// Deliveries held for this subscription until the application reads them; more are
    /// dropped and reported (see the [module docs](self)). At least 2.
    pub buffer: usize,
    /// On a broker in a cluster: `subscribe` returns only once every reachable peer broker
    /// knows the patterns, so a message published on any broker after it returns is not
    /// missed (it may wait up to the broker's acknowledgement timeout, 5 s by default, for a
    /// silent peer). No effect on a broker on its own.
    pub cluster_ack: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            backlog: false,
            buffer: DEFAULT_SUBSCRIPTION_BUFFER,
            cluster_ack: false,
        }
    }
}

impl SubscribeOptions {
    /// Sets [`SubscribeOptions::backlog`].
    pub fn with_backlog(mut self, backlog: bool) -> Self {
        self.backlog = backlog;
        self
    }

    /// Sets [`SubscribeOptions::buffer`] (values below 2 are raised to 2).
    pub fn with_buffer(mut self, buffer: usize) -> Self {
        self.buffer = buffer;
        self
    }

    /// Sets [`SubscribeOptions::cluster_ack`].
    ///
    /// ```
    /// let options = mpreg::SubscribeOptions::default().with_cluster_ack(true);
    /// assert!(options.cluster_ack);
    /// ```
    pub fn with_cluster_ack(mut self, cluster_ack: bool) -> Self {
        self.cluster_ack = cluster_ack;
        self
    }
}

/// One message delivered to a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The topic it was published to.
    pub topic: String,
    /// Its headers.
    pub headers: BTreeMap<String, String>,
    /// Its payload.
    pub payload: Value,
    /// Sequence number within this subscription, from 1. A gap means messages were dropped
    /// (see [`Lagging`]).
    pub seq: u64,
    /// The message id the broker gave it (the same in every subscription's copy).
    pub id: String,
    /// True for messages replayed from the retained backlog.
    pub retained: bool,
}

impl Message {
    /// Decodes the payload into `T` (msgpack maps into structs, arrays into tuples or vectors).
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// # let message = mpreg::Message {
    /// #     topic: "t".into(), headers: BTreeMap::new(),
    /// #     payload: mpreg::Value::Array(vec![1.into(), "a".into()]),
    /// #     seq: 1, id: "01J".into(), retained: false,
    /// # };
    /// let (n, s): (u32, String) = message.decode()?;
    /// assert_eq!((n, s.as_str()), (1, "a"));
    /// # Ok::<(), mpreg::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Invalid`] when the payload does not have the shape of `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        rmpv::ext::from_value(self.payload.clone()).map_err(|e| {
            Error::Invalid(format!(
                "the payload of message {} on `{}` does not decode as {}: {e}",
                self.id,
                self.topic,
                std::any::type_name::<T>()
            ))
        })
    }
}

impl From<TopicMessage> for Message {
    fn from(m: TopicMessage) -> Self {
        Message {
            topic: m.topic,
            headers: m.headers,
            payload: m.payload,
            seq: m.seq,
            id: m.id,
            retained: m.retained,
        }
    }
}

impl From<EventItem> for Message {
    fn from(m: EventItem) -> Self {
        Message {
            topic: m.topic,
            headers: m.headers,
            payload: m.payload,
            seq: m.seq,
            id: m.id,
            retained: false,
        }
    }
}

/// Who dropped the messages a [`Lagging`] notice reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagSource {
    /// The broker: this client's SUB socket queue was full.
    Broker,
    /// This SDK: the subscription's buffer was full (the application did not read).
    Client,
}

impl LagSource {
    /// `"broker"` or `"client"`.
    pub fn as_str(self) -> &'static str {
        match self {
            LagSource::Broker => "broker",
            LagSource::Client => "client",
        }
    }
}

/// Messages were dropped for this subscription; their sequence numbers are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagging {
    /// Dropped since the previous notice from the same source.
    pub dropped: u64,
    /// Dropped by that source over the subscription's life.
    pub dropped_total: u64,
    /// Who dropped them.
    pub source: LagSource,
}

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Delivery {
    /// A message.
    Message(Message),
    /// Messages were dropped before the next one.
    Lagging(Lagging),
    /// The connection to the broker was lost (it died, restarted or went silent): nothing is
    /// delivered until [`Delivery::Resubscribed`]. The SDK reconnects and subscribes again by
    /// itself.
    ConnectionLost,
    /// Subscribed again after a lost connection, with the same patterns, on the same broker
    /// or the next one of the client's list: deliveries go on. Messages published between
    /// `last_message_id` and this notice may be missing (the backlog, when asked for, brings
    /// back those the broker retained, and may repeat ones delivered before: same
    /// [`Message::id`]), and [`Message::seq`] starts again at 1.
    Resubscribed {
        /// The new token the broker gave the subscription (now [`Subscription::id`]).
        id: String,
        /// Retained messages announced before the live ones (0 without
        /// [`SubscribeOptions::backlog`]).
        backlog: u64,
        /// The client endpoint of the broker the subscription is now on.
        broker: String,
        /// The id of the last message delivered before the connection was lost (`None`: none
        /// was): where the possible gap starts.
        last_message_id: Option<String>,
        /// How long the subscription was down: from the lost connection to this notice.
        down_for: std::time::Duration,
    },
}

/// A live subscription: a stream of [`Delivery`] items, in the order the broker sent them. It
/// survives broker restarts and moves to another broker (see the
/// [module docs](self#a-broker-restart-or-a-move-to-another-broker)).
///
/// Dropping it ends the subscription at the broker (the request is sent without waiting for
/// the answer); [`Subscription::unsubscribe`] does the same and waits. It keeps the client's
/// connection open while it exists.
///
/// ```no_run
/// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
/// use mpreg::Delivery;
/// let mut orders = client.subscribe(["orders.*.eu", "orders.#.urgent"]).await?;
/// while let Some(delivery) = orders.next().await {
///     match delivery? {
///         Delivery::Message(m) => println!("{} #{}: {:?}", m.topic, m.seq, m.payload),
///         Delivery::Lagging(l) => eprintln!("{} messages dropped", l.dropped),
///         Delivery::ConnectionLost => eprintln!("broker connection lost, waiting"),
///         Delivery::Resubscribed { .. } => eprintln!("back; messages may be missing"),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[must_use = "dropping the subscription ends it"]
pub struct Subscription {
    client: Client,
    /// How the connection knows this subscription, whatever its token.
    key: SubscriptionKey,
    /// The latest token, as the stream has told it.
    token: String,
    patterns: Vec<String>,
    deliveries: DeliveryReceiver,
    backlog: u64,
    dropped: u64,
    /// The connection still routes this subscription's events: `Drop` must detach it.
    attached: bool,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.token)
            .field("patterns", &self.patterns)
            .field("backlog", &self.backlog)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The subscription token the broker gave it (unique per broker). It changes when the
    /// subscription is made again after a lost connection: the latest one the stream yielded
    /// ([`Delivery::Resubscribed`]).
    pub fn id(&self) -> &str {
        &self.token
    }

    /// The patterns it matches.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// How many retained messages the broker announced before the live ones (0 without
    /// [`SubscribeOptions::backlog`]).
    pub fn backlog(&self) -> u64 {
        self.backlog
    }

    /// Messages reported dropped by the [`Lagging`] notices yielded or skipped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The next delivery, waiting for it. `None` once the client connection is closed, or
    /// after an error that ended the subscription.
    ///
    /// # Errors
    /// An item is [`Error::Protocol`] when an event for this subscription could not be read
    /// (the stream goes on). After a lost connection, the error the broker answered the new
    /// `subscribe` with ([`Error::Remote`]: `too_many_subscriptions`, ...), or
    /// [`Error::Connect`] / [`Error::Timeout`] when it could not be made: the stream ends after
    /// it.
    pub async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        let item = self.deliveries.recv().await?;
        match &item {
            Ok(Delivery::Lagging(lagging)) => self.dropped += lagging.dropped,
            Ok(Delivery::Resubscribed { id, .. }) => self.token.clone_from(id),
            _ => {}
        }
        Some(item)
    }

    /// The next message, skipping notices ([`Lagging`] counts add up in
    /// [`Subscription::dropped`]; gaps in [`Message::seq`] show where; a broker restart shows
    /// only as `seq` starting again at 1: use [`Subscription::next`] to see it).
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// let mut temps = client.subscribe(["sensors.*.temperature"]).await?;
    /// while let Some(message) = temps.next_message().await {
    ///     let celsius: f64 = message?.decode()?;
    ///     println!("{celsius}");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Subscription::next`].
    pub async fn next_message(&mut self) -> Option<Result<Message, Error>> {
        loop {
            match self.next().await? {
                Ok(Delivery::Message(message)) => return Some(Ok(message)),
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Ends the subscription and waits for the broker to confirm. A subscription the broker
    /// no longer knows (it already ended it, or it was lost with a restarted broker) counts as
    /// ended.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the broker does not answer within the request timeout (the
    /// SUB filter is removed anyway, which also ends the subscription at the broker);
    /// [`Error::Closed`].
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.attached = false;
        let (done, answer) = oneshot::channel();
        let command = Command::Unsubscribe {
            key: self.key,
            done: Some(done),
        };
        self.client.command(command).await?;
        answer.await.unwrap_or(Err(Error::Closed))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.attached {
            return;
        }
        // If the command channel is full, the reactor notices the closed buffer at the next
        // event for this subscription and removes its SUB filter, which ends it at the broker
        // too.
        let _ = self.client.try_command(Command::Unsubscribe {
            key: self.key,
            done: None,
        });
    }
}

impl Client {
    /// Subscribes to every topic matching any of `patterns` (`.`-separated words; `*` matches
    /// exactly one word, `#` zero or more). Returns once the broker has activated the
    /// subscription: anything published after this returns is delivered (a message matching
    /// several patterns once).
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// let mut sub = client.subscribe(["orders.*.eu"]).await?;
    /// client.publish("orders.42.eu", "hello").await?;
    /// let message = sub.next_message().await.expect("the connection is open")?;
    /// assert_eq!((message.topic.as_str(), message.seq), ("orders.42.eu", 1));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// - [`Error::Remote`]: `invalid_pattern` (601: empty, too long, too many words, no
    ///   patterns or too many), `too_many_subscriptions` (406).
    /// - [`Error::Connect`]: the event endpoint the broker announced could not be reached
    ///   within [`ClientOptions::activation_timeout`](crate::ClientOptions::activation_timeout).
    /// - [`Error::ConnectionLost`] (904): the connection broke before the subscription was
    ///   active (once it is, a lost connection shows in its stream instead).
    /// - [`Error::Timeout`], [`Error::Closed`].
    pub async fn subscribe<I, S>(&self, patterns: I) -> Result<Subscription, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.subscribe_with(patterns, SubscribeOptions::default())
            .await
    }

    /// [`Client::subscribe`] with options (the retained backlog first, the buffer size).
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// use mpreg::SubscribeOptions;
    /// let options = SubscribeOptions::default().with_backlog(true);
    /// let mut config = client.subscribe_with(["config.#"], options).await?;
    /// println!("{} retained messages come first", config.backlog());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::subscribe`].
    pub async fn subscribe_with<I, S>(
        &self,
        patterns: I,
        options: SubscribeOptions,
    ) -> Result<Subscription, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let patterns: Vec<String> = patterns.into_iter().map(Into::into).collect();
        let key = SubscriptionKey(self.next_id());
        let (deliveries_tx, deliveries) = delivery_queue(options.buffer.max(2));
        let (activated_tx, activated) = oneshot::channel();
        // Built before the command, so that giving up (an error below, or the caller dropping
        // this future) ends the subscription through `Drop`.
        let mut subscription = Subscription {
            client: self.clone(),
            key,
            token: String::new(),
            patterns: patterns.clone(),
            deliveries,
            backlog: 0,
            dropped: 0,
            attached: true,
        };
        self.command(Command::Subscribe(NewSubscription {
            key,
            patterns,
            backlog: options.backlog,
            cluster_ack: options.cluster_ack,
            deliveries: deliveries_tx,
            activated: activated_tx,
        }))
        .await?;
        // The connection answers within the request timeout plus the activation timeout.
        let activated = activated.await.unwrap_or(Err(Error::Closed))?;
        subscription.token = activated.token;
        subscription.backlog = activated.backlog;
        Ok(subscription)
    }
}

/// The event endpoint to connect to: the one the broker announced, except that a wildcard
/// host (a broker bound to every interface announces `0.0.0.0`) is replaced by the host this
/// client reached the broker at.
pub(crate) fn events_endpoint(client_endpoint: &str, announced: &str) -> String {
    let host_port = |endpoint: &str| {
        endpoint
            .strip_prefix("tcp://")
            .and_then(|rest| rest.rsplit_once(':'))
            .map(|(host, port)| (host.to_string(), port.to_string()))
    };
    let Some((host, port)) = host_port(announced) else {
        return announced.to_string();
    };
    if !matches!(host.as_str(), "0.0.0.0" | "*" | "[::]" | "::") {
        return announced.to_string();
    }
    match host_port(client_endpoint) {
        Some((client_host, _)) => format!("tcp://{client_host}:{port}"),
        None => announced.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde::Deserialize;

    #[test]
    fn wildcard_event_hosts_become_the_broker_host() {
        let cases = [
            ("tcp://h:7400", "tcp://0.0.0.0:7402", "tcp://h:7402"),
            ("tcp://10.0.0.5:1", "tcp://*:7402", "tcp://10.0.0.5:7402"),
            ("tcp://[::1]:1", "tcp://[::]:9", "tcp://[::1]:9"),
            (
                "tcp://h:7400",
                "tcp://127.0.0.1:7402",
                "tcp://127.0.0.1:7402",
            ),
            (
                "tcp://h:7400",
                "tcp://events.example:7402",
                "tcp://events.example:7402",
            ),
            ("ipc:///tmp/c", "tcp://0.0.0.0:7402", "tcp://0.0.0.0:7402"),
            ("tcp://h:7400", "ipc:///tmp/events", "ipc:///tmp/events"),
        ];
        for (client, announced, want) in cases {
            assert_eq!(events_endpoint(client, announced), want, "{announced}");
        }
    }

    #[test]
    fn messages_decode_typed_payloads() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct Order {
            id: u32,
            item: String,
        }
        let message = Message {
            topic: "orders.1.eu".into(),
            headers: BTreeMap::new(),
            payload: Value::Map(vec![
                (Value::from("id"), Value::from(7)),
                (Value::from("item"), Value::from("tea")),
            ]),
            seq: 1,
            id: "01J0".into(),
            retained: false,
        };
        assert_eq!(
            message.decode::<Order>().unwrap(),
            Order {
                id: 7,
                item: "tea".into()
            }
        );
        let err = message.decode::<Vec<u8>>().unwrap_err();
        assert_eq!(err.code(), 902);
        assert!(err.message().contains("orders.1.eu"), "{err}");
    }

    #[test]
    fn subscriptions_are_send() {
        fn check<T: Send + 'static>() {}
        check::<Subscription>();
        check::<Delivery>();
    }
}
