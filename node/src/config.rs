//! Node configuration: embedded defaults (`config/default.toml`), an optional file,
//! `MPREG_NODE_*` environment variables, then flags.

use serde::Deserialize;

/// The defaults, documented key by key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Everything the node binary can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Name; empty means `node-<pid>`.
    pub name: String,
    /// Broker worker endpoints.
    pub brokers: Vec<String>,
    /// Resources held.
    pub resources: Vec<String>,
    /// Tasks at once.
    pub capacity: u32,
    /// Drain time at shutdown, milliseconds.
    pub drain_timeout_ms: u64,
    /// Log level.
    pub log_level: String,
    /// The brokers' CURVE public key (Z85 or a file); empty: no CURVE.
    pub server_key: String,
    /// This node's CURVE key-pair file.
    pub key_file: String,
    /// Versions of the built-in functions, by name (`echo = "1.2.0"`).
    pub versions: std::collections::BTreeMap<String, String>,
    /// HTTP endpoint (`/metrics`, `/healthz`, `/readyz`): `auto` (127.0.0.1, an OS-chosen
    /// port), `off`, or `host:port`.
    pub http_endpoint: String,
}

/// The command-line flags, each declared once: clap reads the flag, serde names the
/// configuration key it overrides (flags not given leave the lower layers alone). The same
/// key is read from the environment by the configuration layers (`--heartbeat-ms` is
/// `heartbeat_ms`, so `MPREG_..._HEARTBEAT_MS`), which report a bad value by its key.
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize)]
pub struct Flags {
    /// Node name shown by brokers.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A broker's worker endpoint (repeat for several brokers; MPREG_NODE_BROKERS takes a
    /// comma-separated list).
    #[arg(long = "broker", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub brokers: Vec<String>,
    /// Resources this node holds, comma-separated.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<String>>,
    /// Tasks run at once.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// Drain time at shutdown, milliseconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout_ms: Option<u64>,
    /// Log level (critical, error, warning, info, debug, trace).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// CURVE: the brokers' public key (40 Z85 characters or a key file). Z85 keys may start
    /// with `-`.
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_key: Option<String>,
    /// CURVE: this node's key-pair file (`mpreg keygen`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// HTTP endpoint for /metrics, /healthz and /readyz: auto (127.0.0.1, an OS-chosen port,
    /// printed in the `listening` line), off, or host:port.
    #[arg(long, value_name = "auto|off|HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_endpoint: Option<String>,
    /// A built-in function's version, as NAME=VERSION (repeatable), e.g. echo=1.2.0.
    #[arg(long = "function-version", value_name = "NAME=VERSION")]
    #[serde(
        rename = "versions",
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "pairs_as_map"
    )]
    pub versions: Vec<String>,
}

/// `NAME=VERSION` flags as the map the configuration holds (a flag without `=` is kept whole
/// as a name with an empty version, which validation refuses by name).
fn pairs_as_map<S: serde::Serializer>(pairs: &[String], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(pairs.len()))?;
    for pair in pairs {
        let (name, version) = pair.split_once('=').unwrap_or((pair.as_str(), ""));
        map.serialize_entry(name, version)?;
    }
    map.end()
}

