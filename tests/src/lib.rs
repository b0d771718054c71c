//! Test harness: starts real `mpreg-broker` and `mpreg-node` processes on ephemeral ports,
//! waits for the JSON lines they print on stdout, and stops them (by PID) when dropped.
//!
//! Binaries are looked up next to the running executable (`target/<profile>/`), or in
//! `MPREG_BIN_DIR`. Their stderr goes to `target/test-logs/<name>-<pid>.log`, printed when a
//! test asks for it ([`Proc::log`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// How long a process may take to print its ready line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory holding the workspace binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MPREG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A workspace binary by name; panics with a hint when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

fn log_dir() -> PathBuf {
    let dir = bin_dir()
        .parent()
        .map_or_else(std::env::temp_dir, Path::to_path_buf)
        .join("test-logs");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A child process that is killed when dropped.
pub struct Proc {
    /// A label for messages.
    pub name: String,
    child: Child,
    lines: Receiver<String>,
    log: PathBuf,
}

impl Proc {
    /// Starts `program` with `args`; stdout lines are collected, stderr goes to a log file.
    pub fn spawn(name: &str, program: &Path, args: &[String], env: &[(&str, &str)]) -> Proc {
        // Unique per process started: tests of one binary run in parallel threads.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = log_dir().join(format!("{name}-{}-{n}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            name: name.to_string(),
            child,
            lines,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process (SIGSTOP) and returns once every one of its threads is stopped: a
    /// signal is delivered asynchronously, and a process that still runs for a moment can
    /// answer one more message.
    pub fn pause(&self) {
        self.signal("STOP");
        let tasks = format!("/proc/{}/task", self.pid());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stopped = std::fs::read_dir(&tasks).map(|entries| {
                entries.flatten().all(|task| {
                    std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                        // The state follows the command name's closing parenthesis.
                        stat.rsplit_once(')')
                            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
                    })
                })
            });
            if stopped.unwrap_or(true) || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for a stdout line that is JSON with `"event": event`.
    pub fn wait_event(&mut self, event: &str, timeout: Duration) -> Json {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(json) = serde_json::from_str::<Json>(&line) {
                        if json["event"] == event {
                            return json;
                        }
                    }
                }
                Err(_) => panic!(
                    "{}: no `{event}` line within {timeout:?}; log:\n{}",
                    self.name,
                    self.log()
                ),
            }
        }
    }

    /// The next stdout line, if one comes within `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// The process's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal by PID (`TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal("TERM");
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Kills the process at once and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal("CONT");
            self.kill();
        }
    }
}

/// A running broker.
pub struct BrokerProc {
    /// Client endpoint (resolved port).
    pub client: String,
    /// Worker endpoint (resolved port).
    pub worker: String,
    /// Event (topic delivery) endpoint (resolved port).
    pub events: String,
    /// Peer endpoint (resolved port) when the broker is in a cluster.
    pub peer: Option<String>,
    /// Gossip endpoint (resolved port) when the broker is in a cluster.
    pub gossip: Option<String>,
    /// The broker's name.
    pub name: String,
    /// The HTTP endpoint (`host:port`: `/metrics`, `/healthz`, `/readyz`, the dashboard),
    /// unless it is off.
    pub http: Option<String>,
    /// The process.
    pub proc: Proc,
}

/// Starts a broker on ephemeral loopback ports; `extra` flags and `env` are passed through.
pub fn start_broker(extra: &[&str], env: &[(&str, &str)]) -> BrokerProc {
    let any = "tcp://127.0.0.1:*";
    launch_broker(any, any, any, extra, env)
}

/// Starts a broker on given endpoints (to restart one on the same ports).
pub fn start_broker_at(client: &str, worker: &str, events: &str, extra: &[&str]) -> BrokerProc {
    launch_broker(client, worker, events, extra, &[])
}

