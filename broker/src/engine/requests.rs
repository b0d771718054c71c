//! The client edge: typed requests from client connections, and every reply to a client.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mpreg_protocol::{
    BrokerToClient, ClientToBroker, ErrorReply, PlanId, PlanRequest, PlanResult, Pong, Published,
    PublishedBatch, Subscribed, Unsubscribed,
};

use super::failure::Failure;
use super::{ClientOrigin, Engine};
use crate::exchange::SubscribeError;
use crate::outbox::{ClientAddr, Delivery, Outbox};
use crate::quote::quote;

impl Engine {
    /// A request from a client connection.
    pub fn on_client(
        &mut self,
        out: &mut impl Outbox,
        origin: ClientOrigin,
        request: ClientToBroker,
        now: Instant,
    ) {
        self.clients.heard(&origin.addr.routing, now);
        self.on_client_request(out, origin, request, now);
        self.publish_catalogue(out);
    }

    fn on_client_request(
        &mut self,
        out: &mut impl Outbox,
        origin: ClientOrigin,
        request: ClientToBroker,
        now: Instant,
    ) {
        let id = request.request_id();
        if let Some(denied) = self
            .access
            .as_ref()
            .and_then(|a| a.check(origin.user.as_deref(), &request))
        {
            self.counters.requests_denied += 1;
            return self.reply_error(out, &origin.addr, Some(id), Failure::AccessDenied(denied));
        }
        let client = &origin.addr;
        if matches!(
            request,
            ClientToBroker::Subscribe(_) | ClientToBroker::Unsubscribe(_)
        ) {
            self.catalogue_changed();
        }
        match request {
            ClientToBroker::Plan(plan) => self.start_plan(out, origin, plan, now),
            ClientToBroker::Cancel(cancel) => {
                if let Some(plan) = self.plans.find(&client.routing, cancel.id) {
                    self.counters.plans_cancelled += 1;
                    self.fail_plan(out, plan, Failure::Cancelled, now);
                    self.drain_ready(out, now);
                }
            }
            ClientToBroker::Ping(ping) => {
                let pong = BrokerToClient::Pong(Pong {
                    id: ping.id,
                    broker: self.config.name.clone(),
                    max_message_bytes: Some(self.config.limits.max_message_bytes as u64),
                });
                self.reply(out, client, &pong);
            }
            ClientToBroker::Heartbeat(beat) => self.clients.heartbeat(
                &client.routing,
                Duration::from_millis(beat.interval_ms),
                self.config.client_liveness,
                now,
            ),
            ClientToBroker::Cluster(request) => {
                let reply = BrokerToClient::Cluster(self.cluster_reply(request.id));
                self.reply(out, client, &reply);
            }
            ClientToBroker::Functions(request) => {
                let reply = BrokerToClient::Functions(self.functions_reply(request.id));
                self.reply(out, client, &reply);
            }
            ClientToBroker::CacheStats(request) => {
                let reply = self.cache_stats(request.id);
                self.reply(out, client, &reply);
            }
            ClientToBroker::CacheInvalidate(request) => {
                let client = client.clone();
                self.cache_invalidate(out, &client, request);
            }
            ClientToBroker::Status(status) => {
                let reply = BrokerToClient::Status(self.status(status.id, now));
                self.reply(out, client, &reply);
            }
            ClientToBroker::Subscribe(sub) => {
                let limits = self.config.limits;
                let reply = match self.exchange.subscribe(
                    &mut self.ids,
                    &client.routing,
                    origin.user.as_deref(),
                    sub.patterns,
                    sub.backlog,
                    &limits,
                    now,
                ) {
                    Ok(token) => BrokerToClient::Subscribed(Subscribed {
                        id: sub.id,
                        sub: token,
                        events: self.exchange.events_endpoint().to_string(),
                    }),
                    Err(e) => BrokerToClient::Error(subscribe_failure(e).into_reply(Some(sub.id))),
                };
                match reply {
                    BrokerToClient::Subscribed(ok) if sub.cluster_ack => {
                        self.subscribed_after_cluster_ack(out, client, ok, now);
                    }
                    reply => self.reply(out, client, &reply),
                }
            }
            ClientToBroker::Unsubscribe(unsub) => {
                let reply = match self.exchange.unsubscribe(&client.routing, &unsub.sub) {
                    Ok(()) => BrokerToClient::Unsubscribed(Unsubscribed {
                        id: unsub.id,
                        sub: unsub.sub,
                    }),
                    Err(e) => {
                        BrokerToClient::Error(subscribe_failure(e).into_reply(Some(unsub.id)))
                    }
                };
                self.reply(out, client, &reply);
            }
            ClientToBroker::PublishBatch(batch) => {
                for (i, item) in batch.messages.iter().enumerate() {
                    if let Err(reason) =
                        mpreg_protocol::topic::check_topic(&item.topic, &self.config.limits)
                    {
                        let failure = Failure::InvalidTopic {
                            field: format!("messages[{i}].topic"),
                            topic: quote(&item.topic),
                            reason,
                            whole_batch: true,
                        };
                        return self.reply_error(out, client, Some(batch.id), failure);
                    }
                }
                let count = batch.messages.len() as u64;
                let forwarded = self.peers.is_some()
                    && batch
                        .messages
                        .iter()
                        .any(|m| !self.interested_peers(&m.topic).is_empty());
                if forwarded {
                    // Peers want some of it: message by message, so each keeps one id across
                    // the cluster (local subscribers get `message` events, not `messages`).
                    let mut matched = 0;
                    for m in batch.messages {
                        matched += self
                            .publish_everywhere(out, &m.topic, m.headers, m.payload, now)
                            .1;
                    }
                    self.published_batch(out, client, batch.id, batch.confirm, count, matched);
                } else {
                    // The answer goes before the copies are encoded: the publisher can send
                    // its next batch meanwhile. Nothing runs in between, so what it says holds.
                    let routed = self
                        .exchange
                        .route_batch(&mut self.ids, batch.messages, now);
                    let matched = routed.matched();
                    self.published_batch(out, client, batch.id, batch.confirm, count, matched);
                    self.exchange.deliver_routed(out, routed, now);
                }
            }
            ClientToBroker::Publish(publish) => {
                if let Err(reason) =
                    mpreg_protocol::topic::check_topic(&publish.topic, &self.config.limits)
                {
                    let failure = Failure::InvalidTopic {
                        field: "topic".into(),
                        topic: quote(&publish.topic),
                        reason,
                        whole_batch: false,
                    };
                    return self.reply_error(out, client, Some(publish.id), failure);
                }
                let (msg, matched) = self.publish_everywhere(
                    out,
                    &publish.topic,
                    publish.headers,
                    publish.payload,
                    now,
                );
                if publish.confirm {
                    let reply = BrokerToClient::Published(Published {
                        id: publish.id,
                        msg,
                        matched,
                    });
                    self.reply(out, client, &reply);
                }
            }
        }
    }

