//! One subscriber, one publisher: batches of 256 messages, each `publish_batch` awaited (as
//! `mpreg-bench peers` row 3b), and the delivery rate the subscriber sees.
//!
//! `cargo run --release -p mpreg --example publish_batches -- [ENDPOINT] [MESSAGES]`
//! (defaults: `tcp://127.0.0.1:7400`, 1000000). Prints one JSON line.

use std::time::{Duration, Instant};

use mpreg::{Client, Delivery, Outgoing, SubscribeOptions, Value};

const BATCH: usize = 256;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), mpreg::Error> {
    let mut argv = std::env::args().skip(1);
    let endpoint = argv
        .next()
        .unwrap_or_else(|| mpreg::DEFAULT_ENDPOINT.to_string());
    let count: usize = argv
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let topic = "example.batches".to_string();
    let reader = Client::connect(&endpoint).await?;
    let mut sub = reader
        .subscribe_with(
            [topic.clone()],
            SubscribeOptions::default().with_buffer(65_536),
        )
        .await?;
    let received = tokio::spawn(async move {
        let mut n = 0;
        while n < count {
            match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
                Ok(Some(Ok(Delivery::Message(_)))) => n += 1,
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        (n, Instant::now())
    });
    let publisher = Client::connect(&endpoint).await?;
    let payload = Value::Binary(vec![7; 64]);
    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        let n = BATCH.min(count - sent);
        let batch = (0..n).map(|_| Outgoing::new(topic.clone(), payload.clone()));
        publisher.publish_batch(batch).await?;
        sent += n;
    }
    let (delivered, last) = received
        .await
        .map_err(|e| mpreg::Error::Invalid(e.to_string()))?;
    let secs = last.duration_since(started).as_secs_f64();
    let line = serde_json::json!({
        "messages": count,
        "delivered": delivered,
        "seconds": secs,
        "messages_per_s": delivered as f64 / secs,
    });
    println!("{line}");
    Ok(())
}
