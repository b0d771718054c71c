//! Keeps 1,000 single-step calls in flight on one connection and prints the rate.
//!
//! `cargo run --release -p mpreg --example pipelined_calls -- [ENDPOINT] [CALLS] [task]`
//! (defaults: `tcp://127.0.0.1:7400`, 200000): 1,000 tasks share one client, each calling
//! `echo` with 64 bytes, as `mpreg-bench peers` does; `task` runs the client's connection as
//! a runtime task (`ClientOptions::io_thread` false). Prints one JSON line.

use std::time::Instant;

use mpreg::{args, Client, ClientOptions, Value};

const IN_FLIGHT: usize = 1_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), mpreg::Error> {
    let mut argv = std::env::args().skip(1);
    let endpoint = argv
        .next()
        .unwrap_or_else(|| mpreg::DEFAULT_ENDPOINT.to_string());
    let calls: usize = argv.next().and_then(|n| n.parse().ok()).unwrap_or(200_000);
    let task = argv.next().as_deref() == Some("task");
    let options = ClientOptions::default().with_io_thread(!task);
    let client = Client::connect_with(&endpoint, options).await?;
    let arg = Value::Binary(vec![7; 64]);
    let per_task = calls.div_ceil(IN_FLIGHT);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        let (client, arg) = (client.clone(), arg.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                client.call("echo", args![arg.clone()]).await?;
            }
            Ok::<(), mpreg::Error>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| mpreg::Error::Invalid(e.to_string()))??;
    }
    let secs = started.elapsed().as_secs_f64();
    let line = serde_json::json!({
        "calls": per_task * IN_FLIGHT,
        "io_thread": !task,
        "seconds": secs,
        "calls_per_s": (per_task * IN_FLIGHT) as f64 / secs,
    });
    println!("{line}");
    Ok(())
}
