//! Broker configuration: the embedded defaults (`config/default.toml`), then an optional file,
//! then `MPREG_BROKER_*` environment variables, then command-line flags.

use std::net::SocketAddr;
use std::time::Duration;

use mpreg_process::http::HttpSetting;
use mpreg_protocol::Limits;
use serde::Deserialize;

use crate::engine::EngineConfig;

/// The defaults, documented key by key.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Everything the broker can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Name reported to peers; empty means `broker-<pid>`.
    pub name: String,
    /// Client ROUTER endpoint.
    pub client_endpoint: String,
    /// Worker ROUTER endpoint.
    pub worker_endpoint: String,
    /// Event XPUB endpoint.
    pub event_endpoint: String,
    /// Event endpoint announced to subscribers (empty: the bound one).
    pub advertise_event_endpoint: String,
    /// HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, the dashboard): `auto` (the client
    /// port + 5 on loopback), `off`, or `host:port`.
    pub http_endpoint: String,
    /// Heartbeat interval, milliseconds.
    pub heartbeat_ms: u64,
    /// Missed intervals before a worker expires.
    pub liveness: u32,
    /// Missed client heartbeat intervals before a client's plans are cancelled.
    pub client_liveness: u32,
    /// Default plan deadline, milliseconds.
    pub default_deadline_ms: u64,
    /// Longest plan deadline, milliseconds.
    pub max_deadline_ms: u64,
    /// Default re-dispatches of a step whose worker died.
    pub max_retries: u32,
    /// Plans in flight in total.
    pub max_plans_in_flight: usize,
    /// Plans in flight per client connection (per key with CURVE).
    pub max_plans_per_client: usize,
    /// Bytes held for plans in flight, in total.
    pub max_plan_bytes_in_flight: usize,
    /// Grace period for plans in flight at shutdown, milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Log level.
    pub log_level: String,
    /// Size limits (`[limits]`).
    pub limits: Limits,
    /// Socket settings.
    pub socket: SocketConfig,
    /// Topic exchange settings.
    pub topics: TopicsConfig,
    /// CURVE, access rules, protected mode.
    pub security: SecurityConfig,
    /// Membership of a cluster of brokers.
    pub cluster: ClusterSettings,
    /// The result cache (`[cache]`).
    pub cache: crate::cache::CacheConfig,
}

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// The cluster's name.
    pub name: String,
    /// Peer ROUTER endpoint; empty: not in a cluster.
    pub peer_endpoint: String,
    /// Gossip PUB endpoint.
    pub gossip_endpoint: String,
    /// Seed peer endpoints.
    pub peers: Vec<String>,
    /// SWIM probe period, milliseconds.
    pub probe_interval_ms: u64,
    /// SWIM direct probe timeout, milliseconds.
    pub probe_timeout_ms: u64,
    /// SWIM suspicion timeout, milliseconds.
    pub suspicion_timeout_ms: u64,
    /// Digest period, milliseconds.
    pub digest_interval_ms: u64,
    /// Longest wait of a `subscribe` with `cluster_ack` for each peer's acknowledgement,
    /// milliseconds.
    pub ack_timeout_ms: u64,
}

/// `[security]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// The broker's key-pair file; empty: no CURVE.
    pub key_file: String,
    /// The access file (client and worker keys, rules).
    pub access_file: String,
    /// Allow non-loopback endpoints without CURVE.
    pub insecure: bool,
    /// Largest capacity a worker may declare.
    pub max_worker_capacity: u32,
}

/// `[topics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Retained messages per topic.
    pub retain_count: usize,
    /// Oldest retained message, milliseconds (0: no limit).
    pub retain_ms: u64,
    /// Subscriptions per client connection.
    pub max_subscriptions_per_client: usize,
    /// Activation timeout, milliseconds.
    pub activation_timeout_ms: u64,
}

