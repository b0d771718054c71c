//! CURVE brokers: who may connect (ZAP allow-lists per role), what they may do (access rules
//! per key), reloading on SIGHUP, topic delivery only to the subscription's owner, and
//! protected mode. Every refused attempt must leave the broker serving the others.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use mpreg_protocol::*;
use mpreg_tests::{bin, spawn_node, start_broker, BrokerProc, Proc, START_TIMEOUT};
use mpreg_transport::{Context, Curve, KeyPair, RawDealer, RawSub, SocketOptions};

const WAIT: Duration = Duration::from_secs(10);
/// How long a refused connection is watched for a (wrong) reply.
const REFUSED: Duration = Duration::from_millis(1500);

struct Keys {
    dir: PathBuf,
    broker: KeyPair,
    alice: KeyPair,
    bob: KeyPair,
    worker: KeyPair,
    worker2: KeyPair,
}

impl Keys {
    fn new(test: &str) -> Keys {
        let dir = std::env::temp_dir().join(format!("mpreg-sec-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let keys = Keys {
            broker: KeyPair::generate().unwrap(),
            alice: KeyPair::generate().unwrap(),
            bob: KeyPair::generate().unwrap(),
            worker: KeyPair::generate().unwrap(),
            worker2: KeyPair::generate().unwrap(),
            dir,
        };
        keys.broker.write(keys.dir.join("broker")).unwrap();
        keys.worker.write(keys.dir.join("worker")).unwrap();
        keys.worker2.write(keys.dir.join("worker2")).unwrap();
        keys
    }

    fn access(&self, with_bob: bool, with_worker2: bool) {
        let mut text = format!(
            "[[client]]\nname = \"alice\"\nkey = \"{}\"\nfunctions = [\"echo\", \"sleep\"]\npublish = [\"orders.#\"]\nsubscribe = [\"orders.#\"]\n",
            self.alice.public
        );
        if with_bob {
            text += &format!(
                "[[client]]\nname = \"bob\"\nkey = \"{}\"\nfunctions = [\"*\"]\npublish = [\"#\"]\nsubscribe = [\"#\"]\n",
                self.bob.public
            );
        }
        text += "[[worker]]\nname = \"w1\"\nkey_file = \"worker.pub\"\n";
        if with_worker2 {
            text += "[[worker]]\nname = \"w2\"\nkey_file = \"worker2.pub\"\n";
        }
        let tmp = self.dir.join("access.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.join("access.toml")).unwrap();
    }

    fn broker(&self) -> BrokerProc {
        self.broker_with(&[])
    }

    /// A CURVE broker with this directory's key and access file, and more settings.
    fn broker_with(&self, env: &[(&str, &str)]) -> BrokerProc {
        let key = self.dir.join("broker.key");
        let access = self.dir.join("access.toml");
        let mut all = vec![
            ("MPREG_BROKER_SECURITY__KEY_FILE", key.to_str().unwrap()),
            (
                "MPREG_BROKER_SECURITY__ACCESS_FILE",
                access.to_str().unwrap(),
            ),
        ];
        all.extend_from_slice(env);
        start_broker(&[], &all)
    }

    fn client_curve(&self, own: &KeyPair) -> Curve {
        Curve::Client {
            server: self.broker.public,
            own: own.clone(),
        }
    }

    fn node(&self, b: &BrokerProc, name: &str, key: &str) -> Proc {
        spawn_node(
            &b.worker,
            name,
            &[],
            &[
                "--server-key",
                &self.broker.public.to_z85(),
                "--key-file",
                self.dir.join(format!("{key}.key")).to_str().unwrap(),
            ],
        )
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Conn {
    dealer: RawDealer,
    next: u64,
}

impl Conn {
    fn new(ctx: &Context, endpoint: &str, curve: Option<Curve>) -> Conn {
        let options = SocketOptions {
            curve,
            ..SocketOptions::dealer_client()
        };
        Conn {
            dealer: RawDealer::connect_with(ctx, endpoint, &options).unwrap(),
            next: 0,
        }
    }

    fn send(&mut self, make: impl FnOnce(u64) -> ClientToBroker) {
        self.next += 1;
        self.dealer.send(&make(self.next).to_frames()).unwrap();
    }

    fn request(&mut self, make: impl FnOnce(u64) -> ClientToBroker) -> BrokerToClient {
        self.send(make);
        let f = self.dealer.recv(WAIT).expect("reply");
        BrokerToClient::decode(&f[1], &f[2], &Limits::default()).unwrap()
    }

    fn call(&mut self, fun: &str, arg: Value) -> BrokerToClient {
        let fun = fun.to_string();
        self.request(|id| ClientToBroker::Plan(plan(id, &fun, arg)))
    }
}

fn plan(id: u64, fun: &str, arg: Value) -> PlanRequest {
    PlanRequest {
        id,
        steps: vec![Step::new("s", fun, vec![arg])],
        deadline_ms: None,
        all_results: false,
        progress: false,
        progress_topic: None,
        plan: None,
        trace: false,
    }
}

fn subscribe(id: u64, pattern: &str) -> ClientToBroker {
    ClientToBroker::Subscribe(Subscribe {
        id,
        patterns: vec![pattern.into()],
        backlog: false,
        cluster_ack: false,
    })
}

fn publish(id: u64, topic: &str) -> ClientToBroker {
    ClientToBroker::Publish(Publish {
        id,
        topic: topic.into(),
        headers: Default::default(),
        payload: Value::from(1),
        confirm: true,
    })
}

fn expect_result(reply: BrokerToClient) -> BTreeMapValue {
    match reply {
        BrokerToClient::Result(r) => r.results.into_iter().collect(),
        other => panic!("expected a result, got {other:?}"),
    }
}

type BTreeMapValue = std::collections::BTreeMap<String, Value>;

fn expect_denied(reply: BrokerToClient) -> ErrorReply {
    match reply {
        BrokerToClient::Error(e) if e.code == ErrorCode::AccessDenied.code() => e,
        other => panic!("expected 404 access_denied, got {other:?}"),
    }
}

fn workers(c: &mut Conn) -> Vec<String> {
    match c.request(|id| ClientToBroker::Status(StatusRequest { id })) {
        BrokerToClient::Status(s) => s.workers.into_iter().map(|w| w.name).collect(),
        other => panic!("{other:?}"),
    }
}

/// Waits for `text` in a process's log (it is written asynchronously).
fn wait_log(proc: &Proc, text: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while !proc.log().contains(text) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {text:?} in the log:\n{}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_registered(node: &mut Proc) {
    node.wait_event("registered", START_TIMEOUT);
}

#[test]
fn only_listed_keys_get_in_and_only_for_what_they_may_do() {
    let keys = Keys::new("rules");
    keys.access(true, false);
    let b = keys.broker();
    let mut node = keys.node(&b, "w1", "worker");
    wait_registered(&mut node);
    let ctx = Context::new();
    let mut alice = Conn::new(&ctx, &b.client, Some(keys.client_curve(&keys.alice)));
    assert_eq!(
        expect_result(alice.call("echo", Value::from("hi")))["s"],
        Value::from("hi")
    );

    // Outside alice's rules: a function, a topic, a subscription pattern, a progress topic.
    let e = expect_denied(alice.call("echos", Value::from(1)));
    assert_eq!(e.step.as_deref(), Some("s"));
    expect_denied(alice.request(|id| publish(id, "alerts.disk")));
    expect_denied(alice.request(|id| subscribe(id, "#")));
    expect_denied(alice.request(|id| subscribe(id, "alerts.*")));
    expect_denied(alice.request(|id| {
        let mut p = plan(id, "echo", Value::from(1));
        p.progress_topic = Some("alerts.progress".into());
        ClientToBroker::Plan(p)
    }));
    match alice.request(|id| publish(id, "orders.1")) {
        BrokerToClient::Published(p) => assert_eq!(p.matched, 0),
        other => panic!("{other:?}"),
    }

    // A NULL (plain) client and a CURVE client with an unknown key never get through.
    let mut plain = Conn::new(&ctx, &b.client, None);
    plain.send(|id| ClientToBroker::Plan(plan(id, "echo", Value::from(1))));
    assert!(
        plain.dealer.recv(REFUSED).is_none(),
        "a NULL client was served"
    );
    let stranger = KeyPair::generate().unwrap();
    let mut unknown = Conn::new(&ctx, &b.client, Some(keys.client_curve(&stranger)));
    unknown.send(|id| ClientToBroker::Plan(plan(id, "echo", Value::from(1))));
    assert!(
        unknown.dealer.recv(REFUSED).is_none(),
        "an unknown key was served"
    );

    // A client key cannot register as a worker (and a worker key cannot act as a client).
    let fake_worker = Conn::new(&ctx, &b.worker, Some(keys.client_curve(&keys.alice)));
    let register = WorkerToBroker::Register(Register {
        node: "fake".into(),
        functions: vec!["echo".into()],
        resources: vec![],
        capacity: 1,
        versions: Default::default(),
        cacheable: Default::default(),
    });
    fake_worker.dealer.send(&register.to_frames()).unwrap();
    assert!(fake_worker.dealer.recv(REFUSED).is_none());
    let mut worker_as_client = Conn::new(&ctx, &b.client, Some(keys.client_curve(&keys.worker)));
    worker_as_client.send(|id| ClientToBroker::Plan(plan(id, "echo", Value::from(1))));
    assert!(worker_as_client.dealer.recv(REFUSED).is_none());
    assert_eq!(workers(&mut alice), vec!["w1".to_string()]);

    // Topics: delivery only to the subscription's owner, over CURVE.
    let token = match alice.request(|id| subscribe(id, "orders.*")) {
        BrokerToClient::Subscribed(s) => s.sub,
        other => panic!("{other:?}"),
    };
    // Bob (a listed client) and a plain SUB try alice's token and the empty prefix.
    let bob_sub =
        RawSub::connect_with(&ctx, &b.events, 1000, Some(keys.client_curve(&keys.bob))).unwrap();
    bob_sub.subscribe(token.as_bytes()).unwrap();
    bob_sub.subscribe(b"").unwrap();
    let plain_sub = RawSub::connect(&ctx, &b.events, 1000).unwrap();
    plain_sub.subscribe(b"").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let alice_sub =
        RawSub::connect_with(&ctx, &b.events, 1000, Some(keys.client_curve(&keys.alice))).unwrap();
    alice_sub.subscribe(token.as_bytes()).unwrap();
    let f = alice_sub.recv(WAIT).expect("active");
    assert_eq!(&f[2][..], b"active");
    match alice.request(|id| publish(id, "orders.7")) {
        BrokerToClient::Published(p) => assert_eq!(p.matched, 1),
        other => panic!("{other:?}"),
    }
    let f = alice_sub.recv(WAIT).expect("message");
    assert_eq!(&f[2][..], b"message");
    assert!(
        bob_sub.recv(REFUSED).is_none(),
        "bob received alice's events"
    );
    assert!(plain_sub.recv(Duration::from_millis(200)).is_none());

    // Still serving after all of that.
    assert_eq!(
        expect_result(alice.call("echo", Value::from(2)))["s"],
        Value::from(2)
    );
    wait_log(&b.proc, "connection refused");
}

#[test]
fn sighup_reload_revokes_keys_and_keeps_the_others_connected() {
    let keys = Keys::new("reload");
    keys.access(true, true);
    let b = keys.broker();
    let mut w1 = keys.node(&b, "w1", "worker");
    let mut w2 = keys.node(&b, "w2", "worker2");
    wait_registered(&mut w1);
    wait_registered(&mut w2);
    let ctx = Context::new();
    let mut alice = Conn::new(&ctx, &b.client, Some(keys.client_curve(&keys.alice)));
    let mut bob = Conn::new(&ctx, &b.client, Some(keys.client_curve(&keys.bob)));
    expect_result(alice.call("echo", Value::from(1)));
    expect_result(bob.call("echos", Value::from(1)));
    let mut names = workers(&mut bob);
    names.sort();
    assert_eq!(names, ["w1", "w2"]);

    // A broken file is refused and changes nothing.
    std::fs::write(keys.dir.join("access.toml"), "[[client]]\nkey = 12\n").unwrap();
    b.proc.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    expect_result(bob.call("echos", Value::from(2)));

    // Bob and worker w2 removed.
    keys.access(false, false);
    b.proc.signal("HUP");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if workers(&mut alice) == ["w1"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "w2 still registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Alice's connection was not dropped; bob's existing connection is refused per request,
    // and a new connection with bob's key is not let in at all.
    expect_result(alice.call("echo", Value::from(3)));
    expect_denied(bob.call("echos", Value::from(3)));
    let mut bob_again = Conn::new(&ctx, &b.client, Some(keys.client_curve(&keys.bob)));
    bob_again.send(|id| ClientToBroker::Plan(plan(id, "echo", Value::from(1))));
    assert!(bob_again.dealer.recv(REFUSED).is_none());
    // Only w1 runs alice's steps from now on.
    for i in 0..5 {
        match alice.call("echo", Value::from(i)) {
            BrokerToClient::Result(_) => {}
            other => panic!("{other:?}"),
        }
    }
    wait_log(&b.proc, "access rules reloaded");
    wait_log(&b.proc, "not reloaded");
}

#[test]
fn protected_mode_refuses_public_endpoints_without_curve() {
    let out = std::process::Command::new(bin("mpreg-broker"))
        .args([
            "--client-endpoint",
            "tcp://0.0.0.0:*",
            "--worker-endpoint",
            "tcp://127.0.0.1:*",
            "--event-endpoint",
            "tcp://127.0.0.1:*",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("protected mode") && err.contains("--insecure"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing was bound");

    // Keys without an access file, and an unreadable key file, are refused too.
    let keys = Keys::new("protected");
    let key = keys.dir.join("broker.key");
    let out = std::process::Command::new(bin("mpreg-broker"))
        .env("MPREG_BROKER_SECURITY__KEY_FILE", &key)
        .args(["--client-endpoint", "tcp://127.0.0.1:*"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    keys.access(false, false);
    set_mode(&key, 0o644);
    let out = std::process::Command::new(bin("mpreg-broker"))
        .env("MPREG_BROKER_SECURITY__KEY_FILE", &key)
        .env(
            "MPREG_BROKER_SECURITY__ACCESS_FILE",
            keys.dir.join("access.toml"),
        )
        .args([
            "--client-endpoint",
            "tcp://127.0.0.1:*",
            "--worker-endpoint",
            "tcp://127.0.0.1:*",
            "--event-endpoint",
            "tcp://127.0.0.1:*",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn the_python_client_speaks_curve() {
    let keys = Keys::new("python");
    let py = KeyPair::generate().unwrap();
    py.write(keys.dir.join("py")).unwrap();
    std::fs::write(
        keys.dir.join("access.toml"),
        "[[client]]\nname = \"py\"\nkey_file = \"py.pub\"\nfunctions = [\"*\"]\npublish = [\"#\"]\nsubscribe = [\"#\"]\n",
    )
    .unwrap();
    let b = keys.broker_with(&[("MPREG_BROKER_TOPICS__RETAIN_COUNT", "3")]);
    // The .pub file, not the Z85 text: a key may start with `-`, which argparse takes for an
    // option.
    let broker_pub = keys.dir.join("broker.pub");
    let py_key = keys.dir.join("py.key");
    let (ok, text) = mpreg_tests::run_python(
        "mpreg_topics.py",
        &[
            "--broker".as_ref(),
            b.client.as_ref(),
            "--curve".as_ref(),
            broker_pub.as_os_str(),
            py_key.as_os_str(),
            "selftest".as_ref(),
            "--retained".as_ref(),
        ] as &[&std::ffi::OsStr],
    );
    assert!(ok && text.contains("all checks passed"), "{text}");
}

fn sleep_plan(id: u64, ms: u64, payload: Value) -> ClientToBroker {
    ClientToBroker::Plan(PlanRequest {
        id,
        steps: vec![Step::new("s", "sleep", vec![Value::from(ms), payload])],
        deadline_ms: None,
        all_results: false,
        progress: false,
        progress_topic: None,
        plan: None,
        trace: false,
    })
}

/// Sends `n` plans and collects one reply each: (results, refusals by code).
fn flood(c: &mut Conn, n: usize, payload: &Value) -> (usize, Vec<u16>) {
    for _ in 0..n {
        c.send(|id| sleep_plan(id, 1500, payload.clone()));
    }
    let (mut ok, mut refused) = (0, Vec::new());
    for _ in 0..n {
        let f = c.dealer.recv(WAIT).expect("a reply to every plan");
        match BrokerToClient::decode(&f[1], &f[2], &Limits::default()).unwrap() {
            BrokerToClient::Result(_) => ok += 1,
            BrokerToClient::Error(e) => refused.push(e.code),
            other => panic!("{other:?}"),
        }
    }
    (ok, refused)
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn bytes_held_for_plans_in_flight_are_bounded() {
    // 4 MiB budget; plans of ~512 KiB each that sleep 1.5 s: at most 8 are held at once.
    let b = start_broker(&[], &[("MPREG_BROKER_MAX_PLAN_BYTES_IN_FLIGHT", "4194304")]);
    let _node = mpreg_tests::start_node(&b.worker, "n", &[], &["--capacity", "64"]);
    let ctx = Context::new();
    let mut c = Conn::new(&ctx, &b.client, None);
    let rss_before = vm_kib(b.proc.pid(), "VmRSS:");
    let payload = Value::from("x".repeat(512 * 1024));
    let (ok, refused) = flood(&mut c, 40, &payload);
    assert!((1..=8).contains(&ok), "{ok} admitted");
    assert_eq!(refused.len(), 40 - ok);
    assert!(refused
        .iter()
        .all(|&code| code == ErrorCode::Overloaded.code()));
    let growth = vm_kib(b.proc.pid(), "VmHWM:").saturating_sub(rss_before);
    println!("admitted {ok}/40, broker peak growth {growth} KiB");
    assert!(growth < 64 * 1024, "broker grew by {growth} KiB");
    // Once they are done, the budget is free again.
    let (ok, refused) = flood(&mut c, 4, &payload);
    assert_eq!((ok, refused.len()), (4, 0));
}

#[test]
fn the_plan_quota_is_per_key_not_per_connection_under_curve() {
    let keys = Keys::new("quota");
    keys.access(true, false);
    let b = keys.broker_with(&[("MPREG_BROKER_MAX_PLANS_PER_CLIENT", "5")]);
    let mut node = keys.node(&b, "w1", "worker");
    wait_registered(&mut node);
    let ctx = Context::new();
    let mut first = Conn::new(&ctx, &b.client, Some(keys.client_curve(&keys.alice)));
    let mut second = Conn::new(&ctx, &b.client, Some(keys.client_curve(&keys.alice)));
    for _ in 0..5 {
        first.send(|id| sleep_plan(id, 1500, Value::Nil));
    }
    std::thread::sleep(Duration::from_millis(300));
    // A second connection with the same key gets no more room.
    match second.request(|id| sleep_plan(id, 10, Value::Nil)) {
        BrokerToClient::Error(e) => assert_eq!(e.code, ErrorCode::TooManyPlans.code()),
        other => panic!("{other:?}"),
    }
    // Another key is not affected.
    let mut bob = Conn::new(&ctx, &b.client, Some(keys.client_curve(&keys.bob)));
    expect_result(bob.call("echo", Value::from(1)));
    for _ in 0..5 {
        let f = first.dealer.recv(WAIT).expect("result");
        assert_eq!(&f[1][..], b"result");
    }
    expect_result(second.call("echo", Value::from(2)));
}

#[test]
fn keygen_cli_and_sdk_work_end_to_end_over_curve() {
    let keys = Keys::new("e2e");
    // `mpreg keygen` writes a private pair and a public file, and never overwrites.
    let base = keys.dir.join("carol");
    let base = base.to_str().unwrap();
    let (code, out, err) = mpreg_tests::cli("tcp://127.0.0.1:1", &["keygen", base], None);
    assert_eq!(code, 0, "{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let carol = KeyPair::load(format!("{base}.key")).unwrap();
    assert_eq!(line["public"], carol.public.to_z85());
    for file in [format!("{base}.key"), format!("{base}.pub")] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    let (code, _, err) = mpreg_tests::cli("tcp://127.0.0.1:1", &["keygen", base], None);
    assert_eq!(code, 1);
    assert!(err.contains("\"code\":902"), "{err}");

    std::fs::write(
        keys.dir.join("access.toml"),
        "[[client]]\nname = \"carol\"\nkey_file = \"carol.pub\"\nfunctions = [\"echo\"]\npublish = [\"news.#\"]\nsubscribe = [\"news.#\"]\n[[worker]]\nkey_file = \"worker.pub\"\n",
    )
    .unwrap();
    let b = keys.broker();
    let mut node = keys.node(&b, "w1", "worker");
    wait_registered(&mut node);
    let broker_pub = keys.dir.join("broker.pub");
    let curve_args = [
        "--server-key",
        broker_pub.to_str().unwrap(),
        "--key-file",
        &format!("{base}.key"),
    ];
    // The CLI with keys is served; without keys it cannot get in (901 after its timeout).
    let mut args = vec!["call", "echo", "\"over curve\""];
    args.extend_from_slice(&curve_args);
    let (code, out, err) = mpreg_tests::cli(&b.client, &args, None);
    assert_eq!((code, out.trim()), (0, "\"over curve\""), "{err}");
    let mut args = vec!["call", "echos", "1"];
    args.extend_from_slice(&curve_args);
    let (code, _, err) = mpreg_tests::cli(&b.client, &args, None);
    assert_eq!(code, 1);
    assert!(err.contains("\"code\":404"), "{err}");
    let (code, _, err) =
        mpreg_tests::cli(&b.client, &["call", "echo", "1", "--timeout", "1"], None);
    assert_eq!(code, 1);
    assert!(err.contains("\"code\":90"), "{err}");

    // The SDK: calls and a subscription whose SUB is CURVE too.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = mpreg::ClientOptions::default().with_curve(keys.broker.public, carol.clone());
        let client = mpreg::Client::connect_with(&b.client, options)
            .await
            .unwrap();
        let v = client.call("echo", mpreg::args!["sdk"]).await.unwrap();
        assert_eq!(v, Value::from("sdk"));
        let mut sub = client.subscribe(["news.*"]).await.unwrap();
        let published = client
            .publish_with(
                "news.today",
                Value::from(7),
                mpreg::PublishOptions::default().with_confirm(true),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(published.matched, 1);
        let m = tokio::time::timeout(WAIT, sub.next_message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((m.topic.as_str(), m.seq), ("news.today", 1));
        let denied = client.subscribe(["#"]).await.unwrap_err();
        assert_eq!(denied.code(), ErrorCode::AccessDenied.code());
    });
}

/// A cached result is still behind the access rules: alice may not call `slow`, so bob having
/// filled the cache gives her nothing; dropping results by function needs the right to call
/// it, by tag the right to call everything.
#[test]
fn the_cache_never_answers_a_client_that_may_not_call_the_function() {
    let keys = Keys::new("cache");
    keys.access(true, false);
    let b = keys.broker();
    let mut node = keys.node(&b, "w1", "worker");
    wait_registered(&mut node);
    let ctx = Context::new();
    let mut bob = Conn::new(&ctx, &b.client, Some(keys.client_curve(&keys.bob)));
    let mut alice = Conn::new(&ctx, &b.client, Some(keys.client_curve(&keys.alice)));
    // slow(1, "v"): the built-in declared cacheable.
    let call = |c: &mut Conn, fun: &str| {
        let fun = fun.to_string();
        c.request(|id| {
            let mut p = plan(id, &fun, Value::from(1));
            p.steps[0].args.push(Value::from("v"));
            ClientToBroker::Plan(p)
        })
    };
    assert_eq!(expect_result(call(&mut bob, "slow"))["s"], Value::from("v"));
    let stats =
        |c: &mut Conn| match c.request(|id| ClientToBroker::CacheStats(CacheStatsRequest { id })) {
            BrokerToClient::CacheStats(s) => s,
            other => panic!("{other:?}"),
        };
    assert_eq!(stats(&mut bob).entries, 1, "bob's call was cached");
    let denied = expect_denied(call(&mut alice, "slow"));
    assert_eq!(denied.fun.as_deref(), Some("slow"));
    assert_eq!(stats(&mut alice).counters["hits"], 0, "no hit was served");
    let invalidate = |c: &mut Conn, tag: Option<&str>, fun: Option<&str>| {
        c.request(|id| {
            ClientToBroker::CacheInvalidate(CacheInvalidate {
                id,
                tag: tag.map(Into::into),
                fun: fun.map(Into::into),
            })
        })
    };
    expect_denied(invalidate(&mut alice, None, Some("slow")));
    expect_denied(invalidate(&mut alice, Some("any"), None));
    match invalidate(&mut alice, None, Some("echo")) {
        BrokerToClient::CacheInvalidated(i) => assert_eq!(i.entries, 0),
        other => panic!("{other:?}"),
    }
    match invalidate(&mut bob, None, Some("slow")) {
        BrokerToClient::CacheInvalidated(i) => assert_eq!(i.entries, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(stats(&mut bob).entries, 0);
}
