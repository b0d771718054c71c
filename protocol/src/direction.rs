//! The four message directions, each an enum over the message types it may carry.
//!
//! Frame 2 of every message (the type) selects the variant; the body decodes into its struct.

use crate::cache::{
    CacheDrop, CacheGet, CacheInvalidate, CacheInvalidated, CachePut, CacheStatsReply,
    CacheStatsRequest, CacheValue,
};
use crate::client::{
    CancelRequest, ClientHeartbeat, ClusterReply, ClusterRequest, ErrorReply, FunctionsReply,
    FunctionsRequest, Ping, Pong, StatusReply, StatusRequest,
};
use crate::codec::{decode_body, encode_body, DecodeError};
use crate::envelope::VERSION;
use crate::limits::Limits;
use crate::peer::{
    Bye, CatalogueDelta, CatalogueSnapshot, DeltaAck, Digest, FwdCancel, FwdFailure, FwdPublish,
    FwdReject, FwdResult, FwdStep, Hello, Probe, ProbeAck, ProbeRequest, Refused, Swim,
    SyncRequest,
};
use crate::plan::{PlanRequest, PlanResult, Progress};
use crate::topic::{
    Active, EventBatch, Lagging, Publish, PublishBatch, Published, PublishedBatch, Subscribe,
    Subscribed, TopicMessage, Unsubscribe, Unsubscribed,
};
use crate::worker::{
    CancelTask, Disconnect, Heartbeat, Reconnect, Register, Registered, Task, TaskFailure,
    TaskResult,
};

macro_rules! direction {
    ($(#[$doc:meta])* $name:ident { $( $(#[$vdoc:meta])* $variant:ident($ty:ty) = $kind:literal, )* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name {
            $( $(#[$vdoc])* $variant($ty), )*
        }

        impl $name {
            /// Every message type frame this direction carries.
            pub const KINDS: &'static [&'static str] = &[$($kind),*];

            /// The message type frame of this message.
            pub fn kind(&self) -> &'static str {
                match self { $( $name::$variant(_) => $kind, )* }
            }

            /// Decodes a body of the given type within `limits`.
            pub fn decode(kind: &[u8], body: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
                $( if kind == $kind.as_bytes() {
                    return decode_body::<$ty>(body, limits).map($name::$variant);
                } )*
                Err(DecodeError::UnknownKind {
                    kind: String::from_utf8_lossy(kind).chars().take(32).collect(),
                })
            }

            /// Encodes the body.
            pub fn encode_body(&self) -> Vec<u8> {
                match self { $( $name::$variant(m) => encode_body(m), )* }
            }

            /// The three protocol frames: version tag, type, body.
            pub fn to_frames(&self) -> [Vec<u8>; 3] {
                [VERSION.to_vec(), self.kind().as_bytes().to_vec(), self.encode_body()]
            }

            /// The one compact frame: `MPREG/1 NUL type NUL body`.
            pub fn to_compact_frame(&self) -> Vec<u8> {
                self.encode_compact().0
            }

            /// The one compact frame, encoded in one buffer, and its body's length.
            pub fn encode_compact(&self) -> (Vec<u8>, usize) {
                let kind = self.kind().as_bytes();
                match self { $( $name::$variant(m) => crate::codec::encode_compact(kind, m), )* }
            }
        }
    };
}

direction! {
    /// Client to broker (client socket).
    ClientToBroker {
        /// Run a plan.
        Plan(PlanRequest) = "plan",
        /// Cancel a plan in flight.
        Cancel(CancelRequest) = "cancel",
        /// Liveness probe.
        Ping(Ping) = "ping",
        /// Broker status.
        Status(StatusRequest) = "status",
        /// Create a subscription.
        Subscribe(Subscribe) = "subscribe",
        /// End a subscription.
        Unsubscribe(Unsubscribe) = "unsubscribe",
        /// Publish a message to a topic.
        Publish(Publish) = "publish",
        /// Publish several messages at once.
        PublishBatch(PublishBatch) = "publish_batch",
        /// The client is alive (not answered).
        Heartbeat(ClientHeartbeat) = "heartbeat",
        /// How the broker sees its cluster.
        Cluster(ClusterRequest) = "cluster",
        /// The cluster's catalogue.
        Functions(FunctionsRequest) = "functions",
        /// The result cache's figures.
        CacheStats(CacheStatsRequest) = "cache_stats",
        /// Drop cached results by tag or function.
        CacheInvalidate(CacheInvalidate) = "cache_invalidate",
    }
}

