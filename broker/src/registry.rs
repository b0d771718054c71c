//! The worker registry: who serves what, with which resources, how loaded (rule 5). The
//! choice among them is [`crate::placement`]'s; this module keeps the facts.
//!
//! Every registration gets a fresh [`WorkerId`], never reused: a message about a worker that
//! is gone can never land on another one.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Instant;

use mpreg_protocol::{CacheRule, TaskId, WorkerId};

use crate::fast_hash::FastMap;
use crate::outbox::{RoutingId, WorkerAddr};
use crate::placement::{place, Candidate, Placement, Pool};
use crate::versions::{matches_version, Requirement};

/// One registered worker.
#[derive(Debug)]
pub struct Worker {
    /// Where it is.
    pub addr: WorkerAddr,
    /// The node's name, as it registered.
    pub name: String,
    /// Functions it serves, sorted.
    pub functions: Vec<String>,
    /// Resources it holds.
    pub resources: HashSet<String>,
    /// Versions of its functions (a function not listed has none).
    pub versions: BTreeMap<String, String>,
    /// Tasks it may run at once.
    pub capacity: u32,
    /// Tasks sent to it and not yet answered, in dispatch order.
    pub tasks: BTreeSet<TaskId>,
    /// When it was last heard from.
    pub last_seen: Instant,
    /// It said it is shutting down: no new tasks.
    pub draining: bool,
    /// Its authenticated CURVE key (Z85), when the broker runs CURVE.
    pub key: Option<String>,
    /// Functions it declared cacheable, with their rules.
    pub cacheable: BTreeMap<String, CacheRule>,
}

impl Worker {
    /// Whether it holds every resource in `locs`.
    pub fn holds(&self, locs: &[String]) -> bool {
        locs.iter().all(|l| self.resources.contains(l))
    }

    /// The version it registered `fun` with (empty: none).
    pub fn version(&self, fun: &str) -> &str {
        self.versions.get(fun).map_or("", String::as_str)
    }

    /// Whether it can take another task now.
    pub fn has_room(&self) -> bool {
        !self.draining && (self.tasks.len() as u64) < u64::from(self.capacity)
    }
}

/// What a worker registers with.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Its connection.
    pub addr: WorkerAddr,
    /// Its name.
    pub name: String,
    /// Functions it serves.
    pub functions: Vec<String>,
    /// Resources it holds.
    pub resources: Vec<String>,
    /// Versions of its functions.
    pub versions: BTreeMap<String, String>,
    /// Capacity granted.
    pub capacity: u32,
    /// Its CURVE key.
    pub key: Option<String>,
    /// Functions it declared cacheable.
    pub cacheable: BTreeMap<String, CacheRule>,
}

/// All workers of one broker.
#[derive(Debug, Default)]
pub struct Registry {
    workers: BTreeMap<WorkerId, Worker>,
    by_routing: FastMap<RoutingId, WorkerId>,
    by_fun: FastMap<String, Vec<WorkerId>>,
    /// Workers that declared at least one function cacheable.
    caching_workers: usize,
    next: u64,
    rotation: usize,
}

impl Registry {
    /// Adds a worker, or replaces the registration of one that registers again on the same
    /// connection (it keeps its id and its outstanding tasks). Returns its id.
    pub fn register(&mut self, registration: Registration, now: Instant) -> WorkerId {
        let known = self.by_routing.get(&registration.addr.routing).copied();
        let (id, tasks) = match known.and_then(|id| self.remove(id).map(|w| (id, w.tasks))) {
            Some(kept) => kept,
            None => {
                self.next += 1;
                (WorkerId(self.next), BTreeSet::new())
            }
        };
        let mut functions = registration.functions;
        functions.sort();
        functions.dedup();
        for fun in &functions {
            self.by_fun.entry(fun.clone()).or_default().push(id);
        }
        self.by_routing
            .insert(registration.addr.routing.clone(), id);
        self.workers.insert(
            id,
            Worker {
                addr: registration.addr,
                name: registration.name,
                functions,
                resources: registration.resources.into_iter().collect(),
                versions: registration.versions,
                capacity: registration.capacity.max(1),
                tasks,
                last_seen: now,
                draining: false,
                key: registration.key,
                cacheable: registration.cacheable,
            },
        );
        if self
            .workers
            .get(&id)
            .is_some_and(|w| !w.cacheable.is_empty())
        {
            self.caching_workers += 1;
        }
        id
    }

