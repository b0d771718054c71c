//! Functions a node serves, and the built-ins.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mpreg_protocol::{failure_kind, Value};

/// Why a function did not return a value; becomes a `failure {kind, message}` to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// One of [`mpreg_protocol::failure_kind`].
    pub kind: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl Failure {
    /// The function ran and reported an error.
    pub fn function(message: impl Into<String>) -> Failure {
        Failure {
            kind: failure_kind::FUNCTION_ERROR,
            message: message.into(),
        }
    }

    /// The arguments do not fit the function.
    pub fn bad_arguments(message: impl Into<String>) -> Failure {
        Failure {
            kind: failure_kind::BAD_ARGUMENTS,
            message: message.into(),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::function(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::function(message)
    }
}

/// Positional arguments.
pub type Args = Vec<Value>;
/// Keyword arguments.
pub type Kwargs = BTreeMap<String, Value>;
/// What a function returns.
pub type Outcome = Result<Value, Failure>;
/// A boxed future of an async function.
pub type BoxFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// A registered function and how it runs.
#[derive(Clone)]
pub enum Function {
    /// Cheap and non-blocking: runs on the node's reactor thread (no hop, lowest latency).
    Inline(Arc<dyn Fn(Args, Kwargs) -> Outcome + Send + Sync>),
    /// May block or take long: runs on tokio's blocking pool.
    Blocking(Arc<dyn Fn(Args, Kwargs) -> Outcome + Send + Sync>),
    /// Async: runs as a tokio task.
    Async(Arc<dyn Fn(Args, Kwargs) -> BoxFuture + Send + Sync>),
}

/// The failure reported for a function that panicked, with the panic's message.
pub fn panicked(panic: &(dyn Any + Send)) -> Failure {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    Failure {
        kind: failure_kind::PANIC,
        message: format!("the function panicked: {text}"),
    }
}

/// Calls a synchronous function; a panic becomes a [`failure_kind::PANIC`] failure instead of
/// unwinding into the caller (the node's reactor thread).
pub fn call_catching_panics(
    f: &(dyn Fn(Args, Kwargs) -> Outcome + Send + Sync),
    args: Args,
    kwargs: Kwargs,
) -> Outcome {
    // AssertUnwindSafe: the function owns its arguments, and a function that panics halfway
    // through mutating its own shared state is the function's bug; the node keeps no state
    // across the call.
    catch_unwind(AssertUnwindSafe(|| f(args, kwargs))).unwrap_or_else(|p| Err(panicked(p.as_ref())))
}

/// The built-ins take positional arguments only: keyword arguments are refused, not ignored.
fn no_kwargs(kwargs: &Kwargs, name: &str) -> Result<(), Failure> {
    match kwargs.keys().next() {
        None => Ok(()),
        Some(key) => Err(Failure::bad_arguments(format!(
            "{name} takes no keyword arguments, got `{key}`{}",
            if kwargs.len() > 1 {
                format!(" and {} more", kwargs.len() - 1)
            } else {
                String::new()
            }
        ))),
    }
}

fn one(args: Args, name: &str) -> Result<Value, Failure> {
    let n = args.len();
    let mut it = args.into_iter();
    match (it.next(), n) {
        (Some(v), 1) => Ok(v),
        _ => Err(Failure::bad_arguments(format!(
            "{name} takes exactly 1 argument, got {n}"
        ))),
    }
}

/// `echo(x)`: returns its one argument.
pub fn echo(args: Args, kwargs: Kwargs) -> Outcome {
    no_kwargs(&kwargs, "echo")?;
    one(args, "echo")
}

/// `echos(...)`: returns its arguments as a list.
pub fn echos(args: Args, kwargs: Kwargs) -> Outcome {
    no_kwargs(&kwargs, "echos")?;
    Ok(Value::Array(args))
}

/// `echokw(**kwargs)`: returns its keyword arguments as a map (it takes no positional ones).
pub fn echokw(args: Args, kwargs: Kwargs) -> Outcome {
    if !args.is_empty() {
        return Err(Failure::bad_arguments(format!(
            "echokw takes keyword arguments only, got {} positional",
            args.len()
        )));
    }
    Ok(Value::Map(
        kwargs
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    ))
}

/// `fail(message)`: fails with that message.
pub fn fail(args: Args, kwargs: Kwargs) -> Outcome {
    no_kwargs(&kwargs, "fail")?;
    let message = one(args, "fail")?;
    Err(Failure::function(match message {
        Value::String(s) => s.into_str().unwrap_or_default(),
        other => other.to_string(),
    }))
}

/// `sleep(ms, value)`: returns `value` after `ms` milliseconds, without blocking anything.
pub fn sleep(args: Args, kwargs: Kwargs) -> BoxFuture {
    wait_then_return("sleep", args, kwargs)
}

/// `slow(ms, value)`: like `sleep`, but registered as cacheable for [`SLOW_TTL`]: the second
/// identical call is answered by the broker's cache at once.
pub fn slow(args: Args, kwargs: Kwargs) -> BoxFuture {
    wait_then_return("slow", args, kwargs)
}

/// How long the broker may keep a result of `slow`.
pub const SLOW_TTL: Duration = Duration::from_secs(60);

fn wait_then_return(name: &'static str, args: Args, kwargs: Kwargs) -> BoxFuture {
    Box::pin(async move {
        no_kwargs(&kwargs, name)?;
        let [ms, value]: [Value; 2] = args.try_into().map_err(|a: Vec<Value>| {
            Failure::bad_arguments(format!(
                "{name} takes (ms, value), got {} arguments",
                a.len()
            ))
        })?;
        let ms = ms.as_u64().ok_or_else(|| {
            Failure::bad_arguments(format!("{name}: ms must be a non-negative integer"))
        })?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(value)
    })
}

/// The built-ins by name.
pub fn builtins() -> Vec<(&'static str, Function)> {
    vec![
        ("echo", Function::Inline(Arc::new(echo))),
        ("echos", Function::Inline(Arc::new(echos))),
        ("echokw", Function::Inline(Arc::new(echokw))),
        ("fail", Function::Inline(Arc::new(fail))),
        ("sleep", Function::Async(Arc::new(sleep))),
        ("slow", Function::Async(Arc::new(slow))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_check_their_arguments() {
        assert_eq!(
            echo(vec![Value::from(1)], Kwargs::new()),
            Ok(Value::from(1))
        );
        assert_eq!(
            echo(vec![], Kwargs::new()).unwrap_err().kind,
            failure_kind::BAD_ARGUMENTS
        );
        assert_eq!(
            echo(vec![Value::Nil, Value::Nil], Kwargs::new())
                .unwrap_err()
                .kind,
            failure_kind::BAD_ARGUMENTS
        );
        assert_eq!(
            echos(vec![Value::from(1), Value::from("a")], Kwargs::new()),
            Ok(Value::Array(vec![Value::from(1), Value::from("a")]))
        );
        assert_eq!(
            fail(vec![Value::from("boom")], Kwargs::new()),
            Err(Failure::function("boom"))
        );
    }

    #[tokio::test]
    async fn builtins_refuse_keyword_arguments() {
        let kwargs = Kwargs::from([("sep".to_string(), Value::from(", "))]);
        for outcome in [
            echo(vec![Value::from(1)], kwargs.clone()),
            echos(vec![], kwargs.clone()),
            fail(vec![Value::from("m")], kwargs.clone()),
            sleep(vec![Value::from(1), Value::Nil], kwargs.clone()).await,
        ] {
            let failure = outcome.unwrap_err();
            assert_eq!(failure.kind, failure_kind::BAD_ARGUMENTS);
            assert!(
                failure
                    .message
                    .contains("takes no keyword arguments, got `sep`"),
                "{}",
                failure.message
            );
        }
    }

    #[test]
    fn panics_become_failures() {
        let boom = |_a: Args, _k: Kwargs| -> Outcome { panic!("kaboom") };
        let failure = call_catching_panics(&boom, vec![], Kwargs::new()).unwrap_err();
        assert_eq!(failure.kind, failure_kind::PANIC);
        assert!(failure.message.contains("kaboom"), "{}", failure.message);
        let formatted = |_a: Args, _k: Kwargs| -> Outcome { panic!("bad {}", 7) };
        let failure = call_catching_panics(&formatted, vec![], Kwargs::new()).unwrap_err();
        assert!(failure.message.contains("bad 7"), "{}", failure.message);
        let other = |_a: Args, _k: Kwargs| -> Outcome { std::panic::panic_any(5u8) };
        let failure = call_catching_panics(&other, vec![], Kwargs::new()).unwrap_err();
        assert_eq!(failure.kind, failure_kind::PANIC);
        // A function that does not panic passes through, failure kinds included.
        assert_eq!(
            call_catching_panics(&echos, vec![Value::from(1)], Kwargs::new()),
            Ok(Value::Array(vec![Value::from(1)]))
        );
        assert_eq!(
            call_catching_panics(&fail, vec![Value::from("m")], Kwargs::new()),
            Err(Failure::function("m"))
        );
    }

    #[test]
    fn fail_of_a_non_string_and_builtin_names() {
        assert_eq!(
            fail(vec![Value::from(3)], Kwargs::new()),
            Err(Failure::function("3"))
        );
        assert_eq!(
            fail(vec![], Kwargs::new()).unwrap_err().kind,
            failure_kind::BAD_ARGUMENTS
        );
        assert_eq!(echos(vec![], Kwargs::new()), Ok(Value::Array(vec![])));
        let mut names: Vec<&str> = builtins().into_iter().map(|(n, _)| n).collect();
        names.sort_unstable();
        assert_eq!(names, ["echo", "echokw", "echos", "fail", "sleep", "slow"]);
        let kw = Kwargs::from([("a".to_string(), Value::from(1))]);
        assert_eq!(
            echokw(vec![], kw),
            Ok(Value::Map(vec![(Value::from("a"), Value::from(1))]))
        );
        assert_eq!(
            echokw(vec![Value::Nil], Kwargs::new()).unwrap_err().kind,
            failure_kind::BAD_ARGUMENTS
        );
    }

    #[tokio::test]
    async fn sleep_waits_and_returns_its_value() {
        let start = std::time::Instant::now();
        assert_eq!(
            sleep(vec![Value::from(30), Value::from("v")], Kwargs::new()).await,
            Ok(Value::from("v"))
        );
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(
            sleep(vec![Value::from("x"), Value::Nil], Kwargs::new())
                .await
                .unwrap_err()
                .kind,
            failure_kind::BAD_ARGUMENTS
        );
        assert_eq!(
            sleep(vec![], Kwargs::new()).await.unwrap_err().kind,
            failure_kind::BAD_ARGUMENTS
        );
    }
}
