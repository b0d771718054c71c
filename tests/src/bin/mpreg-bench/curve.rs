//! The CURVE column of `mpreg-bench rpc`: single-step plans through a CURVE broker (client,
//! broker and node all encrypting) next to the same through a plain broker, in the same run,
//! in alternating rounds.

use std::time::Duration;

use mpreg_tests::{start_broker, start_node, BrokerProc, Proc};
use mpreg_transport::{Context, Curve, KeyPair, RawDealer, SocketOptions};
use serde_json::json;

use crate::{echo_step, median, percentile, pipelined, us, PlanClient};

/// A CURVE broker and node with throwaway keys (removed on drop).
pub struct CurveCluster {
    pub broker: BrokerProc,
    _node: Proc,
    dir: std::path::PathBuf,
    server: KeyPair,
    client: KeyPair,
}

impl Drop for CurveCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl CurveCluster {
    pub fn start() -> CurveCluster {
        let dir = std::env::temp_dir().join(format!("mpreg-bench-curve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("key dir");
        let server = KeyPair::generate().expect("keys");
        let client = KeyPair::generate().expect("keys");
        let worker = KeyPair::generate().expect("keys");
        server.write(dir.join("broker")).expect("write keys");
        worker.write(dir.join("worker")).expect("write keys");
        let access = dir.join("access.toml");
        std::fs::write(
            &access,
            format!(
                "[[client]]\nkey = \"{}\"\nfunctions = [\"*\"]\n[[worker]]\nkey = \"{}\"\n",
                client.public, worker.public
            ),
        )
        .expect("access file");
        let key_file = dir.join("broker.key");
        let broker = start_broker(
            &["--log-level", "warning"],
            &[
                (
                    "MPREG_BROKER_SECURITY__KEY_FILE",
                    key_file.to_str().expect("utf-8 path"),
                ),
                (
                    "MPREG_BROKER_SECURITY__ACCESS_FILE",
                    access.to_str().expect("utf-8 path"),
                ),
            ],
        );
        let node = start_node(
            &broker.worker,
            "bench-curve-node",
            &[],
            &[
                "--capacity",
                "256",
                "--server-key",
                &server.public.to_z85(),
                "--key-file",
                dir.join("worker.key").to_str().expect("utf-8 path"),
            ],
        );
        CurveCluster {
            broker,
            _node: node,
            dir,
            server,
            client,
        }
    }

    pub fn client(&self, ctx: &Context) -> PlanClient {
        let options = SocketOptions {
            curve: Some(Curve::Client {
                server: self.server.public,
                own: self.client.clone(),
            }),
            ..SocketOptions::dealer_client()
        };
        PlanClient {
            dealer: RawDealer::connect_with(ctx, &self.broker.client, &options).expect("client"),
            next_id: 0,
        }
    }
}

/// One table row: name, MPREG figure, baseline figure, ratio, target.
pub type Row = (String, String, String, String, &'static str);

/// Measures plain vs CURVE; returns the table rows and the JSON block.
pub fn column(
    plain: &mut PlanClient,
    sequential: usize,
    pipelined_count: usize,
    window: usize,
    rounds: usize,
) -> (Vec<Row>, serde_json::Value) {
    let cluster = CurveCluster::start();
    let ctx = Context::new();
    let mut secure = cluster.client(&ctx);
    for _ in 0..1_000 {
        secure.run(echo_step());
    }
    let (mut plain_lat, mut curve_lat): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    let (mut plain_rates, mut curve_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let per_round = sequential / rounds;
    // Many short pipelined runs in alternating pairs: the machine's noise comes in bursts of
    // seconds, and the median of the pairs' ratios is what it disturbs least.
    let pairs = rounds * 3;
    let pipe = pipelined_count / pairs;
    for _ in 0..rounds {
        for _ in 0..per_round {
            plain_lat.push(plain.run(echo_step()));
        }
        for _ in 0..per_round {
            curve_lat.push(secure.run(echo_step()));
        }
    }
    for pair in 0..pairs {
        // Alternate which goes first, so a trend over time does not favour either.
        let (p, c) = if pair % 2 == 0 {
            let p = pipelined(plain, pipe, window);
            (p, pipelined(&mut secure, pipe, window))
        } else {
            let c = pipelined(&mut secure, pipe, window);
            (pipelined(plain, pipe, window), c)
        };
        plain_rates.push(p);
        curve_rates.push(c);
        ratios.push(c / p);
    }
    let plain_p50 = us(percentile(&mut plain_lat, 0.5));
    let curve_p50 = us(percentile(&mut curve_lat, 0.5));
    let plain_rate = median(plain_rates);
    let curve_rate = median(curve_rates);
    let ratio = median(ratios);
    let cost = 1.0 - ratio;
    let rows = vec![
        (
            "CURVE p50 (us)".to_string(),
            format!("{curve_p50:.1}"),
            format!("{plain_p50:.1}"),
            format!("{:.2}x", curve_p50 / plain_p50),
            "(plain MPREG)",
        ),
        (
            "CURVE pipelined plans/s".to_string(),
            format!("{curve_rate:.0}"),
            format!("{plain_rate:.0}"),
            format!("{ratio:.2}x"),
            "cost <= 25 %",
        ),
    ];
    let block = json!({
        "plain": { "p50_us": plain_p50, "pipelined_per_s": plain_rate },
        "curve": { "p50_us": curve_p50, "pipelined_per_s": curve_rate },
        "throughput_ratio_median_of_pairs": ratio,
        "pairs": pairs,
        "throughput_cost": cost,
        "p50_ratio": curve_p50 / plain_p50,
        "target_met": cost <= 0.25,
    });
    (rows, block)
}
