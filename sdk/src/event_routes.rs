//! Topic deliveries on the connection's reactor: the SUB socket(s) connected to the broker's
//! event endpoint, and the routing of event frames `[token, VERSION, type, body]` to each
//! subscription's bounded buffer by token.
//!
//! Never blocks: a full buffer drops the delivery for that subscription only and owes it a
//! [`Lagging`] notice (see [`crate::subscription`]). A buffer whose receiver is gone (the
//! [`Subscription`](crate::Subscription) was dropped) is detached at its next event.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mpreg_protocol::{parse_envelope, Event, Limits};
use mpreg_transport::{Io, SocketId, SocketKind, SocketOptions, SocketSpec};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::link::LinkCounters;
use crate::subscription::{Delivery, LagSource, Lagging, Message};

/// Where a subscription's deliveries go.
pub(crate) type DeliverySender = mpsc::Sender<Result<Delivery, Error>>;

/// Start routing a subscription's events: subscribe the SUB socket for `endpoint` to `token`
/// and answer `active` with the announced backlog once the broker activates it.
pub(crate) struct Attach {
    pub token: String,
    pub endpoint: String,
    pub deliveries: DeliverySender,
    pub active: oneshot::Sender<Result<u64, Error>>,
}

struct Route {
    socket: SocketId,
    active: Option<oneshot::Sender<Result<u64, Error>>>,
    buffer: DeliveryBuffer,
}

/// The sending side of one subscription's buffer, with its drop accounting.
struct DeliveryBuffer {
    deliveries: DeliverySender,
    /// Deliveries dropped since the last client-side notice.
    dropped_pending: u64,
    dropped_total: u64,
}

impl DeliveryBuffer {
    fn new(deliveries: DeliverySender) -> Self {
        DeliveryBuffer {
            deliveries,
            dropped_pending: 0,
            dropped_total: 0,
        }
    }

