//! Broker clusters under faults, with real processes (issue 11): a broker killed with
//! `kill -9` while 200 plans/s run through the others, and a network partition made with
//! network namespaces and nftables (the side without a worker fails its steps with a typed
//! error within their deadline; after the heal, membership and catalogues agree everywhere
//! within 3 s).
//!
//! The two tests take turns (a lock): each loads the two cores on its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_support::{alive, connect, counted, counter, until, view, Tally};
use mpreg::{args, Client, Error, ErrorCode, Value};
use mpreg_node::NodeBuilder;
use mpreg_tests::{bin, start_broker_cluster, BrokerProc, Proc, START_TIMEOUT};

/// One heavy test at a time (an async lock: it is held across awaits).
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `calls` plans of one step `work(key)` with `deadline` through `client`, one every
/// `every`, keys `{prefix}{n}`; returns per plan: key, when it was sent, when it ended, result.
async fn load(
    client: &Client,
    prefix: &str,
    calls: usize,
    every: Duration,
    deadline: Duration,
) -> Vec<(String, Instant, Instant, Result<Value, Error>)> {
    let mut tasks = Vec::with_capacity(calls);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0..calls {
        tick.tick().await;
        let client = client.clone();
        let key = format!("{prefix}{n}");
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let result = client
                .plan()
                .step("w", "work", args![key.clone()])
                .deadline(deadline)
                .run()
                .await
                .map(|mut r| r.remove("w").unwrap_or(Value::Nil));
            (key, sent, Instant::now(), result)
        }));
    }
    let mut out = Vec::with_capacity(calls);
    for t in tasks {
        out.push(
            tokio::time::timeout(deadline + Duration::from_secs(5), t)
                .await
                .expect("a plan neither ended nor failed")
                .unwrap(),
        );
    }
    out
}

