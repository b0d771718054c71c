//! The HTTP endpoints of real brokers and nodes: `/metrics` counts what happened (cross-checked
//! with the `status` reply and with the node's own figures), health and readiness follow the
//! processes' life, the endpoint's address settings, and hostile HTTP clients (slow, huge,
//! wrong method, garbage, too many) get their answer without stalling anything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_support;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use http_support::{get, parse_exposition, send, value};
use mpreg_tests::{
    bin, cli, eventually, spawn_cli, spawn_node, start_broker, start_broker_at, Proc, START_TIMEOUT,
};

const WAIT: Duration = Duration::from_secs(15);

/// A node serving the built-ins with its HTTP endpoint; returns it with that endpoint, once
/// registered.
fn node_with_http(worker: &str, name: &str) -> (Proc, String) {
    let mut node = spawn_node(worker, name, &[], &[]);
    let line = node.wait_event("listening", START_TIMEOUT);
    let http = line["http"]
        .as_str()
        .expect("the node's http endpoint")
        .to_string();
    node.wait_event("registered", START_TIMEOUT);
    (node, http)
}

/// A port nobody listens on now (it may be taken again later: tests use it at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn metrics_count_what_the_broker_and_the_node_did() {
    let broker = start_broker(&[], &[]);
    let http = broker.http.clone().expect("an HTTP endpoint by default");
    assert!(http.starts_with("127.0.0.1:"), "{http}");
    let (_node, node_http) = node_with_http(&broker.worker, "m0");
    for i in 0..5 {
        let (code, out, err) = cli(&broker.client, &["call", "echo", &i.to_string()], None);
        assert_eq!(code, 0, "{out}{err}");
    }
    for _ in 0..2 {
        let (code, _, err) = cli(&broker.client, &["call", "fail", "boom"], None);
        assert_eq!(code, 1, "{err}");
    }

    let answer = get(&http, "/metrics");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{:?}",
        answer.headers
    );
    let m = parse_exposition(&answer.body);
    assert_eq!(value(&m, "mpreg_plans_received_total"), 7.0);
    assert_eq!(value(&m, "mpreg_plans_completed_total"), 5.0);
    assert_eq!(
        m["mpreg_plans_failed_total{code=\"301\",kind=\"step_failed\"}"],
        2.0
    );
    assert_eq!(
        m["mpreg_errors_total{code=\"301\",kind=\"step_failed\"}"],
        2.0
    );
    assert_eq!(value(&m, "mpreg_steps_failed_total"), 2.0);
    assert_eq!(value(&m, "mpreg_tasks_dispatched_total"), 7.0);
    // Every plan ended: one observation each, in cumulative buckets.
    assert_eq!(value(&m, "mpreg_plan_duration_seconds_count"), 7.0);
    assert_eq!(
        m["mpreg_plan_duration_seconds_bucket{le=\"+Inf\"}"], 7.0,
        "{m:?}"
    );
    let buckets: Vec<f64> = m
        .iter()
        .filter(|(k, _)| k.starts_with("mpreg_plan_duration_seconds_bucket"))
        .map(|(_, v)| *v)
        .collect();
    assert!(buckets.len() >= 10, "{buckets:?}");
    assert!(value(&m, "mpreg_plan_duration_seconds_sum") > 0.0);
    // Five results came back from the worker, each with its timing.
    assert_eq!(value(&m, "mpreg_step_duration_seconds_count"), 5.0);
    assert_eq!(value(&m, "mpreg_worker_queue_seconds_count"), 5.0);
    assert_eq!(value(&m, "mpreg_step_queue_seconds_count"), 7.0);
    assert_eq!(value(&m, "mpreg_workers"), 1.0);
    assert_eq!(value(&m, "mpreg_worker_capacity{worker=\"m0\""), 64.0);
    assert_eq!(value(&m, "mpreg_worker_tasks{worker=\"m0\""), 0.0);
    assert_eq!(m["mpreg_cluster_members{state=\"alive\"}"], 1.0);
    assert_eq!(m["mpreg_cluster_members{state=\"dead\"}"], 0.0);
    assert_eq!(value(&m, "mpreg_plans_in_flight"), 0.0);
    assert!(value(&m, "mpreg_functions") >= 5.0);
    assert_eq!(value(&m, "mpreg_shutting_down"), 0.0);
    assert!(m.keys().any(|k| k.starts_with("mpreg_build_info{")));
    assert!(m.contains_key("mpreg_cache_hits_total"), "{m:?}");
    assert!(m.contains_key("mpreg_topic_dropped_total"));

    // The same figures as the `status` reply.
    let (code, status, _) = cli(&broker.client, &["status"], None);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    let counters = &status["counters"];
    // `status` itself was one more request, but not a plan.
    assert_eq!(counters["plans_completed"], 5);
    assert_eq!(counters["plans_failed"], 2);

    // The node counted the same tasks.
    let n = parse_exposition(&get(&node_http, "/metrics").body);
    assert_eq!(value(&n, "mpreg_node_tasks_received_total"), 7.0);
    assert_eq!(value(&n, "mpreg_node_tasks_completed_total"), 5.0);
    assert_eq!(
        n["mpreg_node_tasks_failed_total{kind=\"function_error\"}"],
        2.0
    );
    assert_eq!(
        n["mpreg_node_task_run_seconds_count{function=\"echo\"}"],
        5.0
    );
    assert_eq!(value(&n, "mpreg_node_brokers_registered"), 1.0);
    assert_eq!(value(&n, "mpreg_node_capacity"), 64.0);
    assert_eq!(value(&n, "mpreg_node_tasks_running"), 0.0);

    for (addr, what) in [(&http, "broker"), (&node_http, "node")] {
        assert_eq!(get(addr, "/healthz").status, 200, "{what}");
        let ready = get(addr, "/readyz");
        assert_eq!(ready.status, 200, "{what}: {}", ready.body);
        assert_eq!(get(addr, "/nope").status, 404, "{what}");
    }
    // The dashboard and its data are the broker's.
    let page = get(&http, "/");
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"].starts_with("text/html"));
    let data: serde_json::Value = serde_json::from_str(&get(&http, "/api/dashboard").body).unwrap();
    assert_eq!(data["workers"][0]["name"], "m0");
    assert_eq!(data["counters"]["plans_completed"], 5);
    assert_eq!(get(&node_http, "/").status, 404);
}

