//! A run's cast and script, all drawn from its seed: the engine's configuration, the workers
//! (functions, resources, capacity, start time), the clients (how many plans, heartbeats,
//! when they vanish), the network's fault modes and the fault events.

use std::fmt;
use std::time::Duration;

use mpreg_broker::engine::EngineConfig;
use mpreg_protocol::Limits;

use super::client::ClientScript;
use super::clock::SimTime;
use super::functions::FUNCTIONS;
use super::network::{Cut, NetFaults, ProcessId};
use super::plan_gen::RESOURCES;
use super::rng::Rng;
use super::worker::WorkerSpec;

/// A fault event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The worker dies without a word; a broker crashes (its engine is dropped, its
    /// connections reset).
    Kill(ProcessId),
    /// The worker starts again on a new connection (also its first start); a broker starts
    /// as a new incarnation on the same endpoints (also its first start).
    Restart(ProcessId),
    /// The worker leaves gracefully (`disconnect`).
    Leave(ProcessId),
}

/// Everything a run does, from its seed.
pub struct Scenario {
    /// The broker's engine settings.
    pub config: EngineConfig,
    /// Workers (their process ids follow the broker's: 1, 2, ...).
    pub workers: Vec<WorkerSpec>,
    /// Clients (their process ids follow the workers').
    pub clients: Vec<(SimTime, ClientScript)>,
    /// Fault events, including every worker's first start.
    pub faults: Vec<(SimTime, Fault)>,
    /// The network's fault modes.
    pub net: NetFaults,
    /// Clients act until then; faults happen before.
    pub active: SimTime,
    /// The run ends then: every plan's deadline has passed.
    pub horizon: SimTime,
}

/// The broker's process id.
pub const BROKER: ProcessId = ProcessId(0);
/// Longest partition, and longest time a killed worker stays down.
const LONGEST_OUTAGE_MS: u64 = 900;

/// The engine settings of every run: short intervals so that runs are short in simulated
/// time, small limits so that the edges (too many steps, capacity clamping) are reached.
pub fn engine_config() -> EngineConfig {
    EngineConfig {
        name: "sim".into(),
        limits: Limits {
            max_steps: 20,
            ..Limits::default()
        },
        heartbeat: Duration::from_millis(100),
        liveness: 3,
        default_deadline: Duration::from_millis(2000),
        max_deadline: Duration::from_millis(3000),
        max_retries: 2,
        max_worker_capacity: 4,
        client_liveness: 3,
        ..EngineConfig::default()
    }
}

