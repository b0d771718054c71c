//! What the engine measures beyond its counters, and the copy of it all that the broker's HTTP
//! thread turns into `/metrics` and the dashboard.
//!
//! The hot path stays cheap: latency histograms are fixed arrays of integers updated with the
//! engine's own `now` (no lock, no atomic, no clock read), errors are counted by code in small
//! ordered maps. Nothing leaves the reactor thread until the HTTP thread asks: then
//! [`Engine::metrics_snapshot`] copies the figures into a [`MetricsSnapshot`] (a few hundred
//! bytes plus one entry per worker, member and function), sent back over a channel.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use mpreg_protocol::peer::MemberState;
use mpreg_protocol::{ErrorCode, FunctionEntry, WorkerStatus};

use super::Engine;

/// Upper bounds of the latency histograms' buckets, in microseconds (50 us to 60 s; a last
/// bucket counts everything above).
pub const LATENCY_BOUNDS_US: [u64; 19] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// A latency histogram: counts per bucket of [`LATENCY_BOUNDS_US`] (not cumulative; the last
/// slot is above the last bound), their sum and their number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket; `counts[i]` holds those at most `LATENCY_BOUNDS_US[i]` and
    /// above the previous bound; the last one those above every bound.
    pub counts: [u64; LATENCY_BOUNDS_US.len() + 1],
    /// Sum of the observations, in microseconds.
    pub sum_us: u64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one observation of `us` microseconds.
    pub fn observe_us(&mut self, us: u64) {
        let slot = LATENCY_BOUNDS_US.partition_point(|&bound| bound < us);
        self.counts[slot] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }

    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        self.observe_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// The buckets as Prometheus wants them: (upper bound in seconds, cumulative count), the
    /// `+Inf` bucket last.
    pub fn cumulative_seconds(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        let mut out: Vec<(f64, u64)> = LATENCY_BOUNDS_US
            .iter()
            .zip(self.counts.iter())
            .map(|(&bound, &n)| {
                total += n;
                (bound as f64 / 1e6, total)
            })
            .collect();
        out.push((f64::INFINITY, self.count));
        out
    }

    /// An estimate of the `q` quantile (0..=1) in seconds, interpolated inside its bucket;
    /// `None` without observations. Above the last bound it answers that bound.
    pub fn quantile_seconds(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut below = 0u64;
        let mut lower = 0.0;
        for (i, &n) in self.counts.iter().enumerate() {
            let upper = LATENCY_BOUNDS_US.get(i).map(|&b| b as f64 / 1e6);
            if n > 0 && (below + n) as f64 >= rank {
                let Some(upper) = upper else {
                    return Some(lower);
                };
                let within = (rank - below as f64) / n as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
            below += n;
            if let Some(upper) = upper {
                lower = upper;
            }
        }
        Some(lower)
    }
}

/// The engine's measurements that are not plain counters.
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    /// Plans of local clients, from acceptance to their final reply.
    pub plan: Histogram,
    /// Steps on workers (here or on a peer), from dispatch to result.
    pub step: Histogram,
    /// Ready steps, from ready to dispatched (the wait for a free worker slot).
    pub queue: Histogram,
    /// Tasks in the workers' own queues, as the workers reported it.
    pub worker_queue: Histogram,
    /// Every `error` sent to a client, by code.
    pub errors: BTreeMap<u16, u64>,
    /// Plans of local clients that ended with an error after they were admitted, by code.
    pub plans_failed: BTreeMap<u16, u64>,
    /// The wall-clock time of the engine's start (its first `now`), for the wall-clock times
    /// of traces; the Unix epoch until the broker sets it, so that tests stay deterministic.
    pub wall_origin: SystemTime,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics {
            plan: Histogram::default(),
            step: Histogram::default(),
            queue: Histogram::default(),
            worker_queue: Histogram::default(),
            errors: BTreeMap::new(),
            plans_failed: BTreeMap::new(),
            wall_origin: SystemTime::UNIX_EPOCH,
        }
    }
}