    /// How results of `fun` may be cached here: only when every worker serving it declared
    /// it cacheable (the shortest time to live wins, tags are merged); `None` otherwise, or
    /// when no worker serves it. Cheap when no worker declared anything cacheable.
    pub fn cache_rule(&self, fun: &str) -> Option<CacheRule> {
        if self.caching_workers == 0 {
            return None;
        }
        let ids = self.by_fun.get(fun)?;
        let mut merged: Option<CacheRule> = None;
        for id in ids {
            let rule = self.workers.get(id)?.cacheable.get(fun)?;
            let m = merged.get_or_insert_with(|| CacheRule {
                ttl_ms: rule.ttl_ms,
                tags: Vec::new(),
            });
            m.ttl_ms = match (m.ttl_ms, rule.ttl_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            m.tags.extend(rule.tags.iter().cloned());
        }
        if let Some(m) = merged.as_mut() {
            m.tags.sort();
            m.tags.dedup();
        }
        merged
    }

    /// Removes a worker and returns it (with the tasks it still had).
    pub fn remove(&mut self, id: WorkerId) -> Option<Worker> {
        let worker = self.workers.remove(&id)?;
        if !worker.cacheable.is_empty() {
            self.caching_workers -= 1;
        }
        self.by_routing.remove(&worker.addr.routing);
        for fun in &worker.functions {
            if let Some(list) = self.by_fun.get_mut(fun) {
                list.retain(|&w| w != id);
                if list.is_empty() {
                    self.by_fun.remove(fun);
                }
            }
        }
        Some(worker)
    }

    /// The worker registered on this connection.
    pub fn find(&self, routing: &[u8]) -> Option<WorkerId> {
        self.by_routing.get(routing).copied()
    }

    /// A registered worker.
    pub fn get(&self, id: WorkerId) -> Option<&Worker> {
        self.workers.get(&id)
    }

    /// A registered worker, mutably.
    pub fn get_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        self.workers.get_mut(&id)
    }

    /// Every registered worker, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = (WorkerId, &Worker)> {
        self.workers.iter().map(|(&id, w)| (id, w))
    }

    /// Number of registered workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// True when no worker is registered.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Decides where a step of `fun` (in a version `version` accepts) asking for `locs` goes
    /// ([`place`]), advancing the rotation among equals.
    pub fn place(
        &mut self,
        fun: &str,
        version: Option<&Requirement>,
        locs: &[String],
    ) -> Placement {
        self.rotation = self.rotation.wrapping_add(1);
        let pool = FunPool {
            ids: self.by_fun.get(fun).map_or(&[], Vec::as_slice),
            workers: &self.workers,
            fun,
            version,
            locs,
        };
        place(&pool, self.rotation)
    }

    /// [`Registry::place`] without a version requirement.
    #[cfg(test)]
    pub fn place_any(&mut self, fun: &str, locs: &[String]) -> Placement {
        self.place(fun, None, locs)
    }

    /// Workers not heard from since `cutoff`, in registration order.
    pub fn silent_since(&self, cutoff: Instant) -> Vec<WorkerId> {
        self.iter()
            .filter(|(_, w)| w.last_seen < cutoff)
            .map(|(id, _)| id)
            .collect()
    }
}

/// The workers serving one function, seen as placement candidates.
struct FunPool<'a> {
    ids: &'a [WorkerId],
    workers: &'a BTreeMap<WorkerId, Worker>,
    fun: &'a str,
    version: Option<&'a Requirement>,
    locs: &'a [String],
}

