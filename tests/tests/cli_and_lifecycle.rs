//! The `mpreg` CLI contract, broker restarts (nodes register again) and graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use mpreg::{args, Client, Error, ErrorCode, Value};
use mpreg_tests::{cli, start_broker, start_broker_at, Cluster};
use serde_json::{json, Value as Json};

fn error_line(stderr: &str) -> Json {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one stderr line: {stderr:?}");
    let v: Json = serde_json::from_str(lines[0]).unwrap();
    let e = &v["error"];
    assert!(
        e["code"].is_u64() && e["kind"].is_string() && e["message"].is_string(),
        "{v}"
    );
    assert!(
        e.get("step").is_some(),
        "step key present (null or a name): {v}"
    );
    v
}

#[test]
fn cli_contract() {
    let c = Cluster::start(&[&["gpu"]]);
    let b = &c.broker.client;
    // call: JSON args, string fallback, one line of JSON out.
    let (code, out, err) = cli(
        b,
        &["call", "echos", "1", r#"{"a":[2,3]}"#, "word", "-2.5"],
        None,
    );
    assert_eq!((code, err.as_str()), (0, ""), "{err}");
    assert_eq!(
        serde_json::from_str::<Json>(out.trim()).unwrap(),
        json!([1, {"a": [2, 3]}, "word", -2.5])
    );
    assert_eq!(out.lines().count(), 1);
    let (code, out, _) = cli(b, &["call", "echo", "\"hi\"", "--locs", "gpu"], None);
    assert_eq!((code, out.trim()), (0, "\"hi\""));

    // plan from stdin: sinks by default, --all, --progress lines before the result.
    let plan = r#"[{"name":"|first","fun":"echo","args":["hi there!"]},
                   {"name":"|second","fun":"echo","args":["|first"]},
                   {"name":"|third","fun":"echos","args":["|first","|second","AND ME TOO"]}]"#;
    let (code, out, _) = cli(b, &["plan", "-"], Some(plan));
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Json>(out.trim()).unwrap(),
        json!({"|third": ["hi there!", "hi there!", "AND ME TOO"]})
    );
    let (_, out, _) = cli(b, &["plan", "-", "--all"], Some(plan));
    assert_eq!(
        serde_json::from_str::<Json>(out.trim())
            .unwrap()
            .as_object()
            .unwrap()
            .len(),
        3
    );
    let (code, out, _) = cli(b, &["plan", "-", "--progress"], Some(plan));
    assert_eq!(code, 0);
    let lines: Vec<Json> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[0]["step"], "|first");
    assert!(lines[3].get("|third").is_some());

    // plan from a file with kwargs and locs.
    let dir = std::env::temp_dir().join(format!("mpreg-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("plan.json");
    std::fs::write(&file, r#"[{"name":"x","fun":"echo","args":[{"k":[1,2]}],"kwargs":{},"locs":["gpu"]},{"name":"y","fun":"echo","args":["x.k.1"]}]"#).unwrap();
    let (code, out, _) = cli(b, &["plan", file.to_str().unwrap()], None);
    assert_eq!((code, out.trim()), (0, r#"{"y":2}"#));
    std::fs::remove_dir_all(&dir).unwrap();

    // Errors: exit 1, nothing on stdout, one typed line on stderr.
    let (code, out, err) = cli(b, &["call", "echo", "1", "--locs", "tpu"], None);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(error_line(&err)["error"]["kind"], "no_route");
    let (code, out, err) = cli(
        b,
        &["plan", "-"],
        Some(r#"[{"name":"a","fun":"fail","args":["nope"]}]"#),
    );
    assert_eq!((code, out.as_str()), (1, ""));
    let e = error_line(&err);
    assert_eq!(
        (e["error"]["code"].as_u64(), e["error"]["step"].as_str()),
        (Some(301), Some("a"))
    );
    let (code, out, err) = cli(
        b,
        &["plan", "-", "--progress"],
        Some(r#"[{"name":"a","fun":"echo","args":[1]},{"name":"b","fun":"fail","args":["a"]}]"#),
    );
    assert_eq!(
        (code, out.as_str()),
        (1, ""),
        "no progress lines on stdout when the plan fails"
    );
    error_line(&err);
    let (code, _, err) = cli(b, &["plan", "-"], Some("not json"));
    assert_eq!(code, 1);
    assert_eq!(error_line(&err)["error"]["code"], 902);
    let (code, _, err) = cli(
        b,
        &["plan", "-", "--timeout", "0.3"],
        Some(r#"[{"name":"z","fun":"sleep","args":[3000,1]}]"#),
    );
    assert_eq!(code, 1);
    assert_eq!(error_line(&err)["error"]["kind"], "plan_timeout");
    let (code, _, err) = cli(
        "tcp://127.0.0.1:1",
        &["call", "echo", "1", "--timeout", "0.5"],
        None,
    );
    assert_eq!(code, 1);
    assert_eq!(error_line(&err)["error"]["code"], 900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_again_after_a_broker_restart() {
    let mut c = Cluster::start(&[&[]]);
    let (client_ep, worker_ep, events_ep) = (
        c.broker.client.clone(),
        c.broker.worker.clone(),
        c.broker.events.clone(),
    );
    c.broker.proc.kill();
    // Same ports, new broker that knows no one: the node must find it by itself.
    let _restarted = start_broker_at(&client_ep, &worker_ep, &events_ep, &[]);
    let client = Client::connect(&client_ep).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        match client.call("echo", args!["back"]).await {
            Ok(v) => {
                assert_eq!(v, Value::from("back"));
                break;
            }
            Err(Error::Remote(e))
                if e.error_code() == Some(ErrorCode::NoRoute) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("node did not come back: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_plans_in_flight_then_refuses_new_ones() {
    let mut c = Cluster::start(&[&[]]);
    let client = Client::connect(&c.broker.client).await.unwrap();
    let running = {
        let client = client.clone();
        tokio::spawn(async move { client.call("sleep", args![800, "finished"]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.broker.proc.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New plans are refused while the old one drains...
    let e = client.call("echo", args![1]).await.unwrap_err();
    assert_eq!(e.error_code(), Some(ErrorCode::ShuttingDown), "{e:?}");
    // ...which still completes, and then the broker exits cleanly.
    assert_eq!(running.await.unwrap().unwrap(), Value::from("finished"));
    let status = c
        .broker
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("broker exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn broker_refuses_bad_configuration() {
    let dir = std::env::temp_dir().join(format!("mpreg-badconf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broker.toml");
    std::fs::write(&file, "heartbeat_ms = \"often\"\n").unwrap();
    let mut p = mpreg_tests::Proc::spawn(
        "badconf",
        &mpreg_tests::bin("mpreg-broker"),
        &["--config".into(), file.to_str().unwrap().into()],
        &[],
    );
    let status = p.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(2));
    assert!(p.log().contains("heartbeat_ms"), "{}", p.log());
    std::fs::remove_dir_all(&dir).unwrap();
    // A port already taken: exit 1 with the endpoint in the message.
    let first = start_broker(&[], &[]);
    let mut p = mpreg_tests::Proc::spawn(
        "taken",
        &mpreg_tests::bin("mpreg-broker"),
        &[
            "--client-endpoint".into(),
            first.client.clone(),
            "--worker-endpoint".into(),
            "tcp://127.0.0.1:*".into(),
        ],
        &[],
    );
    assert_eq!(
        p.wait_exit(Duration::from_secs(10)).expect("exits").code(),
        Some(1)
    );
    assert!(p.log().contains(&first.client), "{}", p.log());
}
