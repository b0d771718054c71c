//! Layered configuration: the embedded defaults, then an optional file, then environment
//! variables `PREFIX_<KEY>` (nested keys joined by `__`, lists comma-separated), then the
//! flags, each layer overriding the one before.
//!
//! Flags are declared once: a struct deriving `clap::Args` (the flag, its help and its
//! environment variable) and `serde::Serialize` (the configuration key it sets, with
//! `#[serde(rename = "section.key")]` for nested keys and `skip_serializing_if` for flags not
//! given). [`load`] turns every given flag into an override of its key.

use config::{Config, ConfigError, Environment, File, FileFormat};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where one process's settings come from.
pub struct Layers<'a, F> {
    /// The embedded defaults (TOML, every key documented).
    pub defaults: &'a str,
    /// A configuration file given by the user, if any.
    pub file: Option<&'a str>,
    /// The environment variable prefix without its trailing `_`, e.g. `MPREG_BROKER`.
    pub prefix: &'a str,
    /// Keys whose environment values are comma-separated lists.
    pub lists: &'a [&'a str],
    /// The flags given on the command line.
    pub flags: &'a F,
}

/// Loads `T` from the layers. Unknown keys in the file or in `PREFIX_*` variables are refused
/// by the deserializer of `T` (`#[serde(deny_unknown_fields)]`), naming them.
pub fn load<T, F>(
    layers: &Layers<'_, F>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    F: Serialize,
{
    let mut builder =
        Config::builder().add_source(File::from_str(layers.defaults, FileFormat::Toml));
    if let Some(path) = layers.file {
        builder = builder.add_source(File::with_name(path).required(true));
    }
    let start = format!("{}_", layers.prefix);
    let env: config::Map<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&start))
        .collect();
    let mut environment = Environment::with_prefix(layers.prefix)
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true);
    if !layers.lists.is_empty() {
        environment = environment.list_separator(",");
        for key in layers.lists {
            environment = environment.with_list_parse_key(key);
        }
    }
    builder = builder.add_source(environment.source(Some(env)));
    for (key, value) in flag_overrides(layers.flags)? {
        builder = builder.set_override(key, value)?;
    }
    builder.build()?.try_deserialize().map_err(|e| {
        ConfigError::Message(format!(
            "{e} (check the configuration file and the {}_* variables)",
            layers.prefix
        ))
    })
}

/// The given flags as `(key, value)` overrides, in declaration order.
fn flag_overrides<F: Serialize>(flags: &F) -> Result<Vec<(String, config::Value)>, ConfigError> {
    let value =
        serde_json::to_value(flags).map_err(|e| ConfigError::Message(format!("flags: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(ConfigError::Message("flags must be a struct".into()));
    };
    Ok(map
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k, to_config(v)))
        .collect())
}

fn to_config(value: serde_json::Value) -> config::Value {
    use serde_json::Value as J;
    let kind = match value {
        J::Null => config::ValueKind::Nil,
        J::Bool(b) => config::ValueKind::Boolean(b),
        J::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => config::ValueKind::U64(u),
            (_, Some(i), _) => config::ValueKind::I64(i),
            (_, _, f) => config::ValueKind::Float(f.unwrap_or_default()),
        },
        J::String(s) => config::ValueKind::String(s),
        J::Array(items) => config::ValueKind::Array(items.into_iter().map(to_config).collect()),
        J::Object(map) => {
            config::ValueKind::Table(map.into_iter().map(|(k, v)| (k, to_config(v))).collect())
        }
    };
    config::Value::new(None, kind)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        name: String,
        count: u32,
        tags: Vec<String>,
        inner: Inner,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        on: bool,
        limit: u64,
    }

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(rename = "inner.on", skip_serializing_if = "std::ops::Not::not")]
        on: bool,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tags: Vec<String>,
    }

    const DEFAULTS: &str = "name = \"d\"\ncount = 1\ntags = []\n[inner]\non = false\nlimit = 5\n";

    fn load_with(flags: &Flags, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let layers = Layers {
            defaults: DEFAULTS,
            file: None,
            prefix: "MPREG_T",
            lists: &["tags"],
            flags,
        };
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        load(&layers, env)
    }

    #[test]
    fn flags_beat_environment_beats_defaults() {
        let s = load_with(
            &Flags::default(),
            &[
                ("MPREG_T_COUNT", "3"),
                ("MPREG_T_INNER__LIMIT", "9"),
                ("MPREG_T_TAGS", "a,b"),
            ],
        )
        .unwrap();
        assert_eq!((s.name.as_str(), s.count, s.inner.limit), ("d", 3, 9));
        assert_eq!(s.tags, ["a", "b"]);
        let flags = Flags {
            name: Some("f".into()),
            on: true,
            tags: vec!["x".into()],
        };
        let s = load_with(&flags, &[("MPREG_T_NAME", "e"), ("OTHER", "1")]).unwrap();
        assert_eq!((s.name.as_str(), s.inner.on), ("f", true));
        assert_eq!(s.tags, ["x"]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load_with(&Flags::default(), &[("MPREG_T_COUNTT", "3")]).unwrap_err();
        assert!(e.to_string().contains("unknown field `countt`"), "{e}");
        assert!(e.to_string().contains("MPREG_T_*"), "{e}");
    }
}
