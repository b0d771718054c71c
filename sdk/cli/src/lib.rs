//! The `mpreg` command-line client, built on the SDK.
//!
//! - `mpreg call FUN [ARG ...] [--locs a,b]`: prints the function's result as one JSON line.
//! - `mpreg plan FILE|- [--all] [--progress] [--trace]`: prints the result map as one JSON line;
//!   with `--progress`, first one line `{"step", "fun", "worker", "result", "elapsed_us"}` per
//!   finished step, in the order they finished (printed once the plan succeeded), and while
//!   the plan runs a live status line on stderr when stderr is a terminal
//!   ([`status_line`]); with `--trace`, after the result line one line per step saying where
//!   and when it ran ([`trace`]).
//! - `mpreg status`: prints the broker's status reply as one JSON line.
//! - `mpreg pub TOPIC PAYLOAD [--header K=V]... [--confirm]`: publishes (PAYLOAD is JSON, or a
//!   string when it is not JSON) and always waits for the broker to route it, so the message
//!   is out before the process exits and a bad topic is an error; prints `{"matched":N}` with
//!   `--confirm`, nothing without.
//! - `mpreg sub PATTERN... [--count N] [--backlog]`: prints one line per message (see
//!   [`message_line`]), flushed at once; exits 0 after N messages, or when `--timeout` runs
//!   out without `--count`, and runs until killed without either. With `--count` and
//!   `--timeout`, running out first is an error (901 `request_timeout`). Notices go to stderr
//!   as one line each and the command goes on: lagging ([`lagging_line`]), the connection to
//!   the broker lost ([`connection_lost_line`]) and the subscription made again once it is
//!   back ([`resubscribed_line`]).
//! - Every command takes `--broker ENDPOINT[,ENDPOINT...]` (env `MPREG_BROKER`, default
//!   `tcp://127.0.0.1:7400`; a list is tried in order and failed over, see
//!   [`mpreg::Client::connect_any`]) and `--timeout SECONDS`.
//!
//! On any error the exit status is 1 and stderr gets exactly one line (see [`error_line`]);
//! nothing is printed on stdout (except, for `sub`, the messages that arrived before it).
//!
//! On SIGINT or SIGTERM a command cancels what it has in flight at the broker (its plan, its
//! subscription), waits briefly for the cancel to leave, prints the error line of
//! `905 interrupted` and exits with 130 (SIGINT) or 143 (SIGTERM).
//!
//! Layout: [`args`] (the command line), [`plan_file`] (the plan file format),
//! `topic_commands` (`pub` and `sub`), `interrupt` (the signals), [`trace`] (trace lines),
//! [`status_line`] (the live line on a terminal), and here the other commands and the output
//! lines.

pub mod args;
mod interrupt;
pub mod plan_file;
pub mod status_line;
mod topic_commands;
pub mod trace;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value as Json};

use mpreg::client::{
    run_one, Client, ClientOptions, CALL_STEP, DEFAULT_ACTIVATION_TIMEOUT, DEFAULT_CONNECT_TIMEOUT,
};
use mpreg::error::Error;
use mpreg::json::to_json;
use mpreg::{Progress, Step, Value};

pub use args::{parse, Cli, Command, Usage};
pub use interrupt::exit_status;
pub use topic_commands::{connection_lost_line, lagging_line, message_line, resubscribed_line};

/// The whole program: parses `std::env::args_os()`, runs the command, prints, and returns the
/// exit status.
pub fn main() -> ExitCode {
    run(std::env::args_os())
}

/// [`main`] over explicit arguments (the first is the program name).
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match parse(args) {
        Ok(cli) => cli,
        Err(Usage::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(Usage::Invalid(err)) => return fail(&err),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&Error::Invalid(format!("cannot start the runtime: {e}"))),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let outcome = runtime.block_on(async {
        // Inside the runtime: the handlers need its signal driver.
        let mut interrupts = interrupt::Interrupts::listen();
        execute_until(cli, &mut out, interrupts.next()).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err @ Error::Interrupted { signal }) => {
            fail(&err);
            ExitCode::from(exit_status(signal))
        }
        Err(err) => fail(&err),
    }
}

fn fail(err: &Error) -> ExitCode {
    // Nothing sensible is left to do if stderr is gone too.
    let _ = writeln!(std::io::stderr().lock(), "{}", error_line(err));
    ExitCode::FAILURE
}

