//! Found by the seeded simulation (`scripts/sim.sh`; first seeds 756, 1073, 3065, 11688, with
//! property P6): when one heartbeat tick expires several silent workers, the expiry of the
//! first can fail a plan (a step out of retries); cancelling that plan's tasks frees slots on
//! the *other* silent workers, and those slots are refilled with waiting steps before the
//! workers are expired a moment later in the same tick. The steps go to workers the broker has
//! already found dead, are orphaned at once and charged a retry without having run: a step
//! with no retries left fails with `302 worker_lost` although it never reached a live worker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use mpreg_broker::engine::EngineConfig;
use mpreg_protocol::*;
use support::{client, engine, plan, register, submit, Recorder};

#[test]
fn a_tick_never_dispatches_to_a_worker_it_expires_in_the_same_tick() {
    let t0 = Instant::now();
    let config = EngineConfig {
        heartbeat: Duration::from_millis(100),
        liveness: 3,
        ..EngineConfig::default()
    };
    let mut e = engine(config, t0, 1);
    let mut out = Recorder::default();
    // Registered in this order, so a tick expires `a` first, then `b`.
    register(&mut e, &mut out, b"a", &["f"], 1, t0);
    register(&mut e, &mut out, b"b", &["g"], 1, t0);
    // Plan 1 runs `x` on a (no retries) and `y` on b; plan 2's `z` waits for b's only slot.
    let mut x = Step::new("x", "f", vec![]);
    x.retries = Some(0);
    submit(
        &mut e,
        &mut out,
        plan(1, vec![x, Step::new("y", "g", vec![])]),
        t0,
    );
    let z = plan(2, vec![Step::new("z", "g", vec![])]);
    e.on_client(&mut out, client(b"client"), ClientToBroker::Plan(z), t0);
    assert_eq!(out.tasks.len(), 2, "x on a, y on b; z waits");
    // Both workers fall silent; the tick at 400 ms expires both.
    for ms in [100, 200, 300, 400] {
        e.on_tick(&mut out, t0 + Duration::from_millis(ms));
    }
    assert_eq!(e.worker_count(), 0);
    // Expiring `a` fails plan 1 (x is out of retries) and cancels y on b; b's freed slot must
    // not be given to z, since b is expired in the same tick.
    let sent: Vec<(String, String)> = out
        .tasks
        .iter()
        .map(|(to, t)| (String::from_utf8_lossy(to).into_owned(), t.fun.to_string()))
        .collect();
    assert_eq!(
        sent.len(),
        2,
        "a task went to a worker expired in the same tick: {sent:?}"
    );
    assert_eq!(
        e.counter("tasks_retried"),
        0,
        "z was charged a retry without having run"
    );
    let lost_z = out.replies().into_iter().any(|m| {
        matches!(m, BrokerToClient::Error(err)
            if err.id == Some(2) && err.error_code() == Some(ErrorCode::WorkerLost))
    });
    assert!(!lost_z, "plan 2 failed with worker_lost though z never ran");
}
