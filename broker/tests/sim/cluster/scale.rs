//! A hundred brokers (or any number): the real engines, their peer sockets and gossip on the
//! simulated network (no loss, no partition), in three acts, each judged by the convergence
//! monitor of the cluster runs ([`super::converge`]):
//!
//! 1. **Join.** The brokers start one after another within [`STAGGER`], every one seeded with
//!    broker 0 only; a worker serves on every tenth broker, so the catalogues carry something.
//!    Every broker must list every incarnation alive, each member's functions, and the same
//!    catalogue, within [`CONVERGE_WITHIN`] of the last start, and stay so for
//!    [`STABLE_FOR`].
//! 2. **Crash.** A broker with a worker crashes (no restart): every other broker must list it
//!    dead and its functions gone from the catalogue, within the same bound.
//! 3. **Restart.** It starts again as a new incarnation: every broker must list the new one
//!    alive (the old one dead) and its functions back.
//!
//! The report gives, per act, the simulated time to converge and the peer and gossip
//! messages it took, and the real time the whole run took to simulate. Every interval is the
//! production default divided by [`super::scenario::TIME_SCALE`], as in the cluster runs, so
//! simulated times are a fifth of what a real cluster with default settings would take.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use super::super::broker::BrokerNode;
use super::super::clock::{Clock, EventQueue, SimTime};
use super::super::functions::FUNCTIONS;
use super::super::model::ModelSabotage;
use super::super::mutation::{Mutation, MutationState};
use super::super::network::{NetFaults, NetStats, Network, ProcessId};
use super::super::properties::Checker;
use super::super::rng::Rng;
use super::super::scenario::{engine_config, Fault};
use super::super::trace::Trace;
use super::super::worker::{WorkerNode, WorkerSpec};
use super::super::{Event, Process, World};
use super::check::ClusterChecker;
use super::converge::Monitor;
use super::run::{CONVERGE_WITHIN, POLL, STABLE_FOR};
use super::scenario::{cluster_template, heartbeat_timeout, reconnect, GRACE};

/// The brokers start within this window.
pub const STAGGER: Duration = Duration::from_millis(500);
/// A broker with a worker every this many brokers.
const WORKER_EVERY: u32 = 10;

/// One act of the run.
#[derive(Debug, Clone)]
pub struct Act {
    /// What happened.
    pub name: &'static str,
    /// When it was over (the last start, the crash, the restart).
    pub at: SimTime,
    /// How long after that the views converged (`None`: not within the bound).
    pub converged: Option<Duration>,
    /// Messages on peer links and gossip messages from `at` until then.
    pub peer_messages: u64,
    /// Gossip messages from `at` until then.
    pub gossip_messages: u64,
    /// Where the views still differed, if they never converged.
    pub difference: Option<String>,
}

/// What the scale run found.
pub struct ScaleReport {
    /// Brokers.
    pub brokers: u32,
    /// Workers.
    pub workers: u32,
    /// The acts, in order.
    pub acts: Vec<Act>,
    /// Events simulated.
    pub events: u64,
    /// Real time the simulation took.
    pub elapsed: Duration,
}

impl ScaleReport {
    /// Whether every act converged within the bound.
    pub fn passed(&self) -> bool {
        self.acts.len() == 3 && self.acts.iter().all(|a| a.converged.is_some())
    }
}

impl fmt::Display for ScaleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} brokers, {} workers: {} events simulated in {:.2?}",
            self.brokers, self.workers, self.events, self.elapsed
        )?;
        for a in &self.acts {
            match a.converged {
                Some(took) => writeln!(
                    f,
                    "  {} (over at {}): every view converged {:.0?} later ({} peer messages, {} gossip)",
                    a.name, a.at, took, a.peer_messages, a.gossip_messages
                )?,
                None => writeln!(
                    f,
                    "  {} (over at {}): NOT converged within {CONVERGE_WITHIN:?}: {}",
                    a.name,
                    a.at,
                    a.difference.as_deref().unwrap_or("?")
                )?,
            }
        }
        Ok(())
    }
}

