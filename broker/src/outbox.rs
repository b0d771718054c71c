//! The engine's typed output edge: who a message goes to, and the trait the I/O shell (or a
//! test, or the simulator) implements to carry typed messages out. The engine never encodes a
//! frame; the implementation encodes and reports what happened to each message.

use mpreg_protocol::peer::PeerEndpoints;
use mpreg_protocol::{BrokerToClient, BrokerToWorker, EventRef, Gossip, PeerMessage, Task};

/// A connection's routing id on one of the broker's ROUTER sockets.
pub type RoutingId = Vec<u8>;

/// What happened to an outgoing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the peer.
    Sent,
    /// The peer's queue is full (high-water mark); the message was dropped.
    Full,
    /// The peer is not connected.
    Gone,
    /// A client reply larger than `max_message_bytes` once encoded (its size): not sent, so
    /// that the engine can answer with `104 message_too_large` instead.
    TooLarge(usize),
}

/// A client connection: its routing id, whether it is a REQ socket (which needs the empty
/// delimiter frame back), and whether it spoke in compact frames (replies go back that way).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientAddr {
    /// Routing id on the client ROUTER.
    pub routing: RoutingId,
    /// REQ peer: replies carry an empty delimiter after the routing id.
    pub delimiter: bool,
    /// The request came as one compact frame: the reply goes back the same way.
    pub compact: bool,
}

/// A worker connection: its routing id, and whether it speaks compact frames.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerAddr {
    /// Routing id on the worker ROUTER.
    pub routing: RoutingId,
    /// It registered (or wrote) in compact form: messages to it go out as one frame.
    pub compact: bool,
}

/// Where topic events go: the broker's XPUB socket.
pub trait EventSink {
    /// Sends one event to the SUB holding its token.
    fn event(&mut self, event: &EventRef<'_>) -> Delivery;

    /// Lets the SUB whose subscription frame was just read receive messages sent with this
    /// token (the event socket applies no subscription by itself: XPUB_MANUAL). The default
    /// does nothing (sinks without a real socket).
    fn accept_subscription(&mut self, _token: &[u8]) {}

    /// Withdraws a token from the SUB whose unsubscription frame was just read.
    fn drop_subscription(&mut self, _token: &[u8]) {}
}

/// Which of the two links to a peer a message takes: control traffic (membership, catalogue
/// sync) never queues behind bulk payloads (forwarded arguments and results).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Link {
    /// Probes, introductions, catalogue snapshots and acknowledgements.
    Control,
    /// Forwarded steps, their results, forwarded publishes.
    Data,
}

impl Link {
    /// The byte that ends a link's routing id (the sender's broker id comes first).
    pub fn tag(self) -> u8 {
        match self {
            Link::Control => b'c',
            Link::Data => b'd',
        }
    }

    /// The link a routing id's last byte names.
    pub fn of_tag(tag: u8) -> Option<Link> {
        match tag {
            b'c' => Some(Link::Control),
            b'd' => Some(Link::Data),
            _ => None,
        }
    }
}

/// Where the engine's messages go: the broker's client, worker and event sockets, and (in a
/// cluster) the peer links and the gossip socket. The peer methods do nothing by default, for
/// outboxes of a broker without peers.
pub trait Outbox: EventSink {
    /// A reply (or progress event) to a client.
    fn reply(&mut self, to: &ClientAddr, message: &BrokerToClient) -> Delivery;
    /// A task to a worker (borrowed: the plan's arguments are not copied to send them).
    fn task(&mut self, to: &WorkerAddr, task: &Task<'_>) -> Delivery;
    /// Any other message to a worker.
    fn to_worker(&mut self, to: &WorkerAddr, message: &BrokerToWorker) -> Delivery;

    /// A message to the peer broker listening at `peer_endpoint`, on one of its two links
    /// (opened by [`Outbox::connect_peer`], or on demand for a seed known only by endpoint).
    fn to_peer(&mut self, peer_endpoint: &str, link: Link, message: &PeerMessage) -> Delivery {
        let _ = (peer_endpoint, link, message);
        Delivery::Gone
    }

    /// A message to every peer, on the gossip socket.
    fn gossip(&mut self, message: &Gossip) {
        let _ = message;
    }

    /// A new member: open the links to it and subscribe to its gossip.
    fn connect_peer(&mut self, endpoints: &PeerEndpoints) {
        let _ = endpoints;
    }

    /// A member is gone: close its links and its gossip subscription.
    fn disconnect_peer(&mut self, endpoints: &PeerEndpoints) {
        let _ = endpoints;
    }

    /// Closes the links to the peer at `peer_endpoint` that are not connected, so that the
    /// next message opens them again with a fresh connect.
    fn reset_peer(&mut self, peer_endpoint: &str) {
        let _ = peer_endpoint;
    }
}
