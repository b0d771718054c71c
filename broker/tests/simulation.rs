//! The seeded simulation of brokers with clients, workers, a faulty network and a simulated
//! clock (the design is in `sim/mod.rs`). Every seed is one run; every run checks its
//! properties and names its seed (and how to replay it) when one fails. Two kinds of runs:
//! one broker checked call by call (`sim/properties.rs`), and clusters of brokers with crashes,
//! restarts and partitions checked end to end (`sim/cluster/`).
//!
//! - `cargo test -p mpreg-broker --test simulation`: 200 seeds of each (0..200), clusters of
//!   2 to 5 brokers.
//! - `SIM_SEEDS=10000 cargo test --release -p mpreg-broker --test simulation -- --nocapture`:
//!   more seeds (`SIM_FIRST_SEED` moves the range, `SIM_BROKERS=3` or `SIM_BROKERS=2-8` sets
//!   the cluster sizes); prints every failing seed.
//! - `SIM_SEED=1234 cargo test -p mpreg-broker --test simulation cluster_seeds -- --nocapture`
//!   (or `single_broker_seeds`): replays one seed, printing every event.
//! - `hundred_brokers`: a hundred brokers converging after they join, after a crash and after
//!   a restart (`SIM_SCALE_BROKERS` sets the number).
//! - `scripts/sim.sh` wraps them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use sim::cluster::check::ClusterStats;
use sim::mutation::Mutation;
use sim::network::NetStats;
use sim::properties::Stats;
use sim::{run, Report, SimConfig};

/// Seeds run by a plain `cargo test`, of each kind.
const DEFAULT_SEEDS: u64 = 200;
/// Cluster sizes by default.
const DEFAULT_BROKERS: (u32, u32) = (2, 5);
/// Seeds tried per mutation before it counts as unnoticed.
const MUTATION_SEEDS: u64 = 60;

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
    )
}

/// `SIM_BROKERS`: `N` or `LO-HI`.
fn brokers() -> (u32, u32) {
    let Ok(text) = std::env::var("SIM_BROKERS") else {
        return DEFAULT_BROKERS;
    };
    let number = |t: &str| -> u32 {
        t.trim()
            .parse()
            .unwrap_or_else(|_| panic!("SIM_BROKERS={text:?} is not N or LO-HI"))
    };
    match text.split_once('-') {
        Some((lo, hi)) => (number(lo), number(hi)),
        None => (number(&text), number(&text)),
    }
}

/// How to replay one seed of this kind.
fn replay_hint(cluster: Option<(u32, u32)>) -> String {
    match cluster {
        None => "SIM_SEED=<seed> cargo test -p mpreg-broker --test simulation single_broker_seeds -- --nocapture (or scripts/sim.sh --seed <seed>)".into(),
        Some(range) => {
            let sizes = if range == DEFAULT_BROKERS {
                String::new()
            } else {
                format!("SIM_BROKERS={}-{} ", range.0, range.1)
            };
            format!("SIM_SEED=<seed> {sizes}cargo test -p mpreg-broker --test simulation cluster_seeds -- --nocapture (or {sizes}scripts/sim.sh --cluster --seed <seed>)")
        }
    }
}

/// Runs `sim`, turning a panic (an engine or simulator crash) into a failure message.
fn run_caught(sim: SimConfig) -> Result<Report, String> {
    catch_unwind(AssertUnwindSafe(|| run(sim))).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())
    })
}

/// What many runs did.
#[derive(Default)]
struct Totals {
    stats: Stats,
    cluster: ClusterStats,
    net: NetStats,
    events: u64,
    /// Failing seeds, with the first violation or the panic.
    failures: Vec<(u64, String)>,
}

