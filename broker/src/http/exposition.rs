//! A [`MetricsSnapshot`] as Prometheus metrics, encoded by `prometheus-client` in the
//! Prometheus text format (version 0.0.4). Every name starts with `mpreg_`; docs/OPERATIONS.md
//! lists them all. The engine's counters are exported under their own names
//! (`mpreg_<counter>_total`, their documentation as help), except `plans_failed`, which is
//! split by error code.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use mpreg_protocol::peer::MemberState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::engine::metrics::{Histogram, LATENCY_BOUNDS_US};
use crate::engine::MetricsSnapshot;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The snapshot in the Prometheus text format.
pub fn encode(snapshot: &Arc<MetricsSnapshot>) -> Result<String, fmt::Error> {
    let mut registry = Registry::with_prefix("mpreg");
    registry.register_collector(Box::new(SnapshotCollector(Arc::clone(snapshot))));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

#[derive(Debug)]
struct SnapshotCollector(Arc<MetricsSnapshot>);

/// Labels of one series.
type Labels = Vec<(&'static str, String)>;

/// Writes metric families, each name once (a name seen before is skipped, so that a counter
/// added to the engine under a name used here cannot break the exposition).
struct Families<'a, 'e> {
    encoder: &'a mut DescriptorEncoder<'e>,
    seen: BTreeSet<String>,
}

impl Families<'_, '_> {
    fn first(&mut self, name: &str) -> bool {
        self.seen.insert(name.to_string())
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        if !self.first(name) {
            return Ok(());
        }
        let m = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value).encode(m)
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl EncodeGaugeValue) -> fmt::Result {
        if !self.first(name) {
            return Ok(());
        }
        let m = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(value).encode(m)
    }

    fn labeled(
        &mut self,
        kind: MetricType,
        name: &str,
        help: &str,
        rows: Vec<(Labels, u64)>,
    ) -> fmt::Result {
        if !self.first(name) {
            return Ok(());
        }
        let mut m = self.encoder.encode_descriptor(name, help, None, kind)?;
        for (labels, value) in rows {
            let family = m.encode_family(&labels)?;
            match kind {
                MetricType::Counter => ConstCounter::new(value).encode(family)?,
                _ => ConstGauge::new(value).encode(family)?,
            }
        }
        Ok(())
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> fmt::Result {
        if !self.first(name) {
            return Ok(());
        }
        let mut m = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        // Per-bucket counts: the encoder accumulates them.
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_US
            .iter()
            .map(|&b| b as f64 / 1e6)
            .chain([f64::INFINITY])
            .zip(h.counts.iter().copied())
            .collect();
        m.encode_histogram::<NoLabelSet>(h.sum_us as f64 / 1e6, h.count, &buckets, None)
    }
}

fn code_rows(rows: &[(u16, String, u64)]) -> Vec<(Labels, u64)> {
    rows.iter()
        .map(|(code, kind, n)| (vec![("code", code.to_string()), ("kind", kind.clone())], *n))
        .collect()
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let s = &self.0;
        let mut f = Families {
            encoder: &mut encoder,
            seen: BTreeSet::new(),
        };
        {
            let m = f.encoder.encode_descriptor(
                "build",
                "The broker's name and version (value 1).",
                None,
                MetricType::Info,
            )?;
            let mut m = m;
            m.encode_info(&vec![
                ("broker", s.broker.clone()),
                ("version", s.version.clone()),
                ("cluster", s.cluster.clone()),
            ])?;
        }
        f.gauge(
            "uptime_seconds",
            "Seconds since the broker started.",
            s.uptime.as_secs_f64(),
        )?;
        f.gauge(
            "shutting_down",
            "1 once the broker is shutting down (then /readyz answers 503).",
            u64::from(s.shutting_down),
        )?;
        f.labeled(
            MetricType::Counter,
            "plans_failed",
            "Plans of local clients that ended with an error after they were admitted, by error code.",
            code_rows(&s.plans_failed),
        )?;
        f.labeled(
            MetricType::Counter,
            "errors",
            "Every error message sent to a client, by error code.",
            code_rows(&s.errors),
        )?;
        for (name, help, value) in &s.counters {
            if *name == "plans_failed" {
                continue; // By code, above.
            }
            f.counter(name, help.trim(), *value)?;
        }
        let [published, delivered, dropped] = s.topics;
        f.counter(
            "topic_published",
            "Messages published (by clients, progress topics and peers).",
            published,
        )?;
        f.counter(
            "topic_delivered",
            "Messages delivered to subscriptions (one per matching subscription).",
            delivered,
        )?;
        f.counter(
            "topic_dropped",
            "Deliveries dropped because a subscriber's queue was full (it lags).",
            dropped,
        )?;
        for (name, help, value) in &s.gauges {
            f.gauge(name, help, *value)?;
        }
        let evictions: Vec<(Labels, u64)> = s
            .cache_counters
            .iter()
            .filter_map(|(name, v)| {
                let cause = name.strip_prefix("evictions_")?;
                Some((vec![("cause", cause.to_string())], *v))
            })
            .collect();
        if !evictions.is_empty() {
            f.labeled(
                MetricType::Counter,
                "cache_evictions",
                "Cache entries removed, by cause: capacity, ttl, invalidation.",
                evictions,
            )?;
        }
        for (name, value) in &s.cache_counters {
            if name.starts_with("evictions_") || name == "invalidations" {
                continue; // By cause above; invalidations is an engine counter.
            }
            let help = cache_help(name);
            f.counter(&format!("cache_{name}"), help, *value)?;
        }
        for (name, value) in &s.cache_gauges {
            let help = match name.as_str() {
                "entries" => "Results held in the cache.",
                "bytes" => "Bytes the cache's entries cost (their estimated resident size).",
                "flights" => "Identical calls in flight that others may wait on.",
                _ => "Steps waiting on an identical call in flight.",
            };
            f.gauge(&format!("cache_{name}"), help, *value)?;
        }
        f.gauge(
            "workers",
            "Workers registered with this broker.",
            s.workers.len() as u64,
        )?;
        let worker = |(id, w): &(String, mpreg_protocol::WorkerStatus)| -> Labels {
            vec![("worker", w.name.clone()), ("id", id.clone())]
        };
        f.labeled(
            MetricType::Gauge,
            "worker_capacity",
            "Tasks a worker may run at once (its share for this broker).",
            s.workers
                .iter()
                .map(|w| (worker(w), u64::from(w.1.capacity)))
                .collect(),
        )?;
        f.labeled(
            MetricType::Gauge,
            "worker_tasks",
            "Tasks a worker is running for this broker now (its load is this over its capacity).",
            s.workers
                .iter()
                .map(|w| (worker(w), u64::from(w.1.outstanding)))
                .collect(),
        )?;
        let states = [
            (MemberState::Alive, "alive"),
            (MemberState::Suspect, "suspect"),
            (MemberState::Dead, "dead"),
        ];
        f.labeled(
            MetricType::Gauge,
            "cluster_members",
            "Members of the cluster as this broker sees them (itself included), by state.",
            states
                .iter()
                .map(|(state, label)| {
                    let n = s.members.iter().filter(|m| m.state == *state).count();
                    (vec![("state", label.to_string())], n as u64)
                })
                .collect(),
        )?;
        f.gauge(
            "functions",
            "Functions the cluster's workers serve (this broker's catalogue).",
            s.functions.len() as u64,
        )?;
        for (name, help, h) in &s.histograms {
            f.histogram(name, help, h)?;
        }
        Ok(())
    }
}

fn cache_help(name: &str) -> &'static str {
    match name {
        "hits" => "Steps answered from the result cache.",
        "misses" => "Lookups of cacheable steps that found nothing.",
        "insertions" => "Results stored in the cache.",
        "too_large" => "Results not stored because they were over the entry limit.",
        "stale" => "Results computed across an invalidation, not stored.",
        "shared" => "Steps that waited on an identical call in flight and took its result.",
        "crowded" => "Identical calls that ran on their own (too many followers already).",
        _ => "A result cache counter (docs/OPERATIONS.md).",
    }
}
