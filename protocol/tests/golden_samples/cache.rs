//! Samples of the result cache's messages: a worker declaring cacheable functions, a plan
//! whose steps set a cache mode, the client's `cache_stats` and `cache_invalidate` with their
//! replies, and the peers' `cache_drop`.

use std::collections::BTreeMap;

use mpreg_protocol::*;

use super::cluster::sample;
use super::Sample;

pub fn samples() -> Vec<Sample> {
    let mut out = Vec::new();
    let register = WorkerToBroker::Register(Register {
        node: "node-1".into(),
        functions: vec!["embed".into(), "echo".into()],
        resources: vec!["model-x".into()],
        capacity: 8,
        versions: BTreeMap::from([("embed".to_string(), "2.1.0".to_string())]),
        cacheable: BTreeMap::from([(
            "embed".to_string(),
            CacheRule {
                ttl_ms: Some(60_000),
                tags: vec!["model-x".into()],
            },
        )]),
    });
    out.push(sample(
        "worker_to_broker.register_cacheable",
        register.kind(),
        register.encode_body(),
        register,
        WorkerToBroker::decode,
    ));
    let mut fresh = Step::new("fresh", "embed", vec![Value::from("some text")]);
    fresh.version = Some("^2".into());
    fresh.cache = Some(CacheMode::Refresh);
    let mut uncached = Step::new("raw", "echo", vec![Value::from("|fresh")]);
    uncached.cache = Some(CacheMode::Bypass);
    let plan = ClientToBroker::Plan(PlanRequest {
        id: 4,
        steps: vec![fresh, uncached],
        deadline_ms: None,
        all_results: false,
        progress: false,
        progress_topic: None,
        plan: None,
        trace: false,
    });
    out.push(sample(
        "client_to_broker.plan_cache_modes",
        plan.kind(),
        plan.encode_body(),
        plan,
        ClientToBroker::decode,
    ));
    for request in [
        (
            "client_to_broker.cache_stats",
            ClientToBroker::CacheStats(CacheStatsRequest { id: 5 }),
        ),
        (
            "client_to_broker.cache_invalidate",
            ClientToBroker::CacheInvalidate(CacheInvalidate {
                id: 6,
                tag: Some("model-x".into()),
                fun: None,
            }),
        ),
    ] {
        let (name, m) = request;
        out.push(sample(
            name,
            m.kind(),
            m.encode_body(),
            m,
            ClientToBroker::decode,
        ));
    }
    let stats = BrokerToClient::CacheStats(CacheStatsReply {
        id: 5,
        broker: "broker-1".into(),
        enabled: true,
        policy: "s4lru".into(),
        entries: 2,
        bytes: 1_536,
        max_bytes: 67_108_864,
        flights: 0,
        counters: BTreeMap::from([
            ("evictions_capacity".to_string(), 0),
            ("hits".to_string(), 7),
            ("misses".to_string(), 2),
        ]),
    });
    let invalidated = BrokerToClient::CacheInvalidated(CacheInvalidated {
        id: 6,
        entries: 2,
        peers: 2,
    });
    for (name, m) in [
        ("broker_to_client.cache_stats", stats),
        ("broker_to_client.cache_invalidated", invalidated),
    ] {
        out.push(sample(
            name,
            m.kind(),
            m.encode_body(),
            m,
            BrokerToClient::decode,
        ));
    }
    let drop = PeerMessage::CacheDrop(CacheDrop {
        tag: None,
        fun: Some("embed".into()),
    });
    let key = WireKey {
        fun: "embed".into(),
        version: Some("^2".into()),
        locs: vec!["model-x".into()],
        canonical: vec![0x92, 0x91, 0xa4, b't', b'e', b'x', b't', 0x80],
    };
    for (name, m) in [
        (
            "peer.cache_get",
            PeerMessage::CacheGet(CacheGet {
                gid: 11,
                key: key.clone(),
            }),
        ),
        (
            "peer.cache_value",
            PeerMessage::CacheValue(CacheValue {
                gid: 11,
                hit: true,
                value: Value::Array(vec![Value::from(0.25), Value::from(-1.5)]),
            }),
        ),
        (
            "peer.cache_put",
            PeerMessage::CachePut(CachePut {
                key,
                value: Value::from("vector"),
                ttl_ms: Some(60_000),
                tags: vec!["model-x".into()],
            }),
        ),
    ] {
        out.push(sample(
            name,
            m.kind(),
            m.encode_body(),
            m,
            PeerMessage::decode,
        ));
    }
    out.push(sample(
        "peer.cache_drop",
        drop.kind(),
        drop.encode_body(),
        drop,
        PeerMessage::decode,
    ));
    out
}
