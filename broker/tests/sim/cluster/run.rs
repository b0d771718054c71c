//! One cluster run: builds the world of a [`ClusterScenario`], runs it until everything
//! settled (every plan ended at its client, the views converged and stayed so, every engine
//! drained) or its horizon, and checks the properties.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::super::broker::BrokerNode;
use super::super::client::{ClientNode, ClientTimer};
use super::super::clock::{Clock, EventQueue, SimTime};
use super::super::model::ModelSabotage;
use super::super::mutation::{Mutation, MutationState};
use super::super::network::{Network, ProcessId};
use super::super::properties::{Checker, Stats};
use super::super::rng::Rng;
use super::super::trace::Trace;
use super::super::worker::WorkerNode;
use super::super::{Event, Process, Report, SimConfig, Timer, World};
use super::check::{drained, ClusterChecker};
use super::converge::Monitor;
use super::scenario::{heartbeat_timeout, reconnect, ClusterScenario, GRACE};

/// How often the convergence monitor looks.
pub const POLL: Duration = Duration::from_millis(50);
/// Within how long of the last fault the views must have converged.
pub const CONVERGE_WITHIN: Duration = Duration::from_secs(3);
/// How long the membership must then stay converged.
pub const STABLE_FOR: Duration = Duration::from_millis(600);

impl World {
    /// The convergence monitor's look (see [`super::converge`]); also ends the run once
    /// everything settled.
    pub fn poll(&mut self) {
        let now = self.queue.now();
        let monitor = &self.cluster.monitor;
        if now < monitor.quiet_from {
            let at = monitor.quiet_from;
            self.queue.at(at, Event::Poll);
            return;
        }
        self.queue.after(POLL, Event::Poll);
        if !self.cluster.monitor.done {
            let brokers: Vec<ProcessId> = self.brokers.keys().copied().collect();
            let mut views = Vec::new();
            for b in brokers {
                let seen = self.with(b, |p, ctx| match p {
                    Process::Broker(node) => node.observe(ctx),
                    _ => None,
                });
                if let Some(view) = seen {
                    views.push((b, view));
                }
            }
            let live = self.brokers.clone();
            if self.trace.enabled() {
                for (b, view) in &views {
                    self.trace.line(now, || format!("poll {b}: {view:?}"));
                }
            }
            let checker = &mut self.cluster;
            checker.monitor.observe(
                now,
                &live,
                &views,
                &mut checker.violations,
                &mut checker.stats,
            );
            return;
        }
        let drained_everywhere = self.processes.iter().all(|p| match p {
            Process::Broker(b) => b.footprint().is_none_or(|fp| drained(&fp)),
            _ => true,
        });
        if drained_everywhere && self.cluster.settled() && now >= self.cluster_active {
            self.finished = true;
        }
    }
}

/// Runs one cluster seed and checks every property.
pub fn run(sim: SimConfig) -> Report {
    let range = sim.cluster.expect("a cluster run");
    let mut rng = Rng::new(sim.seed);
    let scenario = ClusterScenario::generate(&mut rng, range);
    let mut trace = Trace::new(sim.trace);
    trace.line(SimTime::ZERO, || format!("seed {}\n{scenario}", sim.seed));
    let sabotage = match sim.mutation {
        Mutation::WrongModel => ModelSabotage::WrongEcho,
        _ => ModelSabotage::None,
    };
    let config = scenario.config.clone();
    let limits = config.limits;
    let monitor = Monitor {
        quiet_from: scenario.quiet_from,
        bound: CONVERGE_WITHIN,
        stable: STABLE_FOR,
        grace: GRACE,
        ..Monitor::default()
    };
    let mut cluster = ClusterChecker::new(
        true,
        config.clone(),
        sabotage,
        !scenario.net.reorder,
        scenario.net.cuts.clone(),
        monitor,
    );
    cluster.stats.brokers = scenario.brokers.len() as u64;
    cluster.stats.crashes = scenario
        .faults
        .iter()
        .filter(|(_, f)| matches!(f, super::super::scenario::Fault::Kill(p) if (p.0 as usize) < scenario.brokers.len()))
        .count() as u64;
    let clock = Clock::new(Instant::now());
    let mut processes = Vec::new();
    let mut queue = EventQueue::new();
    for (i, spec) in scenario.brokers.iter().enumerate() {
        let node = BrokerNode::new(
            ProcessId(i as u32),
            config.clone(),
            clock,
            rng.fork(),
            MutationState::new(sim.mutation),
            spec.seeds.clone(),
            reconnect(),
        );
        processes.push(Process::Broker(Box::new(node)));
    }
    for spec in &scenario.workers {
        let id = ProcessId(processes.len() as u32);
        processes.push(Process::Worker(WorkerNode::new(
            id,
            rng.fork(),
            spec.clone(),
            limits,
            config.heartbeat,
            config.liveness,
        )));
    }
    for (start, script) in &scenario.clients {
        let id = ProcessId(processes.len() as u32);
        if script.heartbeat.is_some() {
            cluster.heartbeats(id);
        }
        processes.push(Process::Client(ClientNode::new(
            id,
            rng.fork(),
            limits,
            script.clone(),
        )));
        queue.at(
            *start,
            Event::Timer {
                to: id,
                timer: Timer::Client(ClientTimer::Start),
            },
        );
    }
    for &(at, fault) in &scenario.faults {
        queue.at(at, Event::Fault(fault));
    }
    for (i, cut) in scenario.net.cuts.iter().enumerate() {
        queue.at(cut.from, Event::CutStarts(i));
    }
    queue.at(scenario.quiet_from, Event::Poll);
    let mut world = World {
        queue,
        net: Network::new(rng.fork(), scenario.net.clone()),
        checker: Checker::new(config.clone(), sabotage, true),
        cluster,
        trace,
        processes,
        brokers: BTreeMap::new(),
        limits,
        heartbeat_timeout: Some(heartbeat_timeout()),
        cluster_active: scenario.active,
        finished: false,
        parked: BTreeMap::new(),
    };
    let events = world.run_until(scenario.horizon, |w| w.finished);
    let now = world.queue.now();
    let footprints: Vec<(ProcessId, _)> = world
        .processes
        .iter()
        .filter_map(|p| match p {
            Process::Broker(b) => Some((b.id, b.footprint()?)),
            _ => None,
        })
        .collect();
    world.cluster.finish(now, &footprints);
    let violation = world
        .checker
        .violations
        .first()
        .or(world.cluster.violations.first())
        .cloned();
    if let Some(v) = &violation {
        world.trace.line(v.at, || format!("VIOLATION {v}"));
    }
    Report {
        violation,
        stats: Stats::default(),
        cluster: world.cluster.stats.clone(),
        net: world.net.stats,
        events,
        digest: world.trace.digest(),
    }
}
