//! The peer edge: messages from the other brokers of the cluster (membership, catalogue,
//! forwarded steps and publishes), the cluster's timers, and a departing member's plans and
//! tasks. Sending steps and publishes to peers is in `forwarding.rs`.
//!
//! A peer that dies has its forwarded steps re-dispatched, as for a dead worker; the plans it
//! owned here end without a reply.

use std::collections::BTreeMap;
use std::time::Instant;

use mpreg_protocol::peer::{Bye, Capability, DeltaAck, Hello, MemberState, Refused, SyncRequest};
use mpreg_protocol::{BrokerId, Gossip, PeerMessage, PlanId, TaskId};

use super::failure::Failure;
use super::Engine;
use crate::cluster::catalogue::Applied;
use crate::cluster::membership::Action;
use crate::outbox::{Delivery, Link, Outbox};

impl Engine {
    /// A message from the peer broker `from` on one of its links.
    pub fn on_peer(
        &mut self,
        out: &mut impl Outbox,
        from: BrokerId,
        message: PeerMessage,
        now: Instant,
    ) {
        if self.peers.is_none() {
            return;
        }
        match message.into_swim() {
            Ok(swim) => {
                let actions = match &mut self.peers {
                    Some(peers) => peers.membership.on_message(from, swim, now),
                    None => return,
                };
                self.member_actions(out, actions, now);
            }
            Err(message) => self.on_peer_message(out, from, *message, now),
        }
        self.drain_ready(out, now);
        self.publish_catalogue(out);
    }

    fn on_peer_message(
        &mut self,
        out: &mut impl Outbox,
        from: BrokerId,
        message: PeerMessage,
        now: Instant,
    ) {
        match message {
            PeerMessage::Hello(hello) => self.on_hello(out, hello, true, now),
            PeerMessage::Welcome(hello) => self.on_hello(out, hello, false, now),
            PeerMessage::Refused(refused) => {
                slog::error!(self.log, "a peer refused this broker"; "peer" => %from, "reason" => refused.reason);
            }
            PeerMessage::Sync(_) => {
                let Some(peers) = &self.peers else { return };
                let snapshot = peers.local.snapshot(peers.config.me);
                if let Some(endpoint) = peers.endpoint_of(from).map(str::to_string) {
                    self.send_control(out, &endpoint, &PeerMessage::Snapshot(snapshot));
                }
            }
            PeerMessage::Snapshot(snapshot) => {
                let Some(peers) = &mut self.peers else { return };
                // Only a live member's own catalogue (a late snapshot of one that just died
                // must not bring its entries back).
                if snapshot.origin != from || !peers.membership.is_reachable(from) {
                    return;
                }
                if peers.catalogue.apply_snapshot(&snapshot) {
                    peers.interest_changed();
                }
                self.acknowledge(out, from);
            }
            PeerMessage::Catalogue(delta) => {
                // Sent on the control link when the origin waits for the acknowledgement (a
                // `cluster_ack` subscription); answered with what this broker holds now (after a
                // gap, the snapshot it pulls is acknowledged when it arrives).
                if delta.origin != from {
                    return;
                }
                self.apply_delta(out, delta);
                self.acknowledge(out, from);
            }
            PeerMessage::DeltaAck(ack) => self.on_delta_ack(out, from, ack),
            PeerMessage::FwdStep(step) => self.serve_forward(out, from, step, now),
            PeerMessage::FwdResult(result) => {
                let task = TaskId(result.fid);
                if let Some(state) = self.scheduler.answered_by_peer(from, task) {
                    self.plans.ran_on(state.plan, &result.worker);
                    let timing = result.timing;
                    self.complete_task(out, task, state, result.value, 0, timing, now);
                }
            }
            PeerMessage::FwdFailure(failure) => {
                let task = TaskId(failure.fid);
                let Some(state) = self.scheduler.answered_by_peer(from, task) else {
                    return;
                };
                self.plans.task_ended(state.plan, task);
                let Some(def) = self.plans.get(state.plan).map(|p| p.step(state.step)) else {
                    return;
                };
                let failed = Failure::Remote(Box::new(super::failure::RemoteFailure {
                    step: def.name.clone(),
                    fun: def.fun.clone(),
                    code: failure.code,
                    cause: failure.cause,
                    worker: failure.worker,
                    message: failure.message,
                    peer: self.peer_name(from),
                }));
                self.counters.steps_failed += 1;
                self.cache_failure(out, state.plan, state.step, &failed, now);
                self.fail_plan(out, state.plan, failed, now);
            }
            PeerMessage::FwdReject(reject) => {
                let task = TaskId(reject.fid);
                if let Some(state) = self.scheduler.answered_by_peer(from, task) {
                    slog::debug!(self.log, "forward rejected"; "plan" => %state.plan, "peer" => %from, "reason" => reject.reason);
                    self.plans.task_ended(state.plan, task);
                    self.plans.rejected_by(state.plan, state.step, from);
                    self.ready.push_back((state.plan, state.step));
                }
            }
            PeerMessage::FwdCancel(cancel) => {
                if let Some(plan) = self.plans.forward_of(from, cancel.fid) {
                    self.end_silently(out, plan, now);
                }
            }
            PeerMessage::FwdPublish(publish) => {
                // For this broker's subscribers only: never forwarded again.
                self.counters.forwarded_publishes_received += 1;
                self.exchange.publish_as(
                    out,
                    publish.id,
                    &publish.topic,
                    publish.headers,
                    publish.payload,
                    now,
                );
            }
            PeerMessage::CacheDrop(drop) => self.on_cache_drop(drop),
            PeerMessage::CacheGet(ask) => self.on_cache_get(out, from, ask, now),
            PeerMessage::CacheValue(answer) => self.on_cache_value(out, answer, now),
            PeerMessage::CachePut(put) => self.on_cache_put(put, now),
            PeerMessage::Bye(bye) => self.member_left(out, bye.broker, now),
            PeerMessage::Probe(_) | PeerMessage::ProbeAck(_) | PeerMessage::ProbeRequest(_) => {}
        }
    }

