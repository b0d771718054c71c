//! Node configuration: embedded defaults (`config/default.toml`), an optional file,
//! `MPREG_NODE_*` environment variables, then flags.

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

/// The defaults, documented key by key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Everything the node binary can be told.
#[derive(Debug, Clone, Deserialize)]
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
}

/// Flag values (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--name`.
    pub name: Option<String>,
    /// `--broker` (repeatable).
    pub brokers: Vec<String>,
    /// `--resources a,b`.
    pub resources: Option<Vec<String>>,
    /// `--capacity`.
    pub capacity: Option<u32>,
    /// `--drain-timeout-ms`.
    pub drain_timeout_ms: Option<u64>,
    /// `--log-level`.
    pub log_level: Option<String>,
}

impl NodeConfig {
    /// Loads the layers in order.
    pub fn load(
        file: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<NodeConfig, config::ConfigError> {
        let mut b = Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            b = b.add_source(File::with_name(path).required(true));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("MPREG_NODE_"))
            .collect();
        b = b.add_source(
            Environment::with_prefix("MPREG_NODE")
                .prefix_separator("_")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("brokers")
                .with_list_parse_key("resources")
                .source(Some(env)),
        );
        if let Some(v) = &flags.name {
            b = b.set_override("name", v.as_str())?;
        }
        if !flags.brokers.is_empty() {
            b = b.set_override("brokers", flags.brokers.clone())?;
        }
        if let Some(v) = &flags.resources {
            b = b.set_override("resources", v.clone())?;
        }
        if let Some(v) = flags.capacity {
            b = b.set_override("capacity", v)?;
        }
        if let Some(v) = flags.drain_timeout_ms {
            b = b.set_override("drain_timeout_ms", v)?;
        }
        if let Some(v) = &flags.log_level {
            b = b.set_override("log_level", v.as_str())?;
        }
        let mut c: NodeConfig = b.build()?.try_deserialize()?;
        if c.name.is_empty() {
            c.name = format!("node-{}", std::process::id());
        }
        c.resources.retain(|r| !r.is_empty());
        if c.brokers.is_empty() {
            return Err(config::ConfigError::Message(
                "at least one broker endpoint is needed".into(),
            ));
        }
        if c.capacity == 0 {
            return Err(config::ConfigError::Message(
                "capacity must be at least 1".into(),
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_env_flags_in_order() {
        let dir = std::env::temp_dir().join(format!("mpreg-node-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("node.toml");
        std::fs::write(&file, "name = \"f\"\ncapacity = 3\nresources = [\"x\"]\n").unwrap();
        let env = vec![
            ("MPREG_NODE_CAPACITY".to_string(), "5".to_string()),
            (
                "MPREG_NODE_BROKERS".to_string(),
                "tcp://a:1,tcp://b:2".to_string(),
            ),
        ];
        let c = NodeConfig::load(file.to_str(), env.clone(), &Overrides::default()).unwrap();
        assert_eq!((c.name.as_str(), c.capacity), ("f", 5));
        assert_eq!(c.brokers, vec!["tcp://a:1", "tcp://b:2"]);
        assert_eq!(c.resources, vec!["x"]);
        let flags = Overrides {
            capacity: Some(9),
            resources: Some(vec!["gpu".into()]),
            brokers: vec!["tcp://c:3".into()],
            ..Overrides::default()
        };
        let c = NodeConfig::load(file.to_str(), env, &flags).unwrap();
        assert_eq!(
            (c.capacity, c.resources.clone(), c.brokers.clone()),
            (9, vec!["gpu".to_string()], vec!["tcp://c:3".to_string()])
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let bad = vec![("MPREG_NODE_CAPACITY".to_string(), "0".to_string())];
        assert!(NodeConfig::load(None, bad, &Overrides::default()).is_err());
        let d = NodeConfig::load(None, Vec::new(), &Overrides::default()).unwrap();
        assert!(
            d.name.starts_with("node-")
                && d.capacity == 64
                && d.brokers == vec!["tcp://127.0.0.1:7401"]
        );
    }
}