/// `[socket]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketConfig {
    /// High-water mark per peer.
    pub hwm: i32,
    /// ZMTP handshake timeout, milliseconds.
    pub handshake_timeout_ms: i32,
    /// Listen backlog of the bound sockets.
    pub backlog: i32,
    /// High-water mark per subscriber on the event socket.
    pub event_hwm: i32,
    /// How long the sockets keep sending what is queued when the broker exits, milliseconds.
    pub close_linger_ms: u64,
}

/// The command-line flags, each declared once: clap reads the flag, serde names the
/// configuration key it overrides (flags not given leave the lower layers alone). The same
/// key is read from the environment by the configuration layers (`--heartbeat-ms` is
/// `heartbeat_ms`, so `MPREG_..._HEARTBEAT_MS`), which report a bad value by its key. Flags not given
/// leave the lower layers alone.
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize)]
pub struct Flags {
    /// Broker name reported to clients, workers and peers.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Client endpoint to bind, e.g. tcp://127.0.0.1:7400 (`*` port: the OS chooses).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_endpoint: Option<String>,
    /// Worker endpoint to bind, e.g. tcp://127.0.0.1:7401.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_endpoint: Option<String>,
    /// Event (topic delivery) endpoint to bind, e.g. tcp://127.0.0.1:7402.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_endpoint: Option<String>,
    /// HTTP endpoint for /metrics, /healthz, /readyz and the dashboard: auto (the client port
    /// + 5 on loopback; an OS-chosen port when the client port is), off, or host:port.
    #[arg(long, value_name = "auto|off|HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_endpoint: Option<String>,
    /// Heartbeat interval to workers, milliseconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
    /// Log level (critical, error, warning, info, debug, trace).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Allow binding non-loopback endpoints without CURVE keys (anyone who can reach them may
    /// run anything; a warning is logged).
    #[arg(long)]
    #[serde(
        rename = "security.insecure",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub insecure: bool,
    /// A seed broker of the cluster to join, by its peer endpoint (repeatable).
    #[arg(long = "peer")]
    #[serde(rename = "cluster.peers", skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// Peer endpoint to bind (joins this broker to a cluster), e.g. tcp://127.0.0.1:7403.
    #[arg(long)]
    #[serde(
        rename = "cluster.peer_endpoint",
        skip_serializing_if = "Option::is_none"
    )]
    pub peer_endpoint: Option<String>,
    /// Gossip endpoint to bind, e.g. tcp://127.0.0.1:7404.
    #[arg(long)]
    #[serde(
        rename = "cluster.gossip_endpoint",
        skip_serializing_if = "Option::is_none"
    )]
    pub gossip_endpoint: Option<String>,
    /// The cluster's name (brokers of another cluster are refused).
    #[arg(long = "cluster")]
    #[serde(rename = "cluster.name", skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Run without the result cache.
    #[arg(long)]
    #[serde(
        rename = "cache.enabled",
        serialize_with = "not",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub no_cache: bool,
    /// Bytes the result cache may hold.
    #[arg(long)]
    #[serde(rename = "cache.max_bytes", skip_serializing_if = "Option::is_none")]
    pub cache_max_bytes: Option<usize>,
    /// Share cached results across the cluster: each key has one owner broker (turn it on on
    /// every broker of the cluster).
    #[arg(long)]
    #[serde(
        rename = "cache.cluster_tier",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub cache_cluster_tier: bool,
    /// The result cache's eviction policy: lru or s4lru.
    #[arg(long)]
    #[serde(rename = "cache.policy", skip_serializing_if = "Option::is_none")]
    pub cache_policy: Option<String>,
}

/// Serializes a `--no-...` flag as the setting it turns off.
fn not<S: serde::Serializer>(flag: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bool(!flag)
}

