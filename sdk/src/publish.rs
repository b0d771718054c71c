//! Publishing to topics: [`Client::publish`], [`Client::publish_with`] and
//! [`Client::flush`].
//!
//! An unconfirmed publish returns as soon as the connection has taken it; the broker answers
//! only if it rejects it (a bad topic, a payload over its size limit). Such late errors are
//! not lost: the connection matches them to the publish by request id, counts them
//! ([`ClientCounters::publish_errors`](crate::ClientCounters::publish_errors)) and keeps the
//! latest ([`Client::last_publish_error`]). The broker handles one connection's requests in
//! order, so after [`Client::flush`] returns, every error about an earlier publish has arrived.

use std::collections::BTreeMap;

use mpreg_protocol::{BatchItem, BrokerToClient, ClientToBroker, Publish, PublishBatch};

use crate::client::Client;
use crate::error::Error;
use crate::link::{Command, RequestKind};
use crate::pending_reply::unexpected;
use crate::Value;

/// How to publish.
///
/// ```
/// let options = mpreg::PublishOptions::default()
///     .with_header("source", "billing")
///     .with_confirm(true);
/// assert_eq!(options.headers["source"], "billing");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishOptions {
    /// String headers delivered with the message.
    pub headers: BTreeMap<String, String>,
    /// Wait for the broker to route the message and report how many subscriptions it matched.
    pub confirm: bool,
}

impl PublishOptions {
    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Sets [`PublishOptions::confirm`].
    pub fn with_confirm(mut self, confirm: bool) -> Self {
        self.confirm = confirm;
        self
    }
}

/// One message of a batch ([`Client::publish_batch`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The topic.
    pub topic: String,
    /// String headers.
    pub headers: BTreeMap<String, String>,
    /// The payload.
    pub payload: Value,
}

impl Outgoing {
    /// A message without headers.
    pub fn new(topic: impl Into<String>, payload: impl Into<Value>) -> Self {
        Outgoing {
            topic: topic.into(),
            headers: BTreeMap::new(),
            payload: payload.into(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }
}

/// The broker's confirmation of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedBatch {
    /// Messages published.
    pub count: u64,
    /// The sum over the messages of the subscriptions each matched.
    pub matched: u64,
}

/// The broker's confirmation of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message id the broker gave the message (what subscribers see as [`Message::id`]).
    ///
    /// [`Message::id`]: crate::Message::id
    pub id: String,
    /// How many active subscriptions it matched (each got one copy).
    pub matched: u64,
}

impl Client {
    /// Publishes `payload` to `topic` without waiting for the broker (fire-and-forget): it
    /// returns once the connection has taken the message. See the [module docs](crate::publish)
    /// for how errors the broker reports later are kept.
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// client.publish("orders.42.eu", "paid").await?;
    /// client.publish("sensors.7.temperature", 21.5).await?;
    /// // Any `Serialize` value, through rmpv.
    /// let payload = rmpv::ext::to_value(("tea", 2)).expect("serializable");
    /// client.publish("orders.43.eu", payload).await?;
    /// client.flush().await?; // the broker has handled all three
    /// assert_eq!(client.counters().publish_errors, 0);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::TooLarge`] (104) when the message is larger than the broker accepts: it is not
    /// sent. [`Error::Closed`] when the client was closed. Nothing else: a publish the broker
    /// rejects is counted, not returned.
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Value>,
    ) -> Result<(), Error> {
        self.publish_with(topic, payload, PublishOptions::default())
            .await
            .map(|_| ())
    }

    /// Publishes with headers and, with [`PublishOptions::confirm`], waits for the broker's
    /// confirmation: `Some(Published)` then, `None` for an unconfirmed publish.
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// use mpreg::PublishOptions;
    /// let options = PublishOptions::default().with_header("trace", "abc").with_confirm(true);
    /// let published = client.publish_with("orders.42.eu", "paid", options).await?;
    /// println!("matched {} subscriptions", published.map_or(0, |p| p.matched));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// With `confirm`: [`Error::Remote`] `invalid_topic` (600), [`Error::TooLarge`] (104, not
    /// sent), [`Error::Timeout`], [`Error::ConnectionLost`] (904: the connection broke before
    /// the answer; the message may or may not have been routed), [`Error::Closed`]. Without:
    /// as [`Client::publish`].
    pub async fn publish_with(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Value>,
        options: PublishOptions,
    ) -> Result<Option<Published>, Error> {
        let id = self.next_id();
        let message = ClientToBroker::Publish(Publish {
            id,
            topic: topic.into(),
            headers: options.headers,
            payload: payload.into(),
            confirm: options.confirm,
        });
        if !options.confirm {
            let frames = self.encode(&message)?;
            self.command(Command::Publish { id, frames }).await?;
            return Ok(None);
        }
        let timeout = self.options().request_timeout;
        match self.request(message, timeout, None).await?.wait().await? {
            BrokerToClient::Published(p) => Ok(Some(Published {
                id: p.msg,
                matched: p.matched,
            })),
            BrokerToClient::Error(e) => Err(e.into()),
            other => Err(unexpected("published", &other)),
        }
    }

    /// Publishes several messages in one request, in order, and waits for the broker's
    /// confirmation. The broker checks the batch whole: one invalid topic and nothing is
    /// published (`600`, with the message's index in the error's `path`). A subscriber gets its
    /// share of a batch as one event, which is what makes batches fast (see
    /// `scripts/bench.sh pubsub`).
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// use mpreg::Outgoing;
    /// let batch = (0..100).map(|i| Outgoing::new("ticks.eu", i));
    /// let done = client.publish_batch(batch).await?;
    /// assert_eq!(done.count, 100);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Remote`] `invalid_topic` (600), [`Error::TooLarge`] (104, not sent),
    /// [`Error::Timeout`], [`Error::ConnectionLost`] (904), [`Error::Closed`].
    pub async fn publish_batch(
        &self,
        messages: impl IntoIterator<Item = Outgoing>,
    ) -> Result<PublishedBatch, Error> {
        let id = self.next_id();
        let message = ClientToBroker::PublishBatch(PublishBatch {
            id,
            messages: messages
                .into_iter()
                .map(|m| BatchItem {
                    topic: m.topic,
                    headers: m.headers,
                    payload: m.payload,
                })
                .collect(),
            confirm: true,
        });
        let timeout = self.options().request_timeout;
        match self.request(message, timeout, None).await?.wait().await? {
            BrokerToClient::PublishedBatch(p) => Ok(PublishedBatch {
                count: p.count,
                matched: p.matched,
            }),
            BrokerToClient::Error(e) => Err(e.into()),
            other => Err(unexpected("published_batch", &other)),
        }
    }

    /// Waits until the broker has handled everything this client sent before the call: a
    /// round trip (a ping) behind the earlier requests, which the broker handles in order.
    /// Use it before exiting after unconfirmed publishes, or before reading
    /// [`ClientCounters::publish_errors`](crate::ClientCounters::publish_errors).
    ///
    /// # Errors
    /// [`Error::ConnectionLost`] (904) when the connection broke before the answer: earlier
    /// publishes may not have reached the broker (unlike [`Client::ping`], this is not sent
    /// again). [`Error::Timeout`] when no answer arrives within the request timeout;
    /// [`Error::Closed`].
    pub async fn flush(&self) -> Result<(), Error> {
        let timeout = self.options().request_timeout;
        self.ping_as(RequestKind::Other, timeout).await.map(|_| ())
    }

    /// The latest error the broker reported about an unconfirmed publish, if any.
    pub fn last_publish_error(&self) -> Option<Error> {
        self.link_counters_ref()
            .last_publish_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
    }
}