/// The one line printed on stderr for an error:
/// `{"error": {"code": <int>, "kind": "<snake_case>", "message": "...", "step": "<name>"|null}}`,
/// plus `"trace": [...]` in `error` for a plan sent with `--trace` that failed after it
/// started (the finished steps, as in [`trace::trace_lines`]).
///
/// ```
/// let line = mpreg_cli::error_line(&mpreg::Error::Closed);
/// assert_eq!(
///     line,
///     r#"{"error":{"code":903,"kind":"connection_closed","message":"the client connection is closed","step":null}}"#
/// );
/// ```
pub fn error_line(err: &Error) -> String {
    let mut line = json!({
        "error": {
            "code": err.code(),
            "kind": err.kind(),
            "message": err.message(),
            "step": err.step(),
        }
    });
    // A plan sent with `--trace` that failed after it started: where its steps ran.
    if let Error::Remote(remote) = err {
        if let Some(trace) = &remote.trace {
            line["error"]["trace"] = Json::Array(trace::trace_values(trace));
        }
    }
    line.to_string()
}

/// The line printed for one finished step with `--progress`.
pub fn progress_line(progress: &Progress) -> String {
    json!({
        "step": progress.step,
        "fun": progress.fun,
        "worker": progress.worker,
        "result": to_json(&progress.result),
        "elapsed_us": progress.elapsed_us,
    })
    .to_string()
}

/// The line printed for a plan's results.
pub fn results_line(results: &BTreeMap<String, Value>) -> String {
    let object: Map<String, Json> = results
        .iter()
        .map(|(name, value)| (name.clone(), to_json(value)))
        .collect();
    Json::Object(object).to_string()
}

/// Runs a parsed command, writing its output lines to `out`.
///
/// # Errors
/// Whatever the command failed with; nothing has been written to stdout then.
pub async fn execute(cli: Cli, out: &mut impl Write) -> Result<(), Error> {
    execute_until(cli, out, std::future::pending()).await
}

/// [`execute`], stopped when `interrupt` resolves (to the name of a signal): what is in
/// flight is abandoned and cancelled at the broker, the connection is closed once the cancel
/// has left (or could not within the client's close linger), and the result is
/// [`Error::Interrupted`].
///
/// # Errors
/// As [`execute`], and [`Error::Interrupted`].
pub async fn execute_until(
    cli: Cli,
    out: &mut impl Write,
    interrupt: impl Future<Output = &'static str>,
) -> Result<(), Error> {
    let started = Instant::now();
    // Read and check the input before connecting, so bad input never waits on the network.
    let work = match cli.command {
        Command::Call {
            fun,
            args,
            locs,
            version_req,
            cache,
        } => {
            let mut step = Step::new(
                CALL_STEP,
                fun,
                args.iter()
                    .map(|a| args::parse_arg(a))
                    .collect::<Result<_, _>>()?,
            );
            step.locs = locs;
            step.version = version_req;
            step.cache = cache;
            Work::Call(step)
        }
        Command::Plan {
            file,
            all,
            progress,
            trace,
        } => Work::Plan {
            steps: plan_file::parse_plan(&read_plan(&file)?, &file)?,
            all,
            progress,
            trace,
        },
        Command::Status => Work::Status,
        Command::Cluster => Work::Cluster,
        Command::Functions => Work::Functions,
        Command::Cache { action } => Work::Cache(action),
        Command::Pub {
            topic,
            payload,
            headers,
            confirm,
        } => Work::Publish {
            topic,
            payload: args::parse_arg(&payload)?,
            headers,
            confirm,
        },
        Command::Sub {
            patterns,
            count,
            backlog,
        } => Work::Subscribe {
            patterns,
            count,
            backlog,
        },
        // Local only: no broker involved.
        Command::Keygen { base } => return keygen(&base, out),
    };

    // One connection on a current-thread runtime that never blocks: served as a task of it,
    // a call crosses no extra thread.
    let mut options = ClientOptions::default().with_io_thread(false);
    match (&cli.server_key, &cli.key_file) {
        (None, None) => {}
        (Some(server), Some(file)) => {
            let server = mpreg::load_public_key(server)?;
            let own =
                mpreg::KeyPair::load(file).map_err(|e| Error::Invalid(format!("key file: {e}")))?;
            options = options.with_curve(server, own);
        }
        _ => {
            return Err(Error::Invalid(
                "CURVE needs both --server-key and --key-file".to_string(),
            ))
        }
    }
    if let Some(timeout) = cli.timeout {
        options = options
            .with_connect_timeout(timeout.min(DEFAULT_CONNECT_TIMEOUT))
            .with_request_timeout(timeout)
            .with_activation_timeout(timeout.min(DEFAULT_ACTIVATION_TIMEOUT));
    }
    let mut interrupt = std::pin::pin!(interrupt);
    let client = tokio::select! {
        client = Client::connect_with(&cli.broker, options) => client?,
        signal = &mut interrupt => return Err(Error::Interrupted { signal }),
    };
    let result = tokio::select! {
        result = perform(&client, work, cli.timeout, started, out) => result,
        signal = &mut interrupt => Err(Error::Interrupted { signal }),
    };
    // Also what makes an interrupted command's cancel leave before the process exits.
    client.close().await;
    result
}

