//! A cluster run's cast and script, drawn from its seed: the brokers (how many, when each
//! starts, its seeds), the workers (functions, resources, capacity, the brokers they serve),
//! the clients (plans, heartbeats, their list of brokers), the network's fault modes and the
//! fault events: worker kills, restarts and departures; broker crashes and restarts;
//! partitions between groups of brokers, between a broker and its workers, and around single
//! processes.
//!
//! Every interval of the cluster (SWIM probes and suspicion, digests, introductions, the
//! clients' failover window, the sockets' reconnect interval) is the production default
//! divided by [`TIME_SCALE`], as the engine's heartbeat already is, so that a run is short in
//! simulated time while keeping the defaults' proportions.

use std::fmt;
use std::time::Duration;

use mpreg_broker::cluster::membership::SwimConfig;
use mpreg_broker::engine::{ClusterConfig, EngineConfig};
use mpreg_protocol::peer::PeerEndpoints;
use mpreg_protocol::BrokerId;

use super::super::client::{ClientScript, Failover};
use super::super::clock::SimTime;
use super::super::functions::FUNCTIONS;
use super::super::network::{Cut, NetFaults, ProcessId};
use super::super::plan_gen::RESOURCES;
use super::super::rng::Rng;
use super::super::scenario::{engine_config, Fault};
use super::super::worker::WorkerSpec;
use super::links::Reconnect;

/// Production intervals divided by this.
pub const TIME_SCALE: u32 = 5;
/// Longest partition, and longest time a crashed broker stays down.
const LONGEST_OUTAGE_MS: u64 = 1500;
/// How long after a plan's deadline a client stops waiting.
pub const GRACE: Duration = Duration::from_millis(1000);

/// The cluster settings of every broker: the production defaults scaled down.
pub fn cluster_template() -> ClusterConfig {
    let d = SwimConfig::default();
    let mut c = ClusterConfig::new(
        "sim".into(),
        BrokerId(ulid::Ulid(0)),
        PeerEndpoints::default(),
        Vec::new(),
    );
    c.swim = SwimConfig {
        probe_interval: d.probe_interval / TIME_SCALE,
        probe_timeout: d.probe_timeout / TIME_SCALE,
        indirect: d.indirect,
        suspicion_timeout: d.suspicion_timeout / TIME_SCALE,
        dead_retention: d.dead_retention / TIME_SCALE,
        retransmit_factor: d.retransmit_factor,
        rumour_ttl: d.rumour_ttl / TIME_SCALE,
    };
    c.digest_interval /= TIME_SCALE;
    c.hello_interval /= TIME_SCALE;
    c.ack_timeout /= TIME_SCALE;
    c
}

/// libzmq's reconnect interval (100 ms doubling to 5 s), scaled.
pub fn reconnect() -> Reconnect {
    Reconnect {
        first: Duration::from_millis(100) / TIME_SCALE,
        max: Duration::from_secs(5) / TIME_SCALE,
    }
}

/// ZMTP heartbeat timeout of the peer sockets (3 s), scaled: a partition longer than this
/// resets the brokers' connections across it.
pub fn heartbeat_timeout() -> Duration {
    Duration::from_secs(3) / TIME_SCALE
}

/// A broker of the run.
#[derive(Debug, Clone)]
pub struct BrokerSpec {
    /// When it first starts.
    pub start: SimTime,
    /// The brokers it is given as seeds.
    pub seeds: Vec<ProcessId>,
}

/// Everything a cluster run does, from its seed.
pub struct ClusterScenario {
    /// The engine settings (with the cluster template).
    pub config: EngineConfig,
    /// Brokers (process ids 0, 1, ...).
    pub brokers: Vec<BrokerSpec>,
    /// Workers (their process ids follow the brokers').
    pub workers: Vec<WorkerSpec>,
    /// Clients (their process ids follow the workers').
    pub clients: Vec<(SimTime, ClientScript)>,
    /// Fault events, every process's first start included.
    pub faults: Vec<(SimTime, Fault)>,
    /// The network's fault modes.
    pub net: NetFaults,
    /// Clients act until then.
    pub active: SimTime,
    /// The last fault is over then (the last event, the end of the last partition, the end of
    /// message loss).
    pub quiet_from: SimTime,
    /// The run ends then at the latest.
    pub horizon: SimTime,
}

