//! The shell's side of a cluster: the sockets to the other brokers.
//!
//! - the **peer ROUTER** (bound): every other broker's links arrive here; a link's routing id
//!   is the sender's broker id (16 bytes) and one byte naming the link (`c` control, `d` data),
//!   so the sender of every message is known without a handshake table;
//! - per member, **two DEALERs** (control and data) into its peer ROUTER, created when the
//!   member is learned (or, for a seed known only by endpoint, on the first `hello`), with
//!   `IMMEDIATE` so that nothing queues for a member that is not connected: a send to it fails
//!   at once and the engine picks another candidate;
//! - the **gossip PUB** (bound), and one **gossip SUB** connected to every member's PUB.
//!
//! Control traffic (probes, introductions, catalogue sync) has its own link so it never waits
//! behind bulk payloads (forwarded arguments and results up to the message limit).
//!
//! On a CURVE broker all of them run CURVE with the broker's key pair: the ROUTER and the PUB
//! as servers whose ZAP domains ([`PEER_DOMAIN`], [`GOSSIP_DOMAIN`]) admit only the access
//! file's `[[peer]]` keys, the DEALERs and the SUB as clients expecting the peers to serve the
//! same public key (the brokers of a cluster share one key pair).

use std::collections::BTreeMap;

use mpreg_protocol::peer::PeerEndpoints;
use mpreg_protocol::{compact_frame, BrokerId, Gossip, PeerMessage};
use mpreg_transport::{
    Curve, Io, KeyPair, SendError, SocketId, SocketKind, SocketOptions, SocketSpec,
};

use crate::access::{GOSSIP_DOMAIN, PEER_DOMAIN};
use crate::outbox::{Delivery, Link};

/// Messages queued per peer link before sends fail (then the peer counts as unreachable for
/// that message).
pub const PEER_HWM: i32 = 10_000;

/// The sockets of the cluster.
pub struct PeerLinks {
    me: BrokerId,
    /// The peer ROUTER.
    pub router: SocketId,
    gossip_pub: SocketId,
    /// The gossip SUB.
    pub gossip_sub: SocketId,
    /// Per peer endpoint: the control and data DEALERs.
    dealers: BTreeMap<String, [SocketId; 2]>,
    /// Gossip endpoints the SUB is connected to.
    following: BTreeMap<String, String>,
    options: SocketOptions,
}

impl PeerLinks {
    /// Binds the peer ROUTER and the gossip PUB, opens the gossip SUB; with `keys` (a CURVE
    /// broker), every one of them runs CURVE (see the module documentation).
    pub fn open(
        io: &mut Io,
        me: BrokerId,
        peer_endpoint: &str,
        gossip_endpoint: &str,
        max_frame_bytes: usize,
        keys: Option<&KeyPair>,
    ) -> Result<PeerLinks, mpreg_transport::TransportError> {
        let server = |options: SocketOptions, domain: &str| SocketOptions {
            zap_domain: keys.map(|_| domain.to_string()),
            ..options.with_curve(keys.map(|k| Curve::Server(k.clone())))
        };
        let client = keys.map(|k| Curve::Client {
            server: k.public,
            own: k.clone(),
        });
        let options = SocketOptions {
            sndhwm: PEER_HWM,
            rcvhwm: PEER_HWM,
            ..SocketOptions::router_server()
        }
        .with_max_frame_bytes(max_frame_bytes);
        let router = io.open(
            &SocketSpec::new(SocketKind::Router, server(options, PEER_DOMAIN)).bind(peer_endpoint),
        )?;
        let gossip_pub = io.open(
            &SocketSpec::new(
                SocketKind::Pub,
                server(SocketOptions::default(), GOSSIP_DOMAIN),
            )
            .bind(gossip_endpoint),
        )?;
        let mut sub = SocketSpec::new(
            SocketKind::Sub,
            SocketOptions::default()
                .with_max_frame_bytes(max_frame_bytes)
                .with_curve(client.clone()),
        );
        sub.subscribe.push(Vec::new());
        let gossip_sub = io.open(&sub)?;
        Ok(PeerLinks {
            me,
            router,
            gossip_pub,
            gossip_sub,
            dealers: BTreeMap::new(),
            following: BTreeMap::new(),
            options: SocketOptions {
                immediate: true,
                ..SocketOptions::dealer_client()
            }
            .with_max_frame_bytes(max_frame_bytes)
            .with_curve(client),
        })
    }

    /// The endpoints bound (peer, gossip), with OS-chosen ports resolved.
    pub fn bound(&self, io: &Io) -> (String, String) {
        let first = |id| io.bound_endpoints(id).first().cloned().unwrap_or_default();
        (first(self.router), first(self.gossip_pub))
    }

