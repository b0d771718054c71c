//! The result cache in the flow of plans (design section 4; issue 13). The cache itself is
//! [`crate::cache`], pure; this plane decides when a step uses it:
//!
//! - a ready step of a function every local worker declared cacheable, whose mode is not
//!   `bypass`, gets its key once its references are resolved (the access rules were checked
//!   when the plan was admitted, for every step, so a hit never skips them);
//! - `use`: a hit records the result at once (progress names the worker `cache`); on a miss
//!   the step leads the call (placed as usual), follows an identical call in flight (waits for
//!   its outcome), or runs alone when too many already wait;
//! - `refresh` skips the lookup and leads (or follows) a fresh call, whose result replaces the
//!   entry;
//! - a leader's result is stored with the declared time to live and tags, and linked to the
//!   cached results its references read (so invalidating one drops what was computed from it)
//!   and handed to its followers; a worker's failure is handed to them too (nothing is
//!   stored); a leader whose plan ends without an outcome promotes its oldest follower.
//!
//! Invalidation by tag or function comes from clients (`cache_invalidate`) and is spread to
//! the cluster's other brokers (`cache_drop`), which apply it without spreading it further.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mpreg_protocol::peer::MemberState;
use mpreg_protocol::{
    BrokerToClient, CacheDrop, CacheInvalidate, CacheInvalidated, CacheMode, CacheStatsReply,
    ErrorCode, PeerMessage, PlanId, Value,
};

pub use super::cache_parts::{Part, StepCache};
use super::failure::Failure;
use super::plans::StepIx;
use super::Engine;
use crate::cache::{value_footprint, Cache, CacheKey, Fill, Flight, Left, PolicyKind};
use crate::outbox::{ClientAddr, Link, Outbox};

/// Who waits on a cached call: a step of a plan.
pub type Waiter = (PlanId, StepIx);

/// The broker's cache, keyed for steps.
pub type StepResults = Cache<Waiter>;

/// What the worker name of a progress event says for a result the cache gave.
pub const CACHE_WORKER: &str = "cache";

impl Engine {
    /// Before a ready step is placed: true when the cache took it (a hit recorded its result,
    /// or it waits for an identical call in flight).
    pub(super) fn cache_before_placing(
        &mut self,
        out: &mut impl Outbox,
        plan: PlanId,
        step: StepIx,
        now: Instant,
    ) -> bool {
        let Some(cache) = self.cache.as_mut() else {
            return false;
        };
        let Some(state) = self.plans.get(plan) else {
            return false;
        };
        if state.cache.contains_key(&step) {
            // It has its part already (a leader placed again after its worker died, or a
            // promoted follower): placed as usual.
            return false;
        }
        let def = state.step(step);
        let mode = def.cache.unwrap_or_default();
        if mode == CacheMode::Bypass || self.scheduler.registry().cache_rule(&def.fun).is_none() {
            return false;
        }
        // Arguments that do not resolve or are too large fail when the task is built.
        let Ok(args) = state.task_args(step, &self.config.limits) else {
            return false;
        };
        let Ok(key) = CacheKey::new(
            &def.fun,
            def.version.as_deref(),
            &def.locs,
            &args.args,
            &args.kwargs,
        ) else {
            return false;
        };
        drop(args);
        if mode == CacheMode::Use {
            if let Some(value) = cache.get(&key, now).cloned() {
                self.set_part(plan, step, key, Part::Done);
                let bytes = value_footprint(&value);
                self.record_step(out, plan, step, value, bytes, CACHE_WORKER.into(), 0, now);
                return true;
            }
            if self.tier_lookup(out, plan, step, &key, now) {
                return true;
            }
        }
        let Some(cache) = self.cache.as_mut() else {
            return false;
        };
        let (part, taken) = match cache.begin(&key, (plan, step)) {
            Flight::Lead => (Part::Lead, false),
            Flight::Follow => (Part::Follow, true),
            Flight::Crowded => (Part::Alone, false),
        };
        self.set_part(plan, step, key, part);
        taken
    }