/// `kill -9` of broker 3 while clients of brokers 1 and 2 run 200 plans/s (deadline 5 s) of a
/// function served by a node on brokers 2 and 3 and a node on broker 3 only: every plan
/// succeeds with its own result, and the only steps run twice are steps in flight at the
/// kill (executions counted by the nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_broker_under_200_plans_per_second_loses_no_plan() {
    let _turn = TURN.lock().await;
    let mut brokers = start_broker_cluster("crash", 3, &[]);
    let tally = Tally::new();
    let both = NodeBuilder::new("node-23")
        .broker(&brokers[1].worker)
        .broker(&brokers[2].worker)
        .capacity(16)
        .function("work", counted(&tally, Duration::from_millis(20)))
        .start()
        .unwrap();
    let only3 = NodeBuilder::new("node-3")
        .broker(&brokers[2].worker)
        .capacity(16)
        .function("work", counted(&tally, Duration::from_millis(20)))
        .start()
        .unwrap();
    let (c1, c2) = (connect(&brokers[0]).await, connect(&brokers[1]).await);
    until(Duration::from_secs(10), "nodes registered", || async {
        both.registered_brokers() == 2 && only3.registered_brokers() == 1
    })
    .await;
    until(
        Duration::from_secs(5),
        "work reachable from broker 1",
        || async { c1.call("work", args!["warm-up"]).await.is_ok() },
    )
    .await;
    let forwarded_before = counter(&c1, "tasks_forwarded").await;
    tally.runs.lock().unwrap().clear();

    // 100 plans/s through each of brokers 1 and 2 for 4 s; broker 3 dies 1.5 s in.
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let killer = {
        let killed_at = killed_at.clone();
        let pid = brokers[2].proc.pid();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            *killed_at.lock().unwrap() = Some(Instant::now());
        })
    };
    let every = Duration::from_millis(10);
    let deadline = Duration::from_secs(5);
    let (r1, r2) = tokio::join!(
        load(&c1, "a", 400, every, deadline),
        load(&c2, "b", 400, every, deadline)
    );
    killer.await.unwrap();
    let killed_at = killed_at.lock().unwrap().expect("killed");
    let _ = brokers[2].proc.wait_exit(Duration::from_secs(2));

    let mut in_flight = BTreeSet::new();
    let mut failures = Vec::new();
    for (key, sent, ended, result) in r1.iter().chain(&r2) {
        match result {
            Ok(v) => assert_eq!(*v, Value::from(key.clone()), "{key}: wrong result"),
            Err(e) => failures.push(format!("{key}: {e}")),
        }
        if *sent <= killed_at && *ended >= killed_at {
            in_flight.insert(key.clone());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 800 plans failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let duplicates = tally.duplicates();
    let stray: Vec<&String> = duplicates
        .keys()
        .filter(|k| !in_flight.contains(*k))
        .collect();
    assert!(
        stray.is_empty(),
        "steps run twice that were not in flight at the kill: {stray:?}"
    );
    let extra: u32 = duplicates.values().map(|n| n - 1).sum();
    assert!(extra as usize <= in_flight.len());
    let runs = tally.runs.lock().unwrap().len();
    assert_eq!(runs, 800, "every plan's step ran");
    assert!(
        counter(&c1, "tasks_forwarded").await >= forwarded_before + 400,
        "broker 1 has no worker: it forwards everything"
    );
    eprintln!(
        "kill -9: 800 plans ok; {} in flight at the kill, {} steps run twice ({extra} extra runs); retried at broker 1: {}",
        in_flight.len(),
        duplicates.len(),
        counter(&c1, "tasks_retried").await,
    );
    drop(both);
    drop(only3);
}

/// Network namespaces on a bridge (fault-injection.md): hosts `198.18.0.1..n`, and the test
/// process itself on the bridge as `198.18.0.100`. Removed (namespaces, and with them the
/// veths) when dropped.
struct Lab {
    prefix: String,
    hosts: usize,
}

impl Lab {
    /// Why this machine cannot run the lab, if it cannot.
    fn unavailable() -> Option<String> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if !root {
            return Some(
                "not root (network namespaces and nftables need it; CI runs as root)".into(),
            );
        }
        for tool in ["ip", "nft", "unshare"] {
            let found = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !found {
                return Some(format!(
                    "`{tool}` is not installed (apt-get install iproute2 nftables util-linux)"
                ));
            }
        }
        None
    }

    fn run(args: &[&str]) {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn new(hosts: usize) -> Lab {
        let prefix = format!("mp{}", std::process::id() % 100_000);
        let lab = Lab { prefix, hosts };
        let sw = lab.ns("sw");
        Lab::run(&["ip", "netns", "add", &sw]);
        Lab::run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
        Lab::run(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        for i in 1..=hosts {
            let ns = lab.ns(&format!("n{i}"));
            let vh = format!("vh{i}");
            Lab::run(&["ip", "netns", "add", &ns]);
            Lab::run(&[
                "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &vh,
                "netns", &sw,
            ]);
            Lab::run(&["ip", "-n", &sw, "link", "set", &vh, "master", "br0", "up"]);
            Lab::run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("198.18.0.{i}/24"),
                "dev",
                "eth0",
            ]);
            Lab::run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            Lab::run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        // The test process's own leg on the bridge.
        let me = format!("{}h0", lab.prefix);
        Lab::run(&[
            "ip", "link", "add", &me, "type", "veth", "peer", "name", "vh0", "netns", &sw,
        ]);
        Lab::run(&["ip", "-n", &sw, "link", "set", "vh0", "master", "br0", "up"]);
        Lab::run(&["ip", "addr", "add", "198.18.0.100/24", "dev", &me]);
        Lab::run(&["ip", "link", "set", &me, "up"]);
        lab
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Starts a broker of cluster `cluster` in host `i`'s namespace on the standard ports.
    fn broker(&self, i: usize, cluster: &str, seed: Option<&str>) -> BrokerProc {
        let ip = format!("198.18.0.{i}");
        let ep = |port: u16| format!("tcp://{ip}:{port}");
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            self.ns(&format!("n{i}")),
            bin("mpreg-broker").to_string_lossy().into_owned(),
            "--insecure".into(),
            "--name".into(),
            format!("{cluster}-{i}"),
            "--cluster".into(),
            cluster.into(),
            "--client-endpoint".into(),
            ep(7400),
            "--worker-endpoint".into(),
            ep(7401),
            "--event-endpoint".into(),
            ep(7402),
            "--peer-endpoint".into(),
            ep(7403),
            "--gossip-endpoint".into(),
            ep(7404),
        ];
        if let Some(seed) = seed {
            args.push("--peer".into());
            args.push(seed.into());
        }
        // `ip netns exec` execs the broker: the PID is the broker's.
        let mut proc = Proc::spawn("broker", std::path::Path::new("ip"), &args, &[]);
        let line = proc.wait_event("listening", START_TIMEOUT);
        BrokerProc {
            http: line["http"].as_str().map(str::to_string),
            client: ep(7400),
            worker: ep(7401),
            events: ep(7402),
            peer: Some(ep(7403)),
            gossip: Some(ep(7404)),
            name: format!("{cluster}-{i}"),
            proc,
        }
    }

    /// Cuts host `a` from hosts `others` both ways, in the bridge (the test's own leg stays).
    fn cut(&self, a: usize, others: &[usize]) {
        let sw = self.ns("sw");
        let nft = |rest: &str| {
            let mut args = vec!["ip", "netns", "exec", &sw, "nft"];
            args.extend(rest.split(' '));
            Lab::run(&args);
        };
        nft("add table bridge part");
        nft("add chain bridge part pfwd { type filter hook forward priority 0 ; policy accept ; }");
        for &b in others {
            nft(&format!(
                "add rule bridge part pfwd iifname vh{a} oifname vh{b} drop"
            ));
            nft(&format!(
                "add rule bridge part pfwd iifname vh{b} oifname vh{a} drop"
            ));
        }
    }

    /// Removes every cut.
    fn heal(&self) {
        Lab::run(&[
            "ip",
            "netns",
            "exec",
            &self.ns("sw"),
            "nft",
            "delete",
            "table",
            "bridge",
            "part",
        ]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 1..=self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(&format!("n{i}"))])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns("sw")])
            .status();
    }
}

