//! The MPREG broker: accepts clients' plans, resolves the dependencies between their steps and
//! routes every step to a worker that serves the function and holds the requested resources.
//!
//! Pure cores (no I/O, no clock, no randomness of their own):
//! - [`plan_graph`]: validation and the dependency graph of a plan.
//! - [`resolve`]: replacing references by results.
//! - [`placement`]: where a ready step goes; [`registry`]: the workers it chooses among.
//! - [`matcher`], [`exchange`]: the topic exchange (patterns, subscriptions, delivery).
//! - [`access`]: the access rules of a CURVE broker (keys allowed in, what each may do).
//! - [`cache`]: the result cache (call keys, byte-bounded LRU and S4LRU with TTL, invalidation
//!   along dependencies, single flight).
//! - [`cluster`]: membership (SWIM-style) and the catalogue of what every broker can run;
//!   [`versions`]: function version requirements.
//! - [`engine`]: the deterministic state machine over all of them (plans, scheduler, topics,
//!   access, client liveness), fed typed messages and emitting them through an [`outbox`].
//! - [`ids`]: where ids come from (seeded; the running broker seeds from the OS).
//!
//! The shell:
//! - [`frontend`]: frames off the sockets to typed messages with their origin.
//! - [`server`]: the reactor thread owning the sockets; encodes what the engine emits.
//! - [`http`]: `/metrics`, health and the dashboard, on threads of their own, fed snapshots
//!   the reactor makes when asked.
//! - [`config`]: layered configuration.
//!
//! The one rule: modules import each other in one direction only (shell -> engine -> planes
//! -> pure cores -> protocol); nothing below the shell knows a socket.

pub mod access;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod exchange;
pub mod fast_hash;
pub mod frontend;
pub mod http;
pub mod ids;
pub mod matcher;
pub mod outbox;
pub mod peer_links;
pub mod placement;
pub mod plan_graph;
mod quote;
pub mod registry;
pub mod resolve;
pub mod server;
pub mod versions;

pub use config::{BrokerConfig, Flags};
pub use engine::{Engine, EngineConfig};
pub use server::{Broker, StartError};
