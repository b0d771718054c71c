//! Fires many plans at once over one client and counts the outcomes by kind.
//!
//! `cargo run -p mpreg --example concurrent_plans -- [ENDPOINT] [PLANS] [FUN]`
//! (defaults: `tcp://127.0.0.1:7400`, 500, `echo`). Each plan is `a = FUN(i)`,
//! `b = FUN("a")`; prints one JSON line with the counts and the elapsed time.

use std::collections::BTreeMap;
use std::time::Instant;

use mpreg::{args, Client, Value};

#[tokio::main]
async fn main() -> Result<(), mpreg::Error> {
    let mut argv = std::env::args().skip(1);
    let endpoint = argv
        .next()
        .unwrap_or_else(|| mpreg::DEFAULT_ENDPOINT.to_string());
    let plans: u64 = argv.next().and_then(|n| n.parse().ok()).unwrap_or(500);
    let fun = argv.next().unwrap_or_else(|| "echo".to_string());

    let client = Client::connect(&endpoint).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..plans {
        let client = client.clone();
        let fun = fun.clone();
        tasks.push(tokio::spawn(async move {
            let results = client
                .plan()
                .step("a", fun.as_str(), args![i])
                .step("b", fun.as_str(), args!["a"])
                .run()
                .await?;
            // `b` echoes `a`, which echoed `i`: anything else is a wrong answer.
            match results.get("b") {
                Some(v) if *v == Value::from(i) => Ok(()),
                other => Err(mpreg::Error::Invalid(format!("plan {i}: got {other:?}"))),
            }
        }));
    }
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        let kind = match task.await {
            Ok(Ok(())) => "ok".to_string(),
            Ok(Err(e)) => e.kind().to_string(),
            Err(join) => format!("panicked: {join}"),
        };
        *outcomes.entry(kind).or_default() += 1;
    }
    let line = serde_json::json!({
        "plans": plans,
        "outcomes": outcomes,
        "elapsed_ms": started.elapsed().as_millis() as u64,
        "in_flight_after": client.counters().in_flight,
    });
    println!("{line}");
    Ok(())
}