/// Brokers 1, 2, 3 in three namespaces; the only worker is on broker 3. Host 1 is cut from
/// hosts 2 and 3: plans through broker 1 fail with a typed error within their deadline while
/// plans through broker 2 keep succeeding; after the heal every broker lists the same three
/// members and the same catalogue within 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_fails_the_workerless_side_in_time_and_heals_within_3s() {
    if let Some(why) = Lab::unavailable() {
        eprintln!(
            "SKIPPED a_partition_fails_the_workerless_side_in_time_and_heals_within_3s: {why}"
        );
        return;
    }
    let _turn = TURN.lock().await;
    let lab = Lab::new(3);
    let b1 = lab.broker(1, "part", None);
    let seed = b1.peer.clone().unwrap();
    let b2 = lab.broker(2, "part", Some(&seed));
    let b3 = lab.broker(3, "part", Some(&seed));
    let tally = Tally::new();
    let node = NodeBuilder::new("node-3")
        .broker(&b3.worker)
        .capacity(8)
        .function("work", counted(&tally, Duration::ZERO))
        .start()
        .unwrap();
    assert!(node.wait_registered(Duration::from_secs(10)).await);
    let clients = [connect(&b1).await, connect(&b2).await, connect(&b3).await];
    until(
        Duration::from_secs(5),
        "formed, work known at broker 1",
        || async {
            clients[0].call("work", args!["warm-up"]).await.is_ok()
                && alive(&clients[1]).await.len() == 3
        },
    )
    .await;

    lab.cut(1, &[2, 3]);
    let cut_at = Instant::now();
    // Plans through broker 1 (deadline 5 s), one every 100 ms for 4 s: each ends with a
    // typed error within its deadline (a forward lost in the cut is re-dispatched when broker
    // 3 is declared dead, and nobody else can run it). Through broker 2 they still succeed.
    let deadline = Duration::from_secs(5);
    let mut cut_side = Vec::new();
    let mut served = Vec::new();
    for n in 0..40 {
        let (c1, c2) = (clients[0].clone(), clients[1].clone());
        cut_side.push(tokio::spawn(async move {
            let sent = Instant::now();
            let r = c1
                .plan()
                .step("w", "work", args![format!("cut{n}")])
                .deadline(deadline)
                .run()
                .await;
            (sent.elapsed(), r)
        }));
        served.push(tokio::spawn(async move {
            c2.plan()
                .step("w", "work", args![format!("ok{n}")])
                .deadline(deadline)
                .run()
                .await
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut codes = BTreeSet::new();
    for t in cut_side {
        let (took, r) = t.await.unwrap();
        match r {
            Err(Error::Remote(e)) => {
                let code = e.error_code().expect("a known code");
                assert!(
                    matches!(
                        code,
                        ErrorCode::NoRoute | ErrorCode::WorkerLost | ErrorCode::PlanTimeout
                    ),
                    "{e:?}"
                );
                codes.insert(format!("{code:?}"));
            }
            other => panic!("expected a typed error through the cut-off broker, got {other:?}"),
        }
        assert!(
            took <= deadline + Duration::from_millis(500),
            "an error after {took:?}, past the deadline"
        );
    }
    for t in served {
        t.await
            .unwrap()
            .expect("the side with the worker keeps serving");
    }
    assert!(
        alive(&clients[0]).await == ["part-1"],
        "broker 1 sees itself alone: {:?}",
        alive(&clients[0]).await
    );
    eprintln!(
        "partition: broker 1's plans failed with {codes:?}; cut {:?} ago",
        cut_at.elapsed()
    );

    lab.heal();
    let healed = Instant::now();
    let took = until(
        Duration::from_secs(3),
        "views agree after the heal",
        || async {
            let views = [
                view(&clients[0]).await,
                view(&clients[1]).await,
                view(&clients[2]).await,
            ];
            views[0].len() == 3
                && views[0] == views[1]
                && views[1] == views[2]
                && views[0]
                    .iter()
                    .any(|((name, _), funs)| name == "part-3" && funs == &["work".to_string()])
        },
    )
    .await;
    eprintln!("partition: membership and catalogues equal everywhere {took:?} after the heal");
    // And broker 1 routes to the worker again.
    let v = clients[0].call("work", args!["after"]).await.unwrap();
    assert_eq!(v, Value::from("after"));
    assert!(healed.elapsed() < Duration::from_secs(10));
    assert_eq!(tally.runs.lock().unwrap().get("after"), Some(&1));
    drop(node);
    drop((b1, b2, b3));
}
