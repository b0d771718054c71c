//! CURVE on the links between brokers (issue 11): with keys configured, the peer ROUTER and the
//! gossip PUB admit only the access file's `[[peer]]` keys (not a client's, not a worker's, not
//! a plain connection), the cluster still forms and forwards steps over them, a clustered
//! CURVE broker without peer keys refuses to start, and protected mode covers the peer and
//! gossip endpoints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster_support::{alive, until};
use mpreg::{args, Client, ClientOptions, Value};
use mpreg_protocol::peer::{Hello, MemberState, MemberUpdate, PeerEndpoints};
use mpreg_protocol::{compact_frame, BrokerId, PeerMessage};
use mpreg_tests::{bin, start_broker, start_node, BrokerProc, Proc, START_TIMEOUT};
use mpreg_transport::{Context, Curve, KeyPair, RawDealer, RawSub, SocketOptions};

struct Keys {
    dir: PathBuf,
    /// The brokers' shared key pair (listed as a peer).
    cluster: KeyPair,
    client: KeyPair,
    worker: KeyPair,
}

impl Keys {
    fn new(test: &str) -> Keys {
        let dir =
            std::env::temp_dir().join(format!("mpreg-cluster-sec-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let keys = Keys {
            cluster: KeyPair::generate().unwrap(),
            client: KeyPair::generate().unwrap(),
            worker: KeyPair::generate().unwrap(),
            dir,
        };
        keys.cluster.write(keys.dir.join("broker")).unwrap();
        keys.worker.write(keys.dir.join("worker")).unwrap();
        let access = format!(
            "[[client]]\nname = \"alice\"\nkey = \"{}\"\nfunctions = [\"*\"]\npublish = [\"#\"]\nsubscribe = [\"#\"]\n\
             [[worker]]\nname = \"w\"\nkey_file = \"worker.pub\"\n\
             [[peer]]\nname = \"cluster\"\nkey_file = \"broker.pub\"\n",
            keys.client.public
        );
        std::fs::write(keys.dir.join("access.toml"), access).unwrap();
        std::fs::write(
            keys.dir.join("no-peers.toml"),
            format!("[[client]]\nkey = \"{}\"\n", keys.client.public),
        )
        .unwrap();
        keys
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// A CURVE broker of cluster `cluster` on ephemeral loopback ports.
    fn broker(&self, name: &str, seed: Option<&str>) -> BrokerProc {
        let any = "tcp://127.0.0.1:*";
        let mut args = vec![
            "--name",
            name,
            "--cluster",
            "sec",
            "--peer-endpoint",
            any,
            "--gossip-endpoint",
            any,
        ];
        if let Some(seed) = seed {
            args.extend(["--peer", seed]);
        }
        let (key, access) = (self.path("broker.key"), self.path("access.toml"));
        start_broker(
            &args,
            &[
                ("MPREG_BROKER_SECURITY__KEY_FILE", &key),
                ("MPREG_BROKER_SECURITY__ACCESS_FILE", &access),
            ],
        )
    }

    fn curve(&self, own: &KeyPair) -> Option<Curve> {
        Some(Curve::Client {
            server: self.cluster.public,
            own: own.clone(),
        })
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A raw DEALER introducing a made-up broker `name` to the peer ROUTER at `endpoint`, as
/// `curve` (a control link: the routing id is the broker id and `c`).
fn introduce(ctx: &Context, endpoint: &str, curve: Option<Curve>, name: &str) -> RawDealer {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // A valid ULID text (Crockford base32 digits), unique per call.
    let id: BrokerId = format!("01HZZZZ{:013}{n:06}", std::process::id())
        .parse()
        .unwrap();
    let mut routing = id.to_u128().to_be_bytes().to_vec();
    routing.push(b'c');
    let options = SocketOptions {
        curve,
        routing_id: Some(routing),
        ..SocketOptions::dealer_client()
    };
    let dealer = RawDealer::connect_with(ctx, endpoint, &options).unwrap();
    let hello = PeerMessage::Hello(Hello {
        cluster: "sec".into(),
        me: MemberUpdate {
            broker: id,
            name: name.into(),
            endpoints: PeerEndpoints {
                peer: "tcp://127.0.0.1:9".into(),
                ..PeerEndpoints::default()
            },
            state: MemberState::Alive,
            incarnation: 0,
        },
        members: vec![],
    });
    dealer
        .send(&[compact_frame(hello.kind().as_bytes(), &hello.encode_body())])
        .unwrap();
    dealer
}

/// Every member name `client`'s broker lists, whatever its state.
async fn listed(client: &Client) -> Vec<String> {
    cluster_support::cluster(client)
        .await
        .members
        .into_iter()
        .map(|m| m.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_and_gossip_sockets_run_curve_and_admit_only_peer_keys() {
    let keys = Keys::new("links");
    let a = keys.broker("sec-1", None);
    let b = keys.broker("sec-2", a.peer.as_deref());
    let _node = start_node(
        &b.worker,
        "sec-node",
        &[],
        &[
            "--server-key",
            &keys.cluster.public.to_z85(),
            "--key-file",
            &keys.path("worker.key"),
        ],
    );
    let options = ClientOptions::default().with_curve(keys.cluster.public, keys.client.clone());
    let ca = Client::connect_with(&a.client, options.clone())
        .await
        .unwrap();
    let cb = Client::connect_with(&b.client, options).await.unwrap();
    // The cluster forms over CURVE links and forwards a step from broker 1 to broker 2's node.
    until(Duration::from_secs(5), "formed over CURVE", || async {
        alive(&ca).await == ["sec-1", "sec-2"] && alive(&cb).await == ["sec-1", "sec-2"]
    })
    .await;
    until(Duration::from_secs(5), "a forwarded call", || async {
        ca.call("echo", args!["over curve"]).await.ok() == Some(Value::from("over curve"))
    })
    .await;

    let ctx = Context::new();
    let peer = a.peer.clone().unwrap();
    // Not admitted: a client's key, a worker's key, a key nobody listed, no CURVE at all.
    let stranger = KeyPair::generate().unwrap();
    let _refused = [
        introduce(&ctx, &peer, keys.curve(&keys.client), "as-client"),
        introduce(&ctx, &peer, keys.curve(&keys.worker), "as-worker"),
        introduce(&ctx, &peer, keys.curve(&stranger), "as-stranger"),
        introduce(&ctx, &peer, None, "as-plain"),
    ];
    // Admitted: the peer key (so the hellos above were well formed: the refusals are ZAP's).
    let _admitted = introduce(&ctx, &peer, keys.curve(&keys.cluster), "as-peer");
    until(Duration::from_secs(5), "the peer key's hello", || async {
        listed(&ca).await.contains(&"as-peer".to_string())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let names = listed(&ca).await;
    for refused in ["as-client", "as-worker", "as-stranger", "as-plain"] {
        assert!(
            !names.contains(&refused.to_string()),
            "{refused} was admitted: {names:?}"
        );
    }
    let log = a.proc.log();
    assert!(
        log.contains("connection refused") && log.contains("mpreg-peer"),
        "ZAP refusals on the peer domain are logged:\n{log}"
    );

    // Gossip: a peer key's SUB hears digests; a client key's SUB hears nothing.
    let gossip = a.gossip.clone().unwrap();
    let as_client = RawSub::connect_with(&ctx, &gossip, 100, keys.curve(&keys.client)).unwrap();
    as_client.subscribe(b"").unwrap();
    let as_peer = RawSub::connect_with(&ctx, &gossip, 100, keys.curve(&keys.cluster)).unwrap();
    as_peer.subscribe(b"").unwrap();
    assert!(
        as_peer.recv(Duration::from_secs(3)).is_some(),
        "a digest within 3 s"
    );
    assert!(as_client.recv(Duration::from_millis(1500)).is_none());
}

#[test]
fn a_clustered_curve_broker_needs_peer_keys_and_protected_mode_covers_peer_sockets() {
    let keys = Keys::new("start");
    let run = |args: &[&str], env: &[(&str, &str)]| -> (Option<i32>, String) {
        let mut all: Vec<String> = vec![
            "--client-endpoint".into(),
            "tcp://127.0.0.1:*".into(),
            "--worker-endpoint".into(),
            "tcp://127.0.0.1:*".into(),
            "--event-endpoint".into(),
            "tcp://127.0.0.1:*".into(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let mut p = Proc::spawn("broker", &bin("mpreg-broker"), &all, env);
        let status = p.wait_exit(START_TIMEOUT);
        (status.and_then(|s| s.code()), p.log())
    };
    let (key, no_peers) = (keys.path("broker.key"), keys.path("no-peers.toml"));
    let clustered = [
        "--peer-endpoint",
        "tcp://127.0.0.1:*",
        "--gossip-endpoint",
        "tcp://127.0.0.1:*",
    ];
    let started = Instant::now();
    let (code, log) = run(
        &clustered,
        &[
            ("MPREG_BROKER_SECURITY__KEY_FILE", &key),
            ("MPREG_BROKER_SECURITY__ACCESS_FILE", &no_peers),
        ],
    );
    assert!(matches!(code, Some(c) if c != 0), "{code:?}");
    assert!(log.contains("[[peer]]"), "names what is missing:\n{log}");
    // Protected mode: a peer or gossip endpoint reachable from other hosts needs CURVE.
    for public in [
        [
            "--peer-endpoint",
            "tcp://0.0.0.0:*",
            "--gossip-endpoint",
            "tcp://127.0.0.1:*",
        ],
        [
            "--peer-endpoint",
            "tcp://127.0.0.1:*",
            "--gossip-endpoint",
            "tcp://0.0.0.0:*",
        ],
    ] {
        let (code, log) = run(&public, &[]);
        assert!(matches!(code, Some(c) if c != 0), "{code:?}");
        assert!(log.contains("protected mode"), "{log}");
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}
