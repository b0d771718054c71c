//! The simulation of a cluster of brokers: 2 to 5 real engines (configurable), each with its
//! peer sockets ([`links`]), workers attached to one or more of them, clients that move
//! between them, and the faults of a cluster: partitions between brokers (and between brokers
//! and their workers or clients), message loss on peer links and gossip, broker crashes and
//! restarts as new incarnations ([`scenario`]).
//!
//! The checker of a single broker rebuilds the broker's whole state from what crosses its
//! edges; a cluster's placement depends on gossip the checker cannot know exactly, so a
//! cluster is judged end to end ([`check`], [`judge`]): every plan ends exactly once at its
//! client with the model's result or an error the situation allows (or the client's own
//! `904 connection_lost` after it failed over, `901 request_timeout` after a lost reply); no
//! task or forward for a plan after its final reply; no step running twice at once unless a
//! failure explains it; no forwarded step
//! forwarded again; no engine holding more plans than the protocol leaves in flight, and
//! nothing once the run drains; and ([`converge`]) every live broker's view of the members and
//! of each other's catalogue equal to the truth within a bounded time after the last fault.
//! [`run`] drives one seed; [`scale`] a hundred brokers.

pub mod check;
pub mod converge;
pub mod faults;
pub mod judge;
pub mod links;
pub mod run;
pub mod scale;
pub mod scenario;

use mpreg_protocol::{ClusterReply, FunctionsReply};

/// What a broker says of its cluster, asked out of band.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Its `cluster` reply: the members as it sees them.
    pub cluster: ClusterReply,
    /// Its `functions` reply: the cluster's catalogue as it sees it.
    pub functions: FunctionsReply,
}
