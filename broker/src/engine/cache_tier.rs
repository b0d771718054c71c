//! The cache's cluster tier (opt-in, `[cache] cluster_tier`): every key has one owner among
//! the cluster's live members, chosen by rendezvous hashing (the member whose id scores
//! highest with the key's stable digest), so every broker that agrees on the membership agrees
//! on the owner and a member leaving moves only its own keys.
//!
//! - A step that misses the local cache, whose key another member owns, asks the owner
//!   (`cache_get`) and waits at most `cluster_tier_timeout_ms`; a hit records the result, a
//!   miss or silence sends the step on as a local miss (it leads, follows or runs alone).
//! - A result led here whose key another member owns is stored here and handed to the owner
//!   (`cache_put`), which keeps it for everyone.
//! - The owner answers `cache_get` from its own cache.
//!
//! Dependency links stay within one broker: an entry kept for another broker links to
//! nothing, so a transitive invalidation reaches it only by its tag or function (which every
//! member applies). Time to live travels with the result.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mpreg_protocol::{BrokerId, CacheGet, CachePut, CacheValue, PeerMessage, PlanId, Value};

use super::caching::{Part, CACHE_WORKER};
use super::plans::StepIx;
use super::Engine;
use crate::cache::{value_footprint, CacheKey, Fill, Flight};
use crate::outbox::{Delivery, Link, Outbox};

/// Lookups waiting for their owner's answer.
#[derive(Debug, Default)]
pub struct TierLookups {
    next: u64,
    pending: BTreeMap<u64, Lookup>,
}

#[derive(Debug)]
struct Lookup {
    plan: PlanId,
    step: StepIx,
    key: CacheKey,
    deadline: Instant,
}

impl TierLookups {
    /// When the oldest lookup gives up.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|l| l.deadline).min()
    }
}

/// A well-mixed 64-bit function (splitmix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A member's score for a key: the highest owns it.
fn score(member: BrokerId, digest: u64) -> u64 {
    let id = member.to_u128();
    mix(digest ^ mix(id as u64 ^ mix((id >> 64) as u64)))
}

impl Engine {
    /// The peer endpoint of the member owning `key`, when the cluster tier is on, this broker
    /// is in a cluster and another member owns it.
    fn tier_owner(&self, key: &CacheKey) -> Option<String> {
        if !self.cache.as_ref()?.config().cluster_tier {
            return None;
        }
        let peers = self.peers.as_ref()?;
        let digest = key.stable_digest();
        let me = peers.config.me;
        let mut best = (score(me, digest), me);
        for (id, _) in peers.membership.members() {
            if peers.membership.is_reachable(id) {
                best = best.max((score(id, digest), id));
            }
        }
        if best.1 == me {
            return None;
        }
        peers.endpoint_of(best.1).map(str::to_string)
    }

    /// After a local miss in `use` mode: asks the key's owner when another member owns it.
    /// True when the step now waits for the answer.
    pub(super) fn tier_lookup(
        &mut self,
        out: &mut impl Outbox,
        plan: PlanId,
        step: StepIx,
        key: &CacheKey,
        now: Instant,
    ) -> bool {
        let Some(owner) = self.tier_owner(key) else {
            return false;
        };
        let timeout = self
            .cache
            .as_ref()
            .map_or(0, |c| c.config().cluster_tier_timeout_ms);
        let tier = &mut self.tier;
        tier.next += 1;
        let gid = tier.next;
        let ask = PeerMessage::CacheGet(CacheGet {
            gid,
            key: key.to_wire(),
        });
        if out.to_peer(&owner, Link::Data, &ask) != Delivery::Sent {
            return false;
        }
        tier.pending.insert(
            gid,
            Lookup {
                plan,
                step,
                key: key.clone(),
                deadline: now + Duration::from_millis(timeout),
            },
        );
        self.counters.cache_remote_lookups += 1;
        self.set_part(plan, step, key.clone(), Part::Remote);
        true
    }

    /// The owner's answer to a lookup.
    pub(super) fn on_cache_value(
        &mut self,
        out: &mut impl Outbox,
        answer: CacheValue,
        now: Instant,
    ) {
        let Some(lookup) = self.tier.pending.remove(&answer.gid) else {
            return; // Given up on already.
        };
        if !answer.hit {
            self.counters.cache_remote_misses += 1;
            return self.tier_missed(lookup, now);
        }
        self.counters.cache_remote_hits += 1;
        let Some(c) = self
            .plans
            .get_mut(lookup.plan)
            .and_then(|st| st.cache.get_mut(&lookup.step))
        else {
            return; // The plan ended meanwhile.
        };
        c.part = Part::Done;
        let bytes = value_footprint(&answer.value);
        self.record_step(
            out,
            lookup.plan,
            lookup.step,
            answer.value,
            bytes,
            CACHE_WORKER.into(),
            0,
            now,
        );
    }