/// A counter as the HTTP thread exports it: name, help text, value.
pub type NamedCounter = (&'static str, &'static str, u64);

/// Everything `/metrics` and the dashboard show, copied out of the engine at one instant.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    /// The broker's name.
    pub broker: String,
    /// Its version.
    pub version: String,
    /// Time since it started.
    pub uptime: Duration,
    /// True once it is shutting down (not ready).
    pub shutting_down: bool,
    /// Every engine counter with its help text (see `engine::counters`).
    pub counters: Vec<NamedCounter>,
    /// Values that go up and down: plans in flight, waiting steps, bytes held, ...
    pub gauges: Vec<(&'static str, &'static str, u64)>,
    /// Topic exchange: published, delivered, dropped.
    pub topics: [u64; 3],
    /// The result cache's counters (`hits`, `misses`, ...) and gauges (`entries`, `bytes`,
    /// ...); both empty without a cache.
    pub cache_counters: Vec<(String, u64)>,
    /// See `cache_counters`.
    pub cache_gauges: Vec<(String, u64)>,
    /// The workers registered here, with their worker ids.
    pub workers: Vec<(String, WorkerStatus)>,
    /// The cluster's name (empty for a broker on its own).
    pub cluster: String,
    /// Every member (this broker included): name, state, client endpoint, functions served.
    pub members: Vec<MemberFigures>,
    /// The cluster's catalogue.
    pub functions: Vec<FunctionEntry>,
    /// The latency histograms: plan, step, queue, worker queue.
    pub histograms: [(&'static str, &'static str, Histogram); 4],
    /// Errors sent to clients, by (code, kind).
    pub errors: Vec<(u16, String, u64)>,
    /// Plans that failed, by (code, kind).
    pub plans_failed: Vec<(u16, String, u64)>,
}

/// One member of the cluster in a snapshot.
#[derive(Debug, Clone)]
pub struct MemberFigures {
    /// Its name.
    pub name: String,
    /// Alive, suspect or dead.
    pub state: MemberState,
    /// Its client endpoint.
    pub client: String,
    /// Functions its workers serve.
    pub functions: usize,
    /// True for the broker answering.
    pub me: bool,
}

/// `(code, kind, count)` rows of a map of counts by code.
fn by_code(map: &BTreeMap<u16, u64>) -> Vec<(u16, String, u64)> {
    map.iter()
        .map(|(&code, &n)| {
            let kind = ErrorCode::from_code(code).map_or("unknown", |c| c.name());
            (code, kind.to_string(), n)
        })
        .collect()
}

impl Engine {
    /// Sets the wall-clock time of the engine's start (the broker reads it once, next to the
    /// `now` it created the engine with): trace times are placed on the wall clock from it.
    pub fn with_wall_clock(mut self, at_start: SystemTime) -> Engine {
        self.metrics.wall_origin = at_start;
        self
    }

    /// The engine's latency histograms and errors by code.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// Counts an `error` sent to a client.
    pub(super) fn count_error(&mut self, code: u16) {
        *self.metrics.errors.entry(code).or_default() += 1;
    }

