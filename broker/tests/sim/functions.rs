//! The functions the simulated workers serve, with pure semantics so that the model can compute
//! every plan's result. Workers and the model share these definitions (they are the simulated
//! world's ground truth); the plan semantics (references, resolution, sinks) the model does not
//! share with anything.
//!
//! Every step carries a literal keyword argument [`TAG`] naming its plan and step, which the
//! functions ignore: it lets the checker tell which step a task runs.

use std::collections::BTreeMap;

use mpreg_protocol::{failure_kind, Value};

/// The functions workers may serve.
pub const FUNCTIONS: &[&str] = &["echo", "add", "concat", "fail", "slow"];

/// The keyword argument naming a task's plan and step: `[connection, request id, step index]`.
pub const TAG: &str = "sim";

/// The longest a `slow` step runs, in milliseconds (its argument is capped to this).
pub const SLOW_MAX_MS: u64 = 400;

/// A function's failure: the kind and message a worker sends in `failure`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The failure kind (PROTOCOL.md section 9).
    pub kind: &'static str,
    /// The message.
    pub message: String,
}

fn bad(message: impl Into<String>) -> Failed {
    Failed {
        kind: failure_kind::BAD_ARGUMENTS,
        message: message.into(),
    }
}

/// Calls `fun`:
/// - `echo(x)`: `x`;
/// - `add(a, b)`: the sum of two integers;
/// - `concat(*xs, **kw)`: `{"items": [xs...], "count": len(xs), "kw": {kw...}}`;
/// - `fail(msg)`: always fails (`function_error`, the message `msg`);
/// - `slow(ms, x)`: `x`, after `ms` milliseconds.
///
/// Wrong arguments fail with `bad_arguments`; other names with `unknown_function`.
pub fn call(fun: &str, args: &[Value], kwargs: &BTreeMap<String, Value>) -> Result<Value, Failed> {
    match fun {
        "echo" => match args {
            [x] => Ok(x.clone()),
            _ => Err(bad(format!("echo takes 1 argument, got {}", args.len()))),
        },
        "add" => match args {
            [a, b] => match (a.as_i64(), b.as_i64()) {
                (Some(a), Some(b)) => a
                    .checked_add(b)
                    .map(Value::from)
                    .ok_or_else(|| bad("add overflows")),
                _ => Err(bad("add takes two integers")),
            },
            _ => Err(bad(format!("add takes 2 arguments, got {}", args.len()))),
        },
        "concat" => {
            let kw = kwargs
                .iter()
                .filter(|(k, _)| k.as_str() != TAG)
                .map(|(k, v)| (Value::from(k.as_str()), v.clone()))
                .collect();
            Ok(Value::Map(vec![
                (Value::from("items"), Value::Array(args.to_vec())),
                (Value::from("count"), Value::from(args.len() as u64)),
                (Value::from("kw"), Value::Map(kw)),
            ]))
        }
        "fail" => Err(Failed {
            kind: failure_kind::FUNCTION_ERROR,
            message: match args.first() {
                Some(Value::String(s)) => s.as_str().unwrap_or("?").to_string(),
                Some(other) => other.to_string(),
                None => "fail".into(),
            },
        }),
        "slow" => match args {
            [ms, x] if ms.as_u64().is_some() => Ok(x.clone()),
            _ => Err(bad("slow takes (ms, x)")),
        },
        other => Err(Failed {
            kind: failure_kind::UNKNOWN_FUNCTION,
            message: format!("no function {other}"),
        }),
    }
}

/// How long a call runs beyond a worker's own jitter, in milliseconds.
pub fn run_ms(fun: &str, args: &[Value]) -> u64 {
    match (fun, args.first().and_then(Value::as_u64)) {
        ("slow", Some(ms)) => ms.min(SLOW_MAX_MS),
        _ => 0,
    }
}
