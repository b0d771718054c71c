//! `mpreg-bench cluster`: what a cluster of brokers costs, against the single-broker figures of
//! the same run.
//!
//! 1. Two brokers seeded one by the other, one `mpreg-node` on broker 2. A *local* step: a
//!    client of broker 2; a *forwarded* step: a client of broker 1, which has no worker and
//!    forwards it one hop to broker 2 (same node, same broker 2 dispatch: the difference is the
//!    hop). Sequential single-step plans (p50) and pipelined plans/s, in alternating rounds so
//!    that noise on a shared machine hits both alike; each round gives a ratio, and the report
//!    holds their median, min and max (goals: forwarded p50 at most 1.6x local, pipelined
//!    forwarded at least 0.5x local).
//! 2. The scale scenario of `tests/tests/cluster_scale.rs`: twenty brokers as processes; the
//!    time until every broker's view agrees after a join, and until every survivor holds a
//!    broker killed with `kill -9` dead (repeated: kill, restart as a new incarnation, ...),
//!    and the idle upkeep traffic per broker at 5, 10 and 20 brokers.

use std::time::{Duration, Instant};

use mpreg_protocol::peer::MemberState;
use mpreg_protocol::{
    compact_frame, parse_envelope, BrokerToClient, ClientToBroker, ClusterRequest, Limits,
    StatusRequest,
};
use mpreg_tests::{start_broker, start_broker_cluster, start_node, BrokerProc};
use mpreg_transport::{Context, RawDealer};
use serde_json::json;

use crate::{echo_step, percentile, pipelined, us, write_json, PlanClient};

struct Sizes {
    rounds: usize,
    sequential: usize,
    pipelined: usize,
    window: usize,
    scale_repeats: usize,
}

/// Median, min and max of per-round ratios.
fn spread(mut xs: Vec<f64>) -> serde_json::Value {
    xs.sort_by(f64::total_cmp);
    json!({ "median": xs[xs.len() / 2], "min": xs[0], "max": xs[xs.len() - 1], "rounds": xs.len() })
}

/// A blocking client for `cluster` and `status` requests.
struct Probe {
    dealer: RawDealer,
    next: u64,
}

impl Probe {
    fn new(ctx: &Context, b: &BrokerProc) -> Probe {
        Probe {
            dealer: RawDealer::connect(ctx, &b.client).expect("probe client"),
            next: 0,
        }
    }

    fn ask(&mut self, make: impl FnOnce(u64) -> ClientToBroker) -> BrokerToClient {
        self.next += 1;
        let request = make(self.next);
        let frame = compact_frame(request.kind().as_bytes(), &request.encode_body());
        self.dealer.send(&[frame]).expect("send");
        loop {
            let frames = self
                .dealer
                .recv(Duration::from_secs(10))
                .expect("a reply within 10 s");
            let envelope = parse_envelope(&frames).expect("valid frames");
            let reply = BrokerToClient::decode(envelope.kind, envelope.body, &Limits::default())
                .expect("valid reply");
            if reply.request_id() == Some(self.next) {
                return reply;
            }
        }
    }

    /// (name, incarnation, state, functions) of every member, sorted.
    fn view(&mut self) -> Vec<(String, String, MemberState, Vec<String>)> {
        match self.ask(|id| ClientToBroker::Cluster(ClusterRequest { id })) {
            BrokerToClient::Cluster(c) => {
                let mut v: Vec<_> = c
                    .members
                    .into_iter()
                    .map(|m| (m.name, m.incarnation, m.state, m.functions))
                    .collect();
                v.sort();
                v
            }
            other => panic!("expected a cluster reply, got {other:?}"),
        }
    }

    fn counter(&mut self, name: &str) -> u64 {
        match self.ask(|id| ClientToBroker::Status(StatusRequest { id })) {
            BrokerToClient::Status(s) => s.counters.get(name).copied().unwrap_or(0),
            other => panic!("expected a status reply, got {other:?}"),
        }
    }
}