    /// Queues one delivery, preceded by a notice if some were dropped before. Returns false
    /// once the receiver is gone.
    fn push(&mut self, item: Result<Delivery, Error>, counters: &LinkCounters) -> bool {
        if self.deliveries.is_closed() {
            return false;
        }
        if self.dropped_pending > 0 {
            // The notice and the item go together or not at all; this thread is the only
            // sender, so the room cannot shrink in between.
            if self.deliveries.capacity() < 2 {
                self.drop_one(counters);
                return true;
            }
            let notice = Lagging {
                dropped: self.dropped_pending,
                dropped_total: self.dropped_total,
                source: LagSource::Client,
            };
            let _ = self.deliveries.try_send(Ok(Delivery::Lagging(notice)));
            self.dropped_pending = 0;
        }
        match self.deliveries.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.drop_one(counters);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn drop_one(&mut self, counters: &LinkCounters) {
        self.dropped_pending += 1;
        self.dropped_total += 1;
        counters.events_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// The subscriptions of one connection and the SUB sockets they arrive on.
pub(crate) struct EventRoutes {
    /// One SUB per event endpoint (in practice one: the broker's).
    sockets: Vec<(String, SocketId)>,
    routes: HashMap<String, Route>,
    limits: Limits,
    /// The connection's CURVE keys: the broker delivers a subscription's events only to a SUB
    /// with the same identity as the connection that subscribed.
    curve: Option<mpreg_transport::Curve>,
    counters: Arc<LinkCounters>,
}

impl EventRoutes {
    pub(crate) fn new(
        limits: Limits,
        curve: Option<mpreg_transport::Curve>,
        counters: Arc<LinkCounters>,
    ) -> Self {
        EventRoutes {
            sockets: Vec::new(),
            routes: HashMap::new(),
            limits,
            curve,
            counters,
        }
    }

    /// True when `socket` is one of the SUB sockets.
    pub(crate) fn owns(&self, socket: SocketId) -> bool {
        self.sockets.iter().any(|&(_, s)| s == socket)
    }

    fn socket_for(&mut self, io: &mut Io, endpoint: &str) -> Result<SocketId, Error> {
        if let Some(&(_, socket)) = self.sockets.iter().find(|(e, _)| e == endpoint) {
            return Ok(socket);
        }
        let options = SocketOptions::default()
            .with_curve(self.curve.clone())
            .with_max_frame_bytes(self.limits.max_message_bytes);
        let spec = SocketSpec::new(SocketKind::Sub, options).connect(endpoint);
        let socket = io.open(&spec).map_err(|e| Error::Connect {
            endpoint: endpoint.to_string(),
            reason: format!("cannot open the event socket: {e}"),
        })?;
        self.sockets.push((endpoint.to_string(), socket));
        Ok(socket)
    }

    pub(crate) fn attach(&mut self, io: &mut Io, attach: Attach) {
        let socket = match self.socket_for(io, &attach.endpoint) {
            Ok(socket) => socket,
            Err(e) => {
                let _ = attach.active.send(Err(e));
                return;
            }
        };
        if let Err(e) = io.subscribe(socket, attach.token.as_bytes()) {
            let _ = attach.active.send(Err(Error::Connect {
                endpoint: attach.endpoint,
                reason: format!("cannot subscribe the event socket: {e}"),
            }));
            return;
        }
        self.routes.insert(
            attach.token,
            Route {
                socket,
                active: Some(attach.active),
                buffer: DeliveryBuffer::new(attach.deliveries),
            },
        );
    }

    /// Stops routing `token` and removes its SUB filter (which the broker also takes as the
    /// end of the subscription).
    pub(crate) fn detach(&mut self, io: &mut Io, token: &str) {
        if let Some(route) = self.routes.remove(token) {
            // Only fails for a closed socket, which has no filter left to remove.
            let _ = io.unsubscribe(route.socket, token.as_bytes());
        }
    }

    /// An event frame from a SUB socket.
    pub(crate) fn on_event(&mut self, io: &mut Io, frames: Vec<Vec<u8>>) {
        let Some((token, protocol)) = frames.split_first() else {
            self.counters
                .malformed_events
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(token) = std::str::from_utf8(token)
            .ok()
            .filter(|t| self.routes.contains_key(*t))
        else {
            // Events still in flight for a subscription just detached land here.
            self.counters
                .unrouted_events
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let token = token.to_string();
        let event = parse_envelope(protocol)
            .map_err(|e| (e.code(), e.to_string()))
            .and_then(|envelope| {
                Event::decode(envelope.kind, envelope.body, &self.limits).map_err(|e| {
                    let kind = String::from_utf8_lossy(envelope.kind).into_owned();
                    (e.code(), format!("`{kind}` event: {e}"))
                })
            });
        let Some(route) = self.routes.get_mut(&token) else {
            return;
        };
        let counters = &self.counters;
        let open = match event {
            Err((code, message)) => {
                counters.malformed_events.fetch_add(1, Ordering::Relaxed);
                route
                    .buffer
                    .push(Err(Error::Protocol { code, message }), counters)
            }
            Ok(Event::Active(active)) => {
                if let Some(tx) = route.active.take() {
                    let _ = tx.send(Ok(active.backlog));
                }
                !route.buffer.deliveries.is_closed()
            }
            Ok(Event::Message(message)) => route
                .buffer
                .push(Ok(Delivery::Message(Message::from(message))), counters),
            Ok(Event::Messages(batch)) => batch.items.into_iter().all(|item| {
                route
                    .buffer
                    .push(Ok(Delivery::Message(Message::from(item))), counters)
            }),
            Ok(Event::Lagging(lagging)) => {
                let notice = Lagging {
                    dropped: lagging.dropped,
                    dropped_total: lagging.dropped_total,
                    source: LagSource::Broker,
                };
                route.buffer.push(Ok(Delivery::Lagging(notice)), counters)
            }
        };
        if !open {
            self.detach(io, &token);
        }
    }

    /// Closes every SUB socket; subscriptions waiting for `active` fail with
    /// [`Error::Closed`], and every stream ends.
    pub(crate) fn close_all(&mut self, io: &mut Io) {
        for (_, route) in self.routes.drain() {
            if let Some(tx) = route.active {
                let _ = tx.send(Err(Error::Closed));
            }
        }
        for (_, socket) in self.sockets.drain(..) {
            io.close(socket);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::collections::BTreeMap;

    fn message(seq: u64) -> Result<Delivery, Error> {
        Ok(Delivery::Message(Message {
            topic: "t".into(),
            headers: BTreeMap::new(),
            payload: 0.into(),
            seq,
            id: String::new(),
            retained: false,
        }))
    }

    fn seq(item: Option<Result<Delivery, Error>>) -> u64 {
        match item {
            Some(Ok(Delivery::Message(m))) => m.seq,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn a_full_buffer_drops_then_reports_before_the_next_delivery() {
        let counters = LinkCounters::default();
        let (tx, mut rx) = mpsc::channel(2);
        let mut buffer = DeliveryBuffer::new(tx);
        for n in 1..=5 {
            assert!(buffer.push(message(n), &counters));
        }
        assert_eq!(counters.events_dropped.load(Ordering::Relaxed), 3);
        assert_eq!(seq(rx.try_recv().ok()), 1);
        // One slot free is not enough for the notice and the message: dropped too.
        assert!(buffer.push(message(6), &counters));
        assert_eq!(buffer.dropped_pending, 4);
        assert_eq!(seq(rx.try_recv().ok()), 2);
        assert!(buffer.push(message(7), &counters));
        match rx.try_recv() {
            Ok(Ok(Delivery::Lagging(l))) => assert_eq!(
                l,
                Lagging {
                    dropped: 4,
                    dropped_total: 4,
                    source: LagSource::Client
                }
            ),
            other => panic!("expected a notice, got {other:?}"),
        }
        assert_eq!(seq(rx.try_recv().ok()), 7);
        assert_eq!(buffer.dropped_pending, 0);
        // The next drop starts a new count; the total goes on.
        assert!(buffer.push(message(8), &counters));
        assert!(buffer.push(message(9), &counters));
        assert!(buffer.push(message(10), &counters));
        assert_eq!((buffer.dropped_pending, buffer.dropped_total), (1, 5));
    }

    #[test]
    fn a_dropped_receiver_is_reported() {
        let counters = LinkCounters::default();
        let (tx, rx) = mpsc::channel(4);
        let mut buffer = DeliveryBuffer::new(tx);
        assert!(buffer.push(message(1), &counters));
        drop(rx);
        assert!(!buffer.push(message(2), &counters));
        assert_eq!(counters.events_dropped.load(Ordering::Relaxed), 0);
    }
}
