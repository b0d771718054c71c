//! The topic exchange: publish, subscribe and the messages delivered on the broker's event
//! (XPUB) socket.
//!
//! A subscriber asks for a subscription on its client connection (`subscribe`), receives a
//! subscription token (`subscribed`), and subscribes its SUB socket (connected to the event
//! endpoint named in the reply) to that token. The broker sees the SUB's filter arrive, sends
//! `active`, then the retained backlog if asked, then live messages — all on frames
//! `[token, VERSION, type, body]`.

use std::collections::BTreeMap;

use rmpv::Value;
use serde::{Deserialize, Serialize};

use crate::codec::nil_as_default;
use crate::plan::is_false;

fn nil() -> Value {
    Value::Nil
}

/// `subscribe`: create a subscription matching any of `patterns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Request id.
    pub id: u64,
    /// Topic patterns (`*` one word, `#` zero or more words).
    #[serde(deserialize_with = "nil_as_default")]
    pub patterns: Vec<String>,
    /// Deliver the retained messages matching the patterns first.
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "is_false"
    )]
    pub backlog: bool,
    /// In a cluster: answer only once every reachable peer broker knows the patterns (has
    /// acknowledged the catalogue change that added them), so that a publish anywhere in the
    /// cluster after the reply is forwarded here. A peer that stays silent for the broker's
    /// acknowledgement timeout is counted unreachable. No effect outside a cluster.
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "is_false"
    )]
    pub cluster_ack: bool,
}

/// `subscribed`: the subscription exists; subscribe a SUB socket to `sub` on `events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// The request id.
    pub id: u64,
    /// The subscription token: the first frame of everything delivered for it, and the
    /// prefix the SUB socket subscribes to.
    pub sub: String,
    /// The broker's event endpoint to connect the SUB socket to.
    pub events: String,
}

/// `unsubscribe`: end a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribe {
    /// Request id.
    pub id: u64,
    /// The subscription token.
    pub sub: String,
}

/// `unsubscribed`: the subscription is gone; nothing more is delivered for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribed {
    /// The request id.
    pub id: u64,
    /// The subscription token.
    pub sub: String,
}

/// `publish`: route a message to every subscription with a matching pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publish {
    /// Request id (echoed in `published` or `error`).
    pub id: u64,
    /// The topic: words separated by `.`.
    pub topic: String,
    /// String headers.
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub headers: BTreeMap<String, String>,
    /// The payload: any msgpack value.
    #[serde(default = "nil")]
    pub payload: Value,
    /// Answer with `published` once routed (errors are always answered).
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "is_false"
    )]
    pub confirm: bool,
}

/// `published`: the message was routed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The request id.
    pub id: u64,
    /// The message id the broker gave the message.
    pub msg: String,
    /// How many subscriptions it matched.
    pub matched: u64,
}

/// Event socket: the subscription is live; `backlog` retained messages follow, then live ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Active {
    /// The subscription token.
    pub sub: String,
    /// Retained messages that follow before live ones.
    pub backlog: u64,
}

/// Event socket: one message for one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicMessage {
    /// The subscription token.
    pub sub: String,
    /// Per-subscription sequence number, from 1; a gap means messages were dropped.
    pub seq: u64,
    /// The message id (the same for every subscription's copy).
    pub id: String,
    /// The topic it was published to.
    pub topic: String,
    /// Its headers.
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub headers: BTreeMap<String, String>,
    /// Its payload.
    #[serde(default = "nil")]
    pub payload: Value,
    /// True for messages replayed from the retained backlog.
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "is_false"
    )]
    pub retained: bool,
}

/// Event socket: this subscriber fell behind and `dropped` messages were not delivered (their
/// sequence numbers are skipped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lagging {
    /// The subscription token.
    pub sub: String,
    /// Messages dropped since the last delivery.
    pub dropped: u64,
    /// Messages dropped over the subscription's life.
    pub dropped_total: u64,
}

/// One message of a `publish_batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchItem {
    /// The topic.
    pub topic: String,
    /// String headers.
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub headers: BTreeMap<String, String>,
    /// The payload.
    #[serde(default = "nil")]
    pub payload: Value,
}

/// `publish_batch`: several messages in one request, routed in order. The batch is checked
/// as a whole first: one invalid topic rejects it all (error naming `messages[i].topic`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishBatch {
    /// Request id.
    pub id: u64,
    /// The messages, in publish order.
    #[serde(deserialize_with = "nil_as_default")]
    pub messages: Vec<BatchItem>,
    /// Answer with `published_batch` once routed.
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "is_false"
    )]
    pub confirm: bool,
}

/// `published_batch`: a batch was routed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedBatch {
    /// The request id.
    pub id: u64,
    /// Messages routed.
    pub count: u64,
    /// Copies routed to subscriptions, summed over the messages.
    pub matched: u64,
}

/// One message inside a `messages` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventItem {
    /// Per-subscription sequence number.
    pub seq: u64,
    /// The message id.
    pub id: String,
    /// The topic.
    pub topic: String,
    /// Headers.
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub headers: BTreeMap<String, String>,
    /// Payload.
    #[serde(default = "nil")]
    pub payload: Value,
}

/// Event socket: several messages for one subscription at once (what a `publish_batch`
/// produces), with consecutive sequence numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    /// The subscription token.
    pub sub: String,
    /// The messages, in order.
    #[serde(deserialize_with = "nil_as_default")]
    pub items: Vec<EventItem>,
}

