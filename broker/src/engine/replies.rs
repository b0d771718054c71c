//! Replies to clients: status, errors, and delivery accounting.

use super::*;

impl Engine {
    pub(super) fn status(&self, id: u64, now: Instant) -> StatusReply {
        let limits = &self.config.limits;
        StatusReply {
            id,
            broker: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            workers: self
                .registry
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
            tasks_waiting: self.waiting_len as u64,
            counters: {
                let mut counters: BTreeMap<String, u64> = self
                    .counters
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect();
                let topics = self.exchange.counters();
                counters.insert("topic_published".into(), topics.published);
                counters.insert("topic_delivered".into(), topics.delivered);
                counters.insert("topic_dropped_hwm".into(), topics.dropped);
                counters
            },
            gauges: BTreeMap::from([
                (
                    "plan_bytes_in_flight".to_string(),
                    self.bytes_in_flight as u64,
                ),
                (
                    "subscriptions".to_string(),
                    self.exchange.subscription_count() as u64,
                ),
                ("clients_tracked".to_string(), self.clients.len() as u64),
            ]),
            limits: BTreeMap::from([
                (
                    "max_message_bytes".to_string(),
                    limits.max_message_bytes as u64,
                ),
                ("max_depth".to_string(), limits.max_depth as u64),
                ("max_steps".to_string(), limits.max_steps as u64),
                ("max_name_bytes".to_string(), limits.max_name_bytes as u64),
                ("max_locs".to_string(), limits.max_locs as u64),
                ("max_topic_bytes".to_string(), limits.max_topic_bytes as u64),
                ("max_topic_words".to_string(), limits.max_topic_words as u64),
                ("max_patterns".to_string(), limits.max_patterns as u64),
                (
                    "max_subscriptions_per_client".to_string(),
                    self.config.exchange.max_subscriptions_per_client as u64,
                ),
                (
                    "max_plans_per_client".to_string(),
                    self.config.max_plans_per_client as u64,
                ),
                (
                    "max_plans_in_flight".to_string(),
                    self.config.max_plans_in_flight as u64,
                ),
                (
                    "max_plan_bytes_in_flight".to_string(),
                    self.config.max_plan_bytes_in_flight as u64,
                ),
                (
                    "max_worker_capacity".to_string(),
                    u64::from(self.config.max_worker_capacity),
                ),
            ]),
        }
    }

    pub(super) fn reply_error(
        &mut self,
        out: &mut impl Outbox,
        client: &ClientAddr,
        reply: ErrorReply,
    ) {
        self.send_client(out, client, &BrokerToClient::Error(reply));
    }

    pub(super) fn send_client(
        &mut self,
        out: &mut impl Outbox,
        client: &ClientAddr,
        message: &BrokerToClient,
    ) {
        let mut body = message.encode_body();
        if body.len() > self.config.limits.max_message_bytes {
            // A reply the client would refuse: say so instead (results are not resent).
            let mut reply = ErrorReply::new(
                message.request_id(),
                ErrorCode::MessageTooLarge,
                format!(
                    "the {} reply of {} bytes exceeds the limit of {} bytes",
                    message.kind(),
                    body.len(),
                    self.config.limits.max_message_bytes
                ),
            );
            if let BrokerToClient::Error(original) = message {
                reply.step = original.step.clone();
            }
            body = encode_body(&reply);
            self.count("replies_too_large");
            return self.deliver(out, client, "error", &body);
        }
        self.deliver(out, client, message.kind(), &body);
    }

    pub(super) fn deliver(
        &mut self,
        out: &mut impl Outbox,
        client: &ClientAddr,
        kind: &str,
        body: &[u8],
    ) {
        match out.to_client(client, kind, body) {
            Delivery::Sent => {}
            Delivery::Full => self.count("client_replies_dropped_hwm"),
            Delivery::Gone => self.count("client_replies_undeliverable"),
        }
    }
}
