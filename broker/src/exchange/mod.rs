//! The topic exchange: subscriptions, matching, retained backlog and delivery over the event
//! (XPUB) socket.
//!
//! A subscription is created on a client connection and becomes *active* when the broker's
//! XPUB sees a SUB subscribe to its token: from then on every matching message is sent as
//! `[token, VERSION, "message", body]` with a per-subscription sequence number. A full
//! subscriber pipe (XPUB_NODROP) makes the send fail: the message is dropped for that
//! subscriber only, counted, its sequence number skipped, and a `lagging` notice precedes the
//! next message it does receive. Nothing blocks the broker.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpreg_protocol::{Active, BatchItem, EventRef, Limits, Value};

mod delivery;

use delivery::{deliver, deliver_batch, MsgId};

use crate::fast_hash::FastMap;
use crate::ids::IdSource;
use crate::matcher::{Key, Matcher};
use crate::outbox::{EventSink, RoutingId};

/// Settings of the exchange.
#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    /// The event endpoint announced to subscribers.
    pub events_endpoint: String,
    /// Retained messages per topic (0: none).
    pub retain_count: usize,
    /// Retained messages older than this are forgotten (zero: no age limit).
    pub retain_age: Duration,
    /// Subscriptions per client connection.
    pub max_subscriptions_per_client: usize,
    /// A subscription whose SUB filter does not arrive within this is discarded.
    pub activation_timeout: Duration,
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        ExchangeConfig {
            events_endpoint: "tcp://127.0.0.1:7402".into(),
            retain_count: 0,
            retain_age: Duration::ZERO,
            max_subscriptions_per_client: 1000,
            activation_timeout: Duration::from_secs(10),
        }
    }
}

struct Subscription {
    token: String,
    client: RoutingId,
    /// The authenticated key (ZAP User-Id) of the connection that subscribed: only a SUB with
    /// the same identity may activate it. `None` without CURVE.
    owner: Option<String>,
    patterns: Vec<String>,
    backlog: bool,
    active: bool,
    /// SUB connections that asked for the token and have not left (see
    /// [`Exchange::on_subscription_frame`]).
    sub_pipes: u32,
    created: Instant,
    seq: u64,
    dropped_pending: u64,
    dropped_total: u64,
}

struct Retained {
    order: u64,
    id: Arc<str>,
    topic: Arc<str>,
    headers: Arc<BTreeMap<String, String>>,
    payload: Arc<Value>,
    at: Instant,
}

/// A batch matched but not yet delivered ([`Exchange::route_batch`]).
pub struct RoutedBatch {
    items: Vec<BatchItem>,
    ids: Vec<MsgId>,
    /// Each matching subscription and the indexes of its messages, in order.
    shares: Vec<(Key, Vec<usize>)>,
    matched: u64,
}

impl RoutedBatch {
    /// Copies routed to subscriptions, summed over the messages.
    pub fn matched(&self) -> u64 {
        self.matched
    }
}

/// Why a subscribe or unsubscribe was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeError {
    /// A pattern breaks the rules, or there are none or too many (601).
    InvalidPattern(String),
    /// The connection has too many subscriptions (406).
    TooMany(usize),
    /// No subscription with this token on this connection (602).
    Unknown,
}

/// Counters the broker reports in `status`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExchangeCounters {
    /// Messages published.
    pub published: u64,
    /// Copies delivered to subscribers.
    pub delivered: u64,
    /// Copies dropped because a subscriber's pipe was full.
    pub dropped: u64,
}

/// Tokens of subscriptions that ended on the SUB side, remembered so that the client's own
/// `unsubscribe` arriving afterwards is answered `unsubscribed` rather than `602` (both orders
/// of the two end the subscription cleanly). Bounded: the oldest is forgotten first.
const REMEMBERED_ENDINGS: usize = 4096;

/// The exchange state.
pub struct Exchange {
    config: ExchangeConfig,
    matcher: Matcher,
    subs: FastMap<Key, Subscription>,
    by_token: FastMap<String, Key>,
    per_client: FastMap<RoutingId, usize>,
    next_key: Key,
    retained: HashMap<Arc<str>, VecDeque<Retained>>,
    order: u64,
    scratch: Vec<Key>,
    counters: ExchangeCounters,
    /// Recently ended tokens and their client, oldest first ([`REMEMBERED_ENDINGS`]).
    ended: VecDeque<(String, RoutingId)>,
}