impl NodeConfig {
    /// Loads the layers: defaults, `file` (optional), `env` (only `MPREG_NODE_*` is read),
    /// then `flags`; then validates.
    pub fn load(
        file: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Flags,
    ) -> Result<NodeConfig, config::ConfigError> {
        let layers = mpreg_process::layers::Layers {
            defaults: DEFAULT_TOML,
            file,
            prefix: "MPREG_NODE",
            lists: &["brokers", "resources"],
            flags,
        };
        // `MPREG_NODE_CONFIG` names the file; it is not a setting.
        let env = env.into_iter().filter(|(k, _)| k != "MPREG_NODE_CONFIG");
        let mut c: NodeConfig = mpreg_process::layers::load(&layers, env)?;
        if c.name.is_empty() {
            c.name = format!("node-{}", std::process::id());
        }
        c.resources.retain(|r| !r.is_empty());
        c.brokers.retain(|b| !b.is_empty());
        c.validate()?;
        Ok(c)
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<(), config::ConfigError> {
        let invalid =
            |field: &str, why: String| Err(config::ConfigError::Message(format!("{field}: {why}")));
        if self.brokers.is_empty() {
            return invalid("brokers", "at least one broker endpoint is needed".into());
        }
        for (i, endpoint) in self.brokers.iter().enumerate() {
            if let Err(e) = mpreg_transport::endpoint::validate(endpoint) {
                return invalid(&format!("brokers[{i}]"), e.to_string());
            }
            if endpoint.ends_with(":*") {
                return invalid(
                    &format!("brokers[{i}]"),
                    format!("`{endpoint}`: a broker endpoint needs a port, not `*`"),
                );
            }
        }
        if self.capacity == 0 {
            return invalid("capacity", "must be at least 1".into());
        }
        for (name, version) in &self.versions {
            if let Err(e) = semver::Version::parse(version) {
                return invalid(
                    &format!("versions.{name}"),
                    format!("{version:?} is not a semantic version (1.2.3): {e}"),
                );
            }
        }
        // What a broker with default limits accepts in a registration (`max_name_bytes`,
        // `max_locs`): anything longer would be refused at every registration.
        let limits = mpreg_protocol::Limits::default();
        if self.name.len() > limits.max_name_bytes {
            return invalid(
                "name",
                format!(
                    "{} bytes long; brokers accept at most {}",
                    self.name.len(),
                    limits.max_name_bytes
                ),
            );
        }
        if let Some(r) = self
            .resources
            .iter()
            .find(|r| r.len() > limits.max_name_bytes)
        {
            return invalid(
                "resources",
                format!(
                    "resource name of {} bytes; brokers accept at most {}",
                    r.len(),
                    limits.max_name_bytes
                ),
            );
        }
        if self.resources.len() > limits.max_locs {
            return invalid(
                "resources",
                format!(
                    "{} resources; brokers accept at most {}",
                    self.resources.len(),
                    limits.max_locs
                ),
            );
        }
        if let Err(e) = mpreg_process::logging::check_level("log_level", &self.log_level) {
            return Err(config::ConfigError::Message(e));
        }
        if let Err(e) = self.http_addr() {
            return invalid("http_endpoint", e);
        }
        Ok(())
    }

    /// Where the HTTP endpoint listens; `None` when it is off.
    pub fn http_addr(&self) -> Result<Option<std::net::SocketAddr>, String> {
        use mpreg_process::http::HttpSetting;
        Ok(match HttpSetting::parse(&self.http_endpoint)? {
            HttpSetting::Off => None,
            HttpSetting::Auto => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            HttpSetting::At(addr) => Some(addr),
        })
    }

    /// The log level (validated by [`NodeConfig::load`]).
    pub fn slog_level(&self) -> slog::Level {
        self.log_level.parse().unwrap_or(slog::Level::Info)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    type EnvVar = (String, String);

    fn env(pairs: &[(&str, &str)]) -> Vec<EnvVar> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A config file in a directory of its own, removed on drop.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(test: &str, text: &str) -> TempFile {
            let dir = std::env::temp_dir()
                .join(format!("mpreg-node-config-{test}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("node.toml");
            std::fs::write(&file, text).unwrap();
            TempFile(file)
        }
        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    #[test]
    fn defaults() {
        let d = NodeConfig::load(None, Vec::new(), &Flags::default()).unwrap();
        assert_eq!(d.name, format!("node-{}", std::process::id()));
        assert_eq!(d.capacity, 64);
        assert_eq!(d.brokers, vec!["tcp://127.0.0.1:7401"]);
        assert!(d.resources.is_empty());
        assert_eq!(d.drain_timeout_ms, 5000);
        assert_eq!(d.slog_level(), slog::Level::Info);
    }

    #[test]
    fn file_env_flags_in_order() {
        let file = TempFile::new(
            "order",
            "name = \"f\"\ncapacity = 3\nresources = [\"x\"]\ndrain_timeout_ms = 7\n",
        );
        // The file overrides the defaults.
        let c = NodeConfig::load(Some(file.path()), Vec::new(), &Flags::default()).unwrap();
        assert_eq!((c.name.as_str(), c.capacity), ("f", 3));
        assert_eq!(
            (c.resources.clone(), c.drain_timeout_ms),
            (vec!["x".into()], 7)
        );
        assert_eq!(c.brokers, vec!["tcp://127.0.0.1:7401"]);

        // The environment overrides the file.
        let vars = env(&[
            ("MPREG_NODE_CAPACITY", "5"),
            ("MPREG_NODE_BROKERS", "tcp://a:1,tcp://b:2"),
            ("MPREG_NODE_RESOURCES", "gpu"),
            ("MPREG_NODE_DRAIN_TIMEOUT_MS", "250"),
            ("UNRELATED_CAPACITY", "1"),
        ]);
        let c = NodeConfig::load(Some(file.path()), vars.clone(), &Flags::default()).unwrap();
        assert_eq!((c.name.as_str(), c.capacity), ("f", 5));
        assert_eq!(c.brokers, vec!["tcp://a:1", "tcp://b:2"]);
        assert_eq!(c.resources, vec!["gpu"]);
        assert_eq!(c.drain_timeout_ms, 250);

        // Flags override everything.
        let flags = Flags {
            name: Some("flag".into()),
            capacity: Some(9),
            resources: Some(vec!["a".into(), "b".into()]),
            brokers: vec!["tcp://c:3".into()],
            drain_timeout_ms: Some(1),
            log_level: Some("debug".into()),
            ..Flags::default()
        };
        let c = NodeConfig::load(Some(file.path()), vars, &flags).unwrap();
        assert_eq!((c.name.as_str(), c.capacity), ("flag", 9));
        assert_eq!(c.resources, vec!["a", "b"]);
        assert_eq!(c.brokers, vec!["tcp://c:3"]);
        assert_eq!(c.drain_timeout_ms, 1);
        assert_eq!(c.slog_level(), slog::Level::Debug);
    }

    #[test]
    fn environment_values_keep_their_types() {
        // A numeric name stays a name; an empty resource list is empty.
        let vars = env(&[("MPREG_NODE_NAME", "42"), ("MPREG_NODE_RESOURCES", "")]);
        let c = NodeConfig::load(None, vars, &Flags::default()).unwrap();
        assert_eq!(c.name, "42");
        assert!(c.resources.is_empty(), "{:?}", c.resources);
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(Vec<EnvVar>, Flags, &str)> = vec![
            (
                env(&[("MPREG_NODE_CAPACITY", "0")]),
                Flags::default(),
                "capacity",
            ),
            (
                env(&[("MPREG_NODE_CAPACITY", "many")]),
                Flags::default(),
                "capacity",
            ),
            (
                Vec::new(),
                Flags {
                    brokers: vec!["tcp://a:1".into(), "127.0.0.1:7401".into()],
                    ..Flags::default()
                },
                "brokers[1]",
            ),
            (
                env(&[("MPREG_NODE_BROKERS", "tcp://127.0.0.1:*")]),
                Flags::default(),
                "brokers[0]",
            ),
            (
                env(&[("MPREG_NODE_BROKERS", "")]),
                Flags::default(),
                "brokers",
            ),
            (
                Vec::new(),
                Flags {
                    log_level: Some("loud".into()),
                    ..Flags::default()
                },
                "log_level",
            ),
        ];
        for (vars, flags, field) in cases {
            let err = NodeConfig::load(None, vars, &flags)
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        let missing = NodeConfig::load(
            Some("/nonexistent/node.toml"),
            Vec::new(),
            &Flags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(missing.contains("/nonexistent/node.toml"), "{missing}");
        let file = TempFile::new("bad", "capacity = \"x\"\n");
        let err = NodeConfig::load(Some(file.path()), Vec::new(), &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("capacity"), "{err}");
    }
}