    fn links(&mut self, io: &mut Io, endpoint: &str) -> Option<[SocketId; 2]> {
        if let Some(&links) = self.dealers.get(endpoint) {
            return Some(links);
        }
        let mut open = |link: Link| {
            let mut id = self.me.to_u128().to_be_bytes().to_vec();
            id.push(link.tag());
            let options = SocketOptions {
                routing_id: Some(id),
                ..self.options.clone()
            };
            let spec = SocketSpec::new(SocketKind::Dealer, options).connect(endpoint);
            // The control link's connection events tell the engine when a peer's connection
            // comes up (introductions go out at once) or drops (the member is suspected).
            let spec = match link {
                Link::Control => spec.monitored(),
                Link::Data => spec,
            };
            io.open(&spec).ok()
        };
        let links = [open(Link::Control)?, open(Link::Data)?];
        self.dealers.insert(endpoint.to_string(), links);
        Some(links)
    }

    /// Sends a message to the peer at `endpoint` on one of its links (opened on demand).
    pub fn send(
        &mut self,
        io: &mut Io,
        endpoint: &str,
        link: Link,
        message: &PeerMessage,
    ) -> Delivery {
        let Some([control, data]) = self.links(io, endpoint) else {
            return Delivery::Gone;
        };
        let socket = match link {
            Link::Control => control,
            Link::Data => data,
        };
        let frame = compact_frame(message.kind().as_bytes(), &message.encode_body());
        match io.send(socket, &[frame]) {
            Ok(()) => Delivery::Sent,
            Err(SendError::WouldBlock) => Delivery::Full,
            Err(_) => Delivery::Gone,
        }
    }

    /// The peer endpoint whose control link is `socket`, if it is one.
    pub fn control_endpoint(&self, socket: SocketId) -> Option<String> {
        self.dealers
            .iter()
            .find(|(_, [control, _])| *control == socket)
            .map(|(endpoint, _)| endpoint.clone())
    }

    /// Closes the links to the peer at `endpoint` (opened again, with a fresh connect, by the
    /// next message to it); its gossip stays followed.
    pub fn reset(&mut self, io: &mut Io, endpoint: &str) {
        if let Some(links) = self.dealers.remove(endpoint) {
            for socket in links {
                io.close(socket);
            }
        }
    }

    /// Publishes on the gossip socket.
    pub fn gossip(&mut self, io: &mut Io, message: &Gossip) {
        let frame = compact_frame(message.kind().as_bytes(), &message.encode_body());
        // PUB drops at its high-water mark by design: sequence numbers and digests make a
        // lost delta a snapshot pull, never a wrong view.
        let _ = io.send(self.gossip_pub, &[frame]);
    }

    /// A new member: open its links and follow its gossip.
    pub fn connect(&mut self, io: &mut Io, endpoints: &PeerEndpoints) {
        let _ = self.links(io, &endpoints.peer);
        if !endpoints.gossip.is_empty()
            && !self.following.contains_key(&endpoints.peer)
            && io.connect(self.gossip_sub, &endpoints.gossip).is_ok()
        {
            self.following
                .insert(endpoints.peer.clone(), endpoints.gossip.clone());
        }
    }

    /// A member is gone: close its links and stop following its gossip.
    pub fn disconnect(&mut self, io: &mut Io, endpoints: &PeerEndpoints) {
        if let Some(links) = self.dealers.remove(&endpoints.peer) {
            for socket in links {
                io.close(socket);
            }
        }
        if let Some(gossip) = self.following.remove(&endpoints.peer) {
            io.disconnect(self.gossip_sub, &gossip);
        }
    }

    /// Who sent a message on the peer ROUTER, from its routing id.
    pub fn sender(routing: &[u8]) -> Option<(BrokerId, Link)> {
        let (id, tag) = routing.split_at_checked(16)?;
        let [tag] = tag else { return None };
        let raw = u128::from_be_bytes(id.try_into().ok()?);
        Some((BrokerId(ulid::Ulid(raw)), Link::of_tag(*tag)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_id_names_the_sender_and_the_link() {
        let me = BrokerId(ulid::Ulid(0x0123_4567_89ab_cdef_0011_2233_4455_6677));
        let mut id = me.to_u128().to_be_bytes().to_vec();
        id.push(b'd');
        assert_eq!(PeerLinks::sender(&id), Some((me, Link::Data)));
        assert_eq!(PeerLinks::sender(&id[..16]), None);
        id[16] = b'x';
        assert_eq!(PeerLinks::sender(&id), None);
    }
}