impl BrokerConfig {
    /// Loads the layers: defaults, `file` (optional), `env` (usually `std::env::vars()`;
    /// only `MPREG_BROKER_*` is read), then `flags`; then validates.
    pub fn load(
        file: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Flags,
    ) -> Result<BrokerConfig, config::ConfigError> {
        let layers = mpreg_process::layers::Layers {
            defaults: DEFAULT_TOML,
            file,
            prefix: "MPREG_BROKER",
            lists: &["cluster.peers"],
            flags,
        };
        // `MPREG_BROKER_CONFIG` names the file; it is not a setting.
        let env = env.into_iter().filter(|(k, _)| k != "MPREG_BROKER_CONFIG");
        let mut config: BrokerConfig = mpreg_process::layers::load(&layers, env)?;
        if config.name.is_empty() {
            config.name = format!("broker-{}", std::process::id());
        }
        config.validate().map_err(config::ConfigError::Message)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        for (key, endpoint) in self.endpoints() {
            mpreg_transport::endpoint::validate(endpoint)
                .map_err(|e| format!("configuration `{key}`: {e}"))?;
        }
        if self.clustered() {
            if self.cluster.gossip_endpoint.is_empty() {
                return Err(
                    "configuration `cluster.gossip_endpoint` is needed with `cluster.peer_endpoint`"
                        .into(),
                );
            }
            for (i, seed) in self.cluster.peers.iter().enumerate() {
                mpreg_transport::endpoint::validate(seed)
                    .map_err(|e| format!("configuration `cluster.peers[{i}]`: {e}"))?;
            }
            if self.cluster.name.is_empty() {
                return Err("configuration `cluster.name` must not be empty".into());
            }
        } else if !self.cluster.gossip_endpoint.is_empty() || !self.cluster.peers.is_empty() {
            return Err(
                "configuration `cluster.peer_endpoint` is needed to join a cluster (with `cluster.gossip_endpoint`)".into(),
            );
        }
        if !self.advertise_event_endpoint.is_empty() {
            mpreg_transport::endpoint::validate(&self.advertise_event_endpoint)
                .map_err(|e| format!("configuration `advertise_event_endpoint`: {e}"))?;
        }
        let http = HttpSetting::parse(&self.http_endpoint)
            .map_err(|e| format!("configuration `http_endpoint`: {e}"))?;
        if let HttpSetting::At(addr) = http {
            if !addr.ip().is_loopback() && !self.curve() && !self.security.insecure {
                return Err(format!(
                    "protected mode: `http_endpoint` = {addr} is reachable from other hosts, but the broker has no CURVE keys (`security.key_file`); bind loopback, configure CURVE, or pass --insecure"
                ));
            }
        }
        mpreg_process::logging::check_level("log_level", &self.log_level)?;
        self.cache
            .validate()
            .map_err(|e| format!("configuration: {e}"))?;
        check_limits(&self.limits)?;
        check_cluster(&self.cluster)?;
        let positive = [
            ("heartbeat_ms", self.heartbeat_ms as usize),
            ("liveness", self.liveness as usize),
            ("client_liveness", self.client_liveness as usize),
            ("default_deadline_ms", self.default_deadline_ms as usize),
            ("max_plans_in_flight", self.max_plans_in_flight),
            ("max_plans_per_client", self.max_plans_per_client),
            ("max_plan_bytes_in_flight", self.max_plan_bytes_in_flight),
            ("socket.hwm", self.socket.hwm.max(0) as usize),
            ("socket.backlog", self.socket.backlog.max(0) as usize),
            (
                "topics.max_subscriptions_per_client",
                self.topics.max_subscriptions_per_client,
            ),
            (
                "topics.activation_timeout_ms",
                self.topics.activation_timeout_ms as usize,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("configuration `{key}` must be greater than 0"));
            }
        }
        if self.default_deadline_ms > self.max_deadline_ms {
            return Err("configuration `default_deadline_ms` exceeds `max_deadline_ms`".into());
        }
        if self.security.max_worker_capacity == 0 {
            return Err(
                "configuration `security.max_worker_capacity` must be greater than 0".into(),
            );
        }
        match (self.curve(), self.security.access_file.is_empty()) {
            (true, true) => {
                return Err(
                    "`security.key_file` is set but `security.access_file` is not: a CURVE broker needs the list of keys it lets in".into(),
                )
            }
            (false, false) => {
                return Err("`security.access_file` needs `security.key_file` (CURVE)".into())
            }
            _ => {}
        }
        if !self.curve() && !self.security.insecure {
            for (key, endpoint) in self.endpoints() {
                if !mpreg_transport::endpoint::is_local_only(endpoint) {
                    return Err(format!(
                        "protected mode: `{key}` = {endpoint} is reachable from other hosts, but the broker has no CURVE keys (`security.key_file`); bind loopback, configure CURVE, or pass --insecure"
                    ));
                }
            }
        }
        Ok(())
    }

    /// True when the broker runs CURVE.
    pub fn curve(&self) -> bool {
        !self.security.key_file.is_empty()
    }

    /// True when the broker binds non-loopback endpoints without CURVE (allowed by
    /// `insecure`; the binary logs a warning).
    pub fn exposed_without_curve(&self) -> bool {
        !self.curve()
            && self
                .endpoints()
                .iter()
                .any(|(_, e)| !mpreg_transport::endpoint::is_local_only(e))
    }

    /// Where the HTTP endpoint listens, with the client endpoint actually bound: `None` when
    /// it is off; the flag says whether the address was configured (`true`) or derived from
    /// the client endpoint (`auto`: the client port + 5 on the client's loopback host, or
    /// 127.0.0.1; port 0 when the client port is OS-chosen or the client endpoint is not TCP).
    pub fn http_addr(&self, bound_client: &str) -> Result<Option<(SocketAddr, bool)>, String> {
        match HttpSetting::parse(&self.http_endpoint)? {
            HttpSetting::Off => Ok(None),
            HttpSetting::At(addr) => Ok(Some((addr, true))),
            HttpSetting::Auto => {
                let loopback = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), 0);
                let Some((host, port)) = bound_client
                    .strip_prefix("tcp://")
                    .and_then(|rest| rest.rsplit_once(':'))
                else {
                    return Ok(Some((loopback, false)));
                };
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let ip = match host.parse::<std::net::IpAddr>() {
                    Ok(ip) if ip.is_loopback() => ip,
                    _ => loopback.ip(),
                };
                let port = match (self.client_endpoint.ends_with(":*"), port.parse::<u16>()) {
                    (false, Ok(port)) => port.checked_add(HTTP_PORT_OFFSET).ok_or_else(|| {
                        format!("`http_endpoint` = auto: the client port {port} + {HTTP_PORT_OFFSET} is not a port; set `http_endpoint`")
                    })?,
                    _ => 0,
                };
                Ok(Some((SocketAddr::new(ip, port), false)))
            }
        }
    }

    /// True when this broker joins (or can be joined by) a cluster.
    pub fn clustered(&self) -> bool {
        !self.cluster.peer_endpoint.is_empty()
    }

    fn endpoints(&self) -> Vec<(&'static str, &str)> {
        let mut all = vec![
            ("client_endpoint", self.client_endpoint.as_str()),
            ("worker_endpoint", self.worker_endpoint.as_str()),
            ("event_endpoint", self.event_endpoint.as_str()),
        ];
        if self.clustered() {
            all.push(("cluster.peer_endpoint", &self.cluster.peer_endpoint));
            all.push(("cluster.gossip_endpoint", &self.cluster.gossip_endpoint));
        }
        all
    }

    /// The failure detector's timing.
    pub fn swim(&self) -> crate::cluster::membership::SwimConfig {
        crate::cluster::membership::SwimConfig {
            probe_interval: Duration::from_millis(self.cluster.probe_interval_ms),
            probe_timeout: Duration::from_millis(self.cluster.probe_timeout_ms),
            suspicion_timeout: Duration::from_millis(self.cluster.suspicion_timeout_ms),
            ..crate::cluster::membership::SwimConfig::default()
        }
    }

    /// The protocol limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The engine's part.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            name: self.name.clone(),
            client_endpoint: self.client_endpoint.clone(),
            worker_endpoint: self.worker_endpoint.clone(),
            limits: self.limits(),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            liveness: self.liveness,
            default_deadline: Duration::from_millis(self.default_deadline_ms),
            max_deadline: Duration::from_millis(self.max_deadline_ms),
            max_retries: self.max_retries,
            max_plans_in_flight: self.max_plans_in_flight,
            max_plans_per_client: self.max_plans_per_client,
            max_plan_bytes_in_flight: self.max_plan_bytes_in_flight,
            exchange: crate::exchange::ExchangeConfig {
                events_endpoint: self.advertise_event_endpoint.clone(),
                retain_count: self.topics.retain_count,
                retain_age: Duration::from_millis(self.topics.retain_ms),
                max_subscriptions_per_client: self.topics.max_subscriptions_per_client,
                activation_timeout: Duration::from_millis(self.topics.activation_timeout_ms),
            },
            max_worker_capacity: self.security.max_worker_capacity,
            client_liveness: self.client_liveness,
            cluster: None,
            cache: self.cache.enabled.then(|| self.cache.clone()),
        }
    }
}