/// Runs seeds `first..first + count` on every core (each run is single-threaded and
/// deterministic; runs are independent).
fn run_seeds(first: u64, count: u64, cluster: Option<(u32, u32)>) -> Totals {
    let next = AtomicU64::new(first);
    let results = Mutex::new(Totals::default());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + count {
                    return;
                }
                let sim = SimConfig {
                    seed,
                    trace: false,
                    mutation: Mutation::None,
                    cluster,
                };
                let outcome = run_caught(sim);
                let mut totals = results.lock().expect("no panics while holding it");
                match outcome {
                    Ok(report) => {
                        totals.stats.add(&report.stats);
                        totals.cluster.add(&report.cluster);
                        totals.net.add(&report.net);
                        totals.events += report.events;
                        if let Some(v) = report.violation {
                            println!("seed {seed} FAILED: {v}");
                            totals.failures.push((seed, v.to_string()));
                        }
                    }
                    Err(panic) => {
                        println!("seed {seed} PANICKED: {panic}");
                        totals.failures.push((seed, format!("panic: {panic}")));
                    }
                }
            });
        }
    });
    let mut totals = results.into_inner().expect("threads joined");
    totals.failures.sort();
    totals
}

/// Replays `SIM_SEED` with its trace, if set (true: done).
fn replay(cluster: Option<(u32, u32)>) -> bool {
    let Some(seed) = env_u64("SIM_SEED") else {
        return false;
    };
    let sim = SimConfig {
        seed,
        trace: true,
        mutation: Mutation::None,
        cluster,
    };
    let report = run_caught(sim).unwrap_or_else(|p| panic!("seed {seed} panicked: {p}"));
    println!("seed {seed}: {:?} {:?}", report.stats, report.cluster);
    if let Some(v) = report.violation {
        panic!("seed {seed}: {v}");
    }
    true
}

/// Runs the seeds `SIM_SEEDS` and `SIM_FIRST_SEED` say, fails naming every failing seed.
fn many(cluster: Option<(u32, u32)>) -> (u64, Totals) {
    let count = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("SIM_FIRST_SEED").unwrap_or(0);
    let started = Instant::now();
    let totals = run_seeds(first, count, cluster);
    let net = &totals.net;
    println!(
        "{count} seeds from {first} in {:.2?}: {} events; {} messages ({} on peer links, {} gossip; {} lost, {} held by partitions, {} refused as full, {} to closed ends)",
        started.elapsed(),
        totals.events,
        net.sent,
        net.peer,
        net.gossip,
        net.lost,
        net.held,
        net.full,
        net.dropped_closed,
    );
    let listed: Vec<String> = totals
        .failures
        .iter()
        .map(|(seed, why)| format!("  seed {seed}: {why}"))
        .collect();
    assert!(
        totals.failures.is_empty(),
        "{} of {count} seeds failed:\n{}\nreplay one with: {}",
        totals.failures.len(),
        listed.join("\n"),
        replay_hint(cluster)
    );
    (count, totals)
}

#[test]
fn single_broker_seeds() {
    if replay(None) {
        return;
    }
    let (count, Totals { stats, .. }) = many(None);
    println!(
        "one broker: {} plans sent, {} received, {} results, errors by code {:?}, {} tasks, {} lost with their worker, {} workers and {} clients expired",
        stats.plans_sent,
        stats.plans_received,
        stats.results,
        stats.errors,
        stats.tasks,
        stats.orphaned,
        stats.workers_expired,
        stats.clients_expired,
    );
    if count >= DEFAULT_SEEDS {
        // The runs must keep reaching every outcome, or the properties check little.
        for code in [204, 205, 206, 300, 301, 302, 303, 304, 305] {
            assert!(
                stats.errors.get(&code).copied().unwrap_or(0) > 0,
                "no seed produced error {code}: {:?}",
                stats.errors
            );
        }
        assert!(stats.results > stats.plans_received / 4, "{stats:?}");
        assert!(
            stats.orphaned > 0 && stats.workers_expired > 0 && stats.clients_expired > 0,
            "{stats:?}"
        );
    }
}

