//! P8: membership and catalogues converge after the network heals. From the moment the last
//! fault is over (the last crash, restart, worker fault and partition, and the end of message
//! loss: a lost probe ack and a lost indirect ack are a failed probe, and SWIM rightly
//! suspects its target, so "no flapping" can only be asked of a healed network), the monitor asks every
//! live broker, every poll interval and out of band, its `cluster` and `functions` replies
//! (what `mpreg cluster` and `mpreg functions` print), and compares them with the truth:
//!
//! - every live broker lists exactly the live incarnations as its members not dead, each
//!   `alive`, with the incarnation id it runs now (so a restarted broker's former self is dead
//!   everywhere);
//! - every live broker lists, for each member, the functions that member lists for itself;
//! - every live broker's catalogue (`functions`: each function's versions, resource sets,
//!   brokers and summed capacity) is the same.
//!
//! They must hold within [`Monitor::bound`] of the last fault, and the membership must then
//! stay so for [`Monitor::stable`] (no flapping). The time it took is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mpreg_protocol::peer::MemberState;
use mpreg_protocol::BrokerId;

use super::super::clock::SimTime;
use super::super::network::ProcessId;
use super::super::properties::{Property, Violation};
use super::check::ClusterStats;
use super::Observation;

/// The convergence monitor's settings and findings.
#[derive(Debug, Clone, Default)]
pub struct Monitor {
    /// When the last fault is over.
    pub quiet_from: SimTime,
    /// Within how long after that every view must equal the truth.
    pub bound: Duration,
    /// How long the membership must then stay equal to the truth.
    pub stable: Duration,
    /// How long a client waits past a plan's deadline before giving up (for the checker).
    pub grace: Duration,
    /// When the views first equalled the truth.
    pub converged_at: Option<SimTime>,
    /// Converged and stable: nothing more to watch.
    pub done: bool,
    /// The last difference found.
    pub last_difference: String,
}

/// A broker's name in the simulation.
pub fn name_of(p: ProcessId) -> String {
    format!("b{}", p.0)
}

/// Where the views differ from the truth (`live`: each live broker's incarnation), if they do;
/// `members_only`: compare the membership only.
pub fn difference(
    live: &BTreeMap<ProcessId, BrokerId>,
    views: &[(ProcessId, Observation)],
    members_only: bool,
) -> Option<String> {
    let truth: BTreeSet<(String, String)> = live
        .iter()
        .map(|(p, id)| (name_of(*p), id.to_string()))
        .collect();
    let mut own: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (p, view) in views {
        let id = live.get(p)?.to_string();
        let me = view.cluster.members.iter().find(|m| m.incarnation == id)?;
        own.insert(id, me.functions.clone());
    }
    for (p, view) in views {
        let seen: BTreeSet<(String, String)> = view
            .cluster
            .members
            .iter()
            .filter(|m| m.state != MemberState::Dead)
            .map(|m| (m.name.clone(), m.incarnation.clone()))
            .collect();
        let suspects: Vec<&str> = view
            .cluster
            .members
            .iter()
            .filter(|m| m.state == MemberState::Suspect)
            .map(|m| m.name.as_str())
            .collect();
        if seen != truth || !suspects.is_empty() {
            return Some(format!(
                "{} sees the members {seen:?} (suspect: {suspects:?}); the live incarnations are {truth:?}",
                name_of(*p)
            ));
        }
        if members_only {
            continue;
        }
        for m in &view.cluster.members {
            if m.state == MemberState::Dead {
                continue;
            }
            let theirs = own.get(&m.incarnation);
            if theirs != Some(&m.functions) {
                return Some(format!(
                    "{} sees {} serving {:?}; it serves {theirs:?}",
                    name_of(*p),
                    m.name,
                    m.functions
                ));
            }
        }
    }
    if members_only {
        return None;
    }
    let (first, rest) = views.split_first()?;
    for (p, view) in rest {
        if view.functions.functions != first.1.functions.functions {
            return Some(format!(
                "the catalogues differ: {} sees {:?}, {} sees {:?}",
                name_of(first.0),
                first.1.functions.functions,
                name_of(*p),
                view.functions.functions
            ));
        }
    }
    None
}

impl Monitor {
    /// One look at every live broker at `now`: whether to keep looking.
    pub fn observe(
        &mut self,
        now: SimTime,
        live: &BTreeMap<ProcessId, BrokerId>,
        views: &[(ProcessId, Observation)],
        violations: &mut Vec<Violation>,
        stats: &mut ClusterStats,
    ) {
        match self.converged_at {
            None => match difference(live, views, false) {
                None => {
                    self.converged_at = Some(now);
                    let took = now.since(self.quiet_from).as_micros() as u64;
                    stats.converged += 1;
                    stats.converge_us += took;
                    stats.converge_max_us = stats.converge_max_us.max(took);
                }
                Some(diff) if now > self.quiet_from.after(self.bound) => {
                    violations.push(Violation {
                        property: Property::Converges,
                        at: now,
                        message: format!(
                            "{:?} after the last fault ({}), the views still differ: {diff}",
                            self.bound, self.quiet_from
                        ),
                    });
                }
                Some(diff) => self.last_difference = diff,
            },
            Some(at) => {
                if let Some(diff) = difference(live, views, true) {
                    violations.push(Violation {
                        property: Property::Converges,
                        at: now,
                        message: format!(
                            "the membership converged at {at}, then diverged with no fault: {diff}"
                        ),
                    });
                } else if now >= at.after(self.stable) {
                    self.done = true;
                }
            }
        }
    }

    /// The run ended: the views must have converged (and stayed so).
    pub fn finish(
        &mut self,
        now: SimTime,
        violations: &mut Vec<Violation>,
        _stats: &mut ClusterStats,
    ) {
        if !self.done {
            violations.push(Violation {
                property: Property::Converges,
                at: now,
                message: format!(
                    "the run ended before the views converged and stayed so (converged at {:?}; last difference: {})",
                    self.converged_at, self.last_difference
                ),
            });
        }
    }
}
