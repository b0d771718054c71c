//! The peer plane: this broker's place in its cluster. It owns the membership (who is alive),
//! the catalogue (what every member can run and which topics its subscribers want), this
//! broker's own catalogue entry, and the timers of introductions and digests. It knows
//! nothing of plans or workers: the engine asks it where a step could go and which peers want
//! a topic, and feeds it what arrives from peers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use mpreg_protocol::peer::{Capability, CatalogueDelta, Hello, MemberState, PeerEndpoints};
use mpreg_protocol::BrokerId;

use super::cluster_acks::PendingAck;
use crate::cluster::catalogue::{Catalogue, Local};
use crate::cluster::membership::{Membership, SwimConfig};
use crate::matcher::Matcher;
use crate::versions::Requirement;

/// The first retry of a `hello` that could not be sent (its link was still connecting).
pub const FIRST_RETRY: Duration = Duration::from_millis(10);

/// A broker's cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The cluster's name: brokers of another cluster are refused.
    pub cluster: String,
    /// This broker's incarnation id (a ULID minted at start).
    pub me: BrokerId,
    /// Where this broker listens (the peer and gossip endpoints included).
    pub endpoints: PeerEndpoints,
    /// Peer endpoints of seed brokers, introduced to at start and until they answer.
    pub seeds: Vec<String>,
    /// The failure detector's timing.
    pub swim: SwimConfig,
    /// How often this broker publishes its digest (latest catalogue change and load).
    pub digest_interval: Duration,
    /// How often this broker introduces itself again to the seeds and the dead members it has
    /// no live member at (so that the two sides of a healed partition find each other).
    pub hello_interval: Duration,
    /// Longest wait of a `subscribe` with `cluster_ack` for a peer's acknowledgement (a peer
    /// still silent then is counted unreachable and the reply goes out).
    pub ack_timeout: Duration,
}

impl ClusterConfig {
    /// Defaults for everything but identity and endpoints.
    pub fn new(
        cluster: String,
        me: BrokerId,
        endpoints: PeerEndpoints,
        seeds: Vec<String>,
    ) -> Self {
        ClusterConfig {
            cluster,
            me,
            endpoints,
            seeds,
            swim: SwimConfig::default(),
            digest_interval: Duration::from_millis(500),
            hello_interval: Duration::from_millis(500),
            ack_timeout: Duration::from_secs(5),
        }
    }
}

/// The peer plane's state.
pub struct Peers {
    /// Settings.
    pub config: ClusterConfig,
    /// Who is in the cluster.
    pub membership: Membership,
    /// What the others can run and want.
    pub catalogue: Catalogue,
    /// What this broker can run and wants.
    pub local: Local,
    /// Peer endpoints this broker must introduce itself to: each with when to try next and
    /// the back-off after a `hello` that could not be sent (the link was not connected yet).
    pub introductions: BTreeMap<String, (Instant, Duration)>,
    /// When to introduce this broker again to seeds and dead members ([`Peers::rejoin_targets`]).
    pub next_rejoin: Instant,
    /// When to publish the next digest.
    pub next_digest: Instant,
    /// The catalogue changed locally since it was last published.
    pub dirty: bool,
    /// Free task slots each peer last announced (its digest): the load placement compares.
    pub load: BTreeMap<BrokerId, u32>,
    /// This broker's last catalogue delta (sent again on the control link to peers that must
    /// acknowledge it).
    pub last_delta: Option<CatalogueDelta>,
    /// The highest sequence number of this broker's catalogue each peer acknowledged.
    pub acked: BTreeMap<BrokerId, u64>,
    /// `subscribed` replies waiting for the peers' acknowledgements.
    pub pending_acks: Vec<PendingAck>,
    /// Every peer's patterns, keyed by the peer's position in `interest_owners`.
    interest: Matcher,
    interest_owners: Vec<BrokerId>,
    interest_stale: bool,
    rotation: usize,
}

impl Peers {
    /// A cluster of one, about to introduce itself to its seeds.
    pub fn new(config: ClusterConfig, name: String, seed: u64, now: Instant) -> Peers {
        let membership = Membership::new(
            config.me,
            name,
            config.endpoints.clone(),
            config.swim.clone(),
            seed,
            now,
        );
        Peers {
            introductions: config
                .seeds
                .iter()
                .filter(|s| **s != config.endpoints.peer)
                .map(|s| (s.clone(), (now, FIRST_RETRY)))
                .collect(),
            next_rejoin: now + config.hello_interval,
            next_digest: now + config.digest_interval,
            config,
            membership,
            catalogue: Catalogue::default(),
            local: Local::default(),
            dirty: true,
            load: BTreeMap::new(),
            last_delta: None,
            acked: BTreeMap::new(),
            pending_acks: Vec::new(),
            interest: Matcher::new(),
            interest_owners: Vec::new(),
            interest_stale: false,
            rotation: 0,
        }
    }

    /// This broker's `hello` (also the body of `welcome`).
    pub fn hello(&self) -> Hello {
        Hello {
            cluster: self.config.cluster.clone(),
            me: self.membership.me(),
            members: self
                .membership
                .updates()
                .into_iter()
                .filter(|u| u.broker != self.config.me)
                .collect(),
        }
    }