/// A `message` event's body, borrowing what every subscriber's copy shares (the broker sends
/// one per matching subscription and clones nothing). Encodes exactly as [`TopicMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TopicMessageRef<'a> {
    /// The subscription token.
    pub sub: &'a str,
    /// Per-subscription sequence number.
    pub seq: u64,
    /// The message id.
    pub id: &'a str,
    /// The topic.
    pub topic: &'a str,
    /// Headers (omitted when empty).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: &'a BTreeMap<String, String>,
    /// Payload.
    pub payload: &'a Value,
    /// True for backlog messages (omitted otherwise).
    #[serde(skip_serializing_if = "is_false")]
    pub retained: bool,
}

/// One item of a [`EventBatchRef`]. Encodes exactly as [`EventItem`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EventItemRef<'a> {
    /// Per-subscription sequence number.
    pub seq: u64,
    /// The message id.
    pub id: &'a str,
    /// The topic.
    pub topic: &'a str,
    /// Headers (omitted when empty).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: &'a BTreeMap<String, String>,
    /// Payload.
    pub payload: &'a Value,
}

/// A `messages` event's body, borrowing the batch. Encodes exactly as [`EventBatch`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventBatchRef<'a> {
    /// The subscription token.
    pub sub: &'a str,
    /// The messages, in order.
    pub items: Vec<EventItemRef<'a>>,
}

/// An event as the broker emits it (borrowed bodies); see [`crate::Event`] for the owned,
/// decoded form. The token frame is the body's `sub`.
#[derive(Debug, Clone, PartialEq)]
pub enum EventRef<'a> {
    /// `active`.
    Active(&'a Active),
    /// `message`.
    Message(TopicMessageRef<'a>),
    /// `messages`.
    Messages(EventBatchRef<'a>),
    /// `lagging`.
    Lagging(&'a Lagging),
}

impl EventRef<'_> {
    /// The event type frame.
    pub fn kind(&self) -> &'static str {
        match self {
            EventRef::Active(_) => "active",
            EventRef::Message(_) => "message",
            EventRef::Messages(_) => "messages",
            EventRef::Lagging(_) => "lagging",
        }
    }

    /// The subscription token: the first frame of the event.
    pub fn token(&self) -> &str {
        match self {
            EventRef::Active(a) => &a.sub,
            EventRef::Message(m) => m.sub,
            EventRef::Messages(b) => b.sub,
            EventRef::Lagging(l) => &l.sub,
        }
    }

    /// The msgpack body.
    pub fn encode_body(&self) -> Vec<u8> {
        use crate::codec::encode_body;
        match self {
            EventRef::Active(a) => encode_body(a),
            EventRef::Message(m) => encode_body(m),
            EventRef::Messages(b) => encode_body(b),
            EventRef::Lagging(l) => encode_body(l),
        }
    }
}

/// Checks a topic (or a pattern: the same rules) against the limits: not empty, at most
/// `max_topic_bytes` bytes and `max_topic_words` words. Empty words are words (`a..b` has
/// three).
pub fn check_topic(topic: &str, limits: &crate::Limits) -> Result<(), String> {
    if topic.is_empty() {
        return Err("empty topic".into());
    }
    if topic.len() > limits.max_topic_bytes {
        return Err(format!(
            "topic of {} bytes exceeds the limit of {}",
            topic.len(),
            limits.max_topic_bytes
        ));
    }
    let words = topic.split('.').count();
    if words > limits.max_topic_words {
        return Err(format!(
            "topic of {words} words exceeds the limit of {}",
            limits.max_topic_words
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_limits() {
        let l = crate::Limits::default();
        assert!(check_topic("a", &l).is_ok());
        assert!(check_topic("a..b", &l).is_ok());
        assert!(check_topic(".", &l).is_ok());
        assert!(check_topic("", &l).is_err());
        assert!(check_topic(&"x".repeat(257), &l).is_err());
        assert!(check_topic(&vec!["w"; 33].join("."), &l).is_err());
        assert!(check_topic(&vec!["w"; 32].join("."), &l).is_ok());
    }
}

#[cfg(test)]
mod ref_tests {
    use super::*;
    use crate::codec::encode_body;

    #[test]
    fn borrowed_events_encode_as_the_owned_ones() {
        let headers = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let payload = Value::from("p");
        for (headers, retained) in [(&headers, true), (&BTreeMap::new(), false)] {
            let owned = TopicMessage {
                sub: "s1".into(),
                seq: 3,
                id: "01J".into(),
                topic: "a.b".into(),
                headers: headers.clone(),
                payload: payload.clone(),
                retained,
            };
            let borrowed = TopicMessageRef {
                sub: "s1",
                seq: 3,
                id: "01J",
                topic: "a.b",
                headers,
                payload: &payload,
                retained,
            };
            assert_eq!(
                encode_body(&owned),
                EventRef::Message(borrowed).encode_body()
            );
            let batch = EventBatch {
                sub: "s1".into(),
                items: vec![EventItem {
                    seq: 4,
                    id: "01K".into(),
                    topic: "a.c".into(),
                    headers: headers.clone(),
                    payload: payload.clone(),
                }],
            };
            let batch_ref = EventBatchRef {
                sub: "s1",
                items: vec![EventItemRef {
                    seq: 4,
                    id: "01K",
                    topic: "a.c",
                    headers,
                    payload: &payload,
                }],
            };
            assert_eq!(
                encode_body(&batch),
                EventRef::Messages(batch_ref).encode_body()
            );
        }
    }
}