/// `http_endpoint = "auto"` listens on the client port plus this (7405 for the default broker).
pub const HTTP_PORT_OFFSET: u16 = 5;

/// Smallest `max_message_bytes` accepted: a smaller one could not carry an error reply.
pub const MIN_MESSAGE_BYTES: usize = 4096;
/// Smallest `max_depth` accepted: a plan's step arguments already sit four levels deep.
pub const MIN_DEPTH: usize = 8;

/// The failure detector's timings must make sense together: a probe must be able to time out
/// (and its indirect probes run) within its period, and every period be positive.
fn check_cluster(c: &ClusterSettings) -> Result<(), String> {
    for (key, value) in [
        ("cluster.probe_interval_ms", c.probe_interval_ms),
        ("cluster.probe_timeout_ms", c.probe_timeout_ms),
        ("cluster.suspicion_timeout_ms", c.suspicion_timeout_ms),
        ("cluster.digest_interval_ms", c.digest_interval_ms),
        ("cluster.ack_timeout_ms", c.ack_timeout_ms),
    ] {
        if value == 0 {
            return Err(format!("configuration `{key}` must be greater than 0"));
        }
    }
    if c.probe_timeout_ms >= c.probe_interval_ms {
        return Err(format!(
            "configuration `cluster.probe_timeout_ms` ({}) must be shorter than `cluster.probe_interval_ms` ({}): a probe times out, then its indirect probes run, within one period",
            c.probe_timeout_ms, c.probe_interval_ms
        ));
    }
    Ok(())
}

/// Checks `[limits]`: each must leave room for the messages the protocol itself needs.
fn check_limits(limits: &Limits) -> Result<(), String> {
    let at_least = [
        (
            "limits.max_message_bytes",
            limits.max_message_bytes,
            MIN_MESSAGE_BYTES,
        ),
        ("limits.max_depth", limits.max_depth, MIN_DEPTH),
        ("limits.max_steps", limits.max_steps, 1),
        ("limits.max_name_bytes", limits.max_name_bytes, 1),
        ("limits.max_locs", limits.max_locs, 1),
        ("limits.max_topic_bytes", limits.max_topic_bytes, 1),
        ("limits.max_topic_words", limits.max_topic_words, 1),
        ("limits.max_patterns", limits.max_patterns, 1),
    ];
    for (key, value, min) in at_least {
        if value < min {
            return Err(format!(
                "configuration `{key}` = {value} is too small: at least {min}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