    /// Copies every figure the HTTP thread shows (see [`MetricsSnapshot`]).
    pub fn metrics_snapshot(&self, now: Instant) -> MetricsSnapshot {
        let status = self.status(0, now);
        let cluster = self.cluster_reply(0);
        let topics = self.exchange.counters();
        let cache_gauges = match &self.cache {
            Some(_) => ["entries", "bytes", "flights", "followers"]
                .into_iter()
                .map(|g| (g.to_string(), self.cache_gauge(g)))
                .collect(),
            None => Vec::new(),
        };
        let usize_gauge = |n: usize| n as u64;
        let m = &self.metrics;
        MetricsSnapshot {
            broker: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime: now.saturating_duration_since(self.started),
            shutting_down: self.is_shutting_down(),
            counters: self.counters.described().collect(),
            gauges: vec![
                (
                    "plans_in_flight",
                    "Plans in flight (local clients' and steps run for peers).",
                    usize_gauge(self.plans.len()),
                ),
                (
                    "plan_bytes_in_flight",
                    "Bytes held for plans in flight (bodies and results so far).",
                    usize_gauge(self.plans.bytes_in_flight()),
                ),
                (
                    "tasks_waiting",
                    "Ready steps waiting for a free worker slot.",
                    usize_gauge(self.scheduler.waiting()),
                ),
                (
                    "subscriptions",
                    "Topic subscriptions.",
                    usize_gauge(self.exchange.subscription_count()),
                ),
                (
                    "clients_tracked",
                    "Clients tracked by their heartbeats.",
                    usize_gauge(self.clients.len()),
                ),
                (
                    "plans_replayable",
                    "Final replies kept for plans sent again under their id.",
                    usize_gauge(self.replays.len()),
                ),
            ],
            topics: [topics.published, topics.delivered, topics.dropped],
            cache_counters: self.cache_counters(),
            cache_gauges,
            workers: self
                .scheduler
                .registry()
                .iter()
                .map(|(id, _)| id.to_string())
                .zip(status.workers)
                .collect(),
            cluster: cluster.cluster,
            members: cluster
                .members
                .into_iter()
                .map(|member| MemberFigures {
                    me: member.name == self.config.name
                        && member.endpoints.client == self.config.client_endpoint,
                    name: member.name,
                    state: member.state,
                    client: member.endpoints.client,
                    functions: member.functions.len(),
                })
                .collect(),
            functions: self.functions_reply(0).functions,
            histograms: [
                (
                    "plan_duration_seconds",
                    "Plans of local clients, from acceptance to the final reply.",
                    m.plan.clone(),
                ),
                (
                    "step_duration_seconds",
                    "Steps, from dispatch (to a worker or a peer) to their result.",
                    m.step.clone(),
                ),
                (
                    "step_queue_seconds",
                    "Ready steps, from ready to dispatched (waiting for a worker slot).",
                    m.queue.clone(),
                ),
                (
                    "worker_queue_seconds",
                    "Tasks in the workers' own queues, as the workers report it.",
                    m.worker_queue.clone(),
                ),
            ],
            errors: by_code(&m.errors),
            plans_failed: by_code(&m.plans_failed),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_accumulate() {
        let mut h = Histogram::default();
        for us in [0, 50, 51, 1_000, 59_999_999, 70_000_000] {
            h.observe_us(us);
        }
        assert_eq!(h.count, 6);
        assert_eq!(h.counts[0], 2, "0 and 50 are at most 50 us");
        assert_eq!(h.counts[1], 1, "51 us is in (50, 100]");
        assert_eq!(h.counts[4], 1, "1 ms");
        assert_eq!(h.counts[LATENCY_BOUNDS_US.len() - 1], 1, "just under 60 s");
        assert_eq!(h.counts[LATENCY_BOUNDS_US.len()], 1, "above every bound");
        let cumulative = h.cumulative_seconds();
        assert_eq!(cumulative.len(), LATENCY_BOUNDS_US.len() + 1);
        assert_eq!(cumulative[0], (50e-6, 2));
        assert_eq!(cumulative[1].1, 3);
        assert!(cumulative.windows(2).all(|w| w[0].1 <= w[1].1));
        assert_eq!(cumulative.last().unwrap(), &(f64::INFINITY, 6));
        assert_eq!(h.sum_us, 50 + 51 + 1_000 + 59_999_999 + 70_000_000);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_seconds(0.5), None);
        // 100 observations in (1 ms, 2.5 ms]: the median is halfway through the bucket.
        for _ in 0..100 {
            h.observe(Duration::from_micros(2_000));
        }
        let p50 = h.quantile_seconds(0.5).unwrap();
        assert!((p50 - 0.00175).abs() < 1e-9, "{p50}");
        let p100 = h.quantile_seconds(1.0).unwrap();
        assert!((p100 - 0.0025).abs() < 1e-9, "{p100}");
        // One outlier above every bound moves p100 to the last bound, not beyond.
        h.observe(Duration::from_secs(120));
        assert_eq!(h.quantile_seconds(1.0), Some(60.0));
    }
}
