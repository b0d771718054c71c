//! Samples of the cluster messages: the client's `cluster` and `functions`, every message
//! between brokers on the peer links, and the gossip messages.

use std::collections::BTreeMap;

use mpreg_protocol::peer::*;
use mpreg_protocol::*;

use super::Sample;

/// How a direction decodes one of its messages.
type Decode<M> = fn(&[u8], &[u8], &Limits) -> Result<M, DecodeError>;

/// A sample of one message of a direction whose messages decode with `decode`.
pub(super) fn sample<M: Clone + PartialEq + 'static>(
    name: &'static str,
    kind: &str,
    body: Vec<u8>,
    message: M,
    decode: Decode<M>,
) -> Sample {
    let kind_bytes = kind.as_bytes().to_vec();
    let check_kind = kind_bytes.clone();
    (
        name,
        kind_bytes,
        body,
        Box::new(move |bytes: &[u8]| {
            decode(&check_kind, bytes, &Limits::default()).as_ref() == Ok(&message)
        }),
    )
}

fn id(n: u128) -> BrokerId {
    BrokerId(ulid::Ulid(n))
}

fn endpoints(n: u16) -> PeerEndpoints {
    PeerEndpoints {
        client: format!("tcp://10.0.0.{n}:7400"),
        worker: format!("tcp://10.0.0.{n}:7401"),
        event: format!("tcp://10.0.0.{n}:7402"),
        peer: format!("tcp://10.0.0.{n}:7403"),
        gossip: format!("tcp://10.0.0.{n}:7404"),
    }
}

fn member(n: u16, state: MemberState) -> MemberUpdate {
    MemberUpdate {
        broker: id(u128::from(n) << 80 | 0xabc),
        name: format!("broker-{n}"),
        endpoints: endpoints(n),
        state,
        incarnation: u64::from(n),
    }
}

fn capability() -> Capability {
    Capability {
        fun: "train".into(),
        version: "1.4.2".into(),
        resources: vec!["dataset-a".into(), "gpu".into()],
        capacity: 8,
    }
}