/// Runs the command's work on a connected client.
async fn perform(
    client: &Client,
    work: Work,
    timeout: Option<Duration>,
    started: Instant,
    out: &mut impl Write,
) -> Result<(), Error> {
    match work {
        Work::Call(step) => {
            let mut plan = client.plan().step_with(step);
            if let Some(timeout) = timeout {
                plan = plan.deadline(timeout);
            }
            let value = run_one(plan, CALL_STEP).await?;
            emit(out, &to_json(&value).to_string())
        }
        Work::Plan {
            steps,
            all,
            progress,
            trace,
        } => {
            let mut plan = client.plan();
            for step in steps {
                plan = plan.step_with(step);
            }
            if let Some(timeout) = timeout {
                plan = plan.deadline(timeout);
            }
            if all {
                plan = plan.all_results();
            }
            if trace {
                plan = plan.trace();
            }
            // Progress lines are held until the plan succeeds: on an error nothing reaches
            // stdout (the contract scripts rely on), and the error carries partial results.
            let mut lines = Vec::new();
            let (results, plan_trace) = if progress {
                status_line::run_with_status(plan, |p| lines.push(progress_line(p))).await?
            } else if trace {
                let traced = plan.run_traced().await?;
                (traced.results, traced.trace)
            } else {
                (plan.run().await?, None)
            };
            for line in &lines {
                emit(out, line)?;
            }
            emit(out, &results_line(&results))?;
            for line in plan_trace.iter().flat_map(trace::trace_lines) {
                emit(out, &line)?;
            }
            Ok(())
        }
        Work::Status => {
            let status = client.status().await?;
            let line = serde_json::to_string(&status)
                .map_err(|e| Error::Invalid(format!("cannot print the status: {e}")))?;
            emit(out, &line)
        }
        Work::Cluster => {
            let reply = client.cluster().await?;
            let line = serde_json::json!({
                "cluster": reply.cluster,
                "self": reply.self_name,
                "members": reply.members,
            });
            emit(out, &line.to_string())
        }
        Work::Cache(args::CacheAction::Stats) => {
            let reply = client.cache_stats().await?;
            let line = serde_json::json!({
                "broker": reply.broker,
                "enabled": reply.enabled,
                "policy": reply.policy,
                "entries": reply.entries,
                "bytes": reply.bytes,
                "max_bytes": reply.max_bytes,
                "flights": reply.flights,
                "counters": reply.counters,
            });
            emit(out, &line.to_string())
        }
        Work::Cache(args::CacheAction::Invalidate { tag, fun }) => {
            let reply = match (tag, fun) {
                (Some(tag), _) => client.cache_invalidate_tag(&tag).await?,
                (None, Some(fun)) => client.cache_invalidate_function(&fun).await?,
                (None, None) => {
                    return Err(Error::Invalid(
                        "cache invalidate needs --tag or --fun".into(),
                    ))
                }
            };
            let line = serde_json::json!({ "entries": reply.entries, "peers": reply.peers });
            emit(out, &line.to_string())
        }
        Work::Functions => {
            let reply = client.functions().await?;
            emit(
                out,
                &serde_json::json!({ "functions": reply.functions }).to_string(),
            )
        }
        Work::Publish {
            topic,
            payload,
            headers,
            confirm,
        } => topic_commands::publish(client, topic, payload, headers, confirm, out).await,
        Work::Subscribe {
            patterns,
            count,
            backlog,
        } => {
            let deadline = timeout.map(|t| (started + t, t));
            topic_commands::subscribe(client, patterns, count, backlog, deadline, out).await
        }
    }
}