    pub(super) fn set_part(&mut self, plan: PlanId, step: StepIx, key: CacheKey, part: Part) {
        if let Some(state) = self.plans.get_mut(plan) {
            state.cache.insert(step, StepCache { key, part });
        }
    }

    /// A step's call returned `value`: when the step led its key, the result is stored (with
    /// the time to live and tags its workers declared, linked to the cached results it read)
    /// and handed to the steps that waited on it.
    pub(super) fn cache_result(
        &mut self,
        out: &mut impl Outbox,
        plan: PlanId,
        step: StepIx,
        value: &Value,
        now: Instant,
    ) {
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        let Some(state) = self.plans.get_mut(plan) else {
            return;
        };
        let Some(mine) = state.cache.get_mut(&step) else {
            return;
        };
        if mine.part != Part::Lead {
            return;
        }
        mine.part = Part::Done;
        let key = mine.key.clone();
        let parents: Vec<CacheKey> = state
            .deps(step)
            .iter()
            .filter_map(|d| state.cache.get(d))
            .filter(|c| c.part == Part::Done)
            .map(|c| c.key.clone())
            .collect();
        let rule = self.scheduler.registry().cache_rule(&state.step(step).fun);
        let followers = match rule {
            Some(rule) => {
                let fill = Fill {
                    ttl: rule.ttl_ms.map(Duration::from_millis),
                    tags: rule.tags,
                    parents,
                };
                let tier_fill = Fill {
                    parents: Vec::new(),
                    ..fill.clone()
                };
                let followers = cache
                    .complete(&key, &(plan, step), value.clone(), fill, now)
                    .followers;
                self.tier_put(out, &key, value, &tier_fill);
                followers
            }
            // No longer cacheable here (its workers changed): shared, not stored.
            None => cache.fail(&key, &(plan, step)),
        };
        let bytes = value_footprint(value);
        for (p, s) in followers {
            if let Some(c) = self.plans.get_mut(p).and_then(|st| st.cache.get_mut(&s)) {
                c.part = Part::Done;
            }
            let done = self.plans.get(p).is_none_or(|st| st.is_done(s));
            if !done {
                self.record_step(out, p, s, value.clone(), bytes, CACHE_WORKER.into(), 0, now);
            }
        }
    }

    /// A step's call failed on its worker: when the step led its key, the steps that waited
    /// on it fail the same way (their plans end with the failure, naming their own step).
    pub(super) fn cache_failure(
        &mut self,
        out: &mut impl Outbox,
        plan: PlanId,
        step: StepIx,
        failure: &Failure,
        now: Instant,
    ) {
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        let Some(mine) = self
            .plans
            .get_mut(plan)
            .and_then(|st| st.cache.get_mut(&step))
        else {
            return;
        };
        if mine.part != Part::Lead {
            return;
        }
        // Not stored, and no longer in flight: later steps reading it link to nothing.
        mine.part = Part::Alone;
        let key = mine.key.clone();
        for (p, s) in cache.fail(&key, &(plan, step)) {
            let Some(name) = self.plans.get(p).map(|st| st.step(s).name.clone()) else {
                continue;
            };
            if let Some(c) = self.plans.get_mut(p).and_then(|st| st.cache.get_mut(&s)) {
                c.part = Part::Alone;
            }
            self.fail_plan(out, p, failure.for_step(&name), now);
        }
    }

    /// A plan ended: its steps leave the calls they led or waited on; a call it led and others
    /// wait on goes to the oldest of them, which is placed.
    pub(super) fn cache_plan_ended(&mut self, plan: PlanId, steps: &BTreeMap<StepIx, StepCache>) {
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        for (&step, c) in steps {
            if !matches!(c.part, Part::Lead | Part::Follow) {
                continue;
            }
            if let Left::Promoted((p, s)) = cache.leave(&c.key, &(plan, step)) {
                if let Some(promoted) = self.plans.get_mut(p).and_then(|st| st.cache.get_mut(&s)) {
                    promoted.part = Part::Lead;
                }
                self.ready.push_back((p, s));
            }
        }
    }