impl Pool for FunPool<'_> {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn candidate(&self, k: usize) -> Candidate {
        let id = self.ids[k];
        match self.workers.get(&id) {
            Some(w) => Candidate {
                id,
                outstanding: u32::try_from(w.tasks.len()).unwrap_or(u32::MAX),
                capacity: w.capacity,
                draining: w.draining,
                holds: w.holds(self.locs) && matches_version(w.version(self.fun), self.version),
            },
            // Indexes and workers change together; a stale index entry is simply unusable.
            None => Candidate {
                id,
                outstanding: 0,
                capacity: 1,
                draining: true,
                holds: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::NoRoute;

    fn reg(r: &mut Registry, name: &str, funs: &[&str], res: &[&str], cap: u32) -> WorkerId {
        r.register(
            Registration {
                addr: WorkerAddr {
                    routing: name.as_bytes().to_vec(),
                    compact: false,
                },
                name: name.into(),
                functions: funs.iter().map(|s| s.to_string()).collect(),
                resources: res.iter().map(|s| s.to_string()).collect(),
                versions: BTreeMap::new(),
                capacity: cap,
                key: None,
                cacheable: BTreeMap::new(),
            },
            Instant::now(),
        )
    }

    #[test]
    fn routes_by_function_and_resource_subset() {
        let mut r = Registry::default();
        let a = reg(&mut r, "a", &["echo"], &["gpu", "eu"], 4);
        let b = reg(&mut r, "b", &["echo", "train"], &["cpu"], 4);
        assert_eq!(r.place_any("train", &[]), Placement::Local(b));
        assert_eq!(r.place_any("echo", &["gpu".into()]), Placement::Local(a));
        assert_eq!(
            r.place_any("echo", &["gpu".into(), "eu".into()]),
            Placement::Local(a)
        );
        assert_eq!(
            r.place_any("echo", &["gpu".into(), "cpu".into()]),
            Placement::NoRoute(NoRoute::MissingResources)
        );
        assert_eq!(
            r.place_any("nope", &[]),
            Placement::NoRoute(NoRoute::UnknownFunction)
        );
    }

    #[test]
    fn least_loaded_then_rotation_then_wait() {
        let mut r = Registry::default();
        let a = reg(&mut r, "a", &["f"], &[], 2);
        let b = reg(&mut r, "b", &["f"], &[], 2);
        let picks: HashSet<_> = (0..4).map(|_| r.place_any("f", &[])).collect();
        assert_eq!(picks.len(), 2);
        r.get_mut(a).unwrap().tasks.insert(TaskId(1));
        for _ in 0..4 {
            assert_eq!(r.place_any("f", &[]), Placement::Local(b));
        }
        r.get_mut(b).unwrap().tasks.extend([TaskId(2), TaskId(3)]);
        assert_eq!(r.place_any("f", &[]), Placement::Local(a));
        r.get_mut(a).unwrap().tasks.insert(TaskId(4));
        assert_eq!(r.place_any("f", &[]), Placement::Wait);
        r.get_mut(a).unwrap().draining = true;
        r.get_mut(b).unwrap().draining = true;
        assert_eq!(r.place_any("f", &[]), Placement::NoRoute(NoRoute::Draining));
    }

    #[test]
    fn ids_are_never_reused_and_re_registration_keeps_tasks() {
        let mut r = Registry::default();
        let a = reg(&mut r, "a", &["f"], &[], 2);
        r.get_mut(a).unwrap().tasks.insert(TaskId(9));
        let a2 = reg(&mut r, "a", &["g"], &[], 2);
        assert_eq!(a2, a, "the same connection keeps its id");
        assert!(r.get(a2).unwrap().tasks.contains(&TaskId(9)));
        assert_eq!(
            r.place_any("f", &[]),
            Placement::NoRoute(NoRoute::UnknownFunction)
        );
        r.remove(a2);
        assert!(r.is_empty());
        let c = reg(&mut r, "c", &["g"], &[], 1);
        assert_ne!(c, a, "a new registration never takes an old id");
        assert!(r.get(a).is_none());
    }
}