#[test]
fn cluster_seeds() {
    let range = brokers();
    if replay(Some(range)) {
        return;
    }
    let (count, Totals { cluster: c, .. }) = many(Some(range));
    let mean_ms = c.converge_us as f64 / c.converged.max(1) as f64 / 1000.0;
    println!(
        "clusters of {}-{} brokers: {} brokers, {} crashes; {} plans sent, {} sent again after {} moves, {} results, errors by code {:?} (901, 904: the client's own); {} steps run, {} of them twice at once after a failure, {} forwarded; views converged in {} runs, {mean_ms:.0} ms after the last fault on average, {:.0} ms at most",
        range.0,
        range.1,
        c.brokers,
        c.crashes,
        c.plans_sent,
        c.resent,
        c.moves,
        c.results,
        c.errors,
        c.executions,
        c.duplicates,
        c.forwarded,
        c.converged,
        c.converge_max_us as f64 / 1000.0,
    );
    if count >= DEFAULT_SEEDS {
        // The runs must keep reaching the cluster's situations, or the properties check little.
        assert_eq!(c.converged, count, "{c:?}");
        assert!(c.results > c.plans_sent / 4, "{c:?}");
        assert!(
            c.forwarded > 0 && c.crashes > 0 && c.moves > 0 && c.resent > 0,
            "{c:?}"
        );
        assert!(c.duplicates > 0, "no step ever ran twice: {c:?}");
        for code in [300, 301, 302, 303, 305, 904] {
            assert!(
                c.errors.get(&code).copied().unwrap_or(0) > 0,
                "no seed produced error {code}: {:?}",
                c.errors
            );
        }
    }
}

#[test]
fn a_seed_replays_identically() {
    for cluster in [None, Some(DEFAULT_BROKERS)] {
        let once = |seed| {
            run(SimConfig {
                seed,
                trace: false,
                mutation: Mutation::None,
                cluster,
            })
        };
        let (a, b, c) = (once(7), once(7), once(8));
        assert_eq!(a.digest, b.digest, "seed 7 ran differently twice");
        assert_eq!(format!("{:?}", a.stats), format!("{:?}", b.stats));
        assert_eq!(format!("{:?}", a.cluster), format!("{:?}", b.cluster));
        assert_eq!(a.events, b.events);
        assert_ne!(a.digest, c.digest, "seeds 7 and 8 ran the same");
    }
}

/// The mutations a kind of run (one broker, or clusters of these sizes) must catch.
type MutationKind = (Option<(u32, u32)>, &'static [Mutation]);

/// Each deliberately broken broker (or model) is caught by the property it breaks, within a
/// few seeds, for one broker and for clusters: the properties can fail.
#[test]
fn every_property_can_fail() {
    let kinds: [MutationKind; 2] = [
        (None, Mutation::ALL),
        (Some(DEFAULT_BROKERS), Mutation::CLUSTER),
    ];
    for (cluster, mutations) in kinds {
        for &mutation in mutations {
            let caught = (0..MUTATION_SEEDS).find_map(|seed| {
                let report = run_caught(SimConfig {
                    seed,
                    trace: false,
                    mutation,
                    cluster,
                })
                .unwrap_or_else(|p| panic!("{mutation:?} seed {seed} panicked: {p}"));
                report.violation.map(|v| (seed, v))
            });
            let Some((seed, v)) = caught else {
                panic!("{mutation:?} ({cluster:?}) went unnoticed for {MUTATION_SEEDS} seeds");
            };
            println!("{mutation:?} ({cluster:?}): seed {seed}: {v}");
            assert!(
                mutation.breaks().contains(&v.property),
                "{mutation:?} ({cluster:?}, seed {seed}) was caught as {v}, expected {:?}",
                mutation.breaks()
            );
        }
    }
}

/// A hundred brokers (`SIM_SCALE_BROKERS` to change it): their views converge after they
/// join, after one of them crashes and after it restarts (see `sim/cluster/scale.rs`); prints
/// how long each took (simulated) and how long simulating it took (real).
#[test]
fn hundred_brokers() {
    let brokers = env_u64("SIM_SCALE_BROKERS").unwrap_or(100) as u32;
    let report = sim::cluster::scale::run(brokers, env_u64("SIM_SEED").unwrap_or(1));
    println!("{report}");
    assert!(report.passed(), "{report}");
}