    /// Publishes to this broker's subscribers, then hands the message to the peers whose
    /// subscribers want it; returns the message id and the local matches.
    pub(super) fn publish_everywhere(
        &mut self,
        out: &mut impl Outbox,
        topic: &str,
        headers: BTreeMap<String, String>,
        payload: mpreg_protocol::Value,
        now: Instant,
    ) -> (String, u64) {
        let peers = self.interested_peers(topic);
        if peers.is_empty() {
            return self
                .exchange
                .publish(out, &mut self.ids, topic, headers, payload, now);
        }
        let (h, p) = (headers.clone(), payload.clone());
        let (id, matched) = self
            .exchange
            .publish(out, &mut self.ids, topic, headers, payload, now);
        self.forward_publish(out, &peers, &id, topic, &h, &p);
        (id, matched)
    }

    /// A client message that could not be read: `id` when it could be read from the body.
    pub fn on_client_malformed(
        &mut self,
        out: &mut impl Outbox,
        client: &ClientAddr,
        id: Option<u64>,
        failure: Failure,
        now: Instant,
    ) {
        self.clients.heard(&client.routing, now);
        self.counters.malformed_messages += 1;
        self.reply_error(out, client, id, failure);
    }

    fn start_plan(
        &mut self,
        out: &mut impl Outbox,
        origin: ClientOrigin,
        request: PlanRequest,
        now: Instant,
    ) {
        self.counters.plans_received += 1;
        let request_id = request.id;
        let client = origin.addr;
        if let Some(plan) = request.plan {
            // Sent again under its own id (a reconnection, a failover): never run twice here.
            if self
                .plans
                .retarget(plan, client.clone(), origin.user.as_deref(), request_id)
            {
                self.counters.plans_resumed += 1;
                return;
            }
            if let Some(reply) = self.replays.get(plan, origin.user.as_deref(), now).cloned() {
                self.counters.plans_resumed += 1;
                let reply = with_request_id(reply, request_id);
                return self.reply(out, &client, &reply);
            }
        }
        let plan = request.plan.unwrap_or_else(|| self.ids.plan(now));
        let refused = |failure: Failure| {
            let mut reply = failure.into_reply(Some(request_id));
            reply.plan = Some(plan);
            reply
        };
        if self.shutdown_deadline.is_some() {
            return self.send_error(out, &client, refused(Failure::ShuttingDown));
        }
        // Quotas count per key under CURVE (more connections buy nothing), else per connection.
        let quota = match &origin.user {
            Some(key) => key.as_bytes().to_vec(),
            None => client.routing.clone(),
        };
        let admitted = self.plans.admit(
            plan,
            client.clone(),
            quota,
            origin.bytes,
            request,
            &self.config.limits,
            now,
            &mut self.ready,
        );
        match admitted {
            Ok(true) => {
                slog::debug!(self.log, "plan started"; "plan" => %plan, "request" => request_id);
                self.drain_ready(out, now);
            }
            Ok(false) => {
                self.counters.plans_completed += 1;
                let result = BrokerToClient::Result(PlanResult {
                    id: request_id,
                    plan: Some(plan),
                    results: BTreeMap::new(),
                    trace: None,
                });
                self.reply(out, &client, &result);
            }
            Err(failure) => {
                match &failure {
                    Failure::TooManyPlans { .. } => self.counters.plans_refused_quota += 1,
                    Failure::Overloaded { .. } => self.counters.plans_refused_bytes += 1,
                    Failure::InvalidPlan(_) => self.counters.plans_rejected += 1,
                    _ => {}
                }
                self.send_error(out, &client, refused(failure));
            }
        }
    }

