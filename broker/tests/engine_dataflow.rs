//! The engine driven through its message interface, with workers answering tasks in a random
//! order: every step runs exactly once, only after all the steps it references, with their
//! results substituted; the reply holds the sinks. Also: retries after a worker is lost,
//! capacity, deadlines and cancellation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use mpreg_broker::engine::EngineConfig;
use mpreg_protocol::*;
use proptest::prelude::*;
use support::{answer, plan, register, submit, worker, Recorder};

fn engine(config: EngineConfig, now: Instant) -> mpreg_broker::Engine {
    support::engine(config, now, 1)
}

/// A random DAG: step i may reference steps before it in a random permutation; each step's
/// first argument is a literal marker `#<i>` identifying it.
fn dag() -> impl Strategy<Value = (Vec<Step>, Vec<Vec<usize>>, Vec<usize>)> {
    (
        1usize..30,
        proptest::collection::vec(
            proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
            30,
        ),
        any::<u64>(),
    )
        .prop_map(|(n, picks, seed)| {
            let mut order: Vec<usize> = (0..n).collect();
            let mut x = seed | 1;
            for i in (1..n).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut deps = vec![Vec::new(); n];
            for i in 1..n {
                for p in &picks[i] {
                    deps[order[i]].push(order[p.index(i)]);
                }
                deps[order[i]].sort_unstable();
                deps[order[i]].dedup();
            }
            let steps = (0..n)
                .map(|i| {
                    let mut args = vec![Value::from(format!("#{i}"))];
                    // Mix whole-result references and field paths into nested containers.
                    for (k, d) in deps[i].iter().enumerate() {
                        if k % 2 == 0 {
                            args.push(Value::from(format!("s{d}")));
                        } else {
                            args.push(Value::Map(vec![(
                                Value::from("x"),
                                Value::from(format!("s{d}.0")),
                            )]));
                        }
                    }
                    Step::new(format!("s{i}"), "f", args)
                })
                .collect();
            (
                steps,
                deps,
                (0..64)
                    .map(|k| (seed as usize).rotate_left(k) % 97)
                    .collect(),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn every_step_runs_once_after_its_references((steps, deps, choices) in dag(), capacity in 1u32..4, workers in 1usize..3) {
        let now = Instant::now();
        let mut e = engine(EngineConfig::default(), now);
        let mut out = Recorder::default();
        let names: Vec<Vec<u8>> = (0..workers).map(|w| format!("w{w}").into_bytes()).collect();
        for n in &names {
            register(&mut e, &mut out, n, &["f"], capacity, now);
        }
        let n = steps.len();
        submit(&mut e, &mut out, plan(7, steps), now);
        let mut answered = 0usize;
        let mut done: HashMap<usize, Value> = HashMap::new();
        let mut ran = HashSet::new();
        let mut pending: Vec<(Vec<u8>, Task<'static>)> = Vec::new();
        let mut k = 0;
        while out.client.is_empty() {
            pending.append(&mut out.tasks);
            // Never more tasks on a worker than its capacity.
            for name in &names {
                prop_assert!(pending.iter().filter(|(r, _)| r == name).count() <= capacity as usize);
            }
            prop_assert!(!pending.is_empty(), "engine stalled with {} of {n} answered", answered);
            let (routing, task) = pending.remove(choices[k % choices.len()] % pending.len());
            k += 1;
            let marker = task.args[0].as_str().unwrap().to_string();
            let i: usize = marker[1..].parse().unwrap();
            prop_assert!(ran.insert(i), "step {i} ran twice");
            // Every reference was resolved to the finished result of its step.
            for (k, d) in deps[i].iter().enumerate() {
                let want = done.get(d).cloned();
                prop_assert!(want.is_some(), "step {i} ran before its dependency {d}");
                let got = &task.args[k + 1];
                if k % 2 == 0 {
                    prop_assert_eq!(got, &want.unwrap());
                } else {
                    let first = want.unwrap().as_array().unwrap()[0].clone();
                    prop_assert_eq!(got, &Value::Map(vec![(Value::from("x"), first)]));
                }
            }
            let value = Value::Array(vec![Value::from(marker), Value::from(i as u64)]);
            done.insert(i, value.clone());
            answer(&mut e, &mut out, &routing, task.task, value, now);
            answered += 1;
        }
        prop_assert_eq!(answered, n);
        let BrokerToClient::Result(result) = &out.client[0].1 else { panic!("{:?}", out.client[0]) };
        let referenced: HashSet<usize> = deps.iter().flatten().copied().collect();
        let sinks: BTreeMap<String, Value> = (0..n).filter(|i| !referenced.contains(i)).map(|i| (format!("s{i}"), done[&i].clone())).collect();
        prop_assert_eq!(&result.results, &sinks);
        prop_assert_eq!(e.plans_in_flight(), 0);
    }
}

#[test]
fn lost_worker_tasks_move_to_another_then_fail_when_retries_run_out() {
    let t0 = Instant::now();
    let config = EngineConfig {
        heartbeat: Duration::from_millis(100),
        liveness: 3,
        max_retries: 1,
        ..EngineConfig::default()
    };
    let mut e = engine(config, t0);
    let mut out = Recorder::default();
    register(&mut e, &mut out, b"a", &["f"], 4, t0);
    submit(
        &mut e,
        &mut out,
        plan(1, vec![Step::new("x", "f", vec![])]),
        t0,
    );
    assert_eq!(out.tasks.len(), 1);
    register(&mut e, &mut out, b"b", &["f"], 4, t0);
    let first = out.tasks.remove(0).0;
    let other: &[u8] = if first == b"a" { b"b" } else { b"a" };
    // The other worker keeps heartbeating; the first goes silent and expires.
    let hb = WorkerToBroker::Heartbeat(Heartbeat {});
    for ms in [100u64, 200, 300, 400] {
        let now = t0 + Duration::from_millis(ms);
        e.on_worker(&mut out, worker(other), hb.clone(), now);
        e.on_tick(&mut out, now);
    }
    assert_eq!(out.tasks.len(), 1, "re-dispatched once");
    assert_eq!(out.tasks[0].0, other);
    assert_eq!(e.counter("tasks_retried"), 1);
    // The second worker dies too: retries are exhausted, the plan fails with worker_lost.
    for ms in [800u64, 900] {
        e.on_tick(&mut out, t0 + Duration::from_millis(ms));
    }
    let BrokerToClient::Error(err) = &out.client[0].1 else {
        panic!()
    };
    assert_eq!(err.error_code(), Some(ErrorCode::WorkerLost));
    assert_eq!(err.step.as_deref(), Some("x"));
    assert_eq!(e.plans_in_flight(), 0);
}

#[test]
fn deadline_fails_with_partial_results_and_cancels_tasks() {
    let t0 = Instant::now();
    let mut e = engine(EngineConfig::default(), t0);
    let mut out = Recorder::default();
    register(&mut e, &mut out, b"a", &["f"], 8, t0);
    let mut p = plan(
        3,
        vec![
            Step::new("fast", "f", vec![]),
            Step::new("slow", "f", vec![]),
        ],
    );
    p.deadline_ms = Some(50);
    submit(&mut e, &mut out, p, t0);
    let fast = out
        .tasks
        .iter()
        .find(|(_, t)| t.task == TaskId(1))
        .unwrap()
        .1
        .task;
    answer(&mut e, &mut out, b"a", fast, Value::from(1), t0);
    e.on_tick(&mut out, t0 + Duration::from_millis(60));
    let BrokerToClient::Error(err) = &out.client[0].1 else {
        panic!()
    };
    assert_eq!(err.error_code(), Some(ErrorCode::PlanTimeout));
    assert_eq!(err.partial.len(), 1);
    assert_eq!(out.cancels.len(), 1);
    // A late result for the cancelled task changes nothing.
    answer(
        &mut e,
        &mut out,
        b"a",
        TaskId(2),
        Value::from(2),
        t0 + Duration::from_millis(70),
    );
    assert_eq!(out.client.len(), 1);
}

#[test]
fn busy_workers_queue_steps_until_a_slot_frees() {
    let t0 = Instant::now();
    let mut e = engine(EngineConfig::default(), t0);
    let mut out = Recorder::default();
    register(&mut e, &mut out, b"a", &["f"], 2, t0);
    let steps = (0..10)
        .map(|i| Step::new(format!("s{i}"), "f", vec![]))
        .collect();
    submit(&mut e, &mut out, plan(1, steps), t0);
    let mut answered = 0;
    while out.client.is_empty() {
        assert!(out.tasks.len() <= 2);
        let (_, t) = out.tasks.remove(0);
        answer(&mut e, &mut out, b"a", t.task, Value::from(t.task.0), t0);
        answered += 1;
    }
    assert_eq!(answered, 10);
    let BrokerToClient::Result(r) = &out.client[0].1 else {
        panic!()
    };
    assert_eq!(r.results.len(), 10);
}