/// Polls until `done` holds; the time since `since`, or `None` after `limit`.
fn wait_for(since: Instant, limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    loop {
        if done() {
            return Some(since.elapsed());
        }
        if since.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every probe sees the same members alive, exactly `alive` of them (by name).
fn agreed(probes: &mut [Probe], alive: &[String]) -> bool {
    let mut first: Option<Vec<(String, String, Vec<String>)>> = None;
    for p in probes.iter_mut() {
        let view: Vec<(String, String, Vec<String>)> = p
            .view()
            .into_iter()
            .filter(|(_, _, s, _)| *s == MemberState::Alive)
            .map(|(n, i, _, f)| (n, i, f))
            .collect();
        let names: Vec<&String> = view.iter().map(|(n, _, _)| n).collect();
        if names != alive.iter().collect::<Vec<_>>() {
            return false;
        }
        match &first {
            None => first = Some(view),
            Some(f) if *f != view => return false,
            Some(_) => {}
        }
    }
    true
}

/// Every probe holds `name` dead (or has forgotten it).
fn dead_everywhere(probes: &mut [Probe], name: &str) -> bool {
    probes.iter_mut().all(|p| {
        p.view()
            .iter()
            .filter(|(n, ..)| n == name)
            .all(|(_, _, s, _)| *s == MemberState::Dead)
    })
}

fn join(
    cluster: &str,
    name: &str,
    seed: &str,
    at: Option<(&BrokerProc, &str, &str)>,
) -> BrokerProc {
    let mut args = vec![
        "--log-level",
        "warning",
        "--name",
        name,
        "--cluster",
        cluster,
        "--peer",
        seed,
    ];
    match at {
        Some((old, peer, gossip)) => {
            args.extend(["--peer-endpoint", peer, "--gossip-endpoint", gossip]);
            mpreg_tests::start_broker_at(&old.client, &old.worker, &old.events, &args)
        }
        None => {
            let any = "tcp://127.0.0.1:*";
            args.extend(["--peer-endpoint", any, "--gossip-endpoint", any]);
            start_broker(&args, &[])
        }
    }
}

fn names(brokers: &[Option<BrokerProc>]) -> Vec<String> {
    let mut n: Vec<String> = brokers.iter().flatten().map(|b| b.name.clone()).collect();
    n.sort();
    n
}

/// Idle upkeep bytes per broker per second over `window` (gossip received + control sent),
/// after 4 s of quiet (the joins' rumours are piggybacked for 3.5 s: not idle traffic).
fn idle_traffic(probes: &mut [Probe], window: Duration) -> f64 {
    std::thread::sleep(Duration::from_secs(4));
    let total = |probes: &mut [Probe]| -> u64 {
        probes
            .iter_mut()
            .map(|p| p.counter("gossip_bytes_received") + p.counter("peer_control_bytes_sent"))
            .sum()
    };
    let before = total(probes);
    let start = Instant::now();
    std::thread::sleep(window);
    let after = total(probes);
    (after - before) as f64 / start.elapsed().as_secs_f64() / probes.len() as f64
}

/// The scale scenario; returns its JSON block and whether every convergence took at most 3 s.
fn scale(repeats: usize) -> (serde_json::Value, bool) {
    let ctx = Context::new();
    let cluster = "bench-scale";
    let limit = Duration::from_secs(10);
    let first = start_broker_cluster(cluster, 5, &["--log-level", "warning"]);
    let seed = first[0].peer.clone().expect("peer endpoint");
    let mut brokers: Vec<Option<BrokerProc>> = first.into_iter().map(Some).collect();
    let mut traffic = serde_json::Map::new();
    for size in [5usize, 10, 19] {
        while brokers.len() < size {
            let name = format!("{cluster}-{}", brokers.len() + 1);
            brokers.push(Some(join(cluster, &name, &seed, None)));
        }
        let mut probes: Vec<Probe> = brokers
            .iter()
            .flatten()
            .map(|b| Probe::new(&ctx, b))
            .collect();
        let expected = names(&brokers);
        wait_for(Instant::now(), Duration::from_secs(30), || {
            agreed(&mut probes, &expected)
        })
        .expect("the cluster forms");
        if size < 19 {
            let bytes = idle_traffic(&mut probes, Duration::from_secs(4));
            traffic.insert(size.to_string(), json!(bytes));
        }
    }
    // Joins and kills, alternately: the 20th joins; a broker is killed; it comes back (a new
    // incarnation on the same endpoints); the next one is killed; ...
    let (mut joins, mut kills) = (Vec::new(), Vec::new());
    let started = Instant::now();
    brokers.push(Some(join(cluster, &format!("{cluster}-20"), &seed, None)));
    let mut probes: Vec<Probe> = brokers
        .iter()
        .flatten()
        .map(|b| Probe::new(&ctx, b))
        .collect();
    let expected = names(&brokers);
    joins.push(wait_for(started, limit, || agreed(&mut probes, &expected)));
    {
        let bytes = idle_traffic(&mut probes, Duration::from_secs(4));
        traffic.insert("20".to_string(), json!(bytes));
    }
    for k in 0..repeats {
        let victim = 2 + k % 17;
        let mut gone = brokers[victim].take().expect("alive");
        let name = gone.name.clone();
        let (peer, gossip) = (
            gone.peer.clone().expect("peer"),
            gone.gossip.clone().expect("gossip"),
        );
        let killed = Instant::now();
        gone.proc.signal("KILL");
        let _ = gone.proc.wait_exit(Duration::from_secs(5));
        let mut probes: Vec<Probe> = brokers
            .iter()
            .flatten()
            .map(|b| Probe::new(&ctx, b))
            .collect();
        kills.push(wait_for(killed, limit, || {
            dead_everywhere(&mut probes, &name)
        }));
        let restarted = Instant::now();
        brokers[victim] = Some(join(cluster, &name, &seed, Some((&gone, &peer, &gossip))));
        let mut probes: Vec<Probe> = brokers
            .iter()
            .flatten()
            .map(|b| Probe::new(&ctx, b))
            .collect();
        let expected = names(&brokers);
        joins.push(wait_for(restarted, limit, || {
            agreed(&mut probes, &expected)
        }));
    }
    let seconds = |xs: &[Option<Duration>]| -> Vec<Option<f64>> {
        xs.iter().map(|d| d.map(|d| d.as_secs_f64())).collect()
    };
    let ok = |xs: &[Option<Duration>]| {
        xs.iter()
            .all(|d| d.is_some_and(|d| d <= Duration::from_secs(3)))
    };
    let met = ok(&joins) && ok(&kills);
    let present = |xs: &[Option<Duration>]| -> Vec<f64> {
        xs.iter().flatten().map(Duration::as_secs_f64).collect()
    };
    let summary = |xs: &[Option<Duration>]| {
        let v = present(xs);
        if v.is_empty() {
            json!(null)
        } else {
            spread(v)
        }
    };
    let per_peer =
        |n: &str| traffic[n].as_f64().unwrap_or(0.0) / (n.parse::<f64>().unwrap_or(2.0) - 1.0);
    let growth = per_peer("20") / per_peer("5");
    let block = json!({
        "brokers": 20,
        "join_convergence_s": seconds(&joins),
        "kill9_dead_everywhere_s": seconds(&kills),
        "join": summary(&joins),
        "kill9": summary(&kills),
        "idle_bytes_per_s_per_broker": traffic,
        "idle_bytes_per_peer_growth_5_to_20": growth,
        "target_met": met && growth <= 1.6,
    });
    (block, met && growth <= 1.6)
}

/// `mpreg-bench cluster [--quick] [--json FILE]`.
pub fn run(args: &[String]) {
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let sizes = if quick {
        Sizes {
            rounds: 4,
            sequential: 500,
            pipelined: 10_000,
            window: 500,
            scale_repeats: 2,
        }
    } else {
        Sizes {
            rounds: 8,
            sequential: 2_000,
            pipelined: 40_000,
            window: 1_000,
            scale_repeats: 5,
        }
    };

    let brokers = start_broker_cluster("bench-fwd", 2, &["--log-level", "warning"]);
    let _node = start_node(
        &brokers[1].worker,
        "bench-node",
        &[],
        &["--capacity", "256"],
    );
    let ctx = Context::new();
    let connect = |b: &BrokerProc| PlanClient {
        dealer: RawDealer::connect(&ctx, &b.client).expect("client"),
        next_id: 0,
    };
    let (mut forwarded, mut local) = (connect(&brokers[0]), connect(&brokers[1]));
    // Broker 1 learns broker 2's catalogue; then both paths warm up.
    let mut probe = Probe::new(&ctx, &brokers[0]);
    wait_for(Instant::now(), Duration::from_secs(20), || {
        probe.view().iter().any(|(n, _, s, f)| {
            n == "bench-fwd-2" && *s == MemberState::Alive && f.contains(&"echo".to_string())
        })
    })
    .expect("broker 1 knows broker 2's echo");
    for _ in 0..1_000 {
        forwarded.run(echo_step());
        local.run(echo_step());
    }
    let forwards_before = probe.counter("tasks_forwarded");

    let (mut p50_ratios, mut pipe_ratios) = (Vec::new(), Vec::new());
    let (mut all_local, mut all_fwd) = (Vec::new(), Vec::new());
    let (mut rates_local, mut rates_fwd) = (Vec::new(), Vec::new());
    for round in 0..sizes.rounds {
        // Alternate which path goes first.
        let lat = |c: &mut PlanClient| -> Vec<Duration> {
            (0..sizes.sequential).map(|_| c.run(echo_step())).collect()
        };
        let (mut l, mut f) = if round % 2 == 0 {
            let l = lat(&mut local);
            (l, lat(&mut forwarded))
        } else {
            let f = lat(&mut forwarded);
            (lat(&mut local), f)
        };
        let (lp, fp) = (percentile(&mut l, 0.5), percentile(&mut f, 0.5));
        p50_ratios.push(us(fp) / us(lp));
        all_local.extend(l);
        all_fwd.extend(f);
        let (rl, rf) = if round % 2 == 0 {
            let rl = pipelined(&mut local, sizes.pipelined, sizes.window);
            (rl, pipelined(&mut forwarded, sizes.pipelined, sizes.window))
        } else {
            let rf = pipelined(&mut forwarded, sizes.pipelined, sizes.window);
            (pipelined(&mut local, sizes.pipelined, sizes.window), rf)
        };
        pipe_ratios.push(rf / rl);
        rates_local.push(rl);
        rates_fwd.push(rf);
    }
    let forwarded_steps = probe.counter("tasks_forwarded") - forwards_before;
    let expected_forwards = (sizes.rounds * (sizes.sequential + sizes.pipelined)) as u64;
    assert!(
        forwarded_steps >= expected_forwards,
        "the forwarded path forwarded {forwarded_steps} of {expected_forwards} steps"
    );
    drop(brokers);

    let (scale_block, scale_met) = scale(sizes.scale_repeats);

    let p50 = spread(p50_ratios);
    let pipe = spread(pipe_ratios);
    let (local_p50, fwd_p50) = (
        percentile(&mut all_local, 0.5),
        percentile(&mut all_fwd, 0.5),
    );
    let p50_met = p50["median"].as_f64().unwrap_or(f64::MAX) <= 1.6;
    let pipe_met = pipe["median"].as_f64().unwrap_or(0.0) >= 0.5;
    println!(
        "{:<34} {:>10} {:>10} {:>22}   goal",
        "cluster", "forwarded", "local", "ratio median [min-max]"
    );
    println!(
        "{:<34} {:>10.1} {:>10.1} {:>8.2}x [{:.2}-{:.2}]   <= 1.6x",
        "single-step p50 (us)",
        us(fwd_p50),
        us(local_p50),
        p50["median"].as_f64().unwrap_or(0.0),
        p50["min"].as_f64().unwrap_or(0.0),
        p50["max"].as_f64().unwrap_or(0.0)
    );
    println!(
        "{:<34} {:>10.0} {:>10.0} {:>8.2}x [{:.2}-{:.2}]   >= 0.5x",
        "pipelined plans/s",
        crate::median(rates_fwd.clone()),
        crate::median(rates_local.clone()),
        pipe["median"].as_f64().unwrap_or(0.0),
        pipe["min"].as_f64().unwrap_or(0.0),
        pipe["max"].as_f64().unwrap_or(0.0)
    );
    println!("20 brokers: join convergence (s)   {}", scale_block["join"]);
    println!(
        "20 brokers: kill -9 dead everywhere {}",
        scale_block["kill9"]
    );
    println!(
        "idle upkeep bytes/s per broker      {}",
        scale_block["idle_bytes_per_s_per_broker"]
    );
    let pass = p50_met && pipe_met && scale_met;
    println!("targets {}", if pass { "met" } else { "NOT met" });
    let report = json!({
        "benchmark": "cluster",
        "quick": quick,
        "forwarded_vs_local": {
            "local": { "p50_us": us(local_p50), "pipelined_per_s": crate::median(rates_local) },
            "forwarded": { "p50_us": us(fwd_p50), "pipelined_per_s": crate::median(rates_fwd) },
            "p50_ratio": p50,
            "pipelined_ratio": pipe,
            "p50_target": "forwarded <= 1.6x local",
            "pipelined_target": "forwarded >= 0.5x local",
        },
        "scale": scale_block,
        "sizes": { "rounds": sizes.rounds, "sequential": sizes.sequential, "pipelined": sizes.pipelined, "window": sizes.window, "scale_repeats": sizes.scale_repeats },
        "targets_met": pass,
    });
    write_json(json_path, &report);
}