    /// The control link to the peer at `endpoint` connected (`up`) or dropped. Connected: a
    /// pending introduction goes out now. Dropped: the member there is suspected at once (a
    /// crashed broker's connections reset, so every member suspects it within milliseconds
    /// instead of when a probe next picks it); a live one refutes.
    pub fn on_peer_link(&mut self, out: &mut impl Outbox, endpoint: &str, up: bool, now: Instant) {
        let Some(peers) = &mut self.peers else { return };
        if up {
            if peers.introductions.contains_key(endpoint) {
                let hello = PeerMessage::Hello(peers.hello());
                let sent = self.send_control(out, endpoint, &hello) == Delivery::Sent;
                if let Some(peers) = &mut self.peers {
                    peers.introduced(endpoint, sent, now);
                }
            }
            return;
        }
        let suspects: Vec<BrokerId> = peers
            .membership
            .members()
            .filter(|(_, m)| m.state == MemberState::Alive && m.endpoints.peer == endpoint)
            .map(|(id, _)| id)
            .collect();
        for id in suspects {
            slog::info!(self.log, "peer link dropped"; "member" => %id, "endpoint" => endpoint);
            let actions = match &mut self.peers {
                Some(peers) => peers.membership.suspect(id, now),
                None => return,
            };
            self.member_actions(out, actions, now);
        }
        self.drain_ready(out, now);
    }

    /// A message from a peer's gossip socket.
    pub fn on_gossip(&mut self, out: &mut impl Outbox, message: Gossip, now: Instant) {
        self.counters.gossip_bytes_received += message.encode_body().len() as u64;
        match message {
            Gossip::Catalogue(delta) => self.apply_delta(out, delta),
            Gossip::Digest(digest) => {
                let Some(peers) = &mut self.peers else { return };
                if digest.origin == peers.config.me || !peers.membership.is_reachable(digest.origin)
                {
                    return;
                }
                peers.load.insert(digest.origin, digest.free);
                if peers.catalogue.is_behind(digest.origin, digest.seq) {
                    self.request_sync(out, digest.origin);
                }
            }
        }
        self.drain_ready(out, now);
    }