direction! {
    /// Broker to client (client socket).
    BrokerToClient {
        /// A plan's results.
        Result(PlanResult) = "result",
        /// One step of a plan finished (only when the plan asked for progress).
        Progress(Progress) = "progress",
        /// A request failed.
        Error(ErrorReply) = "error",
        /// Answer to `ping`.
        Pong(Pong) = "pong",
        /// Answer to `status`.
        Status(StatusReply) = "status",
        /// The subscription exists.
        Subscribed(Subscribed) = "subscribed",
        /// The subscription ended.
        Unsubscribed(Unsubscribed) = "unsubscribed",
        /// The message was routed.
        Published(Published) = "published",
        /// The batch was routed.
        PublishedBatch(PublishedBatch) = "published_batch",
        /// Answer to `cluster`.
        Cluster(ClusterReply) = "cluster",
        /// Answer to `functions`.
        Functions(FunctionsReply) = "functions",
        /// Answer to `cache_stats`.
        CacheStats(CacheStatsReply) = "cache_stats",
        /// Answer to `cache_invalidate`.
        CacheInvalidated(CacheInvalidated) = "cache_invalidated",
    }
}

direction! {
    /// Worker to broker (worker socket).
    WorkerToBroker {
        /// Announce functions, resources and capacity.
        Register(Register) = "register",
        /// Proof of life.
        Heartbeat(Heartbeat) = "heartbeat",
        /// A task's result.
        Result(TaskResult) = "result",
        /// A task's failure.
        Failure(TaskFailure) = "failure",
        /// The worker is leaving.
        Disconnect(Disconnect) = "disconnect",
    }
}