    /// Removes expired entries (bounded), once a second.
    pub(super) fn cache_sweep(&mut self, now: Instant) {
        if let Some(cache) = self.cache.as_mut() {
            cache.sweep(now);
        }
    }

    /// `cache_stats`.
    pub(super) fn cache_stats(&self, id: u64) -> BrokerToClient {
        let (enabled, policy, max_bytes) = match &self.cache {
            Some(c) => {
                let config = c.config();
                let policy = match config.policy {
                    PolicyKind::Lru => "lru",
                    PolicyKind::S4lru => "s4lru",
                };
                (true, policy, config.max_bytes as u64)
            }
            None => (false, "", 0),
        };
        BrokerToClient::CacheStats(CacheStatsReply {
            id,
            broker: self.config.name.clone(),
            enabled,
            policy: policy.into(),
            entries: self.cache_gauge("entries"),
            bytes: self.cache_gauge("bytes"),
            max_bytes,
            flights: self.cache_gauge("flights"),
            counters: self.cache_counters().into_iter().collect(),
        })
    }

    /// The cache's counters, by name (empty without a cache).
    pub(super) fn cache_counters(&self) -> Vec<(String, u64)> {
        let Some(cache) = &self.cache else {
            return Vec::new();
        };
        let c = cache.counters();
        [
            ("hits", c.hits),
            ("misses", c.misses),
            ("insertions", c.insertions),
            ("too_large", c.too_large),
            ("stale", c.stale),
            ("shared", c.shared),
            ("crowded", c.crowded),
            ("evictions_capacity", c.evictions.capacity),
            ("evictions_ttl", c.evictions.ttl),
            ("evictions_invalidation", c.evictions.invalidation),
            ("invalidations", self.counters.cache_invalidations),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// One of the cache's gauges: `entries`, `bytes`, `flights`, `followers`.
    pub(super) fn cache_gauge(&self, name: &str) -> u64 {
        let Some(cache) = &self.cache else {
            return 0;
        };
        let g = cache.gauges();
        (match name {
            "entries" => g.entries,
            "bytes" => g.bytes,
            "flights" => g.flights,
            "followers" => g.followers,
            _ => 0,
        }) as u64
    }

    /// `cache_invalidate`: drops the entries here and tells the other members.
    pub(super) fn cache_invalidate(
        &mut self,
        out: &mut impl Outbox,
        client: &ClientAddr,
        request: CacheInvalidate,
    ) {
        let (tag, fun) = match (request.tag, request.fun) {
            (Some(tag), None) => (Some(tag), None),
            (None, Some(fun)) => (None, Some(fun)),
            _ => {
                let failure = Failure::Decode {
                    code: ErrorCode::InvalidBody,
                    message: "cache_invalidate needs exactly one of `tag` and `fun`".into(),
                    path: None,
                };
                return self.reply_error(out, client, Some(request.id), failure);
            }
        };
        let entries = self.drop_cached(tag.as_deref(), fun.as_deref());
        let mut peers = 0;
        if let Some(cluster) = &self.peers {
            let message = PeerMessage::CacheDrop(CacheDrop { tag, fun });
            for (_, m) in cluster.membership.members() {
                if m.state != MemberState::Dead {
                    let _ = out.to_peer(&m.endpoints.peer, Link::Control, &message);
                    peers += 1;
                }
            }
        }
        let reply = BrokerToClient::CacheInvalidated(CacheInvalidated {
            id: request.id,
            entries: entries as u64,
            peers,
        });
        self.reply(out, client, &reply);
    }

    /// `cache_drop` from a peer: the same invalidation, here only.
    pub(super) fn on_cache_drop(&mut self, drop: CacheDrop) {
        self.drop_cached(drop.tag.as_deref(), drop.fun.as_deref());
    }

    fn drop_cached(&mut self, tag: Option<&str>, fun: Option<&str>) -> usize {
        let Some(cache) = self.cache.as_mut() else {
            return 0;
        };
        self.counters.cache_invalidations += 1;
        match (tag, fun) {
            (Some(tag), _) => cache.invalidate_tag(tag),
            (None, Some(fun)) => cache.invalidate_function(fun),
            (None, None) => 0,
        }
    }
}