    fn apply_delta(&mut self, out: &mut impl Outbox, delta: mpreg_protocol::peer::CatalogueDelta) {
        let Some(peers) = &mut self.peers else { return };
        if delta.origin == peers.config.me || !peers.membership.is_reachable(delta.origin) {
            return;
        }
        match peers.catalogue.apply_delta(&delta) {
            Applied::Applied => peers.interest_changed(),
            Applied::Stale => {}
            Applied::NeedSnapshot => self.request_sync(out, delta.origin),
        }
    }

    /// Tells `origin` up to which change this broker holds its catalogue.
    fn acknowledge(&mut self, out: &mut impl Outbox, origin: BrokerId) {
        let Some(peers) = &self.peers else { return };
        let Some(seq) = peers.catalogue.view(origin).map(|v| v.seq) else {
            return;
        };
        if let Some(endpoint) = peers.endpoint_of(origin).map(str::to_string) {
            let ack = PeerMessage::DeltaAck(DeltaAck { origin, seq });
            self.send_control(out, &endpoint, &ack);
        }
    }

    fn request_sync(&mut self, out: &mut impl Outbox, origin: BrokerId) {
        if let Some(endpoint) = self.peer_endpoint(origin) {
            let sync = PeerMessage::Sync(SyncRequest { origin });
            self.send_control(out, &endpoint, &sync);
        }
    }

    fn on_hello(&mut self, out: &mut impl Outbox, hello: Hello, answer: bool, now: Instant) {
        let Some(peers) = &mut self.peers else { return };
        let endpoint = hello.me.endpoints.peer.clone();
        if hello.cluster != peers.config.cluster {
            slog::warn!(self.log, "refused a broker of another cluster";
                "peer" => &hello.me.name, "its_cluster" => &hello.cluster);
            let refused = PeerMessage::Refused(Refused {
                reason: format!(
                    "this broker is in cluster {:?}, not {:?}",
                    peers.config.cluster, hello.cluster
                ),
            });
            self.send_control(out, &endpoint, &refused);
            return;
        }
        peers.introductions.remove(&endpoint);
        let incarnation = peers.membership.me().incarnation;
        let mut actions = peers.membership.apply(hello.me, now);
        // The member list of an introduction is the sender's view, possibly old (a broker back
        // from a partition still holds this side dead): it introduces members, and tells this
        // broker what others believe of it; suspicions and deaths of third parties travel only
        // as SWIM rumours.
        let me = peers.config.me;
        for member in hello.members {
            if member.state == MemberState::Alive || member.broker == me {
                actions.extend(peers.membership.apply(member, now));
            }
        }
        // Both sides send their catalogue at once, rather than waiting for a digest.
        let snapshot = PeerMessage::Snapshot(peers.local.snapshot(me));
        if answer || peers.membership.me().incarnation != incarnation {
            // A welcome, or a fresh hello when this broker just refuted its own death.
            let reply = peers.hello();
            let reply = if answer {
                PeerMessage::Welcome(reply)
            } else {
                PeerMessage::Hello(reply)
            };
            self.send_control(out, &endpoint, &reply);
        }
        self.send_control(out, &endpoint, &snapshot);
        self.member_actions(out, actions, now);
    }

    /// Carries out what the failure detector decided.
    pub(super) fn member_actions(
        &mut self,
        out: &mut impl Outbox,
        actions: Vec<Action>,
        now: Instant,
    ) {
        for action in actions {
            match action {
                Action::Send(to, swim) => {
                    if let Some(endpoint) = self.peer_endpoint(to) {
                        self.send_control(out, &endpoint, &PeerMessage::from(swim));
                    }
                }
                Action::Connect(id, endpoints) => {
                    out.connect_peer(&endpoints);
                    let Some(peers) = &mut self.peers else {
                        continue;
                    };
                    peers.introduce(&endpoints.peer, now);
                    slog::info!(self.log, "member joined"; "member" => %id, "endpoint" => &endpoints.peer);
                }
                Action::Disconnect(id) => self.member_left(out, id, now),
                Action::Changed(id, state) => {
                    slog::info!(self.log, "member state"; "member" => %id, "state" => ?state);
                }
            }
        }
    }