    /// The peer endpoint of a member, if it is one and not dead.
    pub fn endpoint_of(&self, id: BrokerId) -> Option<&str> {
        self.membership
            .get(id)
            .filter(|m| m.state != MemberState::Dead)
            .map(|m| m.endpoints.peer.as_str())
    }

    /// The peers that can run a step of `fun` (version, resources), best first: alive (or
    /// merely suspected) members whose catalogue has a matching class, the least loaded
    /// first (most free slots in their last digest; their class's capacity before any
    /// digest), rotating among equals; `exclude` are peers already tried for this step.
    pub fn candidates(
        &mut self,
        fun: &str,
        version: Option<&Requirement>,
        locs: &[String],
        exclude: &[BrokerId],
    ) -> Vec<BrokerId> {
        let mut found: Vec<(BrokerId, u32)> = self
            .catalogue
            .serving(fun, version, locs)
            .into_iter()
            .filter(|(id, _)| self.membership.is_reachable(*id) && !exclude.contains(id))
            .map(|(id, capacity)| (id, self.load.get(&id).copied().unwrap_or(capacity)))
            .collect();
        if found.is_empty() {
            return Vec::new();
        }
        self.rotation = self.rotation.wrapping_add(1);
        let n = found.len();
        found.rotate_left(self.rotation % n);
        // Stable: equals keep the rotated order.
        found.sort_by_key(|&(_, free)| std::cmp::Reverse(free));
        found.into_iter().map(|(id, _)| id).collect()
    }

    /// Applies a catalogue change of this broker's own: the delta to publish, if any.
    pub fn refresh_local(
        &mut self,
        classes: Vec<Capability>,
        patterns: BTreeSet<String>,
    ) -> Option<CatalogueDelta> {
        self.dirty = false;
        let delta = self.local.update(self.config.me, classes, patterns);
        if let Some(delta) = &delta {
            self.last_delta = Some(delta.clone());
        }
        delta
    }

    /// The peers whose subscribers want `topic`, in id order.
    pub fn interested(&mut self, topic: &str) -> Vec<BrokerId> {
        if self.interest_stale {
            self.rebuild_interest();
        }
        let mut keys = Vec::new();
        self.interest.matches(topic, &mut keys);
        let mut peers: Vec<BrokerId> = keys
            .into_iter()
            .filter_map(|k| self.interest_owners.get(k as usize).copied())
            .filter(|id| self.membership.is_reachable(*id))
            .collect();
        peers.sort_unstable();
        peers.dedup();
        peers
    }

    /// The catalogue changed: the topic interest index is rebuilt on next use.
    pub fn interest_changed(&mut self) {
        self.interest_stale = true;
    }

    fn rebuild_interest(&mut self) {
        self.interest = Matcher::new();
        self.interest_owners.clear();
        for (id, view) in self.catalogue.views() {
            let key = self.interest_owners.len() as u64;
            self.interest_owners.push(id);
            for pattern in &view.patterns {
                self.interest.insert(pattern, key);
            }
        }
        self.interest_stale = false;
    }

    /// Introduces this broker to `endpoint` as soon as its link is up.
    pub fn introduce(&mut self, endpoint: &str, now: Instant) {
        if endpoint != self.config.endpoints.peer {
            self.introductions
                .entry(endpoint.to_string())
                .or_insert((now, FIRST_RETRY));
        }
    }

    /// The introductions due now (their endpoints).
    pub fn due_introductions(&self, now: Instant) -> Vec<String> {
        self.introductions
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(e, _)| e.clone())
            .collect()
    }

    /// What became of a `hello` to `endpoint`: sent (the introduction is done), or not (the
    /// link is not connected yet: tried again after a back-off doubling up to the hello
    /// interval).
    pub fn introduced(&mut self, endpoint: &str, sent: bool, now: Instant) {
        if sent {
            self.introductions.remove(endpoint);
        } else if let Some((at, backoff)) = self.introductions.get_mut(endpoint) {
            *at = now + *backoff;
            *backoff = (*backoff * 2).min(self.config.hello_interval);
        }
    }

    /// The peer endpoints to introduce this broker to again, every hello interval: seeds and
    /// members held dead, where no member is alive (or suspect) now. A partition's two sides
    /// learn of its heal this way (a member cut off refutes its death once it hears of it).
    pub fn rejoin_targets(&self) -> Vec<String> {
        let live: BTreeSet<&str> = self
            .membership
            .members()
            .filter(|(_, m)| m.state != MemberState::Dead)
            .map(|(_, m)| m.endpoints.peer.as_str())
            .collect();
        let dead = self
            .membership
            .members()
            .filter(|(_, m)| m.state == MemberState::Dead)
            .map(|(_, m)| m.endpoints.peer.as_str());
        let mut targets: BTreeSet<&str> = self
            .config
            .seeds
            .iter()
            .map(String::as_str)
            .chain(dead)
            .filter(|e| !live.contains(e) && *e != self.config.endpoints.peer)
            .collect();
        targets.retain(|e| !e.is_empty());
        targets.into_iter().map(str::to_string).collect()
    }

    /// When the plane next needs the clock.
    pub fn next_deadline(&self) -> Instant {
        let next = self
            .membership
            .next_deadline()
            .min(self.next_digest)
            .min(self.next_rejoin);
        self.introductions
            .values()
            .map(|(at, _)| *at)
            .chain(self.pending_acks.iter().map(PendingAck::next_deadline))
            .fold(next, Instant::min)
    }
}
