//! `mpreg-bench rpc`: MPREG's RPC figures next to a raw libzmq floor measured in the same run.
//!
//! Floor: client DEALER -> relay ROUTER/ROUTER -> worker DEALER and back, no msgpack, no
//! bookkeeping (mpreg_transport::baseline). MPREG: a real `mpreg-broker` and one `mpreg-node`
//! process (release build, next to this binary). Latency samples of both are taken in
//! alternating rounds so that noise on this shared machine hits both alike.
//!
//! `mpreg-bench pubsub`: topic matching cost, subscribe/unsubscribe rate and end-to-end
//! message rates through the broker, next to raw libzmq PUB -> SUB in the same run.
//!
//! `rpc` also measures the CURVE column: single-step plans p50 and pipelined plans/s through a
//! CURVE broker and node next to a plain one, in alternating rounds (target: CURVE costs at
//! most 25 % of throughput).
//!
//! Usage: `mpreg-bench rpc|pubsub|cluster [--quick] [--json FILE]`.

#![allow(clippy::expect_used)]

mod cluster;
mod curve;
mod floor;
#[cfg(feature = "peers")]
mod peers;
mod pubsub;

use std::time::{Duration, Instant};

use mpreg_protocol::{
    compact_frame, encode_body, parse_envelope, BrokerToClient, Limits, PlanRequest, Step, Value,
};
use mpreg_tests::{start_broker, start_node};
use mpreg_transport::{Context, RawDealer};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(30);

struct Sizes {
    sequential: usize,
    rounds: usize,
    pipelined: usize,
    window: usize,
    wide: usize,
    chain: usize,
    repeats: usize,
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Sends plans over a raw DEALER, in compact frames (one frame a message, as the node does),
/// and waits for their results.
struct PlanClient {
    dealer: RawDealer,
    next_id: u64,
}

impl PlanClient {
    fn send(&mut self, steps: Vec<Step>) -> u64 {
        self.next_id += 1;
        let plan = PlanRequest {
            id: self.next_id,
            steps,
            deadline_ms: Some(120_000),
            all_results: false,
            progress: false,
            progress_topic: None,
            plan: None,
            trace: false,
        };
        self.dealer
            .send(&[compact_frame(b"plan", &encode_body(&plan))])
            .expect("send plan");
        self.next_id
    }

    fn send_raw(&mut self, body_without_id: &dyn Fn(u64) -> Vec<u8>) {
        self.next_id += 1;
        self.dealer
            .send(&[compact_frame(b"plan", &body_without_id(self.next_id))])
            .expect("send plan");
    }

    fn recv(&self) -> BrokerToClient {
        let frames = self.dealer.recv(TIMEOUT).expect("reply within 30 s");
        let envelope = parse_envelope(&frames).expect("valid frames");
        let reply = BrokerToClient::decode(envelope.kind, envelope.body, &Limits::default())
            .expect("valid reply");
        if let BrokerToClient::Error(e) = &reply {
            panic!("plan failed: {} {}: {}", e.code, e.kind, e.message);
        }
        reply
    }

    fn run(&mut self, steps: Vec<Step>) -> Duration {
        let start = Instant::now();
        self.send(steps);
        self.recv();
        start.elapsed()
    }
}

/// Single-step plans with `window` in flight: plans per second.
fn pipelined(client: &mut PlanClient, count: usize, window: usize) -> f64 {
    let steps = echo_step();
    let body = |id: u64| {
        encode_body(&PlanRequest {
            id,
            steps: steps.clone(),
            deadline_ms: Some(120_000),
            all_results: false,
            progress: false,
            progress_topic: None,
            plan: None,
            trace: false,
        })
    };
    let start = Instant::now();
    let (mut sent, mut received) = (0usize, 0usize);
    while received < count {
        while sent < count && sent - received < window {
            client.send_raw(&body);
            sent += 1;
        }
        client.recv();
        received += 1;
    }
    count as f64 / start.elapsed().as_secs_f64()
}

fn echo_step() -> Vec<Step> {
    vec![Step::new("a", "echo", vec![Value::from("x")])]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("rpc") => rpc(&args),
        Some("pubsub") => pubsub::run(&args),
        Some("cluster") => cluster::run(&args),
        #[cfg(feature = "peers")]
        Some("peers") => peers::run(&args),
        _ => {
            eprintln!("usage: mpreg-bench rpc|pubsub|cluster [--quick] [--json FILE]");
            std::process::exit(2);
        }
    }
}

