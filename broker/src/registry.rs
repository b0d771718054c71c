//! The worker registry: who serves what, with which resources, how loaded (rule 5).
//!
//! Selection: among workers serving `fun` whose resources include every name in `locs`, the
//! least loaded (outstanding tasks relative to capacity) with a free slot; ties rotate so that
//! equal workers share the load.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// A worker's routing id on the worker ROUTER.
pub type RoutingId = Vec<u8>;

/// Index of a worker in the registry (stable while the worker is registered).
pub type WorkerId = usize;

/// One registered worker.
#[derive(Debug)]
pub struct Worker {
    /// Routing id on the worker socket.
    pub routing: RoutingId,
    /// The node's name, as it registered.
    pub name: String,
    /// Functions it serves.
    pub functions: Vec<String>,
    /// Resources it holds.
    pub resources: HashSet<String>,
    /// Tasks it may run at once.
    pub capacity: u32,
    /// Task ids sent to it and not yet answered.
    pub tasks: HashSet<u64>,
    /// When it was last heard from.
    pub last_seen: Instant,
    /// It said it is shutting down: no new tasks.
    pub draining: bool,
    /// Its authenticated CURVE key (Z85), when the broker runs CURVE.
    pub key: Option<String>,
    /// It registered with compact frames: its tasks go out as one frame.
    pub compact: bool,
}

impl Worker {
    fn has_room(&self) -> bool {
        !self.draining && (self.tasks.len() as u64) < u64::from(self.capacity)
    }

    /// Whether it holds every resource in `locs`.
    pub fn holds(&self, locs: &[String]) -> bool {
        locs.iter().all(|l| self.resources.contains(l))
    }
}

/// The outcome of looking for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Selection {
    /// Send it here.
    Worker(WorkerId),
    /// Matching workers exist but all are at capacity: wait for a free slot.
    Busy,
    /// No registered worker serves `fun` with these resources.
    NoRoute,
}

/// All workers of one broker.
#[derive(Debug, Default)]
pub struct Registry {
    slots: Vec<Option<Worker>>,
    by_routing: HashMap<RoutingId, WorkerId>,
    by_fun: HashMap<String, Vec<WorkerId>>,
    rotation: usize,
}

impl Registry {
    /// Adds a worker, or updates one that registers again on the same connection (its
    /// outstanding tasks are kept). Returns its id.
    pub fn register(
        &mut self,
        routing: RoutingId,
        name: String,
        functions: Vec<String>,
        resources: Vec<String>,
        capacity: u32,
        now: Instant,
    ) -> WorkerId {
        let tasks = match self.by_routing.get(&routing).copied() {
            Some(id) => self.remove(id).map(|w| w.tasks).unwrap_or_default(),
            None => HashSet::new(),
        };
        let mut functions = functions;
        functions.sort();
        functions.dedup();
        let worker = Worker {
            routing: routing.clone(),
            name,
            functions,
            resources: resources.into_iter().collect(),
            capacity: capacity.max(1),
            tasks,
            last_seen: now,
            draining: false,
            key: None,
            compact: false,
        };
        let id = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        for fun in &worker.functions {
            self.by_fun.entry(fun.clone()).or_default().push(id);
        }
        self.slots[id] = Some(worker);
        self.by_routing.insert(routing, id);
        id
    }

    /// Removes a worker and returns it (with the tasks it still had).
    pub fn remove(&mut self, id: WorkerId) -> Option<Worker> {
        let worker = self.slots.get_mut(id)?.take()?;
        self.by_routing.remove(&worker.routing);
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

    /// The worker registered under this routing id.
    pub fn find(&self, routing: &[u8]) -> Option<WorkerId> {
        self.by_routing.get(routing).copied()
    }

    /// A registered worker.
    pub fn get(&self, id: WorkerId) -> Option<&Worker> {
        self.slots.get(id).and_then(Option::as_ref)
    }

    /// A registered worker, mutably.
    pub fn get_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        self.slots.get_mut(id).and_then(Option::as_mut)
    }

