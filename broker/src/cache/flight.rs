//! Single flight: identical calls in flight share one execution (design section 4.2).
//!
//! The first caller of a key *leads*: it dispatches the call to a worker. Later callers of the
//! same key *follow*: they wait for the leader's outcome instead of dispatching their own. A
//! key has at most `max_followers` followers; a caller beyond that runs its own call, unshared
//! ([`Flight::Crowded`]).
//!
//! How a flight ends:
//! - **the leader's call returns a result**: every follower gets it ([`Flights::land`]);
//! - **the leader's call fails** (the worker answered with a failure): every follower gets the
//!   same failure. The call is the same and the function is declared pure, so running it again
//!   for each follower would most likely fail again while multiplying the load on a failing
//!   function (100 followers: 100 executions). Failures are never cached: the next call after
//!   the flight runs again;
//! - **the leader goes away without an outcome of the call** (its plan was cancelled, its
//!   deadline or its own step timeout passed, its client left, its worker was lost past its
//!   retries): the oldest follower is promoted to lead and must dispatch the call itself
//!   ([`Flights::leave`] -> [`Left::Promoted`]); the others keep waiting.
//!
//! The number of flights is bounded by the steps in flight, which the engine bounds.

use std::collections::{BTreeMap, VecDeque};

use super::key::CacheKey;

/// What a caller of a key that is not cached does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flight {
    /// No identical call is running: run it, then report its outcome.
    Lead,
    /// An identical call is running: wait for its outcome.
    Follow,
    /// An identical call is running with as many followers as allowed: run this one alone.
    Crowded,
}

/// What a caller leaving a flight changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left<W> {
    /// The caller was in no flight of this key.
    Absent,
    /// A follower left; the flight goes on.
    Follower,
    /// The leader left and this follower now leads: it must dispatch the call.
    Promoted(W),
    /// The leader left and nobody was waiting: the flight is over.
    Ended,
}

/// A flight that has ended with an outcome of its call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landed<W> {
    /// The followers, in the order they came.
    pub followers: Vec<W>,
    /// The epoch given when the current leader began.
    pub epoch: u64,
}

#[derive(Debug)]
struct InFlight<W> {
    leader: W,
    followers: VecDeque<W>,
    epoch: u64,
}

/// The calls in flight, by key. `W` identifies a caller (the engine's step of a plan).
#[derive(Debug)]
pub struct Flights<W> {
    by_key: BTreeMap<CacheKey, InFlight<W>>,
    max_followers: usize,
}

impl<W: Clone + PartialEq> Flights<W> {
    /// No flights; at most `max_followers` followers per key.
    pub fn new(max_followers: usize) -> Self {
        Flights {
            by_key: BTreeMap::new(),
            max_followers,
        }
    }

    /// `who` wants the result of `key`, which is not cached. `epoch` is an opaque stamp
    /// returned when the flight lands (the cache's invalidation epoch).
    pub fn begin(&mut self, key: &CacheKey, who: W, epoch: u64) -> Flight {
        match self.by_key.get_mut(key) {
            None => {
                self.by_key.insert(
                    key.clone(),
                    InFlight {
                        leader: who,
                        followers: VecDeque::new(),
                        epoch,
                    },
                );
                Flight::Lead
            }
            Some(f) if f.followers.len() < self.max_followers => {
                f.followers.push_back(who);
                Flight::Follow
            }
            Some(_) => Flight::Crowded,
        }
    }

    /// The call of `key` led by `who` has an outcome: the flight ends. `None` when `who` does
    /// not lead a flight of `key` (it left, or ran crowded): nothing changes.
    pub fn land(&mut self, key: &CacheKey, who: &W) -> Option<Landed<W>> {
        if self.by_key.get(key)?.leader != *who {
            return None;
        }
        let f = self.by_key.remove(key)?;
        Some(Landed {
            followers: f.followers.into(),
            epoch: f.epoch,
        })
    }

    /// `who` no longer wants the result of `key`. A leader leaving hands the flight to the
    /// oldest follower, stamped with `epoch`.
    pub fn leave(&mut self, key: &CacheKey, who: &W, epoch: u64) -> Left<W> {
        let Some(f) = self.by_key.get_mut(key) else {
            return Left::Absent;
        };
        if f.leader == *who {
            return match f.followers.pop_front() {
                Some(next) => {
                    f.leader = next.clone();
                    f.epoch = epoch;
                    Left::Promoted(next)
                }
                None => {
                    self.by_key.remove(key);
                    Left::Ended
                }
            };
        }
        match f.followers.iter().position(|w| w == who) {
            Some(at) => {
                f.followers.remove(at);
                Left::Follower
            }
            None => Left::Absent,
        }
    }

