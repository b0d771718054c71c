//! How the engine's outputs leave: [`Sockets`] implements the engine's `Outbox` (replies,
//! tasks, peer messages, gossip) and the exchange's `EventSink` over the reactor's sockets.

use mpreg_protocol::peer::PeerEndpoints;
use mpreg_protocol::{
    compact_frame, encode_body, encode_compact, BrokerToClient, BrokerToWorker, EventRef, Gossip,
    PeerMessage, Task, VERSION,
};
use mpreg_transport::{Io, SendError, SocketId};

use crate::outbox::{ClientAddr, Delivery, EventSink, Link, Outbox, WorkerAddr};
use crate::peer_links::PeerLinks;

/// The engine's view of the broker's sockets for one handler call: it carries the engine's
/// typed outputs out, encoded.
pub(super) struct Sockets<'a> {
    pub(super) io: &'a mut Io,
    pub(super) client: SocketId,
    pub(super) worker: SocketId,
    pub(super) events: SocketId,
    /// Replies larger than this are not sent (the engine answers `104` instead).
    pub(super) max_reply_bytes: usize,
    /// The cluster's sockets, when the broker is in one.
    pub(super) peers: Option<&'a mut PeerLinks>,
}

impl EventSink for Sockets<'_> {
    fn event(&mut self, event: &EventRef<'_>) -> Delivery {
        let body = event.encode_body();
        let frames: [&[u8]; 4] = [
            event.token().as_bytes(),
            VERSION,
            event.kind().as_bytes(),
            &body,
        ];
        delivery(self.io.send(self.events, &frames))
    }

    fn accept_subscription(&mut self, token: &[u8]) {
        let _ = self.io.subscribe(self.events, token);
    }

    fn drop_subscription(&mut self, token: &[u8]) {
        let _ = self.io.unsubscribe(self.events, token);
    }
}

fn delivery(result: Result<(), SendError>) -> Delivery {
    match result {
        Ok(()) => Delivery::Sent,
        Err(SendError::WouldBlock) => Delivery::Full,
        Err(_) => Delivery::Gone,
    }
}

impl Sockets<'_> {
    fn send_worker_body(&mut self, to: &WorkerAddr, kind: &str, body: &[u8]) -> Delivery {
        let routing = &to.routing[..];
        if to.compact {
            let frame = compact_frame(kind.as_bytes(), body);
            delivery(self.io.send(self.worker, &[routing, &frame[..]]))
        } else {
            delivery(
                self.io
                    .send(self.worker, &[routing, VERSION, kind.as_bytes(), body]),
            )
        }
    }
}

impl Outbox for Sockets<'_> {
    fn reply(&mut self, client: &ClientAddr, message: &BrokerToClient) -> Delivery {
        if client.compact {
            // Encoded straight into its frame: no second buffer, no copy of the body.
            let (frame, body) = message.encode_compact();
            if body > self.max_reply_bytes {
                return Delivery::TooLarge(body);
            }
            let routing = &client.routing[..];
            return delivery(if client.delimiter {
                self.io.send(self.client, &[routing, b"", &frame[..]])
            } else {
                self.io.send(self.client, &[routing, &frame[..]])
            });
        }
        let body = message.encode_body();
        if body.len() > self.max_reply_bytes {
            return Delivery::TooLarge(body.len());
        }
        let kind = message.kind().as_bytes();
        let routing = &client.routing[..];
        let result = if client.delimiter {
            self.io
                .send(self.client, &[routing, b"", VERSION, kind, &body])
        } else {
            self.io.send(self.client, &[routing, VERSION, kind, &body])
        };
        delivery(result)
    }

    fn task(&mut self, to: &WorkerAddr, task: &Task<'_>) -> Delivery {
        if to.compact {
            let (frame, _) = encode_compact(b"task", task);
            return delivery(self.io.send(self.worker, &[&to.routing[..], &frame[..]]));
        }
        self.send_worker_body(to, "task", &encode_body(task))
    }

    fn to_worker(&mut self, to: &WorkerAddr, message: &BrokerToWorker) -> Delivery {
        self.send_worker_body(to, message.kind(), &message.encode_body())
    }

    fn to_peer(&mut self, endpoint: &str, link: Link, message: &PeerMessage) -> Delivery {
        match self.peers.as_deref_mut() {
            Some(peers) => peers.send(self.io, endpoint, link, message),
            None => Delivery::Gone,
        }
    }

    fn gossip(&mut self, message: &Gossip) {
        if let Some(peers) = self.peers.as_deref_mut() {
            peers.gossip(self.io, message);
        }
    }

    fn connect_peer(&mut self, endpoints: &PeerEndpoints) {
        if let Some(peers) = self.peers.as_deref_mut() {
            peers.connect(self.io, endpoints);
        }
    }

    fn disconnect_peer(&mut self, endpoints: &PeerEndpoints) {
        if let Some(peers) = self.peers.as_deref_mut() {
            peers.disconnect(self.io, endpoints);
        }
    }

    fn reset_peer(&mut self, peer_endpoint: &str) {
        if let Some(peers) = self.peers.as_deref_mut() {
            peers.reset(self.io, peer_endpoint);
        }
    }
}
