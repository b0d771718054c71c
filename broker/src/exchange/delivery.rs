//! Delivery over the event socket: one message or a batch to one subscription, preceded by a
//! `lagging` notice when it lost some, and message ids serialized without allocating.

use std::collections::BTreeMap;

use mpreg_protocol::{
    BatchItem, EventBatchRef, EventItemRef, EventRef, Lagging, TopicMessageRef, Value,
};

use super::Subscription;
use crate::outbox::{Delivery, EventSink};

/// Sends one message to one subscription, preceded by a `lagging` notice if it lost some.
/// Returns false when the subscriber's pipe was full (the message is dropped and counted).
pub(super) fn deliver(
    out: &mut impl EventSink,
    sub: &mut Subscription,
    id: &str,
    topic: &str,
    headers: &BTreeMap<String, String>,
    payload: &Value,
    retained: bool,
) -> bool {
    sub.seq += 1;
    if sub.dropped_pending > 0 {
        let notice = Lagging {
            sub: sub.token.clone(),
            dropped: sub.dropped_pending,
            dropped_total: sub.dropped_total,
        };
        if out.event(&EventRef::Lagging(&notice)) != Delivery::Sent {
            sub.dropped_pending += 1;
            sub.dropped_total += 1;
            return false;
        }
        sub.dropped_pending = 0;
    }
    let message = TopicMessageRef {
        sub: &sub.token,
        seq: sub.seq,
        id,
        topic,
        headers,
        payload,
        retained,
    };
    if out.event(&EventRef::Message(message)) == Delivery::Sent {
        true
    } else {
        sub.dropped_pending += 1;
        sub.dropped_total += 1;
        false
    }
}

/// Sends a subscription's share of a batch as one `messages` event (see [`deliver`]).
pub(super) fn deliver_batch(
    out: &mut impl EventSink,
    sub: &mut Subscription,
    share: &[usize],
    items: &[BatchItem],
    ids: &[MsgId],
) -> bool {
    let first = sub.seq + 1;
    let n = share.len() as u64;
    sub.seq += n;
    if sub.dropped_pending > 0 {
        let notice = Lagging {
            sub: sub.token.clone(),
            dropped: sub.dropped_pending,
            dropped_total: sub.dropped_total,
        };
        if out.event(&EventRef::Lagging(&notice)) != Delivery::Sent {
            sub.dropped_pending += n;
            sub.dropped_total += n;
            return false;
        }
        sub.dropped_pending = 0;
    }
    let texts: Vec<[u8; ulid::ULID_LEN]> = share.iter().map(|&i| ids[i].text()).collect();
    let batch = EventBatchRef {
        sub: &sub.token,
        items: share
            .iter()
            .zip(&texts)
            .enumerate()
            .map(|(k, (&i, text))| {
                let m = &items[i];
                EventItemRef {
                    seq: first + k as u64,
                    // ULID text is ASCII.
                    id: std::str::from_utf8(text).unwrap_or_default(),
                    topic: &m.topic,
                    headers: &m.headers,
                    payload: &m.payload,
                }
            })
            .collect(),
    };
    if out.event(&EventRef::Messages(batch)) == Delivery::Sent {
        true
    } else {
        sub.dropped_pending += n;
        sub.dropped_total += n;
        false
    }
}

/// A message id, serialized as its 26-character ULID text without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MsgId(pub(super) u128);

impl MsgId {
    /// The 26 ASCII characters of the ULID.
    fn text(self) -> [u8; ulid::ULID_LEN] {
        let mut buf = [0u8; ulid::ULID_LEN];
        let _ = ulid::Ulid(self.0).array_to_str(&mut buf);
        buf
    }
}

impl std::fmt::Display for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut buf = [0u8; ulid::ULID_LEN];
        f.write_str(ulid::Ulid(self.0).array_to_str(&mut buf))
    }
}

impl serde::Serialize for MsgId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; ulid::ULID_LEN];
        serializer.serialize_str(ulid::Ulid(self.0).array_to_str(&mut buf))
    }
}
