//! Twenty brokers as processes on this machine (issue 11, "Scale"): the idle cluster traffic
//! per broker at 5, 10 and 20 brokers grows at most linearly with the number of peers, and the
//! membership (and catalogue) views of every broker converge within 3 s after a join and after
//! a `kill -9`.
//!
//! One test in its own binary: cargo runs test binaries one after another, so nothing else of
//! this suite competes with the twenty brokers for the two cores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::{connect, counter, view, View};
use mpreg::Client;
use mpreg_node::NodeBuilder;
use mpreg_protocol::peer::MemberState;
use mpreg_tests::{start_broker, start_broker_cluster, BrokerProc};

/// Longest time a join or a crash may take to reach every broker's view.
const CONVERGENCE: Duration = Duration::from_secs(3);

/// The idle window over which traffic is measured.
const WINDOW: Duration = Duration::from_secs(4);

/// Quiet time before a measurement: the rumours of the joins (piggybacked on probes for
/// `SwimConfig::rumour_ttl`, 3.5 s) are not idle traffic.
const SETTLE: Duration = Duration::from_secs(4);

/// Starts the broker `name` of cluster `cluster` seeded by `seed` (a peer endpoint).
fn join(cluster: &str, name: &str, seed: &str) -> BrokerProc {
    let any = "tcp://127.0.0.1:*";
    start_broker(
        &[
            "--name",
            name,
            "--cluster",
            cluster,
            "--peer-endpoint",
            any,
            "--gossip-endpoint",
            any,
            "--peer",
            seed,
        ],
        &[],
    )
}

/// Polls every broker's view until all are equal and hold exactly `expected` alive members
/// (by name); returns how long it took since `start`, or panics `limit` after `start`.
async fn converge(
    clients: &[Client],
    expected: &[String],
    start: Instant,
    limit: Duration,
    what: &str,
) -> Duration {
    loop {
        let mut views: Vec<View> = Vec::with_capacity(clients.len());
        for c in clients {
            views.push(view(c).await);
        }
        let names: Vec<String> = views[0].keys().map(|(n, _)| n.clone()).collect();
        if views.iter().all(|v| *v == views[0]) && names == expected {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            let sizes: Vec<usize> = views.iter().map(|v| v.len()).collect();
            panic!("{what}: no agreement within {limit:?}; alive members seen: {sizes:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Cluster upkeep traffic per broker per second: gossip received from every peer plus control
/// messages sent (probes, acknowledgements), over [`WINDOW`] of idleness after [`SETTLE`].
async fn idle_bytes_per_broker(clients: &[Client]) -> f64 {
    async fn total(clients: &[Client]) -> u64 {
        let mut sum = 0;
        for c in clients {
            sum += counter(c, "gossip_bytes_received").await
                + counter(c, "peer_control_bytes_sent").await;
        }
        sum
    }
    tokio::time::sleep(SETTLE).await;
    let before = total(clients).await;
    let start = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let after = total(clients).await;
    (after - before) as f64 / start.elapsed().as_secs_f64() / clients.len() as f64
}

fn names(cluster: &str, n: usize) -> Vec<String> {
    let mut all: Vec<String> = (1..=n).map(|i| format!("{cluster}-{i}")).collect();
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_brokers_converge_and_gossip_grows_linearly() {
    let cluster = "scale";
    let mut brokers = start_broker_cluster(cluster, 5, &[]);
    let seed = brokers[0].peer.clone().unwrap();
    // A worker on broker 2, so that the views compared carry catalogue entries too.
    let node = NodeBuilder::new("scale-node")
        .broker(&brokers[1].worker)
        .builtins()
        .start()
        .unwrap();
    assert!(node.wait_registered(Duration::from_secs(10)).await);
    let mut clients = Vec::new();
    for b in &brokers {
        clients.push(connect(b).await);
    }
    let mut traffic = Vec::new();
    for size in [5usize, 10, 19] {
        while brokers.len() < size {
            let name = format!("{cluster}-{}", brokers.len() + 1);
            let b = join(cluster, &name, &seed);
            clients.push(connect(&b).await);
            brokers.push(b);
        }
        converge(
            &clients,
            &names(cluster, size),
            Instant::now(),
            Duration::from_secs(20),
            "grow",
        )
        .await;
        if size != 19 {
            traffic.push((size, idle_bytes_per_broker(&clients).await));
        }
    }

    // A join: the 20th broker, seeded by broker 1, in every view within 3 s of its start.
    let started = Instant::now();
    let b = join(cluster, &format!("{cluster}-20"), &seed);
    clients.push(connect(&b).await);
    brokers.push(b);
    let joined = converge(&clients, &names(cluster, 20), started, CONVERGENCE, "join").await;
    traffic.push((20, idle_bytes_per_broker(&clients).await));

    // Functions are known everywhere too (the views compared include them).
    let functions = view(&clients[19]).await;
    assert!(
        functions
            .iter()
            .any(|((name, _), funs)| name == "scale-2" && funs.contains(&"echo".to_string())),
        "{functions:?}"
    );

    // A kill -9 of broker 7: out of every survivor's view within 3 s.
    let victim = 6;
    let killed_at = Instant::now();
    brokers[victim].proc.signal("KILL");
    let _ = brokers[victim].proc.wait_exit(Duration::from_secs(2));
    let mut survivors = clients;
    survivors.remove(victim);
    let mut expected = names(cluster, 20);
    expected.retain(|n| *n != format!("{cluster}-7"));
    let detected = converge(&survivors, &expected, killed_at, CONVERGENCE, "kill -9").await;
    // And declared dead (not only suspected) everywhere within 3 s of the kill as well.
    let victim_name = format!("{cluster}-7");
    cluster_support::until(CONVERGENCE, "dead everywhere", || async {
        for c in &survivors {
            let reply = cluster_support::cluster(c).await;
            let state = reply
                .members
                .iter()
                .find(|m| m.name == victim_name)
                .map(|m| m.state);
            if !matches!(state, Some(MemberState::Dead) | None) {
                return false;
            }
        }
        true
    })
    .await;
    let dead = killed_at.elapsed();
    eprintln!("scale: a join converged {joined:?} after the new broker's start");
    eprintln!(
        "scale: a kill -9: out of every view {detected:?} after the kill, dead everywhere after {dead:?}"
    );
    assert!(
        dead <= CONVERGENCE,
        "dead everywhere only {dead:?} after the kill"
    );
    for (n, bytes) in &traffic {
        eprintln!(
            "scale: {n} brokers: {bytes:.0} idle bytes/s per broker ({:.1} per peer)",
            bytes / (*n as f64 - 1.0)
        );
    }
    // Linear at most: per peer, the traffic of a broker does not grow with the cluster (a
    // margin of 1.6x for noise; an all-to-all relay of every digest would grow 5x from 5 to 20).
    let per_peer = |(n, b): &(usize, f64)| b / (*n as f64 - 1.0);
    let base = per_peer(&traffic[0]);
    for t in &traffic[1..] {
        assert!(
            per_peer(t) <= base * 1.6,
            "traffic per peer grew from {base:.0} B/s at 5 brokers to {:.0} B/s at {}",
            per_peer(t),
            t.0
        );
    }
    node.shutdown(Duration::from_millis(200)).await;
}