enum Work {
    Call(Step),
    Plan {
        steps: Vec<Step>,
        all: bool,
        progress: bool,
        trace: bool,
    },
    Status,
    Cluster,
    Functions,
    Cache(args::CacheAction),
    Publish {
        topic: String,
        payload: Value,
        headers: Vec<(String, String)>,
        confirm: bool,
    },
    Subscribe {
        patterns: Vec<String>,
        count: Option<u64>,
        backlog: bool,
    },
}

/// `mpreg keygen BASE`: writes the pair and prints where.
fn keygen(base: &str, out: &mut impl Write) -> Result<(), Error> {
    let pair = mpreg::KeyPair::generate().map_err(|e| Error::Invalid(e.to_string()))?;
    let (key_file, public_file) = pair
        .write(base)
        .map_err(|e| Error::Invalid(format!("keygen: {e}")))?;
    let line = serde_json::json!({
        "public": pair.public.to_z85(),
        "key_file": key_file.display().to_string(),
        "public_file": public_file.display().to_string(),
    });
    emit(out, &line.to_string())
}

fn read_plan(file: &str) -> Result<String, Error> {
    let mut text = String::new();
    let read = if file == "-" {
        std::io::stdin()
            .lock()
            .read_to_string(&mut text)
            .map(|_| ())
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_string(&mut text).map(|_| ()))
    };
    read.map_err(|e| Error::Invalid(format!("cannot read plan file {file}: {e}")))?;
    Ok(text)
}

/// Writes one line and flushes it.
pub(crate) fn emit(out: &mut impl Write, line: &str) -> Result<(), Error> {
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| Error::Invalid(format!("cannot write the output: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use mpreg::ErrorCode;
    use mpreg_protocol::ErrorReply;

    #[test]
    fn error_lines_have_the_four_fields_in_order() {
        let remote = Error::from(
            ErrorReply::new(
                Some(3),
                ErrorCode::StepFailed,
                "boom \"quoted\"\nsecond line",
            )
            .with_step("b")
            .with_fun("fail"),
        );
        let line = error_line(&remote);
        assert_eq!(
            line,
            r#"{"error":{"code":301,"kind":"step_failed","message":"boom \"quoted\"\nsecond line","step":"b"}}"#
        );
        assert!(!line.contains('\n'));
        let parsed: Json = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["error"]["code"], 301);

        let timeout = Error::Timeout {
            after: std::time::Duration::from_secs(2),
        };
        let parsed: Json = serde_json::from_str(&error_line(&timeout)).unwrap();
        assert_eq!(parsed["error"]["code"], 901);
        assert_eq!(parsed["error"]["kind"], "request_timeout");
        assert_eq!(parsed["error"]["step"], Json::Null);
        let keys: Vec<&String> = parsed["error"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["code", "kind", "message", "step"]);
    }

    #[test]
    fn output_lines() {
        let p = Progress {
            id: 1,
            plan: None,
            step: "a".into(),
            fun: "echo".into(),
            worker: "n1".into(),
            result: Value::Binary(vec![1]),
            elapsed_us: 12,
        };
        assert_eq!(
            progress_line(&p),
            r#"{"step":"a","fun":"echo","worker":"n1","result":{"$bin":"01"},"elapsed_us":12}"#
        );
        let mut results = BTreeMap::new();
        results.insert("|third".to_string(), Value::Array(vec![Value::from("x")]));
        results.insert("|second".to_string(), Value::from(2));
        assert_eq!(results_line(&results), r#"{"|second":2,"|third":["x"]}"#);
    }

    #[tokio::test]
    async fn bad_input_fails_before_connecting() {
        // The broker address is unreachable on purpose: input errors must come first.
        let cli = parse([
            "mpreg",
            "--broker",
            "tcp://127.0.0.1:9",
            "plan",
            "/nonexistent/p.json",
        ])
        .map_err(|_| "parse")
        .unwrap();
        let mut out = Vec::new();
        let err = execute(cli, &mut out).await.unwrap_err();
        assert_eq!(err.code(), 902);
        assert!(err.message().contains("/nonexistent/p.json"), "{err}");
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn unreachable_broker_is_connection_failed_with_nothing_on_stdout() {
        let cli = parse([
            "mpreg",
            "--broker",
            "tcp://127.0.0.1:9",
            "--timeout",
            "0.2",
            "call",
            "echo",
            "x",
        ])
        .map_err(|_| "parse")
        .unwrap();
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        let err = execute(cli, &mut out).await.unwrap_err();
        assert_eq!(
            (err.code(), err.kind()),
            (900, "connection_failed"),
            "{err}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
        assert!(out.is_empty());
    }
}
