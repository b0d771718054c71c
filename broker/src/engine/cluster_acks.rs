//! Subscriptions acknowledged by the cluster (`subscribe` with `cluster_ack`): the
//! `subscribed` reply waits until every reachable peer has applied this broker's catalogue up
//! to the change that added the subscription's patterns, so a publish made anywhere in the
//! cluster after `subscribe` returns is forwarded here.
//!
//! The change goes out on gossip as usual and, for these subscriptions, also on each waiting
//! peer's control link (the `catalogue` message), which the peer answers with `delta_ack`
//! naming the sequence number it now holds for this broker; a peer that found a gap pulls a
//! snapshot first and acknowledges once it has it. Unacknowledged peers are sent the change
//! again every [`ACK_RESEND`]. A peer that dies (or leaves) stops being waited for; one that
//! is still silent after [`ClusterConfig::ack_timeout`](super::ClusterConfig) is counted
//! unreachable (`cluster_acks_incomplete`, and a warning naming it) and the reply goes out.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mpreg_protocol::peer::{DeltaAck, MemberState};
use mpreg_protocol::{BrokerId, BrokerToClient, PeerMessage, Subscribed};

use super::Engine;
use crate::outbox::{ClientAddr, Outbox};

/// How often a change is sent again to the peers that have not acknowledged it.
pub const ACK_RESEND: Duration = Duration::from_millis(200);

/// A `subscribed` reply waiting for the peers' acknowledgements.
#[derive(Debug)]
pub struct PendingAck {
    client: ClientAddr,
    reply: Subscribed,
    /// This broker's catalogue sequence number that holds the subscription's patterns.
    seq: u64,
    waiting: BTreeSet<BrokerId>,
    deadline: Instant,
    next_resend: Instant,
}

impl PendingAck {
    /// When this entry next needs the clock.
    pub fn next_deadline(&self) -> Instant {
        self.deadline.min(self.next_resend)
    }
}

impl Engine {
    /// Answers a `subscribe` that asked for `cluster_ack` once every reachable peer knows its
    /// patterns (at once outside a cluster, or when no peer is reachable).
    pub(super) fn subscribed_after_cluster_ack(
        &mut self,
        out: &mut impl Outbox,
        client: &ClientAddr,
        reply: Subscribed,
        now: Instant,
    ) {
        self.publish_catalogue(out);
        let Some(peers) = &mut self.peers else {
            return self.reply(out, client, &BrokerToClient::Subscribed(reply));
        };
        let seq = peers.local.view().seq;
        let waiting: BTreeSet<BrokerId> = peers
            .membership
            .members()
            .filter(|(id, m)| {
                m.state != MemberState::Dead && peers.acked.get(id).is_none_or(|&s| s < seq)
            })
            .map(|(id, _)| id)
            .collect();
        if waiting.is_empty() {
            return self.reply(out, client, &BrokerToClient::Subscribed(reply));
        }
        let deadline = now + peers.config.ack_timeout;
        for &peer in &waiting {
            self.send_change(out, peer, seq);
        }
        if let Some(peers) = &mut self.peers {
            peers.pending_acks.push(PendingAck {
                client: client.clone(),
                reply,
                seq,
                waiting,
                deadline,
                next_resend: now + ACK_RESEND,
            });
        }
    }

    /// Sends a peer the change `seq` of this broker's catalogue on its control link: the
    /// delta when it is the last one, else the whole snapshot (which is at least as new).
    fn send_change(&mut self, out: &mut impl Outbox, peer: BrokerId, seq: u64) {
        let Some(peers) = &self.peers else { return };
        let Some(endpoint) = peers.endpoint_of(peer).map(str::to_string) else {
            return;
        };
        let message = match &peers.last_delta {
            Some(delta) if delta.seq == seq => PeerMessage::Catalogue(delta.clone()),
            _ => PeerMessage::Snapshot(peers.local.snapshot(peers.config.me)),
        };
        self.send_control(out, &endpoint, &message);
    }

    /// A peer acknowledged this broker's catalogue up to `ack.seq`.
    pub(super) fn on_delta_ack(&mut self, out: &mut impl Outbox, from: BrokerId, ack: DeltaAck) {
        let Some(peers) = &mut self.peers else { return };
        if ack.origin != peers.config.me {
            return;
        }
        let acked = peers.acked.entry(from).or_default();
        *acked = (*acked).max(ack.seq);
        let acked = *acked;
        for pending in &mut peers.pending_acks {
            if pending.seq <= acked {
                pending.waiting.remove(&from);
            }
        }
        self.answer_acknowledged(out);
    }

    /// A peer is gone: nobody waits for it any more.
    pub(super) fn forget_acks_of(&mut self, out: &mut impl Outbox, peer: BrokerId) {
        let Some(peers) = &mut self.peers else { return };
        peers.acked.remove(&peer);
        for pending in &mut peers.pending_acks {
            pending.waiting.remove(&peer);
        }
        self.answer_acknowledged(out);
    }

    /// Sends the replies no peer is awaited for any more.
    fn answer_acknowledged(&mut self, out: &mut impl Outbox) {
        let Some(peers) = &mut self.peers else { return };
        let (done, left): (Vec<PendingAck>, Vec<PendingAck>) =
            std::mem::take(&mut peers.pending_acks)
                .into_iter()
                .partition(|p| p.waiting.is_empty());
        peers.pending_acks = left;
        for pending in done {
            self.reply(
                out,
                &pending.client,
                &BrokerToClient::Subscribed(pending.reply),
            );
        }
    }

    /// Resends changes to the peers still silent, and answers the subscriptions whose time is
    /// up (their silent peers counted unreachable).
    pub(super) fn cluster_ack_tick(&mut self, out: &mut impl Outbox, now: Instant) {
        let Some(peers) = &mut self.peers else { return };
        if peers.pending_acks.is_empty() {
            return;
        }
        let mut resend: BTreeSet<(BrokerId, u64)> = BTreeSet::new();
        let mut expired = Vec::new();
        for pending in &mut peers.pending_acks {
            if now >= pending.deadline {
                expired.push(pending.reply.sub.clone());
                continue;
            }
            if now >= pending.next_resend {
                pending.next_resend = now + ACK_RESEND;
                resend.extend(pending.waiting.iter().map(|&p| (p, pending.seq)));
            }
        }
        let (timed_out, left): (Vec<PendingAck>, Vec<PendingAck>) =
            std::mem::take(&mut peers.pending_acks)
                .into_iter()
                .partition(|p| expired.contains(&p.reply.sub));
        peers.pending_acks = left;
        for (peer, seq) in resend {
            self.send_change(out, peer, seq);
        }
        for pending in timed_out {
            self.counters.cluster_acks_incomplete += 1;
            let silent: Vec<String> = pending.waiting.iter().map(|p| self.peer_name(*p)).collect();
            slog::warn!(self.log, "subscribed without every peer's acknowledgement";
                "sub" => &pending.reply.sub, "silent_peers" => silent.join(","));
            self.reply(
                out,
                &pending.client,
                &BrokerToClient::Subscribed(pending.reply),
            );
        }
    }
}
