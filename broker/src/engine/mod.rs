//! The engine: the broker's synchronous, deterministic state machine. Typed messages go in
//! with the current time ([`Engine::on_client`], [`Engine::on_worker`],
//! [`Engine::on_event_frame`], [`Engine::on_tick`]; a peer broker's messages get their own
//! entry point once clusters exist); typed messages leave through an [`Outbox`], which the
//! shell encodes. Nothing here reads a clock, draws a random number, touches a socket or
//! blocks: the same inputs, times and seed give the same outputs, in the same order.
//!
//! Planes, each owning its state:
//! - [`plans`]: plans in flight, their quotas, results and deadlines;
//! - [`scheduler`]: workers, tasks, steps waiting for capacity, step timeouts (placement
//!   itself is the pure [`crate::placement`]);
//! - the topic exchange ([`crate::exchange`]) and the access rules ([`crate::access`]);
//! - [`clients`]: client liveness.
//!
//! This file holds the engine's state and its small public surface. The edges and flows are
//! in `requests` (client messages), `workers` (worker messages), `flow` (ready steps to tasks,
//! results to replies, failures), `time` (timers), `status`, `trace` (plan timing and traces)
//! and `metrics` (histograms, the snapshot `/metrics` shows). Every failure is a
//! [`failure::Failure`], turned into an `error` in one place.

mod cache_parts;
mod cache_tier;
mod caching;
mod clients;
mod cluster;
mod cluster_acks;
mod cluster_info;
pub mod counters;
pub mod failure;
mod flow;
mod forwarding;
pub mod metrics;
mod peers;
mod plans;
mod replay;
mod requests;
mod scheduler;
mod status;
mod time;
mod timing;
mod trace;
mod workers;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mpreg_protocol::{Limits, PlanId};

use crate::access::AccessList;
use crate::exchange::{Exchange, ExchangeConfig};
use crate::ids::IdSource;
pub use crate::outbox::{ClientAddr, Delivery, Outbox, WorkerAddr};
pub use clients::{CLIENT_HEARTBEAT_MAX, CLIENT_HEARTBEAT_MIN};
pub use counters::Counters;
pub use failure::Failure;
pub use metrics::MetricsSnapshot;
pub use peers::ClusterConfig;
pub use plans::{ReplyTo, StepIx};
pub use scheduler::Runner;

use clients::ClientLiveness;
use peers::Peers;
use plans::{PlanLimits, Plans};
use replay::Replays;
use scheduler::Scheduler;

/// Settings of the engine (a part of the broker's configuration).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The broker's name, reported to clients and workers.
    pub name: String,
    /// The client endpoint, quoted to a client that reached the worker port by mistake.
    pub client_endpoint: String,
    /// The worker endpoint, quoted to a worker that reached the client port by mistake.
    pub worker_endpoint: String,
    /// Size limits on what clients and workers send.
    pub limits: Limits,
    /// Interval of application heartbeats to workers, and the one they are asked to use.
    pub heartbeat: Duration,
    /// Missed heartbeat intervals after which a worker is expired.
    pub liveness: u32,
    /// Deadline of a plan that does not set one.
    pub default_deadline: Duration,
    /// Longest deadline a client may ask for.
    pub max_deadline: Duration,
    /// Re-dispatches of a step whose worker died, when the step does not say.
    pub max_retries: u32,
    /// Plans in flight across all clients.
    pub max_plans_in_flight: usize,
    /// Plans in flight per client: per connection, or per key on a CURVE broker (so opening
    /// more connections does not buy more).
    pub max_plans_per_client: usize,
    /// Bytes held for plans in flight (their bodies and the results received so far), in
    /// total; a plan that would go over it is refused with `402 overloaded`.
    pub max_plan_bytes_in_flight: usize,
    /// The topic exchange.
    pub exchange: ExchangeConfig,
    /// Largest capacity a worker may declare (bigger declarations are capped).
    pub max_worker_capacity: u32,
    /// Missed heartbeat intervals after which a client that sends heartbeats is considered
    /// gone: its plans are cancelled and its subscriptions ended (the grace period).
    pub client_liveness: u32,
    /// Membership of a cluster of brokers; `None`: a broker on its own.
    pub cluster: Option<ClusterConfig>,
    /// The result cache; `None`: no cache.
    pub cache: Option<crate::cache::CacheConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            name: "broker".into(),
            client_endpoint: String::new(),
            worker_endpoint: String::new(),
            limits: Limits::default(),
            heartbeat: Duration::from_millis(1000),
            liveness: 3,
            default_deadline: Duration::from_secs(30),
            max_deadline: Duration::from_secs(3600),
            max_retries: 2,
            max_plans_in_flight: 100_000,
            max_plans_per_client: 10_000,
            max_plan_bytes_in_flight: 1 << 30,
            exchange: ExchangeConfig::default(),
            max_worker_capacity: 1024,
            client_liveness: 3,
            cluster: None,
            cache: Some(crate::cache::CacheConfig::default()),
        }
    }
}

