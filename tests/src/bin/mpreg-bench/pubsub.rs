//! `mpreg-bench pubsub`.
//!
//! 1. Matching cost per publish with 10, 1k, 10k and 100k patterns (the broker's matcher,
//!    in-process): p50 over batches of matches.
//! 2. Subscribe/unsubscribe operations per second: in the matcher, and through a real broker
//!    (pipelined `subscribe` then `unsubscribe` requests from one client).
//! 3. End-to-end messages/s for 64-byte payloads through the broker, 1 -> 1 and 1 -> 10, next
//!    to raw libzmq PUB -> SUB measured in the same run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mpreg_broker::matcher::Matcher;
use mpreg_protocol::{
    encode_body, BatchItem, BrokerToClient, ClientToBroker, Event, Limits, PublishBatch, Subscribe,
    Unsubscribe, Value, VERSION,
};
use mpreg_tests::start_broker;
use mpreg_transport::baseline::pub_sub_throughput;
use mpreg_transport::{Context, RawDealer, RawSub};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);
/// Messages per `publish_batch` in the end-to-end runs.
const BATCH: usize = 256;

/// A deterministic pseudo-random sequence (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const REGIONS: [&str; 8] = ["eu", "us", "ap", "sa", "af", "me", "oc", "an"];

/// Realistic patterns: mostly specific with a trailing wildcard, some `#`, some `*` inside.
fn pattern(rng: &mut Rng, i: usize) -> String {
    let region = REGIONS[rng.below(8) as usize];
    match i % 4 {
        0 => format!("orders.{region}.{}.*", rng.below(100_000)),
        1 => format!("sensors.site{}.#", rng.below(50_000)),
        2 => format!("users.{}.*.events", rng.below(100_000)),
        _ => format!("logs.{region}.svc{}.{}", rng.below(1000), rng.below(100)),
    }
}

