//! Subscribing to topics: [`Client::subscribe`], the [`Subscription`] stream and what it
//! yields ([`Delivery`]: a [`Message`] or a [`Lagging`] notice).
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
//! [`Message::seq`], which is the authoritative signal: a notice that itself finds the buffer
//! full is dropped too.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use mpreg_protocol::{
    BrokerToClient, ClientToBroker, ErrorCode, EventItem, Subscribe, TopicMessage, Unsubscribe,
};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::client::Client;
use crate::error::Error;
use crate::event_routes::Attach;
use crate::link::{unexpected, Command};
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
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            backlog: false,
            buffer: DEFAULT_SUBSCRIPTION_BUFFER,
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
}

/// A live subscription: a stream of [`Delivery`] items, in the order the broker sent them.
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
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[must_use = "dropping the subscription ends it"]
pub struct Subscription {
    client: Client,
    token: String,
    patterns: Vec<String>,
    deliveries: mpsc::Receiver<Result<Delivery, Error>>,
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
    /// The subscription token the broker gave it (unique per broker).
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

    /// The next delivery, waiting for it. `None` once the client connection is closed.
    ///
    /// # Errors
    /// An item is [`Error::Protocol`] when an event for this subscription could not be read
    /// (the stream goes on).
    pub async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        let item = self.deliveries.recv().await?;
        if let Ok(Delivery::Lagging(lagging)) = &item {
            self.dropped += lagging.dropped;
        }
        Some(item)
    }

    /// The next message, skipping [`Lagging`] notices (their counts add up in
    /// [`Subscription::dropped`]; gaps in [`Message::seq`] show where).
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
                Ok(Delivery::Lagging(_)) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Ends the subscription and waits for the broker to confirm. A subscription the broker
    /// no longer knows (it already ended it) counts as ended.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the broker does not answer within the request timeout (the
    /// SUB filter is removed anyway, which also ends the subscription at the broker);
    /// [`Error::Closed`].
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.attached = false;
        let id = self.client.next_id();
        let message = ClientToBroker::Unsubscribe(Unsubscribe {
            id,
            sub: self.token.clone(),
        });
        let timeout = self.client.options().request_timeout;
        let result = match self.client.request(message, timeout, None).await {
            Ok(pending) => match pending.wait().await {
                Ok(BrokerToClient::Unsubscribed(_)) => Ok(()),
                Ok(BrokerToClient::Error(e))
                    if e.error_code() == Some(ErrorCode::UnknownSubscription) =>
                {
                    Ok(())
                }
                Ok(BrokerToClient::Error(e)) => Err(e.into()),
                Ok(other) => Err(unexpected("unsubscribed", &other)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        // After the answer, so the SUB filter going away cannot race the request into an
        // `unknown_subscription` error.
        let detach = Command::Detach {
            token: self.token.clone(),
            unsubscribe: None,
        };
        let _ = self.client.command(detach).await;
        result
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.attached {
            return;
        }
        let message = ClientToBroker::Unsubscribe(Unsubscribe {
            id: self.client.next_id(),
            sub: self.token.clone(),
        });
        let unsubscribe = self.client.unanswered_request(message);
        // If the command channel is full, the reactor notices the closed buffer at the next
        // event for this token and removes the SUB filter, which ends it at the broker too.
        let _ = self.client.try_command(Command::Detach {
            token: std::mem::take(&mut self.token),
            unsubscribe: Some(unsubscribe),
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
        let request = ClientToBroker::Subscribe(Subscribe {
            id: self.next_id(),
            patterns: patterns.clone(),
            backlog: options.backlog,
        });
        let timeout = self.options().request_timeout;
        let subscribed = match self.request(request, timeout, None).await?.wait().await? {
            BrokerToClient::Subscribed(subscribed) => subscribed,
            BrokerToClient::Error(e) => return Err(e.into()),
            other => return Err(unexpected("subscribed", &other)),
        };
        let (deliveries_tx, deliveries) = mpsc::channel(options.buffer.max(2));
        let (active_tx, active) = oneshot::channel();
        let endpoint = events_endpoint(self.endpoint(), &subscribed.events);
        // Built before the attach, so any failure below ends the subscription through `Drop`.
        let mut subscription = Subscription {
            client: self.clone(),
            token: subscribed.sub.clone(),
            patterns,
            deliveries,
            backlog: 0,
            dropped: 0,
            attached: true,
        };
        self.command(Command::Attach(Attach {
            token: subscribed.sub,
            endpoint: endpoint.clone(),
            deliveries: deliveries_tx,
            active: active_tx,
        }))
        .await?;
        let wait = self.options().activation_timeout;
        subscription.backlog = match tokio::time::timeout(wait, active).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(Error::Closed),
            Err(_) => {
                return Err(Error::Connect {
                    endpoint,
                    reason: format!(
                        "the subscription was not activated within {}: the SUB socket did \
                         not reach the broker's event endpoint",
                        seconds(wait)
                    ),
                })
            }
        };
        Ok(subscription)
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
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
