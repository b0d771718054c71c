//! `mpreg-bench peers`: MPREG side by side with NATS on NATS's own ground (issue 12).
//!
//! One binary, one tokio runtime (2 workers): async-nats against `nats-server` (Debian's,
//! started here on loopback with an OS-chosen port, stopped by PID), and the MPREG SDK against
//! a release `mpreg-broker` and one `mpreg-node --capacity 256`. Both request paths have the
//! same shape: requester -> server -> responder -> server -> requester (NATS's responder is a
//! task on its own connection in this process; MPREG's is the node process).
//!
//! Seven rows, measured in alternating rounds (NATS first in even rounds, MPREG first in odd
//! ones) so that the noise of this shared machine hits both alike; each figure is the median
//! of the per-round ratios MPREG/NATS, with their min and max:
//! 1. request/reply sequential p50, 64 B (goal: at most 1.0x);
//! 2. request/reply sequential p99 (at most 1.0x);
//! 3. request/reply, 1,000 in flight on one connection, requests/s (at least 1.0x);
//! 4. pub/sub 1 -> 1, 64 B, SDK `publish` against NATS `publish` (at least 1.0x);
//! 5. pub/sub 1 -> 1, SDK `publish_batch(256)`, each awaited, against NATS `publish`;
//! 6. fan-out 1 -> 10 (ten subscriber connections), `publish`, deliveries/s;
//! 7. fan-out 1 -> 10, `publish_batch(256)`.
//!
//! Beside row 5, for reference: NATS waiting as often as MPREG's awaited batches do (an awaited
//! `flush`, a round trip to the server, after every 256 publishes).
//!
//! The raw libzmq relay (client DEALER -> ROUTER/ROUTER relay -> DEALER echo, no msgpack, no
//! bookkeeping) is measured in the same rounds as the floor under MPREG's latency rows.
//!
//! Pub/sub rates are messages delivered divided by the time from the first publish to the
//! last delivery; every run uses fresh connections and a fresh subject. Every loop is bounded
//! by count and by [`RUN_BUDGET`].
//!
//! Usage: `mpreg-bench peers [--quick] [--rounds N] [--json FILE] [--nats-server PATH]
//! [--runtime-task] [--spawned]` (`--runtime-task`: the MPREG clients run as tasks of the
//! bench's runtime, `ClientOptions::io_thread` false;
//! `--spawned`: each round runs as a task of the runtime instead of on the thread blocked in
//! `block_on`).

mod cpu;
mod nats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cpu::{CpuMark, CpuPerRequest};
use mpreg::{args, Client, ClientOptions, Delivery, Outgoing, SubscribeOptions, Value};
use mpreg_protocol::{encode_body, Step};
use mpreg_tests::{start_broker, start_node};
use mpreg_transport::baseline::BaselineClient;
use nats::{nats_round, start_nats};
use serde_json::json;

/// The longest any one measured run may take.
const RUN_BUDGET: Duration = Duration::from_secs(20);
/// Message and payload size of every row.
const PAYLOAD: usize = 64;
/// Messages per `publish_batch` (rows 5 and 7).
const BATCH: usize = 256;
/// Requests in flight in row 3.
const IN_FLIGHT: usize = 1_000;
/// Subscribers of the fan-out rows.
const FAN_OUT: usize = 10;
/// Client-side subscriber buffers, so that neither side's client drops.
const SUB_BUFFER: usize = 1 << 20;

struct Sizes {
    rounds: usize,
    sequential: usize,
    pipelined: usize,
    one_to_one: usize,
    fan_out: usize,
}

/// One system's figures in one round.
#[derive(Default, Clone, Copy)]
struct Figures {
    p50_us: f64,
    p99_us: f64,
    req_per_s: f64,
    pub_1_1: f64,
    batch_1_1: f64,
    pub_1_10: f64,
    batch_1_10: f64,
    /// CPU per request in row 3, by process.
    cpu: CpuPerRequest,
    /// Messages (or deliveries) that never arrived, over all pub/sub runs of the round.
    lost: u64,
}