fn launch_broker(
    client: &str,
    worker: &str,
    events: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> BrokerProc {
    let mut args: Vec<String> = vec![
        "--client-endpoint".into(),
        client.into(),
        "--worker-endpoint".into(),
        worker.into(),
        "--event-endpoint".into(),
        events.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut proc = Proc::spawn("broker", &bin("mpreg-broker"), &args, env);
    let line = proc.wait_event("listening", START_TIMEOUT);
    let endpoint = |key: &str| {
        line[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} endpoint in {line}"))
            .to_string()
    };
    let optional = |key: &str| line[key].as_str().map(str::to_string);
    BrokerProc {
        client: endpoint("client"),
        worker: endpoint("worker"),
        events: endpoint("events"),
        peer: optional("peer"),
        gossip: optional("gossip"),
        name: line["name"].as_str().unwrap_or_default().to_string(),
        http: optional("http"),
        proc,
    }
}

/// Starts a node serving the built-ins, registered with the broker at `worker` (waits for
/// its `registered` line).
pub fn start_node(worker: &str, name: &str, resources: &[&str], extra: &[&str]) -> Proc {
    let mut node = spawn_node(worker, name, resources, extra);
    node.wait_event("registered", START_TIMEOUT);
    node
}

/// Starts a node without waiting for it to register.
pub fn spawn_node(worker: &str, name: &str, resources: &[&str], extra: &[&str]) -> Proc {
    let mut args: Vec<String> = vec![
        "--broker".into(),
        worker.into(),
        "--name".into(),
        name.into(),
    ];
    if !resources.is_empty() {
        args.push("--resources".into());
        args.push(resources.join(","));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn(name, &bin("mpreg-node"), &args, &[])
}

/// A broker with `nodes` nodes named `n0..`, each given the listed resources.
pub struct Cluster {
    /// The broker.
    pub broker: BrokerProc,
    /// The nodes, in order.
    pub nodes: Vec<Proc>,
}

impl Cluster {
    /// Starts a broker and one node per entry of `resources`.
    pub fn start(resources: &[&[&str]]) -> Cluster {
        let broker = start_broker(&[], &[]);
        let nodes = resources
            .iter()
            .enumerate()
            .map(|(i, res)| start_node(&broker.worker, &format!("n{i}"), res, &[]))
            .collect();
        Cluster { broker, nodes }
    }
}

/// Runs the `mpreg` CLI against `broker` and returns (exit code, stdout, stderr).
pub fn cli(broker: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut cmd = Command::new(bin("mpreg"));
    cmd.args(args)
        .arg("--broker")
        .arg(broker)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("mpreg");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("mpreg output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The Python interpreter for the conformance programs (`$PYTHON`, default `python3`).
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `tests/python/`: the conformance programs written from docs/PROTOCOL.md.
pub fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// Runs `tests/python/<script>` with `args` to completion: (success, stdout + stderr).
pub fn run_python<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S]) -> (bool, String) {
    let out = Command::new(python())
        .arg(python_dir().join(script))
        .args(args)
        .output()
        .expect("python3 (scripts/test.sh installs pyzmq and msgpack)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The next reply on a raw DEALER in three-frame form, decoded; panics after `timeout`.
pub fn raw_reply(
    dealer: &mpreg_transport::RawDealer,
    timeout: Duration,
) -> mpreg_protocol::BrokerToClient {
    let frames = dealer.recv(timeout).expect("a reply within the timeout");
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert_eq!(frames[0], mpreg_protocol::VERSION);
    mpreg_protocol::BrokerToClient::decode(
        &frames[1],
        &frames[2],
        &mpreg_protocol::Limits::default(),
    )
    .expect("a valid reply")
}

/// The next reply on a raw DEALER, which must be an `error`.
pub fn raw_error(
    dealer: &mpreg_transport::RawDealer,
    timeout: Duration,
) -> mpreg_protocol::ErrorReply {
    match raw_reply(dealer, timeout) {
        mpreg_protocol::BrokerToClient::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Starts the `mpreg` CLI against `broker` as a process a test can signal or kill: its stdout
/// lines are collected ([`Proc::next_line`]), its stderr goes to its log ([`Proc::log`]).
pub fn spawn_cli(broker: &str, args: &[&str]) -> Proc {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.push("--broker".into());
    all.push(broker.into());
    Proc::spawn("mpreg", &bin("mpreg"), &all, &[])
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `within`.
pub fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a broker on given endpoints with `env` (to restart one on the same ports with
/// another configuration).
pub fn start_broker_at_with_env(
    client: &str,
    worker: &str,
    events: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> BrokerProc {
    launch_broker(client, worker, events, extra, env)
}

/// Starts `n` brokers named `{cluster}-1` .. `{cluster}-n` forming the cluster `cluster` on
/// ephemeral loopback ports: broker 1 first, every other one given only broker 1 as its seed.
/// `extra` flags go to every broker. Does not wait for the cluster to form.
pub fn start_broker_cluster(cluster: &str, n: usize, extra: &[&str]) -> Vec<BrokerProc> {
    let any = "tcp://127.0.0.1:*";
    let mut brokers: Vec<BrokerProc> = Vec::with_capacity(n);
    for i in 1..=n {
        let name = format!("{cluster}-{i}");
        let mut args: Vec<String> = vec![
            "--name".into(),
            name,
            "--cluster".into(),
            cluster.into(),
            "--peer-endpoint".into(),
            any.into(),
            "--gossip-endpoint".into(),
            any.into(),
        ];
        if let Some(seed) = brokers.first().and_then(|b| b.peer.clone()) {
            args.push("--peer".into());
            args.push(seed);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        brokers.push(launch_broker(any, any, any, &args, &[]));
    }
    brokers
}