impl Exchange {
    /// An exchange with no subscriptions.
    pub fn new(config: ExchangeConfig) -> Exchange {
        Exchange {
            config,
            matcher: Matcher::new(),
            subs: FastMap::default(),
            by_token: FastMap::default(),
            per_client: FastMap::default(),
            next_key: 1,
            retained: HashMap::new(),
            order: 0,
            scratch: Vec::new(),
            counters: ExchangeCounters::default(),
            ended: VecDeque::new(),
        }
    }

    /// The event endpoint subscribers connect to.
    pub fn events_endpoint(&self) -> &str {
        &self.config.events_endpoint
    }

    /// Counters for `status`.
    pub fn counters(&self) -> ExchangeCounters {
        self.counters
    }

    /// Subscriptions (active and pending).
    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    /// The distinct patterns of the subscriptions (pending or active): what this broker's
    /// subscribers want from the rest of the cluster.
    pub fn patterns(&self) -> std::collections::BTreeSet<String> {
        self.subs
            .values()
            .flat_map(|s| s.patterns.iter().cloned())
            .collect()
    }

    /// Creates a pending subscription and returns its token.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        &mut self,
        ids: &mut IdSource,
        client: &RoutingId,
        owner: Option<&str>,
        patterns: Vec<String>,
        backlog: bool,
        limits: &Limits,
        now: Instant,
    ) -> Result<String, SubscribeError> {
        if patterns.is_empty() || patterns.len() > limits.max_patterns {
            return Err(SubscribeError::InvalidPattern(format!(
                "a subscription needs 1 to {} patterns, got {}",
                limits.max_patterns,
                patterns.len()
            )));
        }
        for p in &patterns {
            mpreg_protocol::topic::check_topic(p, limits)
                .map_err(|e| SubscribeError::InvalidPattern(format!("pattern {p:?}: {e}")))?;
        }
        let count = self.per_client.get(client).copied().unwrap_or(0);
        if count >= self.config.max_subscriptions_per_client {
            return Err(SubscribeError::TooMany(
                self.config.max_subscriptions_per_client,
            ));
        }
        let key = self.next_key;
        self.next_key += 1;
        // Random (80 bits), not the sequential message ids: a token is also the SUB filter,
        // and must not be guessable by other subscribers.
        let token = ids.token(now);
        for p in &patterns {
            self.matcher.insert(p, key);
        }
        *self.per_client.entry(client.clone()).or_default() += 1;
        self.by_token.insert(token.clone(), key);
        self.subs.insert(
            key,
            Subscription {
                token: token.clone(),
                client: client.clone(),
                owner: owner.map(str::to_owned),
                patterns,
                backlog,
                active: false,
                sub_pipes: 0,
                created: now,
                seq: 0,
                dropped_pending: 0,
                dropped_total: 0,
            },
        );
        Ok(token)
    }

    /// Ends a subscription on behalf of its client. A token whose SUB side already ended it
    /// (closed or unsubscribed first) is answered as ended too.
    pub fn unsubscribe(&mut self, client: &RoutingId, token: &str) -> Result<(), SubscribeError> {
        match self.by_token.get(token).and_then(|k| self.subs.get(k)) {
            Some(sub) if &sub.client == client => {
                self.remove(token);
                Ok(())
            }
            Some(_) => Err(SubscribeError::Unknown),
            None => match self
                .ended
                .iter()
                .position(|(t, c)| t == token && c == client)
            {
                Some(at) => {
                    self.ended.remove(at);
                    Ok(())
                }
                None => Err(SubscribeError::Unknown),
            },
        }
    }

    /// Ends every subscription of a client connection that went away; returns how many.
    pub fn drop_client(&mut self, client: &RoutingId) -> usize {
        if !self.per_client.contains_key(client) {
            return 0;
        }
        let mut tokens: Vec<String> = self
            .subs
            .values()
            .filter(|s| &s.client == client)
            .map(|s| s.token.clone())
            .collect();
        tokens.sort_unstable();
        for token in &tokens {
            self.remove(token);
        }
        self.ended.retain(|(_, c)| c != client);
        tokens.len()
    }

    fn remove(&mut self, token: &str) -> bool {
        let Some(key) = self.by_token.remove(token) else {
            return false;
        };
        let Some(sub) = self.subs.remove(&key) else {
            return false;
        };
        for p in &sub.patterns {
            self.matcher.remove(p, key);
        }
        if let Some(n) = self.per_client.get_mut(&sub.client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&sub.client);
            }
        }
        true
    }

    /// A frame from the XPUB: `0x01 token` (a SUB subscribed) or `0x00 token` (it left).
    /// `user` is the SUB connection's authenticated key (`None` without CURVE).
    ///
    /// A token belongs to the first SUB that activates it, in every mode: only that SUB gets
    /// the token's messages. A SUB filter that is not the token of a pending subscription of
    /// the same identity (a guess, an empty prefix, someone else's token, a token already
    /// active) is never applied: that SUB receives nothing for it. The XPUB does not say which
    /// SUB sent a frame, so the broker counts the SUBs holding each token and ends the
    /// subscription when the last one leaves (or, under CURVE, when its owner unsubscribes):
    /// a second SUB leaving cannot end someone else's subscription.
    pub fn on_subscription_frame(
        &mut self,
        out: &mut impl EventSink,
        frame: &[u8],
        user: Option<&str>,
        now: Instant,
    ) {
        let Some((&flag, token)) = frame.split_first() else {
            return;
        };
        let Ok(token) = std::str::from_utf8(token) else {
            return;
        };
        let Some(sub) = self.by_token.get(token).and_then(|k| self.subs.get_mut(k)) else {
            return;
        };
        let owned = sub.owner.as_deref() == user;
        match flag {
            1 => {
                sub.sub_pipes += 1;
                if owned && !sub.active {
                    out.accept_subscription(token.as_bytes());
                    self.activate(out, token, now);
                }
            }
            0 => {
                // Withdraws the filter from the SUB that sent this frame, if it had one.
                out.drop_subscription(token.as_bytes());
                sub.sub_pipes = sub.sub_pipes.saturating_sub(1);
                // Under CURVE `user` names the SUB of an explicit unsubscription; libzmq's own
                // frames for a SUB that disconnected carry none.
                let owner_left = sub.owner.is_some() && owned;
                if (sub.active && sub.sub_pipes == 0) || owner_left {
                    let client = sub.client.clone();
                    self.remove(token);
                    if self.ended.len() == REMEMBERED_ENDINGS {
                        self.ended.pop_front();
                    }
                    self.ended.push_back((token.to_string(), client));
                }
            }
            _ => {}
        }
    }

    fn activate(&mut self, out: &mut impl EventSink, token: &str, now: Instant) {
        let cutoff = self.retain_cutoff(now);
        let Some(&key) = self.by_token.get(token) else {
            return;
        };
        let Some(sub) = self.subs.get_mut(&key) else {
            return;
        };
        if sub.active {
            return;
        }
        sub.active = true;
        // The backlog: retained messages of every topic matching the patterns, in publish
        // order. The loop is single-threaded, so nothing is published in between: no gap and
        // no duplicate between the backlog and live messages.
        let mut backlog: Vec<&Retained> = Vec::new();
        if sub.backlog && !self.retained.is_empty() {
            let mut probe = Matcher::new();
            for p in &sub.patterns {
                probe.insert(p, 0);
            }
            let mut hit = Vec::new();
            for (topic, messages) in &self.retained {
                hit.clear();
                probe.matches(topic, &mut hit);
                if !hit.is_empty() {
                    backlog.extend(messages.iter().filter(|m| cutoff.is_none_or(|c| m.at >= c)));
                }
            }
            backlog.sort_by_key(|m| m.order);
        }
        let active = Active {
            sub: token.to_string(),
            backlog: backlog.len() as u64,
        };
        let _ = out.event(&EventRef::Active(&active));
        let mut delivered = 0;
        let mut dropped = 0;
        for m in backlog {
            match deliver(out, sub, &m.id, &m.topic, &m.headers, &m.payload, true) {
                true => delivered += 1,
                false => dropped += 1,
            }
        }
        self.counters.delivered += delivered;
        self.counters.dropped += dropped;
    }

    fn retain_cutoff(&self, now: Instant) -> Option<Instant> {
        if self.config.retain_age.is_zero() {
            None
        } else {
            now.checked_sub(self.config.retain_age)
        }
    }

    /// Routes a message to every active subscription with a matching pattern; returns the
    /// message id and the number of subscriptions it matched.
    pub fn publish(
        &mut self,
        out: &mut impl EventSink,
        ids: &mut IdSource,
        topic: &str,
        headers: BTreeMap<String, String>,
        payload: Value,
        now: Instant,
    ) -> (String, u64) {
        let id = ids.message(now).to_string();
        self.publish_as(out, id, topic, headers, payload, now)
    }

    /// Routes a message that already has its id (one published at a peer broker, delivered
    /// here to this broker's subscribers only, with the id its publisher's broker gave it).
    pub fn publish_as(
        &mut self,
        out: &mut impl EventSink,
        id: String,
        topic: &str,
        headers: BTreeMap<String, String>,
        payload: Value,
        now: Instant,
    ) -> (String, u64) {
        self.counters.published += 1;
        let mut keys = std::mem::take(&mut self.scratch);
        keys.clear();
        self.matcher.matches(topic, &mut keys);
        let mut matched = 0;
        for key in &keys {
            let Some(sub) = self.subs.get_mut(key) else {
                continue;
            };
            if !sub.active {
                continue;
            }
            matched += 1;
            if deliver(out, sub, &id, topic, &headers, &payload, false) {
                self.counters.delivered += 1;
            } else {
                self.counters.dropped += 1;
            }
        }
        self.scratch = keys;
        if self.config.retain_count > 0 {
            self.retain(&id, topic, headers, payload, now);
        }
        (id, matched)
    }

    /// Matches a batch, in order, against the active subscriptions and gives each message its
    /// id; [`Exchange::deliver_routed`] sends it. The two are split so that the publisher's
    /// answer (which carries [`RoutedBatch::matched`]) can go out before the copies are
    /// encoded. Deliver in the same turn: the match is only valid until the subscriptions
    /// change.
    pub fn route_batch(
        &mut self,
        ids_source: &mut IdSource,
        items: Vec<BatchItem>,
        now: Instant,
    ) -> RoutedBatch {
        let mut keys = std::mem::take(&mut self.scratch);
        let mut shares: Vec<(Key, Vec<usize>)> = Vec::new();
        // Where each subscription's share is in `shares` (a batch may match thousands).
        let mut slot: FastMap<Key, usize> = FastMap::default();
        let mut ids = Vec::with_capacity(items.len());
        let mut matched = 0;
        for (i, item) in items.iter().enumerate() {
            self.counters.published += 1;
            ids.push(MsgId(ids_source.message(now).0));
            keys.clear();
            self.matcher.matches(&item.topic, &mut keys);
            for key in &keys {
                if !self.subs.get(key).is_some_and(|s| s.active) {
                    continue;
                }
                matched += 1;
                let at = *slot.entry(*key).or_insert_with(|| {
                    shares.push((*key, Vec::new()));
                    shares.len() - 1
                });
                shares[at].1.push(i);
            }
        }
        self.scratch = keys;
        RoutedBatch {
            items,
            ids,
            shares,
            matched,
        }
    }

    /// Sends a routed batch: each subscription receives its share as one `messages` event
    /// (consecutive sequence numbers). Then retains the messages, when retaining.
    pub fn deliver_routed(&mut self, out: &mut impl EventSink, routed: RoutedBatch, now: Instant) {
        let RoutedBatch {
            items, ids, shares, ..
        } = routed;
        for (key, share) in shares {
            let Some(sub) = self.subs.get_mut(&key) else {
                continue;
            };
            let n = share.len() as u64;
            if deliver_batch(out, sub, &share, &items, &ids) {
                self.counters.delivered += n;
            } else {
                self.counters.dropped += n;
            }
        }
        if self.config.retain_count > 0 {
            for (item, id) in items.into_iter().zip(ids) {
                self.retain(
                    &id.to_string(),
                    &item.topic,
                    item.headers,
                    item.payload,
                    now,
                );
            }
        }
    }

    fn retain(
        &mut self,
        id: &str,
        topic: &str,
        headers: BTreeMap<String, String>,
        payload: Value,
        now: Instant,
    ) {
        self.order += 1;
        let cutoff = self.retain_cutoff(now);
        let topic: Arc<str> = Arc::from(topic);
        let queue = self.retained.entry(Arc::clone(&topic)).or_default();
        queue.push_back(Retained {
            order: self.order,
            id: Arc::from(id),
            topic,
            headers: Arc::new(headers),
            payload: Arc::new(payload),
            at: now,
        });
        while queue.len() > self.config.retain_count
            || queue
                .front()
                .is_some_and(|m| cutoff.is_some_and(|c| m.at < c))
        {
            queue.pop_front();
        }
    }

    /// Discards subscriptions never activated, and retained messages past their age.
    pub fn on_tick(&mut self, now: Instant) {
        let timeout = self.config.activation_timeout;
        let mut stale: Vec<String> = self
            .subs
            .values()
            .filter(|s| !s.active && now.saturating_duration_since(s.created) > timeout)
            .map(|s| s.token.clone())
            .collect();
        stale.sort_unstable();
        for token in stale {
            self.remove(&token);
        }
        if let Some(cutoff) = self.retain_cutoff(now) {
            self.retained.retain(|_, q| {
                while q.front().is_some_and(|m| m.at < cutoff) {
                    q.pop_front();
                }
                !q.is_empty()
            });
        }
    }
}