/// How a row compares MPREG with NATS.
#[derive(Clone, Copy)]
enum Goal {
    /// A latency: MPREG/NATS at most this.
    AtMost(f64),
    /// A rate: MPREG/NATS at least this.
    AtLeast(f64),
}

struct Row {
    name: &'static str,
    unit: &'static str,
    nats: fn(&Figures) -> f64,
    mpreg: fn(&Figures) -> f64,
    goal: Goal,
}

const ROWS: [Row; 7] = [
    Row {
        name: "req/reply sequential p50, 64 B",
        unit: "us",
        nats: |f| f.p50_us,
        mpreg: |f| f.p50_us,
        goal: Goal::AtMost(1.0),
    },
    Row {
        name: "req/reply sequential p99, 64 B",
        unit: "us",
        nats: |f| f.p99_us,
        mpreg: |f| f.p99_us,
        goal: Goal::AtMost(1.0),
    },
    Row {
        name: "req/reply, 1,000 in flight, 1 conn",
        unit: "req/s",
        nats: |f| f.req_per_s,
        mpreg: |f| f.req_per_s,
        goal: Goal::AtLeast(1.0),
    },
    Row {
        name: "pub/sub 1->1, 64 B, publish",
        unit: "msg/s",
        nats: |f| f.pub_1_1,
        mpreg: |f| f.pub_1_1,
        goal: Goal::AtLeast(1.0),
    },
    Row {
        name: "pub/sub 1->1, publish_batch(256)",
        unit: "msg/s",
        nats: |f| f.pub_1_1,
        mpreg: |f| f.batch_1_1,
        goal: Goal::AtLeast(1.0),
    },
    Row {
        name: "fan-out 1->10, publish",
        unit: "deliveries/s",
        nats: |f| f.pub_1_10,
        mpreg: |f| f.pub_1_10,
        goal: Goal::AtLeast(1.0),
    },
    Row {
        name: "fan-out 1->10, publish_batch(256)",
        unit: "deliveries/s",
        nats: |f| f.pub_1_10,
        mpreg: |f| f.batch_1_10,
        goal: Goal::AtLeast(1.0),
    },
];

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i].as_secs_f64() * 1e6
}

fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn min_max(xs: &[f64]) -> (f64, f64) {
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Everything both systems need for one run.
struct Setup {
    nats_url: String,
    mpreg_client: String,
    payload: Vec<u8>,
    /// nats-server's pid, and MPREG's broker's and node's: CPU per request in row 3.
    nats_pids: Vec<u32>,
    mpreg_pids: Vec<u32>,
}

/// `--runtime-task`: MPREG clients run their connection as a task of the bench's runtime
/// (`ClientOptions::io_thread` false) instead of on a thread of their own.
static RUNTIME_TASK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

async fn mpreg_connect(endpoint: &str) -> Client {
    let task = RUNTIME_TASK.get().copied().unwrap_or(false);
    let options = ClientOptions::default().with_io_thread(!task);
    Client::connect_with(endpoint, options)
        .await
        .expect("connect to mpreg")
}

async fn mpreg_requests(setup: &Setup, sizes: &Sizes, fig: &mut Figures) {
    let client = mpreg_connect(&setup.mpreg_client).await;
    let arg = Value::Binary(setup.payload.clone());
    for _ in 0..100 {
        client.call("echo", args![arg.clone()]).await.expect("call");
    }
    let start = Instant::now();
    let mut samples = Vec::with_capacity(sizes.sequential);
    while samples.len() < sizes.sequential && start.elapsed() < RUN_BUDGET {
        let t = Instant::now();
        client.call("echo", args![arg.clone()]).await.expect("call");
        samples.push(t.elapsed());
    }
    fig.p50_us = percentile(&mut samples, 0.50);
    fig.p99_us = percentile(&mut samples, 0.99);
    (fig.req_per_s, fig.cpu) = pipelined(sizes.pipelined, &setup.mpreg_pids, |_| {
        let client = client.clone();
        let arg = arg.clone();
        async move {
            client.call("echo", args![arg]).await.expect("call");
        }
    })
    .await;
    client.close().await;
}

/// `count` requests from [`IN_FLIGHT`] tasks sharing one connection: requests per second,
/// and the CPU per request of this process and of the `servers`.
async fn pipelined<F, Fut>(count: usize, servers: &[u32], request: F) -> (f64, CpuPerRequest)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let per_task = count.div_ceil(IN_FLIGHT);
    let cpu = CpuMark::now(servers);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        let calls: Vec<Fut> = (0..per_task).map(&request).collect();
        tasks.push(tokio::spawn(async move {
            for call in calls {
                call.await;
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(RUN_BUDGET, task)
            .await
            .expect("pipelined requests within the budget")
            .expect("request task");
    }
    let rate = (per_task * IN_FLIGHT) as f64 / start.elapsed().as_secs_f64();
    (rate, cpu.per_request(per_task * IN_FLIGHT))
}

/// Waits for the readers (each counts to its share or the budget) and turns what they saw into
/// the run's figures: deliveries per second from `start` to the last delivery, and how many of
/// the `expected` deliveries never arrived.
async fn collect(
    readers: Vec<tokio::task::JoinHandle<(u64, Instant)>>,
    start: Instant,
    expected: u64,
) -> (f64, u64) {
    let mut delivered = 0;
    let mut last: Option<Instant> = None;
    for reader in readers {
        let (n, at) = reader.await.expect("reader");
        delivered += n;
        last = Some(last.map_or(at, |l| l.max(at)));
    }
    let elapsed = last.map_or(RUN_BUDGET, |l| l.saturating_duration_since(start));
    (
        delivered as f64 / elapsed.as_secs_f64(),
        expected - delivered.min(expected),
    )
}

/// MPREG 1 -> `subscribers`: `count` messages by SDK `publish` (or `publish_batch` of
/// [`BATCH`], each awaited).
async fn mpreg_pubsub(
    setup: &Setup,
    count: usize,
    subscribers: usize,
    batched: bool,
    run: u64,
) -> (f64, u64) {
    let topic = format!("bench.ps.{run}");
    let mut readers = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..subscribers {
        let conn = mpreg_connect(&setup.mpreg_client).await;
        let options = SubscribeOptions::default().with_buffer(SUB_BUFFER);
        let mut sub = conn
            .subscribe_with([topic.clone()], options)
            .await
            .expect("subscribe");
        readers.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut last = Instant::now();
            let deadline = tokio::time::Instant::now() + RUN_BUDGET;
            while n < count as u64 {
                match tokio::time::timeout_at(deadline, sub.next()).await {
                    Ok(Some(Ok(Delivery::Message(_)))) => {
                        n += 1;
                        last = Instant::now();
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            (n, last)
        }));
        conns.push(conn);
    }
    let publisher = mpreg_connect(&setup.mpreg_client).await;
    let payload = Value::Binary(setup.payload.clone());
    let start = Instant::now();
    if batched {
        let mut sent = 0;
        while sent < count && start.elapsed() < RUN_BUDGET {
            let n = BATCH.min(count - sent);
            let batch = (0..n).map(|_| Outgoing::new(topic.clone(), payload.clone()));
            publisher.publish_batch(batch).await.expect("publish_batch");
            sent += n;
        }
    } else {
        for _ in 0..count {
            publisher
                .publish(topic.clone(), payload.clone())
                .await
                .expect("publish");
            if start.elapsed() > RUN_BUDGET {
                break;
            }
        }
        publisher.flush().await.expect("flush");
    }
    let figures = collect(readers, start, (count * subscribers) as u64).await;
    publisher.close().await;
    for conn in conns {
        conn.close().await;
    }
    figures
}

async fn mpreg_round(setup: &Setup, sizes: &Sizes, run: &mut u64) -> Figures {
    let mut fig = Figures::default();
    mpreg_requests(setup, sizes, &mut fig).await;
    for (batched, fan_out) in [(false, false), (true, false), (false, true), (true, true)] {
        *run += 1;
        let (count, subscribers) = if fan_out {
            (sizes.fan_out, FAN_OUT)
        } else {
            (sizes.one_to_one, 1)
        };
        let (rate, lost) = mpreg_pubsub(setup, count, subscribers, batched, *run).await;
        fig.lost += lost;
        match (batched, fan_out) {
            (false, false) => fig.pub_1_1 = rate,
            (true, false) => fig.batch_1_1 = rate,
            (false, true) => fig.pub_1_10 = rate,
            (true, true) => fig.batch_1_10 = rate,
        }
    }
    fig
}

/// The raw libzmq relay's sequential p50 and p99 (µs): the floor under MPREG's latency.
fn floor_latency(client: &BaselineClient, payload: &[u8], n: usize) -> (f64, f64) {
    let mut samples: Vec<Duration> = (0..n)
        .map_while(|_| client.round_trip(payload, Duration::from_secs(5)))
        .collect();
    assert!(!samples.is_empty(), "the relay floor answered nothing");
    (
        percentile(&mut samples, 0.50),
        percentile(&mut samples, 0.99),
    )
}

fn arg_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

pub fn run(args: &[String]) {
    let quick = args.iter().any(|a| a == "--quick");
    let _ = RUNTIME_TASK.set(args.iter().any(|a| a == "--runtime-task"));
    let spawned = args.iter().any(|a| a == "--spawned");
    let json_path = arg_value(args, "--json");
    let nats_program = arg_value(args, "--nats-server").unwrap_or_else(|| "nats-server".into());
    let mut sizes = if quick {
        Sizes {
            rounds: 3,
            sequential: 1_000,
            pipelined: 10_000,
            one_to_one: 50_000,
            fan_out: 10_000,
        }
    } else {
        Sizes {
            rounds: 9,
            sequential: 3_000,
            pipelined: 30_000,
            one_to_one: 200_000,
            fan_out: 30_000,
        }
    };
    if let Some(rounds) = arg_value(args, "--rounds").and_then(|r| r.parse().ok()) {
        sizes.rounds = usize::max(rounds, 1);
    }
    let sizes = Arc::new(sizes);
    let load_before = load_average();

    let (nats_server, nats_url) = start_nats(&nats_program);
    // The lossless settings of `bench.sh pubsub`: no subscriber copy dropped at a high-water
    // mark, so rates count every message.
    let broker = start_broker(
        &["--log-level", "warning"],
        &[
            ("MPREG_BROKER_SOCKET__EVENT_HWM", "0"),
            ("MPREG_BROKER_SOCKET__HWM", "100000"),
        ],
    );
    let node = start_node(&broker.worker, "bench-node", &[], &["--capacity", "256"]);

    // The libzmq floor: a raw relay and echo worker on their own threads.
    let floor_threads = crate::floor::Floor::start();
    let floor = &floor_threads.client;
    // The floor carries about what MPREG's call carries on the wire: a one-step plan's body.
    let step = Step::new("~call", "echo", vec![Value::Binary(vec![7; PAYLOAD])]);
    let floor_payload = encode_body(&Value::Map(vec![
        (Value::from("id"), Value::from(1u64)),
        (
            Value::from("steps"),
            rmpv::ext::to_value(vec![step]).expect("a step is plain data"),
        ),
    ]));
    let warm = Instant::now();
    while floor
        .round_trip(&floor_payload, Duration::from_millis(200))
        .is_none()
    {
        assert!(warm.elapsed() < RUN_BUDGET, "relay floor never answered");
    }

    let setup = Arc::new(Setup {
        nats_url,
        mpreg_client: broker.client.clone(),
        payload: vec![7u8; PAYLOAD],
        nats_pids: vec![nats_server.pid()],
        mpreg_pids: vec![broker.proc.pid(), node.pid()],
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let mut rounds: Vec<(Figures, Figures, (f64, f64))> = Vec::new();
    let mut run = 0u64;
    for round in 0..sizes.rounds {
        let (shared_setup, shared_sizes) = (Arc::clone(&setup), Arc::clone(&sizes));
        let mut round_run = run;
        let one_round = async move {
            let (setup, sizes, run) = (&*shared_setup, &*shared_sizes, &mut round_run);
            let (n, m) = if round % 2 == 0 {
                let n = nats_round(setup, sizes, run).await;
                (n, mpreg_round(setup, sizes, run).await)
            } else {
                let m = mpreg_round(setup, sizes, run).await;
                (nats_round(setup, sizes, run).await, m)
            };
            (n, m, round_run)
        };
        // By default the round runs on the thread blocked in `block_on` (as the issue's
        // reference measurement did); `--spawned` runs it as a task of the runtime, as an
        // application's handlers run. Both systems alike either way.
        let (nats, mpreg, next_run) = if spawned {
            runtime
                .block_on(runtime.spawn(one_round))
                .expect("a bench round panicked")
        } else {
            runtime.block_on(one_round)
        };
        run = next_run;
        let floor_lat = floor_latency(floor, &floor_payload, sizes.sequential);
        eprintln!(
            "round {}: p50 {:.0}/{:.0} us (floor {:.0}), {:.0}/{:.0} req/s, 1->1 {:.0}/{:.0} \
             (batch {:.0}/{:.0}), 1->10 {:.0}/{:.0} (batch {:.0}), lost {}/{} [mpreg/nats]",
            round + 1,
            mpreg.p50_us,
            nats.p50_us,
            floor_lat.0,
            mpreg.req_per_s,
            nats.req_per_s,
            mpreg.pub_1_1,
            nats.pub_1_1,
            mpreg.batch_1_1,
            nats.batch_1_1,
            mpreg.pub_1_10,
            nats.pub_1_10,
            mpreg.batch_1_10,
            mpreg.lost,
            nats.lost
        );
        rounds.push((nats, mpreg, floor_lat));
    }
    let measured = started.elapsed();
    drop(floor_threads);
    let load_after = load_average();

    println!(
        "{:<52} {:>12} {:>12} {:>8} {:>13}   goal",
        "peers (MPREG vs NATS)", "mpreg", "nats", "ratio", "ratio min-max"
    );
    let mut rows_json = Vec::new();
    let mut all_met = true;
    for row in &ROWS {
        let ratios: Vec<f64> = rounds
            .iter()
            .map(|(n, m, _)| (row.mpreg)(m) / (row.nats)(n))
            .collect();
        let ratio = median(&ratios);
        let (lo, hi) = min_max(&ratios);
        let nats = median(
            &rounds
                .iter()
                .map(|(n, _, _)| (row.nats)(n))
                .collect::<Vec<_>>(),
        );
        let mpreg = median(
            &rounds
                .iter()
                .map(|(_, m, _)| (row.mpreg)(m))
                .collect::<Vec<_>>(),
        );
        let (met, goal) = match row.goal {
            Goal::AtMost(g) => (ratio <= g, format!("<= {g:.1}x")),
            Goal::AtLeast(g) => (ratio >= g, format!(">= {g:.1}x")),
        };
        all_met &= met;
        println!(
            "{:<52} {:>12.1} {:>12.1} {:>7.2}x {:>6.2}-{:<6.2} {goal} {}",
            format!("{} ({})", row.name, row.unit),
            mpreg,
            nats,
            ratio,
            lo,
            hi,
            if met { "met" } else { "NOT met" }
        );
        rows_json.push(json!({
            "measure": row.name,
            "unit": row.unit,
            "mpreg_median": mpreg,
            "nats_median": nats,
            "ratio": ratio,
            "ratio_min": lo,
            "ratio_max": hi,
            "ratios": ratios,
            "goal": goal,
            "goal_met": met,
        }));
    }
    // The floor under the latency rows, from the same rounds.
    let floor_ratios: Vec<f64> = rounds.iter().map(|(n, _, f)| f.0 / n.p50_us).collect();
    let floor_p50 = median(&rounds.iter().map(|(_, _, f)| f.0).collect::<Vec<_>>());
    let floor_p99 = median(&rounds.iter().map(|(_, _, f)| f.1).collect::<Vec<_>>());
    let (flo, fhi) = min_max(&floor_ratios);
    println!(
        "{:<52} {:>12.1} {:>12} {:>7.2}x {:>6.2}-{:<6.2} (raw libzmq relay / NATS, p50; p99 {:.1} us)",
        "libzmq relay floor p50 (us)",
        floor_p50,
        "",
        median(&floor_ratios),
        flo,
        fhi,
        floor_p99
    );
    // Row 5's MPREG side against NATS waiting as often (a flush after every BATCH publishes):
    // shown beside the row, which compares with NATS's unwaited publish as issue 12 asks.
    let awaited: Vec<f64> = rounds
        .iter()
        .map(|(n, m, _)| m.batch_1_1 / n.batch_1_1)
        .collect();
    let awaited_nats = median(
        &rounds
            .iter()
            .map(|(n, _, _)| n.batch_1_1)
            .collect::<Vec<_>>(),
    );
    let (alo, ahi) = min_max(&awaited);
    println!(
        "{:<52} {:>12} {:>12.1} {:>7.2}x {:>6.2}-{:<6.2} (row 5 against NATS flushing every {BATCH})",
        "NATS publish x256 + awaited flush (msg/s)",
        "",
        awaited_nats,
        median(&awaited),
        alo,
        ahi,
    );
    // Where each system spends the cores in row 3: this process (requesters, and NATS's
    // responder task) and the servers (nats-server; MPREG's broker and node).
    let of = |side: usize, f: fn(&CpuPerRequest) -> f64| {
        let values: Vec<f64> = rounds
            .iter()
            .map(|r| f(if side == 0 { &r.0.cpu } else { &r.1.cpu }))
            .collect();
        median(&values)
    };
    let cpu_json = |side: usize| {
        json!({
            "bench_process_us": of(side, |c| c.bench_us),
            "servers_us": of(side, |c| c.servers_us),
            "bench_process_switches": of(side, |c| c.bench_switches),
            "servers_switches": of(side, |c| c.servers_switches),
        })
    };
    for (name, side, bench, servers) in [
        ("MPREG", 1, "requesters", "broker and node"),
        ("NATS", 0, "requesters and responder", "nats-server"),
    ] {
        println!(
            "{name} at 1,000 in flight, per request (medians): CPU {:.1} us ({bench} {:.1}, \
             {servers} {:.1}); context switches {:.2} ({bench} {:.2}, {servers} {:.2})",
            of(side, |c| c.bench_us + c.servers_us),
            of(side, |c| c.bench_us),
            of(side, |c| c.servers_us),
            of(side, |c| c.bench_switches + c.servers_switches),
            of(side, |c| c.bench_switches),
            of(side, |c| c.servers_switches),
        );
    }
    let lost_mpreg: u64 = rounds.iter().map(|(_, m, _)| m.lost).sum();
    let lost_nats: u64 = rounds.iter().map(|(n, _, _)| n.lost).sum();
    println!(
        "{} rounds in {:.0} s; messages lost: mpreg {lost_mpreg}, nats {lost_nats}; load average \
         {load_before} before, {load_after} after; goals {}",
        rounds.len(),
        measured.as_secs_f64(),
        if all_met { "met" } else { "NOT all met" }
    );
    let report = json!({
        "benchmark": "peers",
        "quick": quick,
        "runtime_task": RUNTIME_TASK.get().copied().unwrap_or(false),
        "spawned": spawned,
        "rounds": rounds.len(),
        "sizes": {
            "sequential": sizes.sequential,
            "pipelined": sizes.pipelined,
            "in_flight": IN_FLIGHT,
            "one_to_one": sizes.one_to_one,
            "fan_out_messages": sizes.fan_out,
            "fan_out_subscribers": FAN_OUT,
            "batch": BATCH,
            "payload_bytes": PAYLOAD,
        },
        "rows": rows_json,
        "floor": {
            "p50_us": floor_p50,
            "p99_us": floor_p99,
            "p50_ratio_to_nats": median(&floor_ratios),
            "p50_ratio_to_nats_min": flo,
            "p50_ratio_to_nats_max": fhi,
        },
        "awaited_batch_reference": {
            "nats_median": awaited_nats,
            "ratio": median(&awaited),
            "ratio_min": alo,
            "ratio_max": ahi,
        },
        "per_request_in_flight": { "mpreg": cpu_json(1), "nats": cpu_json(0) },
        "lost": { "mpreg": lost_mpreg, "nats": lost_nats },
        "load_average": { "before": load_before, "after": load_after },
        "measured_s": measured.as_secs_f64(),
        "goals_met": all_met,
    });
    super::write_json(json_path, &report);
}