fn write_json(path: Option<String>, report: &serde_json::Value) {
    if let Some(path) = path {
        if let Some(dir) = std::path::Path::new(&path).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(&path, format!("{report:#}\n")).expect("write json");
        println!("figures written to {path}");
    }
}

fn rpc(args: &[String]) {
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let sizes = if quick {
        Sizes {
            sequential: 2_000,
            rounds: 2,
            pipelined: 20_000,
            window: 500,
            wide: 10_000,
            chain: 1_000,
            repeats: 3,
        }
    } else {
        Sizes {
            sequential: 20_000,
            rounds: 4,
            pipelined: 200_000,
            window: 1_000,
            wide: 10_000,
            chain: 1_000,
            repeats: 7,
        }
    };

    // The floor: a raw relay and echo worker on their own threads.
    let floor_threads = crate::floor::Floor::start();
    let floor = &floor_threads.client;
    // The floor's payload is the size of MPREG's plan message, so bytes on the wire match.
    let payload = encode_body(&PlanRequest {
        id: 1,
        steps: echo_step(),
        deadline_ms: Some(120_000),
        all_results: false,
        progress: false,
        progress_topic: None,
        plan: None,
        trace: false,
    });
    let wait_floor = Instant::now();
    while floor
        .round_trip(&payload, Duration::from_millis(200))
        .is_none()
    {
        assert!(wait_floor.elapsed() < TIMEOUT, "relay floor never answered");
    }

    // MPREG: broker + one node, release binaries next to this one.
    let broker = start_broker(&["--log-level", "warning"], &[]);
    let _node = start_node(&broker.worker, "bench-node", &[], &["--capacity", "256"]);
    let ctx = Context::new();
    let mut client = PlanClient {
        dealer: RawDealer::connect(&ctx, &broker.client).expect("client"),
        next_id: 0,
    };
    for _ in 0..1_000 {
        client.run(echo_step());
        floor.round_trip(&payload, TIMEOUT).expect("floor warm-up");
    }

    // 1. Sequential single-step plans, alternating rounds with the floor.
    let per_round = sizes.sequential / sizes.rounds;
    let (mut floor_lat, mut mpreg_lat) = (Vec::new(), Vec::new());
    for _ in 0..sizes.rounds {
        for _ in 0..per_round {
            floor_lat.push(
                floor
                    .round_trip(&payload, TIMEOUT)
                    .expect("floor round trip"),
            );
        }
        for _ in 0..per_round {
            mpreg_lat.push(client.run(echo_step()));
        }
    }
    let floor_p50 = percentile(&mut floor_lat, 0.50);
    let floor_p99 = percentile(&mut floor_lat, 0.99);
    let p50 = percentile(&mut mpreg_lat, 0.50);
    let p99 = percentile(&mut mpreg_lat, 0.99);

    // 2. Pipelined single-step plans from one client (a window of plans in flight).
    let floor_pipe = floor
        .pipelined(&payload, sizes.pipelined, sizes.window, TIMEOUT)
        .expect("floor pipelined");
    let floor_rate = sizes.pipelined as f64 / floor_pipe.as_secs_f64();
    let rate = pipelined(&mut client, sizes.pipelined, sizes.window);

    // 3. One plan of 10,000 independent echo steps; 4. a 1,000-step chain.
    let wide: Vec<Step> = (0..sizes.wide)
        .map(|i| Step::new(format!("s{i}"), "echo", vec![Value::from(i as u64)]))
        .collect();
    let chain: Vec<Step> = (0..sizes.chain)
        .map(|i| {
            let arg = if i == 0 {
                Value::from("start")
            } else {
                Value::from(format!("c{}", i - 1))
            };
            Step::new(format!("c{i}"), "echo", vec![arg])
        })
        .collect();
    let wide_ms = median(
        (0..sizes.repeats)
            .map(|_| client.run(wide.clone()).as_secs_f64() * 1e3)
            .collect(),
    );
    let chain_ms = median(
        (0..sizes.repeats)
            .map(|_| client.run(chain.clone()).as_secs_f64() * 1e3)
            .collect(),
    );
    // The floor for a chain: as many sequential raw round trips.
    let chain_floor_ms = {
        let start = Instant::now();
        for _ in 0..sizes.chain {
            floor.round_trip(&payload, TIMEOUT).expect("floor");
        }
        start.elapsed().as_secs_f64() * 1e3
    };

    drop(floor_threads);

    // 5. The CURVE column.
    let (curve_rows, curve_block) = curve::column(
        &mut client,
        sizes.sequential / 2,
        sizes.pipelined / 2,
        sizes.window,
        sizes.rounds,
    );
    let curve_met = curve_block["target_met"].as_bool().unwrap_or(false);

    let p50_ratio = us(p50) / us(floor_p50);
    let mut rows = vec![
        (
            "single-step p50 (us)".to_string(),
            format!("{:.1}", us(p50)),
            format!("{:.1}", us(floor_p50)),
            format!("{p50_ratio:.2}x"),
            "<= 1.5x floor",
        ),
        (
            "single-step p99 (us)".to_string(),
            format!("{:.1}", us(p99)),
            format!("{:.1}", us(floor_p99)),
            format!("{:.2}x", us(p99) / us(floor_p99)),
            "",
        ),
        (
            "pipelined plans/s".to_string(),
            format!("{rate:.0}"),
            format!("{floor_rate:.0}"),
            format!("{:.2}x", rate / floor_rate),
            ">= 50000/s",
        ),
        (
            "10,000-step plan (ms)".to_string(),
            format!("{wide_ms:.1}"),
            format!("{:.1}", sizes.wide as f64 / floor_rate * 1e3),
            format!("{:.2}x", wide_ms / (sizes.wide as f64 / floor_rate * 1e3)),
            "< 300 ms",
        ),
        (
            "1,000-step chain (ms)".to_string(),
            format!("{chain_ms:.1}"),
            format!("{chain_floor_ms:.1}"),
            format!("{:.2}x", chain_ms / chain_floor_ms),
            "< 150 ms",
        ),
    ];
    rows.extend(curve_rows);
    println!(
        "{:<24} {:>12} {:>12} {:>8}   target",
        "rpc", "mpreg", "floor", "ratio"
    );
    for (name, m, f, r, t) in &rows {
        println!("{name:<24} {m:>12} {f:>12} {r:>8}   {t}");
    }
    let pass =
        p50_ratio <= 1.5 && rate >= 50_000.0 && wide_ms < 300.0 && chain_ms < 150.0 && curve_met;
    println!("targets {}", if pass { "met" } else { "NOT met" });
    let report = json!({
        "benchmark": "rpc",
        "quick": quick,
        "floor": { "p50_us": us(floor_p50), "p99_us": us(floor_p99), "pipelined_per_s": floor_rate, "chain_ms": chain_floor_ms },
        "mpreg": { "p50_us": us(p50), "p99_us": us(p99), "pipelined_per_s": rate, "wide_10000_ms": wide_ms, "chain_1000_ms": chain_ms },
        "ratios": { "p50": p50_ratio, "p99": us(p99) / us(floor_p99), "pipelined": rate / floor_rate, "chain": chain_ms / chain_floor_ms },
        "sizes": { "sequential": sizes.sequential, "pipelined": sizes.pipelined, "window": sizes.window, "wide": sizes.wide, "chain": sizes.chain },
        "curve": curve_block,
        "targets_met": pass,
    });
    write_json(json_path, &report);
}
