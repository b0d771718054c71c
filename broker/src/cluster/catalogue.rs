//! What every broker of the cluster can run: each broker's *capability classes* (a function,
//! its version, an exact resource set, the capacity of the workers that have them), and the
//! topic patterns its subscribers want.
//!
//! One writer per entry: only broker X writes X's classes and patterns. X numbers its changes
//! (per-origin sequence numbers) and publishes them as deltas on its gossip PUB; a receiver
//! applies deltas in order and, on a gap (a delta lost by PUB/SUB, or an origin it has never
//! seen), asks X for a snapshot over the peer link (the zguide Clone pattern). Because each
//! key has a single writer, a per-origin sequence number *is* a complete version vector: there
//! are no concurrent writes to reconcile, so no vector clocks and no Merkle anti-entropy, only
//! staleness, which the periodic digest (each origin's latest sequence number) bounds: a
//! receiver behind an origin's digest pulls a snapshot. After a partition heals, every
//! receiver converges to every origin's latest state.
//!
//! Pure: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet};

use mpreg_protocol::peer::{Capability, CatalogueDelta, CatalogueSnapshot};
use mpreg_protocol::BrokerId;

use crate::versions::{matches_version, Requirement};

/// What applying a delta did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied; the origin's view is current up to the delta's sequence number.
    Applied,
    /// Older than what we have: ignored.
    Stale,
    /// A gap (or an unknown origin): a snapshot of the origin is needed; nothing applied.
    NeedSnapshot,
}

/// One origin's classes and patterns, as of `seq`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginView {
    /// The origin's sequence number this view is current at.
    pub seq: u64,
    /// Capability classes, by key.
    pub classes: BTreeMap<ClassKey, Capability>,
    /// Topic patterns its subscribers want (distinct).
    pub patterns: BTreeSet<String>,
}

/// A class's identity: function, version, resources (sorted).
pub type ClassKey = (String, String, Vec<String>);

/// The key of a capability.
pub fn class_key(c: &Capability) -> ClassKey {
    (c.fun.clone(), c.version.clone(), c.resources.clone())
}

/// Every other broker's view, by origin.
#[derive(Debug, Default)]
pub struct Catalogue {
    origins: BTreeMap<BrokerId, OriginView>,
}

impl Catalogue {
    /// Applies a delta from `delta.origin`.
    pub fn apply_delta(&mut self, delta: &CatalogueDelta) -> Applied {
        let Some(view) = self.origins.get_mut(&delta.origin) else {
            return Applied::NeedSnapshot;
        };
        if delta.seq <= view.seq {
            return Applied::Stale;
        }
        if delta.seq != view.seq + 1 {
            return Applied::NeedSnapshot;
        }
        for key in &delta.remove {
            view.classes
                .remove(&(key.fun.clone(), key.version.clone(), key.resources.clone()));
        }
        for c in &delta.set {
            view.classes.insert(class_key(c), c.clone());
        }
        for p in &delta.unsubscribe {
            view.patterns.remove(p);
        }
        view.patterns.extend(delta.subscribe.iter().cloned());
        view.seq = delta.seq;
        Applied::Applied
    }

    /// Replaces an origin's view by its snapshot, unless ours is newer.
    pub fn apply_snapshot(&mut self, snapshot: &CatalogueSnapshot) -> bool {
        if self
            .origins
            .get(&snapshot.origin)
            .is_some_and(|v| v.seq > snapshot.seq)
        {
            return false;
        }
        let view = OriginView {
            seq: snapshot.seq,
            classes: snapshot
                .classes
                .iter()
                .map(|c| (class_key(c), c.clone()))
                .collect(),
            patterns: snapshot.patterns.iter().cloned().collect(),
        };
        self.origins.insert(snapshot.origin, view);
        true
    }

    /// True when an origin's digest says we are behind it.
    pub fn is_behind(&self, origin: BrokerId, seq: u64) -> bool {
        self.origins.get(&origin).is_none_or(|v| v.seq < seq)
    }

    /// Forgets a broker that left or died.
    pub fn forget(&mut self, origin: BrokerId) {
        self.origins.remove(&origin);
    }

    /// An origin's view.
    pub fn view(&self, origin: BrokerId) -> Option<&OriginView> {
        self.origins.get(&origin)
    }

    /// Every origin's view, in id order.
    pub fn views(&self) -> impl Iterator<Item = (BrokerId, &OriginView)> {
        self.origins.iter().map(|(&id, v)| (id, v))
    }

    /// The brokers with a class serving `fun` in a version `version` accepts and holding
    /// every resource in `locs`, with the capacity of the best such class, in id order.
    pub fn serving(
        &self,
        fun: &str,
        version: Option<&Requirement>,
        locs: &[String],
    ) -> Vec<(BrokerId, u32)> {
        self.origins
            .iter()
            .filter_map(|(&id, view)| {
                let capacity = view
                    .classes
                    .values()
                    .filter(|c| c.fun == fun)
                    .filter(|c| matches_version(&c.version, version))
                    .filter(|c| locs.iter().all(|l| c.resources.binary_search(l).is_ok()))
                    .map(|c| c.capacity)
                    .max()?;
                Some((id, capacity))
            })
            .collect()
    }
}

/// This broker's own classes and patterns, and the deltas that describe their changes.
#[derive(Debug, Default)]
pub struct Local {
    view: OriginView,
}

impl Local {
    /// The current view (for snapshots).
    pub fn view(&self) -> &OriginView {
        &self.view
    }