    /// A member is gone: forget its catalogue, re-dispatch the steps it ran for this broker,
    /// and drop what this broker ran for it.
    fn member_left(&mut self, out: &mut impl Outbox, id: BrokerId, now: Instant) {
        let Some(peers) = &mut self.peers else { return };
        let endpoints = peers.membership.get(id).map(|m| m.endpoints.clone());
        if peers
            .membership
            .get(id)
            .is_some_and(|m| m.state != MemberState::Dead)
        {
            let mut dead = peers.membership.me();
            if let Some(m) = peers.membership.get(id) {
                dead.broker = id;
                dead.name = m.name.clone();
                dead.endpoints = m.endpoints.clone();
                dead.incarnation = m.incarnation;
            }
            dead.state = MemberState::Dead;
            let _ = peers.membership.apply(dead, now);
        }
        peers.catalogue.forget(id);
        peers.load.remove(&id);
        peers.interest_changed();
        if let Some(endpoints) = endpoints {
            out.disconnect_peer(&endpoints);
        }
        self.forget_acks_of(out, id);
        for (task, orphan) in self.scheduler.remove_peer(id) {
            self.plans.task_ended(orphan.plan, task);
            match self
                .plans
                .retry(orphan.plan, orphan.step, self.config.max_retries)
            {
                Ok(()) => {
                    if self.plans.get(orphan.plan).is_some() {
                        self.counters.tasks_retried += 1;
                        self.ready.push_back((orphan.plan, orphan.step));
                    }
                }
                Err(retries) => {
                    let Some(def) = self.plans.get(orphan.plan).map(|p| p.step(orphan.step)) else {
                        continue;
                    };
                    let failure = Failure::WorkerLost {
                        step: def.name.clone(),
                        fun: def.fun.clone(),
                        worker: format!("broker {id}"),
                        retries,
                    };
                    self.fail_plan(out, orphan.plan, failure, now);
                }
            }
        }
        for plan in self.plans.of_peer(id) {
            self.end_silently(out, plan, now);
        }
    }

    /// Ends a plan without a reply (its owner is gone or cancelled it).
    fn end_silently(&mut self, out: &mut impl Outbox, plan: PlanId, now: Instant) {
        let Some(state) = self.remove_plan(plan) else {
            return;
        };
        let mut freed = Vec::new();
        for &task in &state.tasks {
            if let Some(super::Runner::Worker(w)) = self.scheduler.cancel(out, task) {
                freed.push(w);
            }
        }
        freed.sort_unstable();
        freed.dedup();
        for worker in freed {
            self.after_task_freed(out, worker, now);
        }
    }

    /// Publishes this broker's catalogue delta if its workers or subscriptions changed.
    pub(super) fn publish_catalogue(&mut self, out: &mut impl Outbox) {
        let Some(peers) = &mut self.peers else { return };
        if !peers.dirty {
            return;
        }
        let classes = local_classes(self.scheduler.registry());
        let patterns = self.exchange.patterns();
        if let Some(delta) = peers.refresh_local(classes, patterns) {
            self.send_gossip(out, &Gossip::Catalogue(delta));
        }
    }

    /// Marks this broker's catalogue as changed.
    pub(super) fn catalogue_changed(&mut self) {
        if let Some(peers) = &mut self.peers {
            peers.dirty = true;
        }
    }

