//! The NATS side of `mpreg-bench peers`: nats-server, and the same rows measured through
//! async-nats (a responder task on its own connection for request/reply; one connection per
//! subscriber and one publisher for pub/sub).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use mpreg_tests::Proc;

use super::{
    collect, percentile, pipelined, Figures, Setup, Sizes, BATCH, FAN_OUT, RUN_BUDGET, SUB_BUFFER,
};

/// `nats-server` on 127.0.0.1 with an OS-chosen port (`-p -1`): the process and its URL.
pub(super) fn start_nats(program: &str) -> (Proc, String) {
    let path = std::path::PathBuf::from(program);
    let args = ["-a", "127.0.0.1", "-p", "-1"].map(String::from);
    let proc = Proc::spawn("nats-server", &path, &args, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = proc.log();
        if let Some(rest) = log.lines().find_map(|l| {
            l.split_once("Listening for client connections on ")
                .map(|x| x.1)
        }) {
            return (proc, format!("nats://{}", rest.trim()));
        }
        assert!(
            Instant::now() < deadline,
            "nats-server did not listen within 10 s; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn nats_connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .subscription_capacity(SUB_BUFFER)
        .connect(url)
        .await
        .expect("connect to nats-server")
}

/// Rows 1-3 for NATS: a responder task on its own connection echoes `echo` requests.
async fn nats_requests(setup: &Setup, sizes: &Sizes, fig: &mut Figures) {
    let responder = nats_connect(&setup.nats_url).await;
    let mut requests = responder.subscribe("bench.echo").await.expect("subscribe");
    let echo = tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            if let Some(reply) = m.reply {
                if responder.publish(reply, m.payload).await.is_err() {
                    break;
                }
            }
        }
    });
    let client = nats_connect(&setup.nats_url).await;
    client.flush().await.expect("flush");
    let payload = Bytes::from(setup.payload.clone());
    // Warm-up, then the sequential samples.
    for _ in 0..100 {
        client
            .request("bench.echo", payload.clone())
            .await
            .expect("request");
    }
    let start = Instant::now();
    let mut samples = Vec::with_capacity(sizes.sequential);
    while samples.len() < sizes.sequential && start.elapsed() < RUN_BUDGET {
        let t = Instant::now();
        client
            .request("bench.echo", payload.clone())
            .await
            .expect("request");
        samples.push(t.elapsed());
    }
    fig.p50_us = percentile(&mut samples, 0.50);
    fig.p99_us = percentile(&mut samples, 0.99);
    (fig.req_per_s, fig.cpu) = pipelined(sizes.pipelined, &setup.nats_pids, |_| {
        let client = client.clone();
        let payload = payload.clone();
        async move {
            client
                .request("bench.echo", payload)
                .await
                .expect("request");
        }
    })
    .await;
    echo.abort();
}

/// Rows 1-3 for MPREG: `call("echo", [64 bytes])`.
/// NATS 1 -> `subscribers`: `count` messages published as fast as `publish` takes them, or
/// (`awaited`) in runs of [`BATCH`] each followed by an awaited `flush` (a round trip to the
/// server, as MPREG's awaited `publish_batch` is).
async fn nats_pubsub(
    setup: &Setup,
    count: usize,
    subscribers: usize,
    awaited: bool,
    run: u64,
) -> (f64, u64) {
    let subject = format!("bench.ps.{run}");
    let mut readers = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..subscribers {
        let conn = nats_connect(&setup.nats_url).await;
        let mut sub = conn.subscribe(subject.clone()).await.expect("subscribe");
        conn.flush().await.expect("flush");
        readers.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut last = Instant::now();
            let deadline = tokio::time::Instant::now() + RUN_BUDGET;
            while n < count as u64 {
                match tokio::time::timeout_at(deadline, sub.next()).await {
                    Ok(Some(_)) => {
                        n += 1;
                        last = Instant::now();
                    }
                    _ => break,
                }
            }
            (n, last)
        }));
        conns.push(conn);
    }
    let publisher = nats_connect(&setup.nats_url).await;
    let payload = Bytes::from(setup.payload.clone());
    let start = Instant::now();
    for i in 1..=count {
        publisher
            .publish(subject.clone(), payload.clone())
            .await
            .expect("publish");
        if awaited && (i % BATCH == 0 || i == count) {
            publisher.flush().await.expect("flush");
        }
        if start.elapsed() > RUN_BUDGET {
            break;
        }
    }
    publisher.flush().await.expect("flush");
    collect(readers, start, (count * subscribers) as u64).await
}

pub(super) async fn nats_round(setup: &Setup, sizes: &Sizes, run: &mut u64) -> Figures {
    let mut fig = Figures::default();
    nats_requests(setup, sizes, &mut fig).await;
    *run += 1;
    let (rate, lost) = nats_pubsub(setup, sizes.one_to_one, 1, false, *run).await;
    fig.pub_1_1 = rate;
    fig.lost += lost;
    *run += 1;
    let (rate, lost) = nats_pubsub(setup, sizes.one_to_one, 1, true, *run).await;
    fig.batch_1_1 = rate;
    fig.lost += lost;
    *run += 1;
    let (rate, lost) = nats_pubsub(setup, sizes.fan_out, FAN_OUT, false, *run).await;
    fig.pub_1_10 = rate;
    fig.lost += lost;
    fig
}
