//! The `mpreg-node` binary: configuration errors, the `registered` line on stdout, layering of
//! environment and flags, and a graceful SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{outcome_of, Scripted, PROMPT};
use mpreg_protocol::WorkerToBroker;

const BIN: &str = env!("CARGO_BIN_EXE_mpreg-node");

/// Environment variables of the binary, cleared so that the caller's shell cannot leak in.
const NODE_VARS: &[&str] = &[
    "MPREG_NODE_NAME",
    "MPREG_NODE_BROKERS",
    "MPREG_NODE_RESOURCES",
    "MPREG_NODE_CAPACITY",
    "MPREG_NODE_DRAIN_TIMEOUT_MS",
    "MPREG_NODE_LOG_LEVEL",
    "MPREG_NODE_CONFIG",
];

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in NODE_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// Runs the binary to completion under a timeout: (exit code, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = command(args, env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PROMPT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mpreg-node {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// An environment variable to set: (name, value).
type EnvVar<'a> = (&'a str, &'a str);

#[test]
fn bad_configuration_exits_non_zero_naming_the_field() {
    let long = "n".repeat(300);
    let cases: [(&[&str], &[EnvVar<'_>], &str); 9] = [
        (&["--capacity", "0"], &[], "capacity"),
        // Unknown keys were accepted silently.
        (
            &[],
            &[("MPREG_NODE_CAPACITI", "2")],
            "unknown field `capaciti`",
        ),
        // A name no broker accepts: the node used to retry its registration forever.
        (&["--name", &long], &[], "name: 300 bytes long"),
        (
            &["--resources", &long],
            &[],
            "resources: resource name of 300 bytes",
        ),
        (&["--log-level", "verbose"], &[], "log_level"),
        (&[], &[("MPREG_NODE_BROKERS", "nonsense")], "brokers[0]"),
        (&[], &[("MPREG_NODE_CAPACITY", "lots")], "capacity"),
        (&["--log-level", "loud"], &[], "log_level"),
        (
            &["--config", "/nonexistent/mpreg-node.toml"],
            &[],
            "/nonexistent/mpreg-node.toml",
        ),
    ];
    for (args, env, field) in cases {
        let (code, stderr) = run(args, env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains("invalid configuration") && stderr.contains(field),
            "{args:?} {env:?}: {stderr}"
        );
    }
    // A bad flag is a usage error.
    let (code, _) = run(&["--capacity", "-3"], &[]);
    assert_eq!(code, Some(2));
}

/// Kills the child if the test fails before it exits.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_prints_its_line_and_drains_on_sigterm() {
    let mut broker = Scripted::start();
    let child = command(
        &[
            "--broker",
            &broker.endpoint,
            "--name",
            "bin-node",
            "--resources",
            "y,x",
        ],
        &[
            ("MPREG_NODE_NAME", "env-name"),
            ("MPREG_NODE_CAPACITY", "3"),
            ("MPREG_NODE_BROKERS", "tcp://127.0.0.1:1"),
            ("MPREG_NODE_LOG_LEVEL", "debug"),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut child = Reaper(child);
    let stdout = child.0.stdout.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    // Flags beat the environment (name, broker); the environment beats the defaults.
    let (routing, register) = broker.accept(100, 50).await;
    assert_eq!(register.node, "bin-node");
    assert_eq!(register.capacity, 3);
    assert_eq!(register.resources, ["x", "y"]);
    assert_eq!(
        register.functions,
        ["echo", "echokw", "echos", "fail", "sleep", "slow"]
    );
    assert_eq!(register.cacheable.keys().collect::<Vec<_>>(), ["slow"]);

    // First the metrics address (an OS-chosen port on loopback by default), then the
    // registration.
    let line = tokio::time::timeout(PROMPT, lines.recv())
        .await
        .expect("a listening line")
        .expect("stdout open");
    let listening: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(listening["event"], "listening", "{line}");
    assert_eq!(listening["node"], "bin-node", "{line}");
    assert!(
        listening["http"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{line}"
    );
    let line = tokio::time::timeout(PROMPT, lines.recv())
        .await
        .expect("a registered line")
        .expect("stdout open");
    let expected = format!(
        r#"{{"event":"registered","node":"bin-node","broker":"{}"}}"#,
        broker.endpoint
    );
    assert_eq!(line, expected);

    assert_eq!(
        broker.call(&routing, 1, "echo", vec!["hi".into()]).await,
        Ok("hi".into())
    );
    broker
        .task(&routing, 2, "sleep", vec![300.into(), "drained".into()])
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let got = broker.next_not_heartbeat(PROMPT).await;
    let WorkerToBroker::Disconnect(d) = got.message else {
        panic!("expected disconnect, got {:?}", got.message);
    };
    assert_eq!(d.reason, "shutting down");
    assert_eq!(
        outcome_of(broker.next_not_heartbeat(PROMPT).await, 2),
        Ok("drained".into())
    );
    let deadline = Instant::now() + PROMPT;
    let code = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "mpreg-node did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(code, Some(0));
    // Exactly one line per registration.
    let rest = tokio::time::timeout(PROMPT, lines.recv()).await;
    assert!(matches!(rest, Ok(None)), "{rest:?}");
    broker.stop().await;
}
