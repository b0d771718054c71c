//! The plan file `mpreg plan` reads: a JSON array of steps.
//!
//! ```json
//! [
//!   {"name": "first", "fun": "echo", "args": ["hi there!"]},
//!   {"name": "second", "fun": "echos", "args": ["first", "AND ME TOO"],
//!    "kwargs": {"sep": " "}, "locs": ["a"], "timeout_ms": 5000, "retries": 1}
//! ]
//! ```
//!
//! `args`, `kwargs`, `locs`, `timeout_ms`, `retries`, `version` and `cache` (`"use"`,
//! `"bypass"`, `"refresh"`) are optional (`null` counts as absent);
//! any other field is an error, so a typo is reported instead of ignored. Values are converted
//! with [`mpreg::json::from_json`].

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value as Json};

use mpreg::error::Error;
use mpreg::json::from_json;
use mpreg::Step;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStep {
    name: String,
    fun: String,
    #[serde(default)]
    args: Option<Vec<Json>>,
    #[serde(default)]
    kwargs: Option<Map<String, Json>>,
    #[serde(default)]
    locs: Option<Vec<String>>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    retries: Option<u32>,
    /// A version requirement (`">=1.2, <2"`).
    #[serde(default)]
    version: Option<String>,
    /// The step's cache mode: `"use"`, `"bypass"` or `"refresh"`.
    #[serde(default)]
    cache: Option<mpreg::CacheMode>,
}

/// Parses a plan file's text into steps.
///
/// # Errors
/// [`Error::Invalid`] naming `source` and the line and column (bad JSON, a missing or unknown
/// field) or the step and argument (a malformed `$bin`).
pub fn parse_plan(text: &str, source: &str) -> Result<Vec<Step>, Error> {
    let steps: Vec<FileStep> = serde_json::from_str(text)
        .map_err(|e| Error::Invalid(format!("plan file {source}: {e}")))?;
    steps
        .into_iter()
        .enumerate()
        .map(|(index, step)| {
            let at = |what: String, e: mpreg::json::JsonError| {
                Error::Invalid(format!(
                    "plan file {source}: step {index} (`{}`) {what}: {e}",
                    step.name
                ))
            };
            let mut args = Vec::new();
            for (i, arg) in step.args.iter().flatten().enumerate() {
                args.push(from_json(arg).map_err(|e| at(format!("args[{i}]"), e))?);
            }
            let mut kwargs = BTreeMap::new();
            for (key, value) in step.kwargs.iter().flatten() {
                let value = from_json(value).map_err(|e| at(format!("kwargs.{key}"), e))?;
                kwargs.insert(key.clone(), value);
            }
            Ok(Step {
                name: step.name,
                fun: step.fun,
                args,
                kwargs,
                locs: step.locs.unwrap_or_default(),
                timeout_ms: step.timeout_ms,
                retries: step.retries,
                version: step.version,
                cache: step.cache,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use mpreg::{args, Value};

    #[test]
    fn reads_the_seed_plan() {
        let steps = parse_plan(
            r#"[
              {"name": "|first", "fun": "echo", "args": ["hi there!"]},
              {"name": "|second", "fun": "echo", "args": ["|first"], "kwargs": null},
              {"name": "|third", "fun": "echos", "args": ["|first", "|second", "AND ME TOO"],
               "kwargs": {"n": 1, "b": {"$bin": "00"}}, "locs": ["a", "b"],
               "timeout_ms": 500, "retries": 0}
            ]"#,
            "seed.json",
        )
        .unwrap();
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[0], Step::new("|first", "echo", args!["hi there!"]));
        assert_eq!(steps[1], Step::new("|second", "echo", args!["|first"]));
        let third = &steps[2];
        assert_eq!(third.args, args!["|first", "|second", "AND ME TOO"]);
        assert_eq!(third.kwargs["n"], Value::from(1));
        assert_eq!(third.kwargs["b"], Value::Binary(vec![0]));
        assert_eq!(third.locs, ["a", "b"]);
        assert_eq!((third.timeout_ms, third.retries), (Some(500), Some(0)));
        assert!(parse_plan("[]", "-").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_file_and_place() {
        for (text, needle) in [
            ("{", "line 1"),
            (r#"{"name": "a"}"#, "expected a sequence"),
            (r#"[{"name": "a"}]"#, "missing field `fun`"),
            (
                r#"[{"name": "a", "fun": "f", "arg": []}]"#,
                "unknown field `arg`",
            ),
            (
                r#"[{"name": "a", "fun": "f", "args": [1, {"$bin": "q"}]}]"#,
                "step 0 (`a`) args[1]",
            ),
        ] {
            let err = parse_plan(text, "p.json").unwrap_err();
            assert_eq!(err.code(), 902);
            let message = err.message();
            assert!(message.starts_with("plan file p.json: "), "{message}");
            assert!(message.contains(needle), "{message} lacks {needle}");
        }
    }
}
