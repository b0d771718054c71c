//! The MPREG wire protocol: the single source of truth for every message between clients,
//! brokers and workers.
//!
//! Layout:
//! - [`envelope`]: the frames around a body (version tag, message type) and ROUTER prefixes.
//! - [`codec`]: msgpack bodies as named maps; size, structure and depth checks before decoding.
//! - [`msgpack_scan`]: the non-recursive structural check behind the codec.
//! - [`plan`], [`client`], [`worker`], [`topic`], [`peer`], [`cache`]: the message structs;
//!   [`trace`]: plan traces and the timing workers report.
//! - [`direction`]: one enum per direction (`ClientToBroker`, `BrokerToClient`,
//!   `WorkerToBroker`, `BrokerToWorker`, `PeerMessage`, `Gossip`) keyed by the message type
//!   frame.
//! - [`error_code`]: stable numeric error codes and names.
//! - [`ids`]: identifier newtypes (plan, task, worker, broker, node).
//! - [`limits`]: size limits and their defaults.
//!
//! The one rule: this crate does no I/O and depends on nothing else in the workspace.
//! `docs/PROTOCOL.md` describes the same protocol for other languages; the golden fixtures in
//! `protocol/fixtures/` pin the bytes of every message.

pub mod cache;
pub mod client;
pub mod codec;
pub mod direction;
pub mod envelope;
pub mod error_code;
pub mod ids;
pub mod limits;
pub mod msgpack_scan;
pub mod peer;
pub mod plan;
pub mod topic;
pub mod trace;
pub mod worker;

pub use cache::{
    CacheDrop, CacheGet, CacheInvalidate, CacheInvalidated, CacheMode, CachePut, CacheRule,
    CacheStatsReply, CacheStatsRequest, CacheValue, WireKey,
};
pub use client::{
    CancelRequest, ClientHeartbeat, ClusterMember, ClusterReply, ClusterRequest, ErrorReply,
    FunctionEntry, FunctionsReply, FunctionsRequest, Ping, Pong, StatusReply, StatusRequest,
    WorkerStatus,
};
pub use codec::{decode_body, encode_body, encode_compact, peek_request_id, DecodeError};
pub use direction::{
    BrokerToClient, BrokerToWorker, ClientToBroker, Event, Gossip, PeerMessage, WorkerToBroker,
};
pub use envelope::{
    compact_frame, parse as parse_envelope, router_prefix_len, Envelope, EnvelopeError,
    COMPACT_PREFIX, VERSION,
};
pub use error_code::ErrorCode;
pub use ids::{BrokerId, NodeId, PlanId, TaskId, WorkerId};
pub use limits::Limits;
pub use plan::{PlanRequest, PlanResult, Progress, Step};
pub use rmpv::Value;
pub use topic::{
    Active, BatchItem, EventBatch, EventBatchRef, EventItem, EventItemRef, EventRef, Lagging,
    Publish, PublishBatch, Published, PublishedBatch, Subscribe, Subscribed, TopicMessage,
    TopicMessageRef, Unsubscribe, Unsubscribed,
};
pub use trace::{PlanTrace, StepOutcome, StepTrace, TaskTiming};
pub use worker::{
    failure_kind, CancelTask, Disconnect, Heartbeat, Reconnect, Register, Registered, Task,
    TaskFailure, TaskResult,
};