fn topic(rng: &mut Rng) -> String {
    let region = REGIONS[rng.below(8) as usize];
    match rng.below(4) {
        0 => format!("orders.{region}.{}.created", rng.below(100_000)),
        1 => format!("sensors.site{}.temp.{}", rng.below(50_000), rng.below(10)),
        2 => format!("users.{}.web.events", rng.below(100_000)),
        _ => format!("logs.{region}.svc{}.{}", rng.below(1000), rng.below(100)),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// p50 nanoseconds per match with `n` patterns.
fn matching_ns(n: usize, batches: usize) -> f64 {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut m = Matcher::new();
    for i in 0..n {
        m.insert(&pattern(&mut rng, i), i as u64);
    }
    let topics: Vec<String> = (0..4096).map(|_| topic(&mut rng)).collect();
    let mut out = Vec::new();
    let mut samples = Vec::with_capacity(batches);
    let mut k = 0;
    for _ in 0..batches {
        let start = Instant::now();
        for _ in 0..100 {
            out.clear();
            m.matches(&topics[k % topics.len()], &mut out);
            k += 1;
        }
        samples.push(start.elapsed().as_nanos() as f64 / 100.0);
    }
    std::hint::black_box(&out);
    median(samples)
}

/// Insert + remove pairs per second in the matcher, with 10k patterns present.
fn matcher_ops_per_s(ops: usize) -> f64 {
    let mut rng = Rng(42);
    let mut m = Matcher::new();
    for i in 0..10_000 {
        m.insert(&pattern(&mut rng, i), i as u64);
    }
    let patterns: Vec<String> = (0..ops).map(|i| pattern(&mut rng, i)).collect();
    let start = Instant::now();
    for (i, p) in patterns.iter().enumerate() {
        m.insert(p, 1_000_000 + i as u64);
    }
    for (i, p) in patterns.iter().enumerate() {
        m.remove(p, 1_000_000 + i as u64);
    }
    (2 * ops) as f64 / start.elapsed().as_secs_f64()
}

/// Pipelined subscribe then unsubscribe requests through the broker; operations per second.
fn broker_sub_ops_per_s(client: &str, n: usize) -> f64 {
    let ctx = Context::new();
    let d = RawDealer::connect(&ctx, client).expect("dealer");
    let limits = Limits::default();
    let start = Instant::now();
    let window = 500;
    let mut tokens = Vec::with_capacity(n);
    let (mut sent, mut got) = (0usize, 0usize);
    while got < n {
        while sent < n && sent - got < window {
            let s = Subscribe {
                id: sent as u64 + 1,
                patterns: vec![format!("bench.{sent}.*")],
                backlog: false,
                cluster_ack: false,
            };
            d.send(&ClientToBroker::Subscribe(s).to_frames())
                .expect("send");
            sent += 1;
        }
        let f = d.recv(TIMEOUT).expect("subscribed");
        match BrokerToClient::decode(&f[1], &f[2], &limits).expect("reply") {
            BrokerToClient::Subscribed(s) => tokens.push(s.sub),
            other => panic!("subscribe failed: {other:?}"),
        }
        got += 1;
    }
    let (mut sent, mut got) = (0usize, 0usize);
    while got < n {
        while sent < n && sent - got < window {
            let u = Unsubscribe {
                id: sent as u64 + 1,
                sub: tokens[sent].clone(),
            };
            d.send(&ClientToBroker::Unsubscribe(u).to_frames())
                .expect("send");
            sent += 1;
        }
        d.recv(TIMEOUT).expect("unsubscribed");
        got += 1;
    }
    (2 * n) as f64 / start.elapsed().as_secs_f64()
}

/// Messages/s through the broker: one publisher sending `publish_batch` requests of `batch`
/// messages (what the SDK's publisher does when the application publishes faster than one
/// round of the socket), `subscribers` SUB threads, all subscribed to `bench.#`, decoding every
/// event; the time until every subscriber has every message.
fn broker_throughput(
    client: &str,
    events: &str,
    count: usize,
    subscribers: usize,
    batch: usize,
) -> f64 {
    let ctx = Context::new();
    let d = RawDealer::connect(&ctx, client).expect("dealer");
    let limits = Limits::default();
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let s = Subscribe {
            id: 1_000 + i as u64,
            patterns: vec!["bench.#".into()],
            backlog: false,
            cluster_ack: false,
        };
        d.send(&ClientToBroker::Subscribe(s).to_frames())
            .expect("send");
        let f = d.recv(TIMEOUT).expect("subscribed");
        let BrokerToClient::Subscribed(reply) =
            BrokerToClient::decode(&f[1], &f[2], &limits).expect("reply")
        else {
            panic!("subscribe failed")
        };
        let sub = RawSub::connect(&ctx, events, 0).expect("sub");
        sub.subscribe(reply.sub.as_bytes()).expect("filter");
        sub.recv(TIMEOUT).expect("active");
        subs.push(sub);
    }
    let payload = Value::Binary(vec![7u8; 64]);
    let start = Instant::now();
    let threads: Vec<_> = subs
        .into_iter()
        .map(|sub| {
            std::thread::spawn(move || {
                let limits = Limits::default();
                let mut got = 0;
                while got < count {
                    let Some(f) = sub.recv(TIMEOUT) else { break };
                    match Event::decode(&f[2], &f[3], &limits).expect("event") {
                        Event::Messages(b) => got += b.items.len(),
                        Event::Message(_) => got += 1,
                        Event::Lagging(l) => panic!("lossless run dropped messages: {l:?}"),
                        Event::Active(_) => {}
                    }
                }
                got
            })
        })
        .collect();
    let mut sent = 0;
    let mut id = 0;
    while sent < count {
        let n = batch.min(count - sent);
        let messages = (0..n)
            .map(|_| BatchItem {
                topic: "bench.x".into(),
                headers: BTreeMap::new(),
                payload: payload.clone(),
            })
            .collect();
        id += 1;
        let b = PublishBatch {
            id,
            messages,
            confirm: false,
        };
        d.send(&[VERSION, b"publish_batch", &encode_body(&b)])
            .expect("publish");
        sent += n;
    }
    let received: usize = threads
        .into_iter()
        .map(|t| t.join().expect("subscriber"))
        .sum();
    let elapsed = start.elapsed();
    assert_eq!(
        received,
        count * subscribers,
        "lost messages in a lossless run"
    );
    (count * subscribers) as f64 / elapsed.as_secs_f64()
}

/// Single `publish` requests, one message each (no batching), for comparison.
fn broker_throughput_unbatched(client: &str, events: &str, count: usize) -> f64 {
    broker_throughput(client, events, count, 1, 1)
}

pub fn run(args: &[String]) {
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let (batches, ops, broker_ops, count) = if quick {
        (2_000, 20_000, 5_000, 100_000)
    } else {
        (10_000, 100_000, 20_000, 500_000)
    };

    let mut matching = BTreeMap::new();
    for n in [10usize, 1_000, 10_000, 100_000] {
        matching.insert(n, matching_ns(n, batches));
    }
    let matcher_ops = matcher_ops_per_s(ops);

    // A broker whose subscribers never drop (lossless, like the raw HWM-0 baseline).
    let broker = start_broker(
        &["--log-level", "warning"],
        &[
            ("MPREG_BROKER_SOCKET__EVENT_HWM", "0"),
            ("MPREG_BROKER_SOCKET__HWM", "100000"),
            (
                "MPREG_BROKER_TOPICS__MAX_SUBSCRIPTIONS_PER_CLIENT",
                "1000000",
            ),
        ],
    );
    let broker_ops_s = broker_sub_ops_per_s(&broker.client, broker_ops);
    // Alternate raw and broker runs so that noise hits both.
    let (mut raw1, mut raw10, mut mp1, mut mp10) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..if quick { 1 } else { 3 } {
        let raw = pub_sub_throughput(count, 64, 1, TIMEOUT)
            .expect("raw")
            .expect("raw run finished");
        raw1.push(count as f64 / raw.as_secs_f64());
        mp1.push(broker_throughput(
            &broker.client,
            &broker.events,
            count,
            1,
            BATCH,
        ));
        let raw = pub_sub_throughput(count / 10, 64, 10, TIMEOUT)
            .expect("raw")
            .expect("raw run finished");
        raw10.push((count / 10 * 10) as f64 / raw.as_secs_f64());
        mp10.push(broker_throughput(
            &broker.client,
            &broker.events,
            count / 10,
            10,
            BATCH,
        ));
    }
    let (raw1, raw10, mp1, mp10) = (median(raw1), median(raw10), median(mp1), median(mp10));
    let unbatched = broker_throughput_unbatched(&broker.client, &broker.events, count / 5);

    println!(
        "{:<38} {:>12} {:>12} {:>8}   target",
        "pubsub", "mpreg", "raw zmq", "ratio"
    );
    for (n, ns) in &matching {
        let target = if *n == 10_000 { "<= 250 ns" } else { "" };
        println!(
            "{:<38} {:>12.0} {:>12} {:>8}   {target}",
            format!("match p50, {n} patterns (ns)"),
            ns,
            "",
            ""
        );
    }
    println!(
        "{:<38} {:>12.0} {:>12} {:>8}   >= 100000/s",
        "subscribe+unsubscribe ops/s (matcher)", matcher_ops, "", ""
    );
    println!(
        "{:<38} {:>12.0} {:>12} {:>8}",
        "subscribe+unsubscribe ops/s (broker)", broker_ops_s, "", ""
    );
    println!(
        "{:<38} {:>12.0} {:>12.0} {:>7.2}x   >= 0.5x raw",
        "64 B messages/s, 1 -> 1",
        mp1,
        raw1,
        mp1 / raw1
    );
    println!(
        "{:<38} {:>12.0} {:>12.0} {:>7.2}x",
        "64 B deliveries/s, 1 -> 10",
        mp10,
        raw10,
        mp10 / raw10
    );
    println!(
        "{:<38} {:>12.0} {:>12.0} {:>7.2}x",
        "64 B messages/s, 1 -> 1, unbatched",
        unbatched,
        raw1,
        unbatched / raw1
    );
    let met = matching[&10_000] <= 250.0 && matcher_ops >= 100_000.0 && mp1 >= 0.5 * raw1;
    println!("targets {}", if met { "met" } else { "NOT met" });
    let report = json!({
        "benchmark": "pubsub",
        "quick": quick,
        "match_p50_ns": matching.iter().map(|(n, ns)| (n.to_string(), json!(ns))).collect::<serde_json::Map<_, _>>(),
        "sub_unsub_ops_per_s": { "matcher": matcher_ops, "broker": broker_ops_s },
        "batch": BATCH,
        "messages_per_s": { "mpreg_1_to_1_unbatched": unbatched, "mpreg_1_to_1": mp1, "raw_1_to_1": raw1, "mpreg_1_to_10": mp10, "raw_1_to_10": raw10 },
        "ratios": { "one_to_one": mp1 / raw1, "one_to_ten": mp10 / raw10 },
        "targets_met": met,
    });
    super::write_json(json_path, &report);
}
