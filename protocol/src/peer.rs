//! Messages between the brokers of one cluster (docs/CLUSTER.md, PROTOCOL.md section 16).
//!
//! Two directions: [`crate::PeerMessage`] on the peer links (a DEALER per peer into each
//! peer's ROUTER, one link for control traffic and one for data), and [`crate::Gossip`] on
//! each broker's gossip PUB (catalogue deltas and digests). Same frames and codec as the
//! rest of the protocol.

use std::collections::BTreeMap;

use rmpv::Value;
use serde::{Deserialize, Serialize};

use crate::codec::nil_as_default;
use crate::ids::{BrokerId, PlanId};

/// Where a broker listens.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerEndpoints {
    /// Client endpoint (what clients connect to).
    pub client: String,
    /// Worker endpoint.
    pub worker: String,
    /// Event endpoint (topic delivery).
    pub event: String,
    /// Peer endpoint (the peer ROUTER).
    pub peer: String,
    /// Gossip endpoint (the gossip PUB).
    pub gossip: String,
}

/// A member's state as seen by the failure detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Answering.
    Alive,
    /// Not answering probes; dead unless it refutes within the suspicion timeout.
    Suspect,
    /// Gone (a restarted broker is a new member).
    Dead,
}

/// What one broker says about one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberUpdate {
    /// The member's incarnation id.
    pub broker: BrokerId,
    /// Its name.
    pub name: String,
    /// Its endpoints.
    pub endpoints: PeerEndpoints,
    /// Its state.
    pub state: MemberState,
    /// Its incarnation number (raised to refute a suspicion).
    pub incarnation: u64,
}

/// `hello`: a broker introduces itself to a peer (also to a seed it knows only by endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The cluster's name: brokers of another cluster refuse each other.
    pub cluster: String,
    /// The sender.
    pub me: MemberUpdate,
    /// The members it knows.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub members: Vec<MemberUpdate>,
}

/// `refused`: a peer of another cluster (or one not allowed in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Why.
    pub reason: String,
}

/// SWIM failure detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swim {
    /// Are you alive?
    Ping {
        /// Probe sequence number.
        seq: u64,
        /// Piggybacked membership updates.
        updates: Vec<MemberUpdate>,
    },
    /// Yes (`target` set when answering an indirect probe for it).
    Ack {
        /// The probe's sequence number.
        seq: u64,
        /// The member probed on the requester's behalf.
        target: Option<BrokerId>,
        /// Piggybacked membership updates.
        updates: Vec<MemberUpdate>,
    },
    /// Please probe `target` for me.
    PingReq {
        /// The requester's probe sequence number.
        seq: u64,
        /// Who to probe.
        target: BrokerId,
        /// Piggybacked membership updates.
        updates: Vec<MemberUpdate>,
    },
}

/// `probe` (the wire form of [`Swim::Ping`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// Probe sequence number.
    pub seq: u64,
    /// Piggybacked membership updates.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub updates: Vec<MemberUpdate>,
}

/// `probe_ack` (the wire form of [`Swim::Ack`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeAck {
    /// The probe's sequence number.
    pub seq: u64,
    /// The member probed indirectly, if this answers an indirect probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<BrokerId>,
    /// Piggybacked membership updates.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub updates: Vec<MemberUpdate>,
}

/// `probe_request` (the wire form of [`Swim::PingReq`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRequest {
    /// The requester's probe sequence number.
    pub seq: u64,
    /// Who to probe.
    pub target: BrokerId,
    /// Piggybacked membership updates.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub updates: Vec<MemberUpdate>,
}

/// One capability class of a broker: a function (and version) with an exact resource set, and
/// the capacity of its workers that have them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Capability {
    /// The function.
    pub fun: String,
    /// Its semantic version; empty when the worker gave none.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub version: String,
    /// The workers' resources, sorted.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub resources: Vec<String>,
    /// Tasks those workers run at once, summed.
    pub capacity: u32,
}

/// `catalogue` (gossip; also sent on the control link when a peer must acknowledge it): the
/// changes of one origin's classes and topic patterns, numbered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogueDelta {
    /// The broker whose catalogue changed.
    pub origin: BrokerId,
    /// Its change number, from 1, without gaps.
    pub seq: u64,
    /// Classes added or changed.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub set: Vec<Capability>,
    /// Classes gone (their capacity is 0).
    #[serde(default, deserialize_with = "nil_as_default")]
    pub remove: Vec<Capability>,
    /// Topic patterns now wanted.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub subscribe: Vec<String>,
    /// Topic patterns no longer wanted.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub unsubscribe: Vec<String>,
}

