//! The `status` reply: workers, counters, gauges and limits.

use std::collections::BTreeMap;
use std::time::Instant;

use mpreg_protocol::{StatusReply, WorkerStatus};

use super::Engine;

impl Engine {
    pub(super) fn status(&self, id: u64, now: Instant) -> StatusReply {
        let limits = &self.config.limits;
        let mut counters: BTreeMap<String, u64> = self
            .counters
            .entries()
            .filter(|&(_, v)| v > 0)
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let topics = self.exchange.counters();
        counters.insert("topic_published".into(), topics.published);
        counters.insert("topic_delivered".into(), topics.delivered);
        counters.insert("topic_dropped_hwm".into(), topics.dropped);
        for (name, value) in self.cache_counters() {
            counters.insert(format!("cache_{name}"), value);
        }
        let mut gauges = BTreeMap::from([
            (
                "plan_bytes_in_flight".to_string(),
                self.plans.bytes_in_flight() as u64,
            ),
            (
                "subscriptions".to_string(),
                self.exchange.subscription_count() as u64,
            ),
            ("clients_tracked".to_string(), self.clients.len() as u64),
            ("plans_replayable".to_string(), self.replays.len() as u64),
        ]);
        if self.cache.is_some() {
            for name in ["entries", "bytes", "flights"] {
                gauges.insert(format!("cache_{name}"), self.cache_gauge(name));
            }
        }
        let as_u64 = |n: usize| n as u64;
        let limits = BTreeMap::from([
            ("max_message_bytes", as_u64(limits.max_message_bytes)),
            ("max_depth", as_u64(limits.max_depth)),
            ("max_steps", as_u64(limits.max_steps)),
            ("max_name_bytes", as_u64(limits.max_name_bytes)),
            ("max_locs", as_u64(limits.max_locs)),
            ("max_topic_bytes", as_u64(limits.max_topic_bytes)),
            ("max_topic_words", as_u64(limits.max_topic_words)),
            ("max_patterns", as_u64(limits.max_patterns)),
            (
                "max_subscriptions_per_client",
                as_u64(self.config.exchange.max_subscriptions_per_client),
            ),
            (
                "max_plans_per_client",
                as_u64(self.config.max_plans_per_client),
            ),
            (
                "max_plans_in_flight",
                as_u64(self.config.max_plans_in_flight),
            ),
            (
                "max_plan_bytes_in_flight",
                as_u64(self.config.max_plan_bytes_in_flight),
            ),
            (
                "max_worker_capacity",
                u64::from(self.config.max_worker_capacity),
            ),
        ])
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        StatusReply {
            id,
            broker: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            workers: self
                .scheduler
                .registry()
                .iter()
                .map(|(_, w)| {
                    let mut resources: Vec<String> = w.resources.iter().cloned().collect();
                    resources.sort();
                    WorkerStatus {
                        name: w.name.clone(),
                        functions: w.functions.clone(),
                        resources,
                        capacity: w.capacity,
                        outstanding: w.tasks.len() as u32,
                        draining: w.draining,
                    }
                })
                .collect(),
            plans_in_flight: self.plans.len() as u64,
            tasks_waiting: self.scheduler.waiting() as u64,
            counters,
            gauges,
            limits,
        }
    }
}