#[test]
fn hostile_http_clients_get_answers_and_stall_nothing() {
    let broker = start_broker(&[], &[]);
    let http = broker.http.clone().unwrap();
    let _node = mpreg_tests::start_node(&broker.worker, "h0", &[], &[]);

    // A client that never finishes its request head.
    let mut slow = TcpStream::connect(&http).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost").unwrap();
    let slow_since = Instant::now();
    // Meanwhile everything else is served at once: HTTP and the broker's own work.
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(get(&http, "/healthz").status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    let (code, out, err) = cli(&broker.client, &["call", "echo", "still here"], None);
    assert_eq!((code, out.trim()), (0, "\"still here\""), "{err}");

    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    assert_eq!(send(&http, huge.as_bytes(), WAIT).status, 431);
    let post = send(
        &http,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
        WAIT,
    );
    assert_eq!(post.status, 405);
    assert_eq!(post.headers["allow"], "GET, HEAD");
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nno header here\r\n\r\n",
        b"GET metrics HTTP/1.1\r\n\r\n",
    ] {
        let answer = send(&http, garbage, WAIT);
        assert_eq!(answer.status, 400, "{garbage:?}: {}", answer.body);
    }
    assert_eq!(
        send(&http, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", WAIT).status,
        505
    );
    let head = send(&http, b"HEAD /healthz HTTP/1.1\r\n\r\n", WAIT);
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(head.headers["content-length"], "3");

    // The slow client gets 408 once its 5 s are up (not before, not much after).
    let answer = http_support::read_answer(&mut slow);
    let waited = slow_since.elapsed();
    assert_eq!(answer.status, 408, "{}", answer.body);
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(12),
        "{waited:?}"
    );

    // More connections than the server takes at once: the surplus gets 503 at once.
    let idle: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(&http).unwrap())
        .collect();
    let refused = eventually_answer(&http);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.headers["retry-after"], "1");
    drop(idle);
    eventually(
        WAIT,
        "served again once the idle connections are gone",
        || get(&http, "/healthz").status == 200,
    );
}