pub fn samples() -> Vec<Sample> {
    let mut out = Vec::new();
    macro_rules! client {
        ($name:literal, $msg:expr) => {{
            let m = $msg;
            out.push(sample(
                $name,
                m.kind(),
                m.encode_body(),
                m,
                ClientToBroker::decode,
            ));
        }};
    }
    macro_rules! reply {
        ($name:literal, $msg:expr) => {{
            let m = $msg;
            out.push(sample(
                $name,
                m.kind(),
                m.encode_body(),
                m,
                BrokerToClient::decode,
            ));
        }};
    }
    macro_rules! peer {
        ($name:literal, $msg:expr) => {{
            let m = $msg;
            out.push(sample(
                $name,
                m.kind(),
                m.encode_body(),
                m,
                PeerMessage::decode,
            ));
        }};
    }
    macro_rules! gossip {
        ($name:literal, $msg:expr) => {{
            let m = $msg;
            out.push(sample($name, m.kind(), m.encode_body(), m, Gossip::decode));
        }};
    }
    client!(
        "client_to_broker.cluster",
        ClientToBroker::Cluster(ClusterRequest { id: 3 })
    );
    client!(
        "client_to_broker.functions",
        ClientToBroker::Functions(FunctionsRequest { id: 4 })
    );
    client!(
        "client_to_broker.subscribe_cluster_ack",
        ClientToBroker::Subscribe(Subscribe {
            id: 5,
            patterns: vec!["orders.#".into()],
            backlog: false,
            cluster_ack: true,
        })
    );
    reply!(
        "broker_to_client.cluster",
        BrokerToClient::Cluster(ClusterReply {
            id: 3,
            cluster: "mpreg".into(),
            self_name: "broker-1".into(),
            members: vec![ClusterMember {
                name: "broker-1".into(),
                incarnation: id(7).to_string(),
                state: MemberState::Alive,
                endpoints: endpoints(1),
                functions: vec!["echo".into(), "train".into()],
            }],
        })
    );
    reply!(
        "broker_to_client.functions",
        BrokerToClient::Functions(FunctionsReply {
            id: 4,
            functions: vec![FunctionEntry {
                fun: "train".into(),
                versions: vec!["1.4.2".into()],
                resources: vec![vec!["dataset-a".into(), "gpu".into()]],
                brokers: vec!["broker-2".into()],
                capacity: 8,
            }],
        })
    );
    let hello = Hello {
        cluster: "mpreg".into(),
        me: member(1, MemberState::Alive),
        members: vec![member(2, MemberState::Suspect)],
    };
    peer!("peer.hello", PeerMessage::Hello(hello.clone()));
    peer!("peer.welcome", PeerMessage::Welcome(hello));
    peer!(
        "peer.refused",
        PeerMessage::Refused(Refused {
            reason: "this broker is in cluster \"a\", not \"b\"".into()
        })
    );
    peer!(
        "peer.probe",
        PeerMessage::Probe(Probe {
            seq: 41,
            updates: vec![member(3, MemberState::Dead)],
        })
    );
    peer!(
        "peer.probe_ack",
        PeerMessage::ProbeAck(ProbeAck {
            seq: 41,
            target: Some(id(9)),
            updates: vec![],
        })
    );
    peer!(
        "peer.probe_request",
        PeerMessage::ProbeRequest(ProbeRequest {
            seq: 42,
            target: id(9),
            updates: vec![],
        })
    );
    peer!(
        "peer.sync",
        PeerMessage::Sync(SyncRequest { origin: id(2) })
    );
    peer!(
        "peer.snapshot",
        PeerMessage::Snapshot(CatalogueSnapshot {
            origin: id(2),
            seq: 12,
            classes: vec![capability()],
            patterns: vec!["orders.#".into()],
        })
    );
    let delta = CatalogueDelta {
        origin: id(2),
        seq: 13,
        set: vec![capability()],
        remove: vec![Capability {
            capacity: 0,
            ..capability()
        }],
        subscribe: vec!["alerts.*".into()],
        unsubscribe: vec![],
    };
    peer!("peer.catalogue", PeerMessage::Catalogue(delta.clone()));
    peer!(
        "peer.delta_ack",
        PeerMessage::DeltaAck(DeltaAck {
            origin: id(2),
            seq: 13
        })
    );
    peer!(
        "peer.fwd_step",
        PeerMessage::FwdStep(FwdStep {
            fid: 77,
            plan: PlanId(ulid::Ulid(0x0191_0000_0000_0000_0000_0000_0000_0001)),
            step: "fit".into(),
            fun: "train".into(),
            version: Some(">=1.2, <2".into()),
            args: vec![Value::from("rows")],
            kwargs: BTreeMap::from([("epochs".to_string(), Value::from(3))]),
            locs: vec!["gpu".into()],
            remaining_ms: 29_500,
            timeout_ms: Some(10_000),
            owner: "tcp://10.0.0.1:7403".into(),
            cache: None,
        })
    );
    peer!(
        "peer.fwd_result",
        PeerMessage::FwdResult(FwdResult {
            fid: 77,
            value: Value::from(0.93),
            worker: "gpu-node-4".into(),
            timing: None,
        })
    );
    peer!(
        "peer.fwd_failure",
        PeerMessage::FwdFailure(FwdFailure {
            fid: 77,
            code: 301,
            cause: Some("function_error".into()),
            message: "out of memory".into(),
            worker: Some("gpu-node-4".into()),
        })
    );
    peer!(
        "peer.fwd_reject",
        PeerMessage::FwdReject(FwdReject {
            fid: 78,
            reason: "no worker serves `train` with resources [gpu]".into(),
        })
    );
    peer!(
        "peer.fwd_cancel",
        PeerMessage::FwdCancel(FwdCancel { fid: 77 })
    );
    peer!(
        "peer.fwd_publish",
        PeerMessage::FwdPublish(FwdPublish {
            id: "01JQ4Y5VJ7T0D8S3R5Y2M6W8XB".into(),
            topic: "orders.42.eu".into(),
            headers: BTreeMap::from([("source".to_string(), "shop".to_string())]),
            payload: Value::from("paid"),
        })
    );
    peer!(
        "peer.bye",
        PeerMessage::Bye(Bye {
            broker: id(1),
            reason: "shutting down".into(),
        })
    );
    gossip!("gossip.catalogue", Gossip::Catalogue(delta));
    gossip!(
        "gossip.digest",
        Gossip::Digest(Digest {
            origin: id(2),
            seq: 13,
            free: 5,
        })
    );
    out
}
