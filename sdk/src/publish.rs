//! Publishing to topics: [`Client::publish`], [`Client::publish_with`],
//! [`Client::publish_batch`] and [`Client::flush`].
//!
//! **An unconfirmed publish is never dropped by the client.** It returns once the client has
//! taken the message into its publish queue; when the queue already holds
//! [`ClientOptions::publish_buffer`](crate::ClientOptions::publish_buffer) bytes of messages
//! not yet confirmed by the broker (8 MiB by default), it waits, asynchronously, for the broker
//! to catch up. The client coalesces queued messages into `publish_batch` requests that the
//! broker confirms, so a fast publisher costs the broker one request per batch, and a
//! subscriber gets its share of a batch as one event.
//!
//! **Errors come later, and are not lost.** A message the broker rejects (an invalid or
//! forbidden topic) is counted
//! ([`ClientCounters::publish_errors`](crate::ClientCounters::publish_errors)) and the latest
//! error kept ([`Client::last_publish_error`]), with the publish's own request id; the messages
//! coalesced with it are sent again. Messages whose batch was unanswered when the connection to
//! the broker broke may or may not have been routed: they are counted in
//! [`ClientCounters::publishes_in_doubt`](crate::ClientCounters::publishes_in_doubt).
//!
//! **Order.** One client's unconfirmed publishes leave in the order they were handed over, and
//! a confirmed publish, a [`Client::publish_batch`] or a [`Client::flush`] never overtakes
//! them. (Plans and other requests may.) The only exception: after a rejected message, the
//! messages sent again with it follow batches that had already left.

use std::collections::BTreeMap;

use mpreg_protocol::{BatchItem, BrokerToClient, ClientToBroker, Publish, PublishBatch};

use crate::client::Client;
use crate::error::Error;
use crate::link::{Command, RequestKind};
use crate::pending_reply::unexpected;
use crate::publish_queue::{encode_item, Wake, BATCH_OVERHEAD};
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
    /// Publishes `payload` to `topic` without waiting for the broker: it returns once the
    /// client has taken the message, which may mean waiting for room when the broker is slower
    /// than the publisher (memory stays bounded by
    /// [`ClientOptions::publish_buffer`](crate::ClientOptions::publish_buffer)). See the
    /// [module docs](crate::publish) for how errors the broker reports later are kept.
    ///
    /// ```no_run
    /// # async fn demo(client: mpreg::Client) -> Result<(), mpreg::Error> {
    /// client.publish("orders.42.eu", "paid").await?;
    /// client.publish("sensors.7.temperature", 21.5).await?;
    /// // Any `Serialize` value, through rmpv.
    /// let payload = rmpv::ext::to_value(("tea", 2)).expect("serializable");
    /// client.publish("orders.43.eu", payload).await?;
    /// client.flush().await?; // the broker has routed all three
    /// assert_eq!(client.counters().publish_errors, 0);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::TooLarge`] (104) when the message is larger than the broker accepts: it is not
    /// sent. [`Error::Closed`] when the client was closed. Nothing else: a publish the broker
    /// rejects is counted, not returned, and a full queue makes it wait, not fail.
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
        if !options.confirm {
            let item = encode_item(&topic.into(), &options.headers, &payload.into());
            let limit = self.max_request_bytes();
            if item.len() + BATCH_OVERHEAD > limit {
                return Err(Error::TooLarge {
                    kind: "publish",
                    size: item.len() + BATCH_OVERHEAD,
                    limit,
                });
            }
            if self.publish_queue().push(id, item).await? == Wake::Reactor {
                self.command(Command::DrainPublishes).await?;
            }
            return Ok(None);
        }
        let message = ClientToBroker::Publish(Publish {
            id,
            topic: topic.into(),
            headers: options.headers,
            payload: payload.into(),
            confirm: true,
        });
        let timeout = self.options().request_timeout;
        let pending = self
            .request_behind_publishes(message, RequestKind::Other, timeout)
            .await?;
        match pending.wait().await? {
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
        let pending = self
            .request_behind_publishes(message, RequestKind::Other, timeout)
            .await?;
        match pending.wait().await? {
            BrokerToClient::PublishedBatch(p) => Ok(PublishedBatch {
                count: p.count,
                matched: p.matched,
            }),
            BrokerToClient::Error(e) => Err(e.into()),
            other => Err(unexpected("published_batch", &other)),
        }
    }

    /// Waits until the broker has every unconfirmed publish handed over before the call, and
    /// has handled every request sent before it.
    ///
    /// "Has" means: the broker read the message and routed it (queued a copy for each matching
    /// subscription on its event socket, exactly what a confirmed publish's answer says), or
    /// rejected it, which is counted in
    /// [`ClientCounters::publish_errors`](crate::ClientCounters::publish_errors). It does not
    /// mean that subscribers have read it. Messages whose batch was unanswered when the
    /// connection broke are counted in
    /// [`ClientCounters::publishes_in_doubt`](crate::ClientCounters::publishes_in_doubt) and make
    /// this fail with 904.
    ///
    /// It sends a ping behind the queued publishes and waits for its answer (the broker
    /// handles one connection's requests in order), then for every earlier publish to be
    /// settled. Use it before exiting after unconfirmed publishes, or before reading the
    /// counters.
    ///
    /// # Errors
    /// [`Error::ConnectionLost`] (904) when the connection broke before the answer: earlier
    /// publishes may not have reached the broker (unlike [`Client::ping`], this is not sent
    /// again). [`Error::Timeout`] when no answer arrives within the request timeout, or the
    /// publishes are not all settled within it; [`Error::Closed`].
    pub async fn flush(&self) -> Result<(), Error> {
        let timeout = self.options().request_timeout;
        let started = std::time::Instant::now();
        let target = self.publish_queue().next_seq();
        let id = self.next_id();
        let ping = ClientToBroker::Ping(mpreg_protocol::Ping { id });
        let pending = self
            .request_behind_publishes(ping, RequestKind::Other, timeout)
            .await?;
        match pending.wait().await? {
            BrokerToClient::Pong(_) => {}
            BrokerToClient::Error(e) => return Err(e.into()),
            other => return Err(unexpected("pong", &other)),
        }
        // Messages sent again after a rejected neighbour may still be on their way.
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, self.publish_queue().wait_settled(target)).await {
            Ok(settled) => settled,
            Err(_) => Err(Error::Timeout { after: timeout }),
        }
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