/// A `GET /healthz` sent once the server has taken the connections before it (they are
/// accepted asynchronously): the first answer that is not a plain 200 within a few tries.
fn eventually_answer(http: &str) -> http_support::Answer {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = get(http, "/healthz");
        if answer.status != 200 || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn readiness_follows_registration_and_shutdown() {
    // A node whose broker is not there yet: alive, not ready.
    let worker_port = free_port();
    let worker = format!("tcp://127.0.0.1:{worker_port}");
    let mut node = spawn_node(&worker, "r0", &[], &["--drain-timeout-ms", "5000"]);
    let node_http = node.wait_event("listening", START_TIMEOUT)["http"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(get(&node_http, "/healthz").status, 200);
    let ready = get(&node_http, "/readyz");
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("not registered"), "{}", ready.body);

    // The broker comes up where the node looks for it: the node becomes ready.
    let mut broker = start_broker_at("tcp://127.0.0.1:*", &worker, "tcp://127.0.0.1:*", &[]);
    let http = broker.http.clone().unwrap();
    node.wait_event("registered", WAIT);
    eventually(WAIT, "the node is ready once registered", || {
        get(&node_http, "/readyz").status == 200
    });
    assert_eq!(get(&http, "/readyz").status, 200);

    // A plan in flight keeps the broker draining after SIGTERM: alive, not ready.
    let mut plan = spawn_cli(&broker.client, &["call", "sleep", "3000", "done"]);
    eventually(WAIT, "the task runs on the node", || {
        let n = parse_exposition(&get(&node_http, "/metrics").body);
        value(&n, "mpreg_node_tasks_running") == 1.0
    });
    broker.proc.signal("TERM");
    eventually(WAIT, "the draining broker is not ready", || {
        let r = get(&http, "/readyz");
        r.status == 503 && r.body.contains("shutting down")
    });
    assert_eq!(
        get(&http, "/healthz").status,
        200,
        "draining is still alive"
    );
    let m = parse_exposition(&get(&http, "/metrics").body);
    assert_eq!(value(&m, "mpreg_shutting_down"), 1.0);
    assert_eq!(value(&m, "mpreg_plans_in_flight"), 1.0);
    assert_eq!(
        plan.next_line(Duration::from_secs(10)).as_deref(),
        Some("\"done\"")
    );
    let status = broker.proc.wait_exit(WAIT).expect("the broker exits");
    assert!(status.success(), "{status:?}");
    assert!(
        TcpStream::connect(&http).is_err(),
        "the HTTP endpoint closes with the broker"
    );

    // A draining node is not ready either.
    let broker = start_broker_at("tcp://127.0.0.1:*", &worker, "tcp://127.0.0.1:*", &[]);
    node.wait_event("registered", WAIT);
    let _plan = spawn_cli(&broker.client, &["call", "sleep", "3000", "x"]);
    eventually(WAIT, "the task runs on the node", || {
        let n = parse_exposition(&get(&node_http, "/metrics").body);
        value(&n, "mpreg_node_tasks_running") == 1.0
    });
    node.signal("TERM");
    eventually(WAIT, "the draining node is not ready", || {
        let r = get(&node_http, "/readyz");
        r.status == 503 && r.body.contains("draining")
    });
}

/// Starts a broker with `extra` flags and waits for it to exit (a refused configuration).
fn refused_start(extra: &[&str]) -> (i32, String) {
    let any = "tcp://127.0.0.1:*";
    let mut args: Vec<String> = [
        "--client-endpoint",
        any,
        "--worker-endpoint",
        any,
        "--event-endpoint",
        any,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut proc = Proc::spawn("broker", &bin("mpreg-broker"), &args, &[]);
    let status = proc.wait_exit(WAIT).expect("the broker refuses to start");
    (status.code().unwrap_or(-1), proc.log())
}

#[test]
fn the_http_address_follows_its_setting() {
    let off = start_broker(&["--http-endpoint", "off"], &[]);
    assert_eq!(off.http, None);

    let port = free_port();
    let fixed = start_broker(&["--http-endpoint", &format!("127.0.0.1:{port}")], &[]);
    assert_eq!(fixed.http.as_deref(), Some(&*format!("127.0.0.1:{port}")));
    assert_eq!(get(fixed.http.as_ref().unwrap(), "/healthz").status, 200);

    // A configured address that is taken: the broker does not start.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let (code, log) = refused_start(&["--http-endpoint", &taken_addr]);
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("http_endpoint"), "{log}");
    // Beyond loopback without CURVE: protected mode refuses it.
    let (code, log) = refused_start(&["--http-endpoint", "0.0.0.0:0"]);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("protected mode") && log.contains("http_endpoint"),
        "{log}"
    );
    let (code, log) = refused_start(&["--http-endpoint", "example.com:80"]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("http_endpoint"), "{log}");

    // `auto` with a fixed client port: that port + 5 (find a port whose + 5 is free too).
    let (client_port, derived) = (0..50)
        .find_map(|_| {
            let client = TcpListener::bind("127.0.0.1:0").ok()?;
            let port = client.local_addr().ok()?.port();
            let derived = TcpListener::bind(("127.0.0.1", port.checked_add(5)?)).ok()?;
            Some((port, derived))
        })
        .expect("a port with a free port 5 above it");
    drop(derived);
    let client = format!("tcp://127.0.0.1:{client_port}");
    let auto = start_broker_at(&client, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", &[]);
    assert_eq!(
        auto.http.as_deref(),
        Some(&*format!("127.0.0.1:{}", client_port + 5))
    );
    drop(auto);

    // The derived port taken by something else: the broker runs without HTTP and says so.
    let blocker = TcpListener::bind(("127.0.0.1", client_port + 5));
    if let Ok(_blocker) = blocker {
        let mut broker = start_broker_at(&client, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", &[]);
        assert_eq!(broker.http, None);
        let (code, out, _) = cli(&broker.client, &["call", "echo", "1"], None);
        assert_eq!(code, 1, "no worker, but the broker answers: {out}");
        eventually(WAIT, "the broker logs why it has no HTTP endpoint", || {
            broker.proc.log().contains("no HTTP endpoint")
        });
        broker.proc.kill();
    }
}