    /// Flights running.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when no call is in flight.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Callers waiting on all flights (leaders excluded).
    pub fn followers(&self) -> usize {
        self.by_key.values().map(|f| f.followers.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap as Map;

    fn key(n: i64) -> CacheKey {
        CacheKey::new("f", None, &[], &[n.into()], &Map::new()).unwrap()
    }

    #[test]
    fn first_leads_then_followers_share_in_order() {
        let mut f = Flights::new(2);
        assert_eq!(f.begin(&key(1), 10, 0), Flight::Lead);
        assert_eq!(
            f.begin(&key(2), 20, 0),
            Flight::Lead,
            "another key, another flight"
        );
        assert_eq!(f.begin(&key(1), 11, 0), Flight::Follow);
        assert_eq!(f.begin(&key(1), 12, 0), Flight::Follow);
        assert_eq!(f.begin(&key(1), 13, 0), Flight::Crowded);
        assert_eq!(f.followers(), 2);
        assert_eq!(f.land(&key(1), &11), None, "only the leader lands a flight");
        assert_eq!(
            f.land(&key(1), &10),
            Some(Landed {
                followers: vec![11, 12],
                epoch: 0
            })
        );
        assert_eq!(f.land(&key(1), &10), None);
        assert_eq!(
            f.begin(&key(1), 14, 5),
            Flight::Lead,
            "a new flight after landing"
        );
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn a_leaving_leader_hands_over_to_the_oldest_follower() {
        let mut f = Flights::new(8);
        f.begin(&key(1), 1, 0);
        f.begin(&key(1), 2, 0);
        f.begin(&key(1), 3, 0);
        assert_eq!(f.leave(&key(1), &9, 0), Left::Absent);
        assert_eq!(f.leave(&key(1), &1, 7), Left::Promoted(2));
        assert_eq!(
            f.land(&key(1), &1),
            None,
            "the old leader no longer lands it"
        );
        assert_eq!(f.leave(&key(1), &3, 7), Left::Follower);
        assert_eq!(
            f.land(&key(1), &2),
            Some(Landed {
                followers: vec![],
                epoch: 7
            })
        );
        f.begin(&key(1), 4, 0);
        assert_eq!(f.leave(&key(1), &4, 0), Left::Ended);
        assert!(f.is_empty());
        assert_eq!(f.leave(&key(1), &4, 0), Left::Absent);
    }

    #[test]
    fn no_followers_allowed_means_no_sharing() {
        let mut f = Flights::new(0);
        assert_eq!(f.begin(&key(1), 1, 0), Flight::Lead);
        assert_eq!(f.begin(&key(1), 2, 0), Flight::Crowded);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Begin(i64, u32),
        Land(i64, u32),
        Leave(i64, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0i64..3, 0u32..6).prop_map(|(k, w)| Op::Begin(k, w)),
            (0i64..3, 0u32..6).prop_map(|(k, w)| Op::Land(k, w)),
            (0i64..3, 0u32..6).prop_map(|(k, w)| Op::Leave(k, w)),
        ]
    }

    proptest! {
        /// Against a model: one leader per key, followers bounded and in arrival order, every
        /// caller that followed is handed back exactly once (landed, promoted or left).
        #[test]
        fn agrees_with_a_model(ops in proptest::collection::vec(op(), 0..60), max in 0usize..4) {
            let mut f = Flights::new(max);
            let mut model: Map<i64, (u32, Vec<u32>)> = Map::new();
            for op in ops {
                match op {
                    Op::Begin(k, w) => {
                        // A caller asks once per flight (the engine's step ids are unique).
                        if model.get(&k).is_some_and(|(l, fs)| *l == w || fs.contains(&w)) {
                            continue;
                        }
                        let want = match model.get_mut(&k) {
                            None => { model.insert(k, (w, vec![])); Flight::Lead }
                            Some((_, fs)) if fs.len() < max => { fs.push(w); Flight::Follow }
                            Some(_) => Flight::Crowded,
                        };
                        prop_assert_eq!(f.begin(&key(k), w, 0), want);
                    }
                    Op::Land(k, w) => {
                        let want = match model.get(&k) {
                            Some((l, _)) if *l == w => model.remove(&k).map(|(_, fs)| fs),
                            _ => None,
                        };
                        prop_assert_eq!(f.land(&key(k), &w).map(|l| l.followers), want);
                    }
                    Op::Leave(k, w) => {
                        let want = match model.get_mut(&k) {
                            None => Left::Absent,
                            Some((l, fs)) if *l == w => {
                                if fs.is_empty() { model.remove(&k); Left::Ended }
                                else { *l = fs.remove(0); Left::Promoted(*l) }
                            }
                            Some((_, fs)) => match fs.iter().position(|x| *x == w) {
                                Some(at) => { fs.remove(at); Left::Follower }
                                None => Left::Absent,
                            },
                        };
                        prop_assert_eq!(f.leave(&key(k), &w, 0), want);
                    }
                }
                prop_assert_eq!(f.len(), model.len());
                prop_assert_eq!(f.followers(), model.values().map(|(_, fs)| fs.len()).sum::<usize>());
                prop_assert!(model.values().all(|(_, fs)| fs.len() <= max));
            }
        }
    }
}