impl Scenario {
    /// The scenario of `seed` (drawing from `rng`, seeded with it).
    pub fn generate(rng: &mut Rng) -> Scenario {
        let config = engine_config();
        let active_ms = rng.range(600, 2000);
        let active = SimTime::from_ms(active_ms);
        let mut faults = Vec::new();
        let n_workers = rng.range(1, 6) as u32;
        let mut workers = Vec::new();
        for w in 0..n_workers {
            let mut functions: Vec<String> = if w == 0 && rng.percent(70) {
                FUNCTIONS.iter().map(|f| f.to_string()).collect()
            } else {
                FUNCTIONS
                    .iter()
                    .filter(|_| rng.percent(55))
                    .map(|f| f.to_string())
                    .collect()
            };
            if functions.is_empty() {
                functions.push(rng.pick(FUNCTIONS).to_string());
            }
            let resources = RESOURCES
                .iter()
                .filter(|_| rng.percent(40))
                .map(|r| r.to_string())
                .collect();
            workers.push(WorkerSpec {
                functions,
                resources,
                capacity: rng.range(1, 6) as u32,
                brokers: vec![BROKER],
            });
            let start = if rng.percent(70) {
                rng.range(0, 30_000)
            } else {
                rng.range(0, active.0)
            };
            faults.push((SimTime(start), Fault::Restart(ProcessId(1 + w))));
        }
        let worker_id = |rng: &mut Rng| ProcessId(1 + rng.below(u64::from(n_workers)) as u32);
        let n_clients = rng.range(1, 4) as u32;
        let mut clients = Vec::new();
        for _ in 0..n_clients {
            let heartbeat = rng
                .percent(30)
                .then(|| Duration::from_millis(rng.range(100, 250)));
            let vanish_at = match heartbeat {
                Some(_) => Some(SimTime::from_ms(rng.range(active_ms / 3, active_ms))),
                None => rng
                    .percent(5)
                    .then(|| SimTime::from_ms(rng.range(0, active_ms))),
            };
            let script = ClientScript {
                plans: rng.range(1, 12) as u32,
                heartbeat,
                vanish_at,
                active_until: active,
                offers: workers.clone(),
                brokers: vec![BROKER],
                failover: None,
            };
            clients.push((SimTime(rng.range(0, 100_000)), script));
        }
        let mut cuts = Vec::new();
        if rng.percent(35) {
            for _ in 0..rng.range(1, 3) {
                let (w, at) = (worker_id(rng), SimTime::from_ms(rng.range(50, active_ms)));
                faults.push((at, Fault::Kill(w)));
                if rng.percent(80) {
                    let back = at.after(Duration::from_millis(rng.range(50, LONGEST_OUTAGE_MS)));
                    faults.push((back, Fault::Restart(w)));
                }
            }
        }
        if rng.percent(15) {
            let (w, at) = (worker_id(rng), SimTime::from_ms(rng.range(50, active_ms)));
            faults.push((at, Fault::Leave(w)));
            let back = at.after(Duration::from_millis(rng.range(100, 600)));
            faults.push((back, Fault::Restart(w)));
        }
        if rng.percent(30) {
            let processes = u64::from(n_workers + n_clients);
            for _ in 0..rng.range(1, 3) {
                let p = ProcessId(1 + rng.below(processes) as u32);
                let from = SimTime::from_ms(rng.range(0, active_ms));
                let until = from.after(Duration::from_millis(rng.range(50, LONGEST_OUTAGE_MS)));
                cuts.push(Cut::isolate(p, from, until));
            }
        }
        if rng.percent(15) {
            // The broker's own network fails: every worker and client falls silent at once.
            let from = SimTime::from_ms(rng.range(0, active_ms));
            let until = from.after(Duration::from_millis(rng.range(200, LONGEST_OUTAGE_MS)));
            cuts.push(Cut::isolate(BROKER, from, until));
        }
        let net = NetFaults {
            delay_us: (50, rng.range(300, 20_000)),
            loss_percent: if rng.percent(10) { rng.range(1, 5) } else { 0 },
            peer_loss_percent: 0,
            gossip_loss_percent: 0,
            loss_until: SimTime(u64::MAX),
            reorder: rng.percent(10),
            hwm: if rng.percent(10) {
                rng.range(2, 6) as usize
            } else {
                usize::MAX
            },
            cuts,
        };
        let horizon = active
            .after(Duration::from_millis(LONGEST_OUTAGE_MS))
            .after(config.max_deadline)
            .after(Duration::from_millis(1500));
        faults.sort_by_key(|&(at, _)| at);
        Scenario {
            config,
            workers,
            clients,
            faults,
            net,
            active,
            horizon,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "active until {}, horizon {}", self.active, self.horizon)?;
        for (i, w) in self.workers.iter().enumerate() {
            writeln!(
                f,
                "worker p{}: functions {:?} resources {:?} capacity {}",
                i + 1,
                w.functions,
                w.resources,
                w.capacity
            )?;
        }
        for (i, (at, c)) in self.clients.iter().enumerate() {
            writeln!(
                f,
                "client p{}: starts {at}, {} plans, heartbeat {:?}, vanishes {:?}",
                i + 1 + self.workers.len(),
                c.plans,
                c.heartbeat,
                c.vanish_at
            )?;
        }
        writeln!(f, "network: {:?}", self.net)?;
        write!(f, "faults: {:?}", self.faults)
    }
}