/// Runs the three acts with `brokers` brokers, drawing start times and workers from `seed`.
pub fn run(brokers: u32, seed: u64) -> ScaleReport {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut config = engine_config();
    config.cluster = Some(cluster_template());
    let limits = config.limits;
    let clock = Clock::new(Instant::now());
    let mut processes = Vec::new();
    let mut queue = EventQueue::new();
    let mut last_start = SimTime::ZERO;
    for i in 0..brokers {
        let seeds = if i == 0 {
            Vec::new()
        } else {
            vec![ProcessId(0)]
        };
        let node = BrokerNode::new(
            ProcessId(i),
            config.clone(),
            clock,
            rng.fork(),
            MutationState::new(Mutation::None),
            seeds,
            reconnect(),
        );
        processes.push(Process::Broker(Box::new(node)));
        let at = if i == 0 {
            SimTime::ZERO
        } else {
            SimTime(rng.range(0, STAGGER.as_micros() as u64))
        };
        last_start = last_start.max(at);
        queue.at(at, Event::Fault(Fault::Restart(ProcessId(i))));
    }
    let mut workers = 0;
    for b in (0..brokers).step_by(WORKER_EVERY as usize) {
        let functions: Vec<String> = FUNCTIONS
            .iter()
            .filter(|_| rng.percent(50))
            .map(|f| f.to_string())
            .chain(std::iter::once(format!("only_on_b{b}")))
            .collect();
        let spec = WorkerSpec {
            functions,
            resources: Vec::new(),
            capacity: 2,
            brokers: vec![ProcessId(b)],
        };
        let id = ProcessId(processes.len() as u32);
        processes.push(Process::Worker(WorkerNode::new(
            id,
            rng.fork(),
            spec,
            limits,
            config.heartbeat,
            config.liveness,
        )));
        queue.at(SimTime::ZERO, Event::Fault(Fault::Restart(id)));
        workers += 1;
    }
    let net = NetFaults {
        delay_us: (50, 2_000),
        loss_until: SimTime::ZERO,
        hwm: usize::MAX,
        ..NetFaults::default()
    };
    let monitor = |quiet_from| Monitor {
        quiet_from,
        bound: CONVERGE_WITHIN,
        stable: STABLE_FOR,
        grace: GRACE,
        ..Monitor::default()
    };
    queue.at(last_start, Event::Poll);
    let mut world = World {
        queue,
        net: Network::new(rng.fork(), net.clone()),
        checker: Checker::new(config.clone(), ModelSabotage::None, true),
        cluster: ClusterChecker::new(
            true,
            config.clone(),
            ModelSabotage::None,
            true,
            Vec::new(),
            monitor(last_start),
        ),
        trace: Trace::new(false),
        processes,
        brokers: BTreeMap::new(),
        limits,
        heartbeat_timeout: Some(heartbeat_timeout()),
        cluster_active: SimTime::ZERO,
        finished: false,
        parked: BTreeMap::new(),
    };
    // The broker that crashes: the last one with a worker (never the seed, broker 0, unless
    // it is the only one).
    let victim = ProcessId((brokers.saturating_sub(1) / WORKER_EVERY) * WORKER_EVERY);
    let mut acts = Vec::new();
    let mut events = 0;
    let script: [(&'static str, Option<Fault>); 3] = [
        ("join", None),
        ("crash", Some(Fault::Kill(victim))),
        ("restart", Some(Fault::Restart(victim))),
    ];
    let mut at = last_start;
    for (name, fault) in script {
        if let Some(fault) = fault {
            // The next act starts once the previous one is converged and stable.
            at = world.queue.now().after(POLL);
            world.queue.at(at, Event::Fault(fault));
            // Views are judged from just after the fault, never by a look taken at the same
            // instant before it.
            world.cluster.monitor = monitor(at.after(Duration::from_micros(1)));
        }
        let before: NetStats = world.net.stats;
        let horizon = at.after(CONVERGE_WITHIN + STABLE_FOR + POLL * 2);
        events += world.run_until(horizon, |w| w.cluster.monitor.done);
        let m = &world.cluster.monitor;
        let after = world.net.stats;
        let converged = m
            .converged_at
            .filter(|_| m.done && world.cluster.violations.is_empty())
            .map(|t| t.since(at));
        let difference = converged.is_none().then(|| {
            world
                .cluster
                .violations
                .first()
                .map_or(m.last_difference.clone(), |v| v.to_string())
        });
        acts.push(Act {
            name,
            at,
            converged,
            peer_messages: after.peer - before.peer,
            gossip_messages: after.gossip - before.gossip,
            difference,
        });
        if converged.is_none() {
            break;
        }
    }
    ScaleReport {
        brokers,
        workers,
        acts,
        events,
        elapsed: started.elapsed(),
    }
}