    /// Sends `failure` as the `error` answering request `id`.
    pub(super) fn reply_error(
        &mut self,
        out: &mut impl Outbox,
        client: &ClientAddr,
        id: Option<u64>,
        failure: Failure,
    ) {
        self.send_error(out, client, failure.into_reply(id));
    }

    pub(super) fn send_error(&mut self, out: &mut impl Outbox, client: &ClientAddr, e: ErrorReply) {
        self.reply(out, client, &BrokerToClient::Error(e));
    }

    /// Answers a `publish_batch` with `published_batch`, when it asked for one.
    fn published_batch(
        &mut self,
        out: &mut impl Outbox,
        client: &ClientAddr,
        id: u64,
        confirm: bool,
        count: u64,
        matched: u64,
    ) {
        if confirm {
            let reply = BrokerToClient::PublishedBatch(PublishedBatch { id, count, matched });
            self.reply(out, client, &reply);
        }
    }

    /// Sends a reply, accounting for what happened to it. A reply that would exceed the
    /// message limit is replaced by a `104 message_too_large` error (results are not resent).
    pub(super) fn reply(
        &mut self,
        out: &mut impl Outbox,
        client: &ClientAddr,
        message: &BrokerToClient,
    ) {
        if let BrokerToClient::Error(e) = message {
            self.count_error(e.code);
        }
        match out.reply(client, message) {
            Delivery::Sent => {}
            Delivery::Full => self.counters.client_replies_dropped_hwm += 1,
            Delivery::Gone => self.counters.client_replies_undeliverable += 1,
            Delivery::TooLarge(bytes) => {
                self.counters.replies_too_large += 1;
                let step = match message {
                    BrokerToClient::Error(original) => original.step.clone(),
                    _ => None,
                };
                let mut reply = Failure::ReplyTooLarge {
                    kind: message.kind(),
                    bytes,
                    limit: self.config.limits.max_message_bytes,
                    step,
                }
                .into_reply(message.request_id());
                reply.plan = plan_of(message);
                let replacement = BrokerToClient::Error(reply);
                match out.reply(client, &replacement) {
                    Delivery::Sent => {}
                    Delivery::Full => self.counters.client_replies_dropped_hwm += 1,
                    _ => self.counters.client_replies_undeliverable += 1,
                }
            }
        }
    }
}

/// A kept final reply, answering the request id of the plan's new submission.
fn with_request_id(reply: BrokerToClient, id: u64) -> BrokerToClient {
    match reply {
        BrokerToClient::Result(mut r) => {
            r.id = id;
            BrokerToClient::Result(r)
        }
        BrokerToClient::Error(mut e) => {
            e.id = Some(id);
            BrokerToClient::Error(e)
        }
        other => other,
    }
}

/// The plan id a reply carries, if any.
fn plan_of(message: &BrokerToClient) -> Option<PlanId> {
    match message {
        BrokerToClient::Result(r) => r.plan,
        BrokerToClient::Error(e) => e.plan,
        _ => None,
    }
}

fn subscribe_failure(e: SubscribeError) -> Failure {
    match e {
        SubscribeError::InvalidPattern(m) => Failure::InvalidPattern(m),
        SubscribeError::TooMany(n) => Failure::TooManySubscriptions(n),
        SubscribeError::Unknown => Failure::UnknownSubscription,
    }
}