/// `digest` (gossip, periodic): an origin's latest change number, so a receiver that lost
/// the last delta notices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// The origin.
    pub origin: BrokerId,
    /// Its latest change number.
    pub seq: u64,
    /// Free task slots on its workers now (load; conflated, lossy by design).
    #[serde(default)]
    pub free: u32,
}

/// `sync`: ask a peer for its catalogue snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// The origin wanted (the peer answers for itself).
    pub origin: BrokerId,
}

/// `snapshot`: an origin's whole catalogue as of `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogueSnapshot {
    /// The origin.
    pub origin: BrokerId,
    /// Its change number.
    pub seq: u64,
    /// Its classes.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub classes: Vec<Capability>,
    /// Its topic patterns.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub patterns: Vec<String>,
}

/// `delta_ack`: a peer applied an origin's catalogue up to `seq` (answers a delta sent on the
/// control link).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaAck {
    /// The origin.
    pub origin: BrokerId,
    /// The change number applied.
    pub seq: u64,
}

/// `fwd_step`: run one step of a plan this broker owns on one of your own workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FwdStep {
    /// The forward's id, unique per sender incarnation (echoed in the answer).
    pub fid: u64,
    /// The owner's plan id (trace id).
    pub plan: PlanId,
    /// The step's name (for errors and progress).
    pub step: String,
    /// The function.
    pub fun: String,
    /// Version requirement, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Arguments, references resolved.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub args: Vec<Value>,
    /// Keyword arguments, references resolved.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub kwargs: BTreeMap<String, Value>,
    /// Resources required.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub locs: Vec<String>,
    /// Time left before the owner gives up, in ms (never a wall-clock time).
    pub remaining_ms: u64,
    /// The step's own timeout, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The owner's peer endpoint: where the answer goes.
    pub owner: String,
    /// The step's cache mode, if it set one (`bypass`, `refresh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::cache::CacheMode>,
}

/// `fwd_result`: a forwarded step's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FwdResult {
    /// The forward's id.
    pub fid: u64,
    /// The value.
    pub value: Value,
    /// The worker that ran it.
    pub worker: String,
    /// How long the step waited here (from this broker accepting the forward to the function
    /// starting, in `queued_us`) and ran, when its worker reported it: the owner's trace of
    /// the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<crate::trace::TaskTiming>,
}

/// `fwd_failure`: a forwarded step failed (its function failed, or it timed out, or its
/// worker was lost past the retries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwdFailure {
    /// The forward's id.
    pub fid: u64,
    /// The error code the owner reports.
    pub code: u16,
    /// The worker's failure kind, when a function failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// What happened.
    pub message: String,
    /// The worker involved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// `fwd_reject`: the peer cannot run it (no matching worker now, draining, over its limits);
/// the owner tries another candidate. Not a step failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwdReject {
    /// The forward's id.
    pub fid: u64,
    /// Why.
    pub reason: String,
}

/// `fwd_cancel`: the owner no longer wants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwdCancel {
    /// The forward's id.
    pub fid: u64,
}

/// `fwd_publish`: a message published at the sender, for the receiver's own subscribers
/// (never forwarded again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FwdPublish {
    /// The message id given at the publishing broker.
    pub id: String,
    /// The topic.
    pub topic: String,
    /// Headers.
    #[serde(
        default,
        deserialize_with = "nil_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub headers: BTreeMap<String, String>,
    /// Payload.
    #[serde(default = "nil")]
    pub payload: Value,
}

fn nil() -> Value {
    Value::Nil
}

/// `bye`: the sender is leaving the cluster (graceful shutdown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bye {
    /// The sender.
    pub broker: BrokerId,
    /// Why.
    pub reason: String,
}

impl Swim {
    /// The piggybacked updates.
    pub fn updates(&self) -> &[MemberUpdate] {
        match self {
            Swim::Ping { updates, .. }
            | Swim::Ack { updates, .. }
            | Swim::PingReq { updates, .. } => updates,
        }
    }
}
