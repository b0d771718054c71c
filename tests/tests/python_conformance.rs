//! Non-Rust peers are first class: a Python client and a Python worker, written from
//! docs/PROTOCOL.md with only pyzmq and msgpack, against the real broker and Rust nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use mpreg::{args, Client, Error, ErrorCode, Value};
use mpreg_tests::{python, python_dir, run_python, start_broker, Cluster, Proc, START_TIMEOUT};

#[test]
fn python_client_plans_run_on_rust_workers() {
    let c = Cluster::start(&[&["a"], &["b"]]);
    let (ok, text) = run_python(
        "selftest.py",
        &["--client", &c.broker.client, "--worker", &c.broker.worker],
    );
    assert!(ok, "python selftest failed:\n{text}");
}

#[test]
fn python_topics_client_subscribes_with_wildcards_and_publishes() {
    // Wildcards, overlap, literal `*`, batches, typed errors 600-602, unsubscribe, and the
    // retained backlog followed by live messages (docs/PROTOCOL.md section 15).
    let b = start_broker(&[], &[("MPREG_BROKER_TOPICS__RETAIN_COUNT", "3")]);
    let (ok, text) = run_python(
        "mpreg_topics.py",
        &["--broker", &b.client, "selftest", "--retained"],
    );
    assert!(ok, "python topics selftest failed:\n{text}");
    assert!(text.contains("all checks passed"), "{text}");
}

#[test]
fn python_fixture_encoding_matches_the_golden_bytes() {
    let (ok, text) = run_python::<&str>("check_fixtures.py", &[]);
    assert!(ok, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_worker_serves_a_rust_sdk_plan() {
    let c = Cluster::start(&[&[]]);
    let script = python_dir().join("mpreg_worker.py");
    let mut worker = Proc::spawn(
        "py-worker",
        &PathBuf::from(python()),
        &[
            script.to_string_lossy().into_owned(),
            "--broker".into(),
            c.broker.worker.clone(),
            "--name".into(),
            "py".into(),
            "--resources".into(),
            "python".into(),
        ],
        &[],
    );
    worker.wait_event("registered", START_TIMEOUT);
    let client = Client::connect(&c.broker.client).await.unwrap();
    // Rust node and Python worker in one plan, with references across them.
    let r = client
        .plan()
        .step("word", "echo", args!["mixed"])
        .step("up", "py_upper", args!["word"])
        .locs(["python"])
        .step("sum", "py_add", args![40, 2])
        .step("both", "echos", args!["up", "sum"])
        .run()
        .await
        .unwrap();
    assert_eq!(
        r["both"],
        Value::Array(vec![Value::from("MIXED"), Value::from(42)])
    );
    match client
        .call("py_fail", args!["from python"])
        .await
        .unwrap_err()
    {
        Error::Remote(e) => {
            assert_eq!(e.error_code(), Some(ErrorCode::StepFailed));
            assert!(e.message.contains("from python"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    // SIGTERM: the worker says goodbye and exits cleanly.
    let status = worker
        .terminate(Duration::from_secs(10))
        .expect("python worker exits");
    assert!(status.success(), "{status:?}\n{}", worker.log());
}
