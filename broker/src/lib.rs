//! The MPREG broker: accepts clients' plans, resolves the dependencies between their steps and
//! routes every step to a worker that serves the function and holds the requested resources.
//!
//! - [`plan_graph`]: validation and the dependency graph of a plan.
//! - [`resolve`]: replacing references by results.
//! - [`registry`]: workers, their functions, resources and load.
//! - [`matcher`], [`exchange`]: the topic exchange (patterns, subscriptions, delivery).
//! - [`engine`]: the synchronous state machine (plans, tasks, heartbeats, deadlines).
//! - [`server`]: the reactor thread with the client and worker sockets.
//! - [`access`]: the access file of a CURVE broker (keys allowed in, what each may do).
//! - [`config`]: layered configuration.

pub mod access;
pub mod config;
pub mod engine;
pub mod exchange;
pub mod matcher;
pub mod plan_graph;
pub mod registry;
pub mod resolve;
pub mod server;

pub use config::{BrokerConfig, Overrides};
pub use engine::{Engine, EngineConfig};
pub use server::{Broker, StartError};

/// A logger writing to stderr at `level` (`info` if unknown).
pub fn stderr_logger(level: &str) -> slog::Logger {
    use slog::Drain;
    let level = level.parse::<slog::Level>().unwrap_or(slog::Level::Info);
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain)
        .build()
        .filter_level(level)
        .fuse();
    slog::Logger::root(drain, slog::o!())
}