direction! {
    /// Broker to worker (worker socket).
    BrokerToWorker {
        /// Registration accepted.
        Registered(Registered) = "registered",
        /// Run a task.
        Task(Task<'static>) = "task",
        /// Drop a task.
        Cancel(CancelTask) = "cancel",
        /// Proof of life.
        Heartbeat(Heartbeat) = "heartbeat",
        /// Register again.
        Reconnect(Reconnect) = "reconnect",
        /// A worker message was rejected.
        Error(ErrorReply) = "error",
        /// The broker is shutting down.
        Disconnect(Disconnect) = "disconnect",
    }
}

direction! {
    /// Broker -> subscriber, on the event (XPUB) socket, after the subscription token frame.
    Event {
        /// The subscription is live.
        Active(Active) = "active",
        /// A message for the subscription.
        Message(TopicMessage) = "message",
        /// Several messages for the subscription.
        Messages(EventBatch) = "messages",
        /// The subscriber fell behind; messages were dropped.
        Lagging(Lagging) = "lagging",
    }
}

direction! {
    /// Broker to broker, on the peer links (control and data).
    PeerMessage {
        /// Introduction (to a seed or a newly learned member).
        Hello(Hello) = "hello",
        /// The answer to `hello`: the receiver and the members it knows.
        Welcome(Hello) = "welcome",
        /// Not of this cluster.
        Refused(Refused) = "refused",
        /// SWIM probe.
        Probe(Probe) = "probe",
        /// SWIM probe answer.
        ProbeAck(ProbeAck) = "probe_ack",
        /// SWIM indirect probe request.
        ProbeRequest(ProbeRequest) = "probe_request",
        /// Ask for a catalogue snapshot.
        Sync(SyncRequest) = "sync",
        /// A catalogue snapshot.
        Snapshot(CatalogueSnapshot) = "snapshot",
        /// A catalogue delta that must be acknowledged.
        Catalogue(CatalogueDelta) = "catalogue",
        /// A catalogue delta was applied.
        DeltaAck(DeltaAck) = "delta_ack",
        /// Run a step on one of your workers.
        FwdStep(FwdStep) = "fwd_step",
        /// A forwarded step's value.
        FwdResult(FwdResult) = "fwd_result",
        /// A forwarded step failed.
        FwdFailure(FwdFailure) = "fwd_failure",
        /// A forwarded step cannot run there.
        FwdReject(FwdReject) = "fwd_reject",
        /// A forwarded step is no longer wanted.
        FwdCancel(FwdCancel) = "fwd_cancel",
        /// A message for the receiver's own subscribers.
        FwdPublish(FwdPublish) = "fwd_publish",
        /// The sender is leaving.
        Bye(Bye) = "bye",
        /// Cached results were invalidated at the sender: drop them here too.
        CacheDrop(CacheDrop) = "cache_drop",
        /// Cluster tier: does the key's owner hold this result?
        CacheGet(CacheGet) = "cache_get",
        /// Cluster tier: the owner's answer.
        CacheValue(CacheValue) = "cache_value",
        /// Cluster tier: a result for its key's owner to keep.
        CachePut(CachePut) = "cache_put",
    }
}

direction! {
    /// Broker to every peer, on the gossip PUB (the topic frame is the message type).
    Gossip {
        /// A catalogue delta.
        Catalogue(CatalogueDelta) = "catalogue",
        /// An origin's latest change number and load.
        Digest(Digest) = "digest",
    }
}

impl From<Swim> for PeerMessage {
    fn from(swim: Swim) -> PeerMessage {
        match swim {
            Swim::Ping { seq, updates } => PeerMessage::Probe(Probe { seq, updates }),
            Swim::Ack {
                seq,
                target,
                updates,
            } => PeerMessage::ProbeAck(ProbeAck {
                seq,
                target,
                updates,
            }),
            Swim::PingReq {
                seq,
                target,
                updates,
            } => PeerMessage::ProbeRequest(ProbeRequest {
                seq,
                target,
                updates,
            }),
        }
    }
}

impl PeerMessage {
    /// The SWIM message this is, if it is one (else the message, boxed).
    pub fn into_swim(self) -> Result<Swim, Box<PeerMessage>> {
        match self {
            PeerMessage::Probe(p) => Ok(Swim::Ping {
                seq: p.seq,
                updates: p.updates,
            }),
            PeerMessage::ProbeAck(a) => Ok(Swim::Ack {
                seq: a.seq,
                target: a.target,
                updates: a.updates,
            }),
            PeerMessage::ProbeRequest(r) => Ok(Swim::PingReq {
                seq: r.seq,
                target: r.target,
                updates: r.updates,
            }),
            other => Err(Box::new(other)),
        }
    }
}

impl ClientToBroker {
    /// The request id every client message carries.
    pub fn request_id(&self) -> u64 {
        match self {
            ClientToBroker::Plan(m) => m.id,
            ClientToBroker::Cancel(m) => m.id,
            ClientToBroker::Ping(m) => m.id,
            ClientToBroker::Status(m) => m.id,
            ClientToBroker::Subscribe(m) => m.id,
            ClientToBroker::Unsubscribe(m) => m.id,
            ClientToBroker::Publish(m) => m.id,
            ClientToBroker::PublishBatch(m) => m.id,
            ClientToBroker::Heartbeat(m) => m.id,
            ClientToBroker::Cluster(m) => m.id,
            ClientToBroker::Functions(m) => m.id,
            ClientToBroker::CacheStats(m) => m.id,
            ClientToBroker::CacheInvalidate(m) => m.id,
        }
    }
}

impl BrokerToClient {
    /// The request id this reply answers (`None` for an error about an unreadable request).
    pub fn request_id(&self) -> Option<u64> {
        match self {
            BrokerToClient::Result(m) => Some(m.id),
            BrokerToClient::Progress(m) => Some(m.id),
            BrokerToClient::Error(m) => m.id,
            BrokerToClient::Pong(m) => Some(m.id),
            BrokerToClient::Status(m) => Some(m.id),
            BrokerToClient::Subscribed(m) => Some(m.id),
            BrokerToClient::Unsubscribed(m) => Some(m.id),
            BrokerToClient::Published(m) => Some(m.id),
            BrokerToClient::PublishedBatch(m) => Some(m.id),
            BrokerToClient::Cluster(m) => Some(m.id),
            BrokerToClient::Functions(m) => Some(m.id),
            BrokerToClient::CacheStats(m) => Some(m.id),
            BrokerToClient::CacheInvalidated(m) => Some(m.id),
        }
    }
}