    /// Every registered worker with its id.
    pub fn iter(&self) -> impl Iterator<Item = (WorkerId, &Worker)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.as_ref().map(|w| (i, w)))
    }

    /// Number of registered workers.
    pub fn len(&self) -> usize {
        self.by_routing.len()
    }

    /// True when no worker is registered.
    pub fn is_empty(&self) -> bool {
        self.by_routing.is_empty()
    }

    /// Picks a worker for `fun` with `locs`.
    pub fn select(&mut self, fun: &str, locs: &[String]) -> Selection {
        let Some(candidates) = self.by_fun.get(fun) else {
            return Selection::NoRoute;
        };
        let n = candidates.len();
        self.rotation = self.rotation.wrapping_add(1);
        let start = self.rotation % n;
        let mut best: Option<(WorkerId, u64, u64)> = None;
        let mut any_match = false;
        for k in 0..n {
            let id = candidates[(start + k) % n];
            let Some(w) = self.slots[id].as_ref() else {
                continue;
            };
            if !w.holds(locs) || w.draining {
                continue;
            }
            any_match = true;
            if !w.has_room() {
                continue;
            }
            // Compare load fractions exactly: a/b < c/d  <=>  a*d < c*b.
            let (load, cap) = (w.tasks.len() as u64, u64::from(w.capacity));
            if best.is_none_or(|(_, bl, bc)| load * bc < bl * cap) {
                best = Some((id, load, cap));
            }
        }
        match (best, any_match) {
            (Some((id, _, _)), _) => Selection::Worker(id),
            (None, true) => Selection::Busy,
            (None, false) => Selection::NoRoute,
        }
    }

    /// Workers not heard from since `cutoff`.
    pub fn silent_since(&self, cutoff: Instant) -> Vec<WorkerId> {
        self.iter()
            .filter(|(_, w)| w.last_seen < cutoff)
            .map(|(id, _)| id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(r: &mut Registry, name: &str, funs: &[&str], res: &[&str], cap: u32) -> WorkerId {
        r.register(
            name.as_bytes().to_vec(),
            name.into(),
            funs.iter().map(|s| s.to_string()).collect(),
            res.iter().map(|s| s.to_string()).collect(),
            cap,
            Instant::now(),
        )
    }

    #[test]
    fn routes_by_function_and_resource_subset() {
        let mut r = Registry::default();
        let a = reg(&mut r, "a", &["echo"], &["gpu", "eu"], 4);
        let b = reg(&mut r, "b", &["echo", "train"], &["cpu"], 4);
        assert_eq!(r.select("train", &[]), Selection::Worker(b));
        assert_eq!(r.select("echo", &["gpu".into()]), Selection::Worker(a));
        assert_eq!(
            r.select("echo", &["gpu".into(), "eu".into()]),
            Selection::Worker(a)
        );
        assert_eq!(
            r.select("echo", &["gpu".into(), "cpu".into()]),
            Selection::NoRoute
        );
        assert_eq!(r.select("nope", &[]), Selection::NoRoute);
    }

    #[test]
    fn least_loaded_then_rotation_then_busy() {
        let mut r = Registry::default();
        let a = reg(&mut r, "a", &["f"], &[], 2);
        let b = reg(&mut r, "b", &["f"], &[], 2);
        // Equal load: both get picked over a few selections.
        let picks: HashSet<_> = (0..4).map(|_| r.select("f", &[])).collect();
        assert_eq!(picks.len(), 2);
        r.get_mut(a).unwrap().tasks.insert(1);
        for _ in 0..4 {
            assert_eq!(r.select("f", &[]), Selection::Worker(b));
        }
        r.get_mut(b).unwrap().tasks.extend([2, 3]);
        assert_eq!(r.select("f", &[]), Selection::Worker(a));
        r.get_mut(a).unwrap().tasks.insert(4);
        assert_eq!(r.select("f", &[]), Selection::Busy);
        r.get_mut(a).unwrap().draining = true;
        r.get_mut(b).unwrap().draining = true;
        assert_eq!(r.select("f", &[]), Selection::NoRoute);
    }

    #[test]
    fn re_registration_keeps_tasks_and_removal_unindexes() {
        let mut r = Registry::default();
        let a = reg(&mut r, "a", &["f"], &[], 2);
        r.get_mut(a).unwrap().tasks.insert(9);
        let a2 = reg(&mut r, "a", &["g"], &[], 2);
        assert!(r.get(a2).unwrap().tasks.contains(&9));
        assert_eq!(r.select("f", &[]), Selection::NoRoute);
        assert_eq!(r.len(), 1);
        r.remove(a2);
        assert_eq!(r.select("g", &[]), Selection::NoRoute);
        assert!(r.is_empty());
    }
}
