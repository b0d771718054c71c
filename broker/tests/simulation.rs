//! The seeded simulation of a broker with clients, workers, a faulty network and a simulated
//! clock (the design is in `sim/mod.rs`). Every seed is one run; every run checks the
//! properties of `sim/properties.rs` and names its seed when one fails.
//!
//! - `cargo test -p mpreg-broker --test simulation`: 200 seeds (0..200).
//! - `SIM_SEEDS=10000 cargo test --release -p mpreg-broker --test simulation -- --nocapture`:
//!   more seeds (`SIM_FIRST_SEED` moves the range); prints every failing seed.
//! - `SIM_SEED=1234 cargo test -p mpreg-broker --test simulation seeds -- --nocapture`:
//!   replays one seed, printing every event.
//! - `scripts/sim.sh` wraps both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use sim::mutation::Mutation;
use sim::network::NetStats;
use sim::properties::Stats;
use sim::{run, Report, SimConfig};

/// Seeds run by a plain `cargo test`.
const DEFAULT_SEEDS: u64 = 200;

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
    )
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
    net: NetStats,
    events: u64,
    /// Failing seeds, with the first violation or the panic.
    failures: Vec<(u64, String)>,
}

/// Runs seeds `first..first + count` on every core (each run is single-threaded and
/// deterministic; runs are independent).
fn run_seeds(first: u64, count: u64) -> Totals {
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
                };
                let outcome = run_caught(sim);
                let mut totals = results.lock().expect("no panics while holding it");
                match outcome {
                    Ok(report) => {
                        totals.stats.add(&report.stats);
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

#[test]
fn seeds() {
    if let Some(seed) = env_u64("SIM_SEED") {
        let sim = SimConfig {
            seed,
            trace: true,
            mutation: Mutation::None,
        };
        let report = run_caught(sim).unwrap_or_else(|p| panic!("seed {seed} panicked: {p}"));
        println!("seed {seed}: {:?}", report.stats);
        if let Some(v) = report.violation {
            panic!("seed {seed}: {v}");
        }
        return;
    }
    let count = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("SIM_FIRST_SEED").unwrap_or(0);
    let started = Instant::now();
    let Totals {
        stats,
        net,
        events,
        failures,
    } = run_seeds(first, count);
    println!(
        "{count} seeds from {first} in {:.2?}: {events} events; {} messages ({} lost, {} held by partitions, {} refused as full, {} to closed ends); {} plans sent, {} received, {} results, errors by code {:?}, {} tasks, {} lost with their worker, {} workers and {} clients expired",
        started.elapsed(),
        net.sent,
        net.lost,
        net.held,
        net.full,
        net.dropped_closed,
        stats.plans_sent,
        stats.plans_received,
        stats.results,
        stats.errors,
        stats.tasks,
        stats.orphaned,
        stats.workers_expired,
        stats.clients_expired,
    );
    let listed: Vec<String> = failures
        .iter()
        .map(|(seed, why)| format!("  seed {seed}: {why}"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed:\n{}\nreplay one with: SIM_SEED=<seed> cargo test -p mpreg-broker --test simulation seeds -- --nocapture",
        failures.len(),
        listed.join("\n")
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
fn a_seed_replays_identically() {
    let once = |seed| {
        run(SimConfig {
            seed,
            trace: false,
            mutation: Mutation::None,
        })
    };
    let (a, b, c) = (once(7), once(7), once(8));
    assert_eq!(a.digest, b.digest, "seed 7 ran differently twice");
    assert_eq!(format!("{:?}", a.stats), format!("{:?}", b.stats));
    assert_eq!(a.events, b.events);
    assert_ne!(a.digest, c.digest, "seeds 7 and 8 ran the same");
}

/// Each deliberately broken broker (or model) is caught by the property it breaks, within a
/// few seeds: the properties can fail.
#[test]
fn every_property_can_fail() {
    for &mutation in Mutation::ALL {
        let caught = (0..60).find_map(|seed| {
            let report = run_caught(SimConfig {
                seed,
                trace: false,
                mutation,
            })
            .unwrap_or_else(|p| panic!("{mutation:?} seed {seed} panicked: {p}"));
            report.violation.map(|v| (seed, v))
        });
        let Some((seed, v)) = caught else {
            panic!("{mutation:?} went unnoticed for 60 seeds");
        };
        println!("{mutation:?}: seed {seed}: {v}");
        assert!(
            mutation.breaks().contains(&v.property),
            "{mutation:?} (seed {seed}) was caught as {v}, expected {:?}",
            mutation.breaks()
        );
    }
}
