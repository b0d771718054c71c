//! Where a ready step goes (ARCHITECTURE section 3, rule 5): a pure decision over the
//! candidates that serve its function, with no state of its own.
//!
//! A candidate may run the step when it holds every requested resource (a subset test; no
//! resources asked: any candidate) and is not draining. Among those with a free slot the least
//! loaded wins (outstanding tasks relative to capacity, compared exactly); equals are taken in
//! rotation, starting at a position the caller advances, so that equal workers share the load.
//! When candidates match but all are full, the step waits for a free slot; when none match,
//! there is no route, and the reason says which part of the request nobody satisfies.
//!
//! Candidates are the broker's own workers. In a cluster, the engine turns to peer brokers
//! only when this answers "no route" (`engine/forwarding.rs`): a step never leaves for a peer
//! while a matching local worker is merely busy. Federation would be one more fallback.

use mpreg_protocol::WorkerId;

/// One candidate as placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Who.
    pub id: WorkerId,
    /// Tasks it runs now.
    pub outstanding: u32,
    /// Tasks it may run at once (at least 1).
    pub capacity: u32,
    /// It is leaving: no new tasks.
    pub draining: bool,
    /// It holds every resource the step asks for.
    pub holds: bool,
}

impl Candidate {
    fn eligible(&self) -> bool {
        self.holds && !self.draining
    }

    fn has_room(&self) -> bool {
        self.outstanding < self.capacity
    }
}

/// The candidates that serve one function, by position (no allocation on the hot path).
pub trait Pool {
    /// How many.
    fn len(&self) -> usize;
    /// The `k`-th, `k < len()`.
    fn candidate(&self, k: usize) -> Candidate;
    /// True when there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Pool for [Candidate] {
    fn len(&self) -> usize {
        <[Candidate]>::len(self)
    }

    fn candidate(&self, k: usize) -> Candidate {
        self[k]
    }
}

/// Why nobody can run a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoRoute {
    /// No worker serves the function at all.
    UnknownFunction,
    /// Workers serve it, but none holds every requested resource.
    MissingResources,
    /// The workers that could run it are all leaving.
    Draining,
}

/// The decision for one ready step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Send it to this local worker.
    Local(WorkerId),
    /// Matching workers exist but all are at capacity: wait for a free slot.
    Wait,
    /// Nobody can run it.
    NoRoute(NoRoute),
}

/// Chooses among `pool`, starting the rotation at `rotation` (any number: it is taken modulo
/// the pool's size).
pub fn place<P: Pool + ?Sized>(pool: &P, rotation: usize) -> Placement {
    let n = pool.len();
    if n == 0 {
        return Placement::NoRoute(NoRoute::UnknownFunction);
    }
    let start = rotation % n;
    let mut best: Option<Candidate> = None;
    let (mut any_holds, mut any_eligible) = (false, false);
    for k in 0..n {
        let c = pool.candidate((start + k) % n);
        any_holds |= c.holds;
        if !c.eligible() {
            continue;
        }
        any_eligible = true;
        if !c.has_room() {
            continue;
        }
        // a/b < c/d  <=>  a*d < c*b, exactly, in u64.
        let better = best.is_none_or(|b| {
            u64::from(c.outstanding) * u64::from(b.capacity)
                < u64::from(b.outstanding) * u64::from(c.capacity)
        });
        if better {
            best = Some(c);
        }
    }
    match best {
        Some(c) => Placement::Local(c.id),
        None if any_eligible => Placement::Wait,
        None if any_holds => Placement::NoRoute(NoRoute::Draining),
        None => Placement::NoRoute(NoRoute::MissingResources),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(id: u64, outstanding: u32, capacity: u32, draining: bool, holds: bool) -> Candidate {
        Candidate {
            id: WorkerId(id),
            outstanding,
            capacity,
            draining,
            holds,
        }
    }

    #[test]
    fn reasons_for_no_route() {
        let none: [Candidate; 0] = [];
        assert_eq!(
            place(&none[..], 0),
            Placement::NoRoute(NoRoute::UnknownFunction)
        );
        let lacking = [c(1, 0, 1, false, false)];
        assert_eq!(
            place(&lacking[..], 0),
            Placement::NoRoute(NoRoute::MissingResources)
        );
        let leaving = [c(1, 0, 1, true, true), c(2, 0, 1, false, false)];
        assert_eq!(
            place(&leaving[..], 0),
            Placement::NoRoute(NoRoute::Draining)
        );
        let full = [c(1, 2, 2, false, true)];
        assert_eq!(place(&full[..], 0), Placement::Wait);
    }

    fn candidate() -> impl Strategy<Value = Candidate> {
        (0u32..6, 1u32..6, any::<bool>(), any::<bool>())
            .prop_map(|(o, cap, d, h)| c(0, o.min(cap), cap, d && o % 3 == 0, h))
    }

    fn pool() -> impl Strategy<Value = Vec<Candidate>> {
        proptest::collection::vec(candidate(), 0..8).prop_map(|mut v| {
            for (i, c) in v.iter_mut().enumerate() {
                c.id = WorkerId(i as u64);
            }
            v
        })
    }

    proptest! {
        /// Never a worker lacking a resource, draining, or full; and always the least loaded.
        #[test]
        fn picks_an_eligible_least_loaded_worker(pool in pool(), rotation in any::<usize>()) {
            match place(&pool[..], rotation) {
                Placement::Local(id) => {
                    let chosen = pool[id.0 as usize];
                    prop_assert!(chosen.holds && !chosen.draining && chosen.outstanding < chosen.capacity);
                    for other in pool.iter().filter(|o| o.eligible() && o.has_room()) {
                        let (a, b) = (u64::from(chosen.outstanding) * u64::from(other.capacity),
                                      u64::from(other.outstanding) * u64::from(chosen.capacity));
                        prop_assert!(a <= b, "{other:?} is less loaded than {chosen:?}");
                    }
                }
                Placement::Wait => {
                    prop_assert!(pool.iter().any(|o| o.eligible()));
                    prop_assert!(pool.iter().all(|o| !o.eligible() || !o.has_room()));
                }
                Placement::NoRoute(_) => prop_assert!(pool.iter().all(|o| !o.eligible())),
            }
        }

        /// Equally loaded workers with room are all chosen as the rotation advances.
        #[test]
        fn rotation_spreads_over_equals(n in 1usize..8, load in 0u32..3) {
            let pool: Vec<Candidate> = (0..n).map(|i| c(i as u64, load, 4, false, true)).collect();
            let chosen: std::collections::BTreeSet<WorkerId> = (0..n)
                .filter_map(|r| match place(&pool[..], r) {
                    Placement::Local(id) => Some(id),
                    _ => None,
                })
                .collect();
            prop_assert_eq!(chosen.len(), n);
        }
    }
}