/// Where a client message came from.
#[derive(Debug, Clone)]
pub struct ClientOrigin {
    /// The connection.
    pub addr: ClientAddr,
    /// Its authenticated key (the ZAP `User-Id`; `None` without CURVE).
    pub user: Option<String>,
    /// The size of the message's body, in bytes.
    pub bytes: usize,
}

/// Where a worker message came from.
#[derive(Debug, Clone)]
pub struct WorkerOrigin {
    /// The connection.
    pub addr: WorkerAddr,
    /// Its authenticated key (the ZAP `User-Id`; `None` without CURVE).
    pub user: Option<String>,
    /// The size of the message's body, in bytes.
    pub bytes: usize,
}

/// How much state the engine holds: every figure but `workers` and `subscriptions` drops back
/// to zero once no plan is in flight (what the simulator checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Footprint {
    /// Plans in flight.
    pub plans: usize,
    /// Plan index entries (by request, per client, deadlines).
    pub plan_indexes: usize,
    /// Tasks in flight.
    pub tasks: usize,
    /// Steps waiting for capacity.
    pub waiting: usize,
    /// Step timeouts armed.
    pub timeouts: usize,
    /// Ready steps not yet handled (always zero between calls).
    pub ready: usize,
    /// Bytes held for plans.
    pub plan_bytes: usize,
    /// Registered workers.
    pub workers: usize,
    /// Subscriptions.
    pub subscriptions: usize,
    /// Clients tracked by heartbeat.
    pub clients: usize,
}

/// The broker's state. See the module documentation.
pub struct Engine {
    config: EngineConfig,
    started: Instant,
    ids: IdSource,
    plans: Plans,
    scheduler: Scheduler,
    exchange: Exchange,
    /// Keys and rules when the broker runs CURVE; `None`: everyone may do everything.
    access: Option<AccessList>,
    clients: ClientLiveness,
    /// The cluster, when this broker is in one.
    peers: Option<Peers>,
    /// Final replies of plans whose client chose the id, for a client that sends one again.
    replays: Replays,
    /// The result cache; `None` when disabled.
    cache: Option<caching::StepResults>,
    /// Cache lookups waiting for their key's owner (the cluster tier).
    tier: cache_tier::TierLookups,
    /// Steps whose references all have results, not yet placed: drained in a loop, so a
    /// chain of steps completing at once never recurses.
    ready: VecDeque<(PlanId, StepIx)>,
    next_heartbeat: Instant,
    shutdown_deadline: Option<Instant>,
    counters: Counters,
    /// Latency histograms and errors by code (see `metrics`).
    metrics: metrics::EngineMetrics,
    log: slog::Logger,
}