    /// Brings the view to `classes` and `patterns`; returns the delta, or `None` if nothing
    /// changed. `origin` is this broker.
    pub fn update(
        &mut self,
        origin: BrokerId,
        classes: Vec<Capability>,
        patterns: BTreeSet<String>,
    ) -> Option<CatalogueDelta> {
        let next: BTreeMap<ClassKey, Capability> =
            classes.into_iter().map(|c| (class_key(&c), c)).collect();
        let set: Vec<Capability> = next
            .iter()
            .filter(|(k, c)| self.view.classes.get(*k) != Some(*c))
            .map(|(_, c)| c.clone())
            .collect();
        let remove: Vec<Capability> = self
            .view
            .classes
            .iter()
            .filter(|(k, _)| !next.contains_key(*k))
            .map(|(_, c)| Capability {
                capacity: 0,
                ..c.clone()
            })
            .collect();
        let subscribe: Vec<String> = patterns.difference(&self.view.patterns).cloned().collect();
        let unsubscribe: Vec<String> = self.view.patterns.difference(&patterns).cloned().collect();
        if set.is_empty() && remove.is_empty() && subscribe.is_empty() && unsubscribe.is_empty() {
            return None;
        }
        self.view.seq += 1;
        self.view.classes = next;
        self.view.patterns = patterns;
        Some(CatalogueDelta {
            origin,
            seq: self.view.seq,
            set,
            remove,
            subscribe,
            unsubscribe,
        })
    }

    /// The whole view as a snapshot.
    pub fn snapshot(&self, origin: BrokerId) -> CatalogueSnapshot {
        CatalogueSnapshot {
            origin,
            seq: self.view.seq,
            classes: self.view.classes.values().cloned().collect(),
            patterns: self.view.patterns.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cap(fun: &str, res: &[&str], capacity: u32) -> Capability {
        Capability {
            fun: fun.into(),
            version: String::new(),
            resources: res.iter().map(|s| s.to_string()).collect(),
            capacity,
        }
    }

    fn origin() -> BrokerId {
        BrokerId(ulid::Ulid(7))
    }

    #[test]
    fn deltas_in_order_then_a_gap_needs_a_snapshot() {
        let mut local = Local::default();
        let mut remote = Catalogue::default();
        let d1 = local
            .update(origin(), vec![cap("f", &["a"], 4)], BTreeSet::new())
            .unwrap();
        assert_eq!(
            remote.apply_delta(&d1),
            Applied::NeedSnapshot,
            "unknown origin"
        );
        assert!(remote.apply_snapshot(&local.snapshot(origin())));
        assert_eq!(remote.apply_delta(&d1), Applied::Stale);
        let d2 = local
            .update(
                origin(),
                vec![cap("f", &["a"], 4), cap("g", &[], 1)],
                BTreeSet::new(),
            )
            .unwrap();
        let d3 = local
            .update(
                origin(),
                vec![cap("g", &[], 2)],
                BTreeSet::from(["t.#".to_string()]),
            )
            .unwrap();
        assert_eq!(
            remote.apply_delta(&d3),
            Applied::NeedSnapshot,
            "gap: d2 lost"
        );
        assert_eq!(remote.apply_delta(&d2), Applied::Applied);
        assert_eq!(remote.apply_delta(&d3), Applied::Applied);
        assert_eq!(remote.view(origin()), Some(local.view()));
        assert!(local
            .update(
                origin(),
                vec![cap("g", &[], 2)],
                BTreeSet::from(["t.#".to_string()])
            )
            .is_none());
        assert_eq!(remote.serving("g", None, &[]), vec![(origin(), 2)]);
        assert!(remote.serving("f", None, &[]).is_empty());
    }

    #[test]
    fn serving_checks_resources_as_a_subset() {
        let mut local = Local::default();
        local.update(origin(), vec![cap("f", &["a", "b"], 3)], BTreeSet::new());
        let mut remote = Catalogue::default();
        remote.apply_snapshot(&local.snapshot(origin()));
        assert_eq!(
            remote.serving("f", None, &["b".into()]),
            vec![(origin(), 3)]
        );
        assert!(remote.serving("f", None, &["c".into()]).is_empty());
    }

    proptest! {
        /// Whatever deltas PUB/SUB loses or repeats, a receiver that pulls a snapshot on every
        /// gap ends equal to the origin.
        #[test]
        fn lossy_delivery_with_snapshot_pulls_converges(
            steps in proptest::collection::vec((proptest::collection::vec((0u8..4, 0u8..3, 1u32..5), 0..4), any::<bool>(), any::<bool>()), 1..30)
        ) {
            let mut local = Local::default();
            let mut remote = Catalogue::default();
            for (classes, lost, duplicated) in steps {
                let classes = classes
                    .into_iter()
                    .map(|(f, r, c)| cap(&format!("f{f}"), &[["x"], ["y"], ["z"]][r as usize], c))
                    .collect();
                let Some(delta) = local.update(origin(), classes, BTreeSet::new()) else { continue };
                if lost {
                    continue;
                }
                for _ in 0..(1 + usize::from(duplicated)) {
                    if remote.apply_delta(&delta) == Applied::NeedSnapshot {
                        remote.apply_snapshot(&local.snapshot(origin()));
                    }
                }
            }
            // The periodic digest catches a lost last delta.
            if remote.is_behind(origin(), local.view().seq) {
                remote.apply_snapshot(&local.snapshot(origin()));
            }
            if local.view().seq > 0 {
                prop_assert_eq!(remote.view(origin()), Some(local.view()));
            }
        }
    }
}
