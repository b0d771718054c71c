//! Unconfirmed publishes are never dropped by the client (issue 12): a publisher far faster
//! than a broker that is stopped (SIGSTOP) and resumed several times while it publishes waits
//! for room instead of losing messages, with its memory bounded by
//! `ClientOptions::publish_buffer`; `flush` returns once the broker has routed everything, and
//! a subscriber receives every message exactly once, in order.
//!
//! Without a bound on how long the reactors read before looking at their timers, a burst of
//! coalesced publishes once delayed heartbeats past the broker's grace period here: the broker
//! took its live clients for dead and ended the subscription (transport's `READ_SLICE`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpreg::{Client, ClientOptions, Delivery, SubscribeOptions, Value};
use mpreg_tests::{start_broker, BrokerProc};

/// The publisher's budget of unconfirmed bytes: small, so that the broker's pauses fill it
/// many times over.
const PUBLISH_BUFFER: usize = 256 * 1024;
/// How long each pause of the broker lasts: long enough that a publisher without
/// backpressure would overrun its socket's 10,000-message queue many times over, well under
/// the 3 s ZMTP heartbeat timeout (the connections stay up: this is about a slow broker, not a
/// lost one).
const PAUSE: Duration = Duration::from_millis(700);
/// Pauses during the run, and the time the broker runs between two.
const PAUSES: usize = 4;
const GAP: Duration = Duration::from_millis(500);

async fn within<T>(what: &str, limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// Stops and resumes the broker `PAUSES` times, `gap` apart, until told to stop; returns how
/// many pauses it made.
fn pause_repeatedly(broker: &BrokerProc, stop: &AtomicBool, gap: Duration) -> usize {
    let mut made = 0;
    while made < PAUSES && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(gap);
        broker.proc.pause();
        std::thread::sleep(PAUSE);
        broker.proc.signal("CONT");
        made += 1;
    }
    made
}

async fn publish_through_pauses(count: u64, budget: Duration) {
    let broker = start_broker(
        &["--log-level", "warning"],
        // The subscriber's side lossless too, so that every message must arrive.
        &[("MPREG_BROKER_SOCKET__EVENT_HWM", "0")],
    );
    let subscriber = Client::connect(&broker.client).await.unwrap();
    let mut sub = subscriber
        .subscribe_with(
            ["bp.#"],
            SubscribeOptions::default().with_buffer(count as usize + 16),
        )
        .await
        .unwrap();
    let options = ClientOptions::default().with_publish_buffer(PUBLISH_BUFFER);
    let publisher = Client::connect_with(&broker.client, options).await.unwrap();

    // The subscriber checks every message as it comes: payload i, sequence number i + 1.
    let reader = tokio::spawn(async move {
        let mut next = 0u64;
        while next < count {
            match sub.next().await {
                Some(Ok(Delivery::Message(m))) => {
                    assert_eq!(m.payload, Value::from(next), "message {next} out of order");
                    assert_eq!(m.seq, next + 1, "sequence gap or repeat at {next}");
                    next += 1;
                }
                Some(Ok(Delivery::Lagging(l))) => panic!("messages lost before {next}: {l:?}"),
                Some(Ok(other)) => panic!("unexpected notice at {next}: {other:?}"),
                Some(Err(e)) => panic!("subscription failed at {next}: {e}"),
                None => panic!("subscription ended at {next}"),
            }
        }
        // Nothing after the last one: each message exactly once.
        let extra = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
        assert!(extra.is_err(), "a message beyond {count}: {extra:?}");
        next
    });

    // The pausing thread owns the broker process until the run is over.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let pauser = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let made = pause_repeatedly(&broker, &stop, GAP);
            (made, broker)
        })
    };

    // As fast as the client takes them; the longest wait shows the backpressure.
    let mut longest_wait = Duration::ZERO;
    for i in 0..count {
        let t = Instant::now();
        within(
            "a publish",
            budget,
            publisher.publish("bp.x", Value::from(i)),
        )
        .await
        .unwrap();
        longest_wait = longest_wait.max(t.elapsed());
        assert!(
            started.elapsed() < budget,
            "published {i} of {count} within {budget:?}"
        );
    }
    let published_in = started.elapsed();
    eprintln!("published {count} in {published_in:?}");
    within("flush", Duration::from_secs(60), publisher.flush())
        .await
        .expect("flush: the broker has everything");
    stop.store(true, Ordering::Relaxed);
    let (pauses, broker) = pauser.join().expect("pausing thread");
    let received = within("every message delivered", budget, reader)
        .await
        .expect("subscriber");
    assert_eq!(received, count);

    let counters = publisher.counters();
    assert_eq!(
        counters.publish_errors,
        0,
        "{:?}",
        publisher.last_publish_error()
    );
    assert_eq!(counters.publishes_in_doubt, 0);
    assert_eq!(
        counters.connections_lost, 0,
        "the pauses must not break the connection"
    );
    assert!(
        pauses >= 1,
        "the broker was never paused: the run proves nothing"
    );
    // The publisher really waited for a stopped broker instead of buffering without bound:
    // with a 256 KiB budget it cannot run through a 1.2 s pause.
    assert!(
        longest_wait >= PAUSE / 2,
        "longest single publish {longest_wait:?}: no backpressure was felt"
    );
    let status = within("status", Duration::from_secs(10), publisher.status())
        .await
        .unwrap();
    assert_eq!(status.counters["topic_published"], count);
    assert_eq!(status.counters["topic_dropped_hwm"], 0);
    eprintln!(
        "{count} messages published in {published_in:?} through {pauses} pauses of {PAUSE:?} \
         (longest publish {longest_wait:?}); all delivered in order"
    );
    drop(broker);
}

/// A million messages: about 10 s in the debug build on a loaded 2-core machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_publishes_through_a_stopped_broker_lose_nothing() {
    publish_through_pauses(1_000_000, Duration::from_secs(150)).await;
}
