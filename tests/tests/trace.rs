//! Plan traces against real brokers and nodes: where and when each step ran (a step that
//! waited for a worker slot, a cache answer, a step forwarded to a peer broker, a failed
//! plan), the broker's log lines carrying the plan's id, and `mpreg plan --progress` on a
//! terminal (a live status line on stderr) and piped (JSON only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mpreg::{args, Client, Error, StepOutcome};
use mpreg_tests::{bin, cli, eventually, start_broker, start_broker_cluster, start_node};
use serde_json::Value as Json;

const WAIT: Duration = Duration::from_secs(20);

fn plan_file(name: &str, json: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("mpreg-trace-{}-{name}.json", std::process::id()));
    std::fs::write(&path, json).unwrap();
    path
}

fn lines(out: &str) -> Vec<Json> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn us(line: &Json, key: &str) -> u64 {
    line[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

#[test]
fn a_trace_says_where_and_when_each_step_ran() {
    let broker = start_broker(&["--log-level", "debug"], &[]);
    // One slot: of two independent steps, one waits for the other.
    let _node = start_node(&broker.worker, "t0", &[], &["--capacity", "1"]);
    let file = plan_file(
        "slots",
        r#"[{"name": "a", "fun": "sleep", "args": [150, "x"]},
            {"name": "b", "fun": "sleep", "args": [150, "y"]},
            {"name": "c", "fun": "echos", "args": ["a", "b"]}]"#,
    );
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let (code, out, err) = cli(
        &broker.client,
        &["plan", file.to_str().unwrap(), "--trace"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let all = lines(&out);
    assert_eq!(all.len(), 4, "the result line and one line per step: {out}");
    assert_eq!(all[0], serde_json::json!({"c": ["x", "y"]}));
    let steps = &all[1..];
    let plan = steps[0]["plan"].as_str().unwrap().to_string();
    assert_eq!(plan.len(), 26, "a ULID: {plan}");
    let accepted = us(&steps[0], "accepted_unix_us");
    assert!(
        accepted + 5_000_000 >= before && accepted <= before + 30_000_000,
        "accepted {accepted} vs {before}"
    );
    for s in steps {
        assert_eq!(s["plan"], plan.as_str());
        assert_eq!(us(s, "accepted_unix_us"), accepted);
        assert_eq!(s["broker"], broker.name.as_str());
        assert_eq!(s["worker"], "t0");
        assert_eq!(s["outcome"], "ok");
        assert_eq!(s["retries"], 0);
        let (ready, dispatched, started, finished) = (
            us(s, "ready_us"),
            us(s, "dispatched_us"),
            us(s, "started_us"),
            us(s, "finished_us"),
        );
        assert!(
            ready <= dispatched && dispatched <= started && started <= finished,
            "{s}"
        );
        assert!(s["queued_us"].is_u64(), "{s}");
    }
    // The two sleeps finished first (in some order), then `c`.
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(names[2], "c", "{names:?}");
    let (first, second) = (&steps[0], &steps[1]);
    // Each sleep ran its 150 ms (start derived from the worker's own run time).
    for s in [first, second] {
        let ran = us(s, "finished_us") - us(s, "started_us");
        assert!((150_000..2_000_000).contains(&ran), "{s}");
    }
    // The first ran at once; the second was ready at once but waited for the only slot.
    assert!(us(first, "dispatched_us") < 100_000, "{first}");
    assert!(us(second, "ready_us") < 100_000, "{second}");
    assert!(
        us(second, "dispatched_us") >= us(first, "finished_us"),
        "the second step waits for the slot: {first} {second}"
    );
    // `c` became ready when its last reference finished.
    let c = &steps[2];
    assert!(us(c, "ready_us") >= us(second, "finished_us"), "{c}");

    // The broker's log lines about the plan carry its id.
    let mut broker = broker;
    eventually(
        WAIT,
        "the broker logs the plan's start and end with its id",
        || {
            let log = broker.proc.log();
            let mentions: Vec<&str> = log.lines().filter(|l| l.contains(&plan)).collect();
            mentions.iter().any(|l| l.contains("plan started"))
                && mentions.iter().any(|l| l.contains("plan completed"))
        },
    );
    broker.proc.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_plan_and_a_cache_answer_are_traced() {
    let broker = start_broker(&[], &[]);
    let _node = start_node(&broker.worker, "t1", &[], &[]);
    let client = Client::connect(&broker.client).await.unwrap();
    let err = client
        .plan()
        .step("a", "echo", args!["x"])
        .step("b", "fail", args!["a"])
        .trace()
        .run()
        .await
        .unwrap_err();
    let Error::Remote(remote) = err else {
        panic!("expected the plan's error, got {err:?}");
    };
    assert_eq!(remote.kind, "step_failed");
    let trace = remote.trace.expect("the error carries the trace");
    assert_eq!(trace.broker, broker.name);
    let steps: Vec<(&str, StepOutcome, &str)> = trace
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.outcome, s.worker.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            ("a", StepOutcome::Ok, "t1"),
            ("b", StepOutcome::Failed, "t1")
        ]
    );
    let b = &trace.steps[1];
    assert!(b.dispatched_us.is_some() && b.finished_us >= b.dispatched_us.unwrap());
    assert!(trace.total_us >= b.finished_us);

    // `slow` is cacheable: the second call is a cache answer, never dispatched.
    for round in 0..2 {
        let traced = client
            .plan()
            .step("s", "slow", args![30, "v"])
            .run_traced()
            .await
            .unwrap();
        let trace = traced.trace.expect("a trace");
        assert_eq!(traced.plan, Some(trace.plan));
        let s = &trace.steps[0];
        if round == 0 {
            assert_eq!((s.outcome, s.worker.as_str()), (StepOutcome::Ok, "t1"));
            assert!(s.finished_us - s.started_us.unwrap() >= 30_000, "{s:?}");
        } else {
            assert_eq!(
                (s.outcome, s.worker.as_str()),
                (StepOutcome::Cached, "cache")
            );
            assert_eq!((s.dispatched_us, s.started_us), (None, None), "{s:?}");
        }
    }
    client.close().await;
}

#[test]
fn a_failed_traced_plan_keeps_its_trace_on_the_error_line() {
    let broker = start_broker(&[], &[]);
    let _node = start_node(&broker.worker, "tf", &[], &[]);
    let file = plan_file(
        "failing",
        r#"[{"name": "a", "fun": "echo", "args": ["x"]},
            {"name": "b", "fun": "fail", "args": ["a"]}]"#,
    );
    let (code, out, err) = cli(
        &broker.client,
        &["plan", file.to_str().unwrap(), "--trace"],
        None,
    );
    assert_eq!(code, 1, "{out} {err}");
    assert!(out.is_empty(), "nothing on stdout: {out}");
    let errors = lines(&err);
    assert_eq!(errors.len(), 1, "one line on stderr: {err}");
    let error = &errors[0]["error"];
    assert_eq!(error["code"], 301, "{error}");
    assert_eq!(error["step"], "b", "{error}");
    let steps = error["trace"].as_array().expect("the trace");
    assert_eq!(steps.len(), 2, "{error}");
    assert_eq!(
        (&steps[0]["step"], &steps[0]["outcome"]),
        (&"a".into(), &"ok".into())
    );
    assert_eq!(
        (&steps[1]["step"], &steps[1]["outcome"]),
        (&"b".into(), &"failed".into())
    );
    assert_eq!(steps[1]["worker"], "tf");
    // Without --trace the error line is as before.
    let (code, _, err) = cli(&broker.client, &["plan", file.to_str().unwrap()], None);
    assert_eq!(code, 1);
    assert!(lines(&err)[0]["error"].get("trace").is_none(), "{err}");
}

#[test]
fn a_forwarded_step_brings_its_times_back_from_the_peer() {
    let brokers = start_broker_cluster("tr", 2, &[]);
    let resource = format!("tr-gpu-{}", std::process::id());
    let _node = start_node(&brokers[1].worker, "far", &[&resource], &[]);
    let file = plan_file(
        "forwarded",
        &format!(r#"[{{"name": "f", "fun": "sleep", "args": [60, "v"], "locs": ["{resource}"]}}]"#),
    );
    // Until the catalogue reached broker 1, the step has no route there.
    let mut out = String::new();
    eventually(WAIT, "broker 1 forwards the step to broker 2", || {
        let (code, o, _) = cli(
            &brokers[0].client,
            &["plan", file.to_str().unwrap(), "--trace"],
            None,
        );
        out = o;
        code == 0
    });
    let all = lines(&out);
    assert_eq!(all[0], serde_json::json!({"f": "v"}));
    let f = &all[1];
    assert_eq!(
        f["broker"],
        brokers[1].name.as_str(),
        "ran behind the peer: {f}"
    );
    assert_eq!(f["worker"], "far");
    let (dispatched, started, finished) = (
        us(f, "dispatched_us"),
        us(f, "started_us"),
        us(f, "finished_us"),
    );
    assert!(dispatched <= started && started <= finished, "{f}");
    assert!(
        finished - started >= 60_000,
        "the peer's worker reported its run: {f}"
    );
    assert!(f["queued_us"].is_u64(), "{f}");
}

#[test]
fn progress_on_a_terminal_draws_a_status_line_and_pipes_stay_json() {
    let broker = start_broker(&[], &[]);
    let _node = start_node(&broker.worker, "t2", &[], &[]);
    let file = plan_file(
        "progress",
        r#"[{"name": "a", "fun": "sleep", "args": [400, "x"]},
            {"name": "b", "fun": "echo", "args": ["a"]}]"#,
    );
    let file = file.to_str().unwrap();
    // Piped: stdout is JSON lines exactly as before, stderr stays empty.
    let (code, out, err) = cli(&broker.client, &["plan", file, "--progress"], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "", "nothing on a piped stderr");
    let all = lines(&out);
    assert_eq!(all.len(), 3);
    assert_eq!(all[0]["step"], "a");
    assert_eq!(all[2], serde_json::json!({"b": "x"}));

    // On a terminal (a pseudo-terminal from `script`): the live line on stderr as well.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED the terminal half: `script` (util-linux) is not installed");
        return;
    }
    let command = format!(
        "{} plan {file} --progress --broker {}",
        bin("mpreg").display(),
        broker.client
    );
    let tty = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{text}");
    assert!(
        text.contains("\rplan"),
        "a status line rewritten in place: {text:?}"
    );
    assert!(text.contains("0/2 steps done"), "{text:?}");
    assert!(text.contains("2/2 steps done, last b on t2"), "{text:?}");
    assert!(
        text.contains("\r\x1b[K"),
        "the line is cleared at the end: {text:?}"
    );
    assert!(text.contains(r#"{"b":"x"}"#), "{text:?}");
}