impl ClusterScenario {
    /// The scenario of a seed (drawing from `rng`, seeded with it), with `lo..=hi` brokers.
    pub fn generate(rng: &mut Rng, (lo, hi): (u32, u32)) -> ClusterScenario {
        let mut config = engine_config();
        config.cluster = Some(cluster_template());
        let n = rng.range(u64::from(lo.max(1)), u64::from(hi.max(lo.max(1)))) as u32;
        let active_ms = rng.range(600, 2000);
        let active = SimTime::from_ms(active_ms);
        let broker = |i: u32| ProcessId(i);
        let mut faults = Vec::new();
        let mut brokers = Vec::new();
        for i in 0..n {
            let seeds = match i {
                0 if n > 1 && rng.percent(50) => vec![broker(1)],
                0 => Vec::new(),
                _ if rng.percent(60) => vec![broker(0)],
                _ => (0..n).filter(|&j| j != i).map(broker).collect(),
            };
            let start = if i == 0 || rng.percent(70) {
                SimTime(rng.range(0, 20_000))
            } else {
                SimTime::from_ms(rng.range(0, active_ms))
            };
            faults.push((start, Fault::Restart(broker(i))));
            brokers.push(BrokerSpec { start, seeds });
        }
        let n_workers = rng.range(u64::from(n), u64::from(2 * n + 1)) as u32;
        let mut workers = Vec::new();
        for w in 0..n_workers {
            let mut functions: Vec<String> = FUNCTIONS
                .iter()
                .filter(|_| rng.percent(45))
                .map(|f| f.to_string())
                .collect();
            if functions.is_empty() {
                functions.push(rng.pick(FUNCTIONS).to_string());
            }
            let resources = RESOURCES
                .iter()
                .filter(|_| rng.percent(40))
                .map(|r| r.to_string())
                .collect();
            let mut attached: Vec<ProcessId> = vec![broker(w % n)];
            if n > 1 && rng.percent(30) {
                for _ in 0..rng.range(1, 2) {
                    let b = broker(rng.below(u64::from(n)) as u32);
                    if !attached.contains(&b) {
                        attached.push(b);
                    }
                }
            }
            workers.push(WorkerSpec {
                functions,
                resources,
                capacity: rng.range(1, 6) as u32,
                brokers: attached,
            });
            let start = if rng.percent(70) {
                rng.range(0, 30_000)
            } else {
                rng.range(0, active.0)
            };
            faults.push((SimTime(start), Fault::Restart(ProcessId(n + w))));
        }
        let n_clients = rng.range(1, 4) as u32;
        let failover = Failover {
            silence: Duration::from_secs(1) / TIME_SCALE,
            grace: GRACE,
            deadlines: (config.default_deadline, config.max_deadline),
        };
        let mut clients = Vec::new();
        for _ in 0..n_clients {
            let heartbeat = rng
                .percent(20)
                .then(|| Duration::from_millis(rng.range(100, 250)));
            let vanish_at =
                heartbeat.map(|_| SimTime::from_ms(rng.range(active_ms / 3, active_ms)));
            let first = rng.below(u64::from(n)) as u32;
            let script = ClientScript {
                plans: rng.range(1, 12) as u32,
                heartbeat,
                vanish_at,
                active_until: active,
                offers: workers.clone(),
                brokers: (0..n).map(|i| broker((first + i) % n)).collect(),
                failover: Some(failover),
            };
            clients.push((SimTime(rng.range(0, 100_000)), script));
        }
        let mut cuts = Vec::new();
        let outage =
            |rng: &mut Rng, lo: u64| Duration::from_millis(rng.range(lo, LONGEST_OUTAGE_MS));
        let worker_id = |rng: &mut Rng| ProcessId(n + rng.below(u64::from(n_workers)) as u32);
        if rng.percent(30) {
            for _ in 0..rng.range(1, 2) {
                let (w, at) = (worker_id(rng), SimTime::from_ms(rng.range(50, active_ms)));
                faults.push((at, Fault::Kill(w)));
                if rng.percent(80) {
                    faults.push((at.after(outage(rng, 50)), Fault::Restart(w)));
                }
            }
        }
        if rng.percent(10) {
            let (w, at) = (worker_id(rng), SimTime::from_ms(rng.range(50, active_ms)));
            faults.push((at, Fault::Leave(w)));
            faults.push((at.after(outage(rng, 100)), Fault::Restart(w)));
        }
        if rng.percent(35) {
            // A broker crashes; most come back as a new incarnation.
            let b = broker(rng.below(u64::from(n)) as u32);
            let at = SimTime::from_ms(rng.range(100, active_ms)).max(brokers[b.0 as usize].start);
            faults.push((at, Fault::Kill(b)));
            // A broker that is another's only seed always comes back: a broker whose seeds
            // are all gone for good can never find the cluster (discovery starts at the
            // seeds), so the views could never converge.
            let only_seed = brokers.iter().any(|s| s.seeds == [b]);
            if only_seed || rng.percent(80) {
                faults.push((at.after(outage(rng, 100)), Fault::Restart(b)));
            }
        }
        if n > 2 && rng.percent(25) {
            // The brokers split in two groups.
            let mut side: Vec<ProcessId> = (0..n).map(broker).filter(|_| rng.percent(50)).collect();
            if side.is_empty() {
                side.push(broker(0));
            }
            if side.len() < n as usize {
                let other = (0..n).map(broker).filter(|b| !side.contains(b)).collect();
                let from = SimTime::from_ms(rng.range(0, active_ms));
                let until = from.after(outage(rng, 100));
                cuts.push(Cut {
                    side,
                    other: Some(other),
                    from,
                    until,
                });
            }
        } else if n == 2 && rng.percent(25) {
            let from = SimTime::from_ms(rng.range(0, active_ms));
            let until = from.after(outage(rng, 100));
            cuts.push(Cut {
                side: vec![broker(0)],
                other: Some(vec![broker(1)]),
                from,
                until,
            });
        }
        if rng.percent(15) {
            // A broker loses its workers (but not its peers or clients).
            let b = broker(rng.below(u64::from(n)) as u32);
            let theirs: Vec<ProcessId> = (0..n_workers)
                .filter(|&w| workers[w as usize].brokers.contains(&b))
                .map(|w| ProcessId(n + w))
                .collect();
            if !theirs.is_empty() {
                let from = SimTime::from_ms(rng.range(0, active_ms));
                let until = from.after(outage(rng, 100));
                cuts.push(Cut {
                    side: vec![b],
                    other: Some(theirs),
                    from,
                    until,
                });
            }
        }
        if rng.percent(20) {
            let processes = u64::from(n + n_workers + n_clients);
            let p = ProcessId(rng.below(processes) as u32);
            let from = SimTime::from_ms(rng.range(0, active_ms));
            cuts.push(Cut::isolate(p, from, from.after(outage(rng, 50))));
        }
        let net = NetFaults {
            delay_us: (50, rng.range(300, 10_000)),
            loss_percent: if rng.percent(10) { rng.range(1, 3) } else { 0 },
            peer_loss_percent: if rng.percent(15) { rng.range(1, 5) } else { 0 },
            gossip_loss_percent: if rng.percent(20) { rng.range(1, 10) } else { 0 },
            // Loss lasts while the clients act, then the network heals.
            loss_until: active,
            reorder: rng.percent(5),
            hwm: if rng.percent(5) {
                rng.range(2, 6) as usize
            } else {
                usize::MAX
            },
            cuts,
        };
        faults.sort_by_key(|&(at, _)| at);
        let lossy = net.loss_percent + net.peer_loss_percent + net.gossip_loss_percent > 0;
        // A probe lost (or held by a partition) just before the network heals is reported as
        // a failed probe at the next probe period, and the suspicion it raises takes a round
        // trip to refute: the network's faults are over that much after it heals.
        let settle = cluster_template().swim.probe_interval * 2;
        let quiet_from = faults
            .iter()
            .map(|(at, _)| *at)
            .chain(net.cuts.iter().map(|c| c.until.after(settle)))
            .chain(lossy.then_some(net.loss_until.after(settle)))
            .max()
            .unwrap_or(SimTime::ZERO);
        let horizon = active
            .max(quiet_from)
            .after(config.max_deadline * 2)
            .after(GRACE)
            .after(Duration::from_millis(LONGEST_OUTAGE_MS + 3000));
        ClusterScenario {
            config,
            brokers,
            workers,
            clients,
            faults,
            net,
            active,
            quiet_from,
            horizon,
        }
    }
}

impl fmt::Display for ClusterScenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} brokers; active until {}, quiet from {}, horizon {}",
            self.brokers.len(),
            self.active,
            self.quiet_from,
            self.horizon
        )?;
        for (i, b) in self.brokers.iter().enumerate() {
            writeln!(f, "broker p{i}: starts {}, seeds {:?}", b.start, b.seeds)?;
        }
        let n = self.brokers.len();
        for (i, w) in self.workers.iter().enumerate() {
            writeln!(
                f,
                "worker p{}: functions {:?} resources {:?} capacity {} brokers {:?}",
                n + i,
                w.functions,
                w.resources,
                w.capacity,
                w.brokers
            )?;
        }
        for (i, (at, c)) in self.clients.iter().enumerate() {
            writeln!(
                f,
                "client p{}: starts {at}, {} plans, heartbeat {:?}, vanishes {:?}, brokers {:?}",
                n + self.workers.len() + i,
                c.plans,
                c.heartbeat,
                c.vanish_at,
                c.brokers
            )?;
        }
        writeln!(f, "network: {:?}", self.net)?;
        write!(f, "faults: {:?}", self.faults)
    }
}