    /// Lookups whose owner did not answer in time continue as local misses.
    pub(super) fn tier_timeouts(&mut self, now: Instant) {
        while let Some((&gid, _)) = self
            .tier
            .pending
            .iter()
            .find(|(_, lookup)| lookup.deadline <= now)
        {
            if let Some(lookup) = self.tier.pending.remove(&gid) {
                self.counters.cache_remote_timeouts += 1;
                self.tier_missed(lookup, now);
            }
        }
    }

    /// The owner does not have it: the step goes on as a local miss.
    fn tier_missed(&mut self, lookup: Lookup, _now: Instant) {
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        let Some(state) = self.plans.get_mut(lookup.plan) else {
            return;
        };
        if state.is_done(lookup.step) {
            return;
        }
        let part = match cache.begin(&lookup.key, (lookup.plan, lookup.step)) {
            Flight::Lead => Part::Lead,
            Flight::Follow => Part::Follow,
            Flight::Crowded => Part::Alone,
        };
        if let Some(c) = state.cache.get_mut(&lookup.step) {
            c.part = part;
        }
        if part != Part::Follow {
            self.ready.push_back((lookup.plan, lookup.step));
        }
    }

    /// A result led here: its owner gets it too.
    pub(super) fn tier_put(
        &mut self,
        out: &mut impl Outbox,
        key: &CacheKey,
        value: &Value,
        fill: &Fill,
    ) {
        let Some(owner) = self.tier_owner(key) else {
            return;
        };
        let put = PeerMessage::CachePut(CachePut {
            key: key.to_wire(),
            value: value.clone(),
            ttl_ms: fill.ttl.map(|t| t.as_millis() as u64),
            tags: fill.tags.clone(),
        });
        if out.to_peer(&owner, Link::Data, &put) == Delivery::Sent {
            self.counters.cache_remote_puts += 1;
        }
    }

    /// A member asks whether this broker, the owner, holds a result.
    pub(super) fn on_cache_get(
        &mut self,
        out: &mut impl Outbox,
        from: BrokerId,
        ask: CacheGet,
        now: Instant,
    ) {
        let Some(endpoint) = self
            .peers
            .as_ref()
            .and_then(|p| p.endpoint_of(from))
            .map(str::to_string)
        else {
            return;
        };
        let key = CacheKey::from_wire(&ask.key);
        let found = self.cache.as_mut().and_then(|c| c.get(&key, now).cloned());
        self.counters.cache_remote_served += u64::from(found.is_some());
        let answer = PeerMessage::CacheValue(CacheValue {
            gid: ask.gid,
            hit: found.is_some(),
            value: found.unwrap_or(Value::Nil),
        });
        let _ = out.to_peer(&endpoint, Link::Data, &answer);
    }

    /// A member hands this broker, the owner, a result.
    pub(super) fn on_cache_put(&mut self, put: CachePut, now: Instant) {
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        let fill = Fill {
            ttl: put.ttl_ms.map(Duration::from_millis),
            tags: put.tags,
            parents: Vec::new(),
        };
        cache.insert(CacheKey::from_wire(&put.key), put.value, fill, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_spread_and_only_a_leaving_owner_moves_keys() {
        let members: Vec<BrokerId> = (1..=5u128)
            .map(|i| BrokerId(ulid::Ulid(i << 70 | 0x1234)))
            .collect();
        let owner = |digest: u64, of: &[BrokerId]| {
            of.iter()
                .copied()
                .max_by_key(|&m| (score(m, digest), m))
                .unwrap()
        };
        let mut counts = BTreeMap::new();
        let mut moved = 0;
        for k in 0..5000u64 {
            let digest = mix(k);
            let before = owner(digest, &members);
            *counts.entry(before).or_insert(0) += 1;
            let after = owner(digest, &members[1..]);
            if before != members[0] {
                assert_eq!(before, after, "a key moved though its owner stayed");
            } else {
                moved += 1;
            }
        }
        // Each of 5 members owns about a fifth.
        for (_, n) in counts {
            assert!((700..1300).contains(&n), "{n}");
        }
        assert!((700..1300).contains(&moved));
    }
}