    /// The cluster's timers: failure detection, introductions to seeds, the digest.
    pub(super) fn cluster_tick(&mut self, out: &mut impl Outbox, now: Instant) {
        let Some(peers) = &mut self.peers else { return };
        let actions = peers.membership.on_tick(now);
        let mut hellos = peers.due_introductions(now);
        let rejoin = now >= peers.next_rejoin;
        if rejoin {
            peers.next_rejoin = now + peers.config.hello_interval;
        }
        let targets = if rejoin {
            peers.rejoin_targets()
        } else {
            Vec::new()
        };
        if !hellos.is_empty() || !targets.is_empty() {
            let hello = PeerMessage::Hello(peers.hello());
            for endpoint in hellos.drain(..) {
                let sent = self.send_control(out, &endpoint, &hello) == Delivery::Sent;
                if let Some(peers) = &mut self.peers {
                    peers.introduced(&endpoint, sent, now);
                }
            }
            for endpoint in targets {
                if self.send_control(out, &endpoint, &hello) != Delivery::Sent {
                    // Not connected: a connect stuck in TCP's SYN back-off (a partition drops
                    // SYNs) would only retry seconds after the heal; start afresh, and
                    // introduce this broker as soon as the new link is up.
                    out.reset_peer(&endpoint);
                    if let Some(peers) = &mut self.peers {
                        peers.introduce(&endpoint, now);
                    }
                }
            }
        }
        let Some(peers) = &mut self.peers else { return };
        if now >= peers.next_digest {
            peers.next_digest = now + peers.config.digest_interval;
            let free = self
                .scheduler
                .registry()
                .iter()
                .filter(|(_, w)| !w.draining)
                .map(|(_, w)| w.capacity.saturating_sub(w.tasks.len() as u32))
                .sum();
            let digest = mpreg_protocol::peer::Digest {
                origin: peers.config.me,
                seq: peers.local.view().seq,
                free,
            };
            self.send_gossip(out, &Gossip::Digest(digest));
        }
        self.member_actions(out, actions, now);
        self.publish_catalogue(out);
        self.cluster_ack_tick(out, now);
    }

    /// Says goodbye to every member (graceful shutdown).
    pub fn leave_cluster(&mut self, out: &mut impl Outbox) {
        let Some(peers) = &self.peers else { return };
        let bye = PeerMessage::Bye(Bye {
            broker: peers.config.me,
            reason: "shutting down".into(),
        });
        for (_, m) in peers.membership.members() {
            if m.state != MemberState::Dead {
                let _ = out.to_peer(&m.endpoints.peer, Link::Control, &bye);
            }
        }
    }

    /// Sends on a peer's control link, counting the bytes (`peer_control_bytes_sent`).
    pub(super) fn send_control(
        &mut self,
        out: &mut impl Outbox,
        endpoint: &str,
        message: &PeerMessage,
    ) -> Delivery {
        let delivery = out.to_peer(endpoint, Link::Control, message);
        if delivery == Delivery::Sent {
            self.counters.peer_control_bytes_sent += message.encode_body().len() as u64;
        }
        delivery
    }

    /// Publishes on the gossip socket, counting the bytes (`gossip_bytes_sent`, once per
    /// message: the PUB copies it to every member).
    fn send_gossip(&mut self, out: &mut impl Outbox, message: &Gossip) {
        self.counters.gossip_bytes_sent += message.encode_body().len() as u64;
        out.gossip(message);
    }

    pub(super) fn peer_endpoint(&self, id: BrokerId) -> Option<String> {
        self.peers.as_ref()?.endpoint_of(id).map(str::to_string)
    }

    pub(super) fn peer_name(&self, id: BrokerId) -> String {
        self.peers
            .as_ref()
            .and_then(|p| p.membership.get(id))
            .map_or_else(|| id.to_string(), |m| m.name.clone())
    }
}

impl Engine {
    /// This broker's capability classes.
    pub(super) fn own_classes(&self) -> Vec<Capability> {
        local_classes(self.scheduler.registry())
    }
}

/// This broker's capability classes: its workers grouped by function and exact resource set,
/// capacities summed (draining workers left out).
fn local_classes(registry: &crate::registry::Registry) -> Vec<Capability> {
    let mut classes: BTreeMap<(String, String, Vec<String>), u32> = BTreeMap::new();
    for (_, w) in registry.iter().filter(|(_, w)| !w.draining) {
        let mut resources: Vec<String> = w.resources.iter().cloned().collect();
        resources.sort();
        for fun in &w.functions {
            let key = (fun.clone(), w.version(fun).to_string(), resources.clone());
            *classes.entry(key).or_default() += w.capacity;
        }
    }
    classes
        .into_iter()
        .map(|((fun, version, resources), capacity)| Capability {
            fun,
            version,
            resources,
            capacity,
        })
        .collect()
}