impl Engine {
    /// An engine with no workers and no plans, taking its ids from `ids`.
    pub fn new(config: EngineConfig, now: Instant, mut ids: IdSource) -> Engine {
        let plan_limits = PlanLimits {
            max_plans_in_flight: config.max_plans_in_flight,
            max_plans_per_client: config.max_plans_per_client,
            max_plan_bytes_in_flight: config.max_plan_bytes_in_flight,
            default_deadline: config.default_deadline,
            max_deadline: config.max_deadline,
        };
        let peers = config
            .cluster
            .clone()
            .map(|c| Peers::new(c, config.name.clone(), ids.seed(), now));
        let cache = config.cache.clone().map(|c| {
            // The configuration layer validated it; defaults stand in for a bad one here.
            crate::cache::Cache::new(c).unwrap_or_else(|_| {
                crate::cache::Cache::new(crate::cache::CacheConfig::default())
                    .expect("the default cache configuration is valid")
            })
        });
        Engine {
            peers,
            cache,
            tier: cache_tier::TierLookups::default(),
            replays: Replays::default(),
            next_heartbeat: now + config.heartbeat,
            exchange: Exchange::new(config.exchange.clone()),
            plans: Plans::new(plan_limits),
            config,
            started: now,
            ids,
            scheduler: Scheduler::default(),
            access: None,
            clients: ClientLiveness::default(),
            ready: VecDeque::new(),
            shutdown_deadline: None,
            counters: Counters::default(),
            metrics: metrics::EngineMetrics::default(),
            log: slog::Logger::root(slog::Discard, slog::o!()),
        }
    }

    /// Logs through `log` (a child logger with the component's key).
    pub fn with_logger(mut self, log: slog::Logger) -> Engine {
        self.log = log.new(slog::o!("component" => "engine"));
        self
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A counter's value by its `status` name (0 if there is none).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters
            .entries()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| v)
    }

    /// Plans in flight.
    pub fn plans_in_flight(&self) -> usize {
        self.plans.len()
    }

    /// Registered workers.
    pub fn worker_count(&self) -> usize {
        self.scheduler.registry().len()
    }

    /// What the engine holds now.
    pub fn footprint(&self) -> Footprint {
        let [plans, by_request, per_client, deadlines] = self.plans.footprint();
        let [tasks, waiting, timeouts] = self.scheduler.footprint();
        Footprint {
            plans,
            plan_indexes: by_request + per_client + deadlines,
            tasks,
            waiting,
            timeouts,
            ready: self.ready.len(),
            plan_bytes: self.plans.bytes_in_flight(),
            workers: self.scheduler.registry().len(),
            subscriptions: self.exchange.subscription_count(),
            clients: self.clients.len(),
        }
    }

    /// When [`Engine::on_tick`] should next run.
    pub fn next_deadline(&self) -> Instant {
        [
            self.plans.next_deadline(),
            self.scheduler.next_timeout(),
            self.shutdown_deadline,
            self.peers.as_ref().map(Peers::next_deadline),
            self.tier.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .fold(self.next_heartbeat, Instant::min)
    }

    /// Enforces access rules from now on (a CURVE broker), replacing earlier ones: requests
    /// are checked against the new rules, and registered workers whose key is no longer
    /// listed are dropped (told with `404 access_denied`, their tasks re-dispatched).
    pub fn set_access(&mut self, out: &mut impl Outbox, access: AccessList, now: Instant) {
        let revoked: Vec<_> = self
            .scheduler
            .registry()
            .iter()
            .filter(|(_, w)| w.key.as_deref().is_some_and(|k| access.worker(k).is_none()))
            .map(|(id, w)| (id, w.addr.clone()))
            .collect();
        self.access = Some(access);
        for (id, addr) in revoked {
            self.worker_error(out, &addr, Failure::WorkerRevoked);
            self.counters.workers_revoked += 1;
            self.expire_worker(out, id, now);
        }
        self.drain_ready(out, now);
    }

    /// A frame from the event (XPUB) socket: a SUB subscribing (`0x01 token`) or leaving
    /// (`0x00 token`), from a SUB authenticated as `user` (`None` without CURVE).
    pub fn on_event_frame(
        &mut self,
        out: &mut impl Outbox,
        frame: &[u8],
        user: Option<&str>,
        now: Instant,
    ) {
        self.exchange.on_subscription_frame(out, frame, user, now);
        self.catalogue_changed();
        self.publish_catalogue(out);
    }
}
