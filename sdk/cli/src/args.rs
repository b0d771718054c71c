//! The command line: clap definitions, and how arguments become values and durations.

use std::time::Duration;

use clap::{ColorChoice, Parser, Subcommand};
use serde_json::Value as Json;

use mpreg::client::DEFAULT_ENDPOINT;
use mpreg::error::Error;
use mpreg::json::from_json;
use mpreg::Value;

/// Call functions, run plans, publish and subscribe on an MPREG cluster.
///
/// Prints results as lines of JSON on stdout. On any error, prints one line
/// `{"error": {"code", "kind", "message", "step"}}` on stderr and exits with status 1. If the
/// connection to the broker breaks while a command waits, it fails at once with code 904
/// (connection_lost). On SIGINT or SIGTERM, cancels what is in flight at the broker, prints
/// the error line of code 905 (interrupted) and exits with 130 (SIGINT) or 143 (SIGTERM).
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(name = "mpreg", version, color = ColorChoice::Never, max_term_width = 100)]
pub struct Cli {
    /// The broker's client endpoint, or a comma-separated list of them: the command talks to
    /// the first that answers and moves to the next when its broker is lost or silent
    /// (plans are sent again under their plan id, never run twice by a broker that saw them).
    #[arg(
        long,
        global = true,
        env = "MPREG_BROKER",
        default_value = DEFAULT_ENDPOINT,
        value_name = "ENDPOINT[,ENDPOINT...]"
    )]
    pub broker: String,

    /// Seconds to wait (fractions allowed). For `call` and `plan` it is also the plan's
    /// deadline at the broker; for `sub`, how long to listen (from the start). Default: the
    /// broker's deadline, and 30 s for the client; `sub` listens forever.
    #[arg(long, global = true, value_name = "SECONDS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,

    /// CURVE: the broker's public key (40 Z85 characters, or a `.pub`/`.key` file). Needs
    /// --key-file.
    #[arg(
        long,
        global = true,
        env = "MPREG_SERVER_KEY",
        value_name = "KEY|FILE",
        allow_hyphen_values = true
    )]
    pub server_key: Option<String>,

    /// CURVE: this client's key-pair file (`mpreg keygen`, mode 0600). Needs --server-key.
    #[arg(long, global = true, env = "MPREG_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `mpreg cache ...`.
#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum CacheAction {
    /// Print the cache's figures: {"broker","enabled","policy","entries","bytes",
    /// "max_bytes","flights","counters":{"hits","misses",...}}.
    Stats,
    /// Drop cached results by tag or by function (exactly one), and what was computed from
    /// them.
    Invalidate {
        /// Drop the results carrying this tag.
        #[arg(long, conflicts_with = "fun", required_unless_present = "fun")]
        tag: Option<String>,
        /// Drop the results of this function.
        #[arg(long)]
        fun: Option<String>,
    },
}

fn parse_cache_mode(text: &str) -> Result<mpreg::CacheMode, String> {
    match text {
        "use" => Ok(mpreg::CacheMode::Use),
        "bypass" => Ok(mpreg::CacheMode::Bypass),
        "refresh" => Ok(mpreg::CacheMode::Refresh),
        other => Err(format!("{other:?}: expected use, bypass or refresh")),
    }
}

/// The subcommands.
#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum Command {
    /// Call one function and print its result.
    Call {
        /// The function.
        fun: String,
        /// Its arguments: each parsed as JSON, or taken as a string when it is not JSON
        /// (`{"$bin": "<hex>"}` is binary). Put `--` before arguments that start with `-` and
        /// are not numbers.
        #[arg(value_name = "ARG", allow_negative_numbers = true)]
        args: Vec<String>,
        /// Resources the worker must hold, comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "RESOURCE,...")]
        locs: Vec<String>,
        /// Only workers whose version of the function satisfies this requirement (Cargo's
        /// syntax, e.g. ">=1.2, <2"; a function registered without a version is 0.0.0).
        #[arg(long = "version", value_name = "REQUIREMENT")]
        version_req: Option<String>,
        /// How the call uses the broker's result cache: use (default: answer from the cache
        /// when the function is cacheable), bypass (always run, store nothing) or refresh
        /// (always run, replace the cached result).
        #[arg(long, value_name = "MODE", value_parser = parse_cache_mode)]
        cache: Option<mpreg::CacheMode>,
    },
    /// Run a plan from a JSON file: an array of {"name", "fun", "args", "kwargs", "locs",
    /// "timeout_ms", "retries", "version"}.
    Plan {
        /// The plan file, or `-` for stdin.
        file: String,
        /// Print every step's result, not only the sinks'.
        #[arg(long)]
        all: bool,
        /// Print one JSON line per finished step before the result line (and, when stderr
        /// is a terminal, a live status line there while the plan runs).
        #[arg(long)]
        progress: bool,
        /// After the result line, print one JSON line per step: where it ran (broker,
        /// worker) and when it became ready, was dispatched, started and finished, in
        /// microseconds since the broker accepted the plan.
        #[arg(long)]
        trace: bool,
    },
    /// Print the broker's status.
    Status,
    /// Print how this broker sees its cluster, as one JSON line:
    /// `{"cluster","self","members":[{"name","incarnation","state","endpoints","functions"}]}`.
    Cluster,
    /// The broker's result cache: `cache stats` prints its figures as one JSON line;
    /// `cache invalidate --tag T | --fun F` drops results here and on the cluster's other
    /// brokers and prints `{"entries": N, "peers": M}`.
    Cache {
        /// What to do.
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Print the cluster's catalogue as one JSON line: `{"functions":[{"fun","versions",
    /// "resources","brokers","capacity"}]}`.
    Functions,
    /// Publish one message to a topic. Prints nothing, or `{"matched":N}` with --confirm; it
    /// always waits for the broker to route the message before exiting.
    Pub {
        /// The topic: words separated by `.`.
        topic: String,
        /// The payload: JSON, or taken as a string when it is not JSON (`{"$bin": "<hex>"}` is
        /// binary).
        #[arg(allow_negative_numbers = true)]
        payload: String,
        /// A header (repeatable).
        #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// Print `{"matched": N}`: how many subscriptions the message matched.
        #[arg(long)]
        confirm: bool,
    },
    /// Subscribe and print one JSON line per message: {"topic", "payload", "headers", "seq",
    /// "id"}. Notices go to stderr, one JSON line each: {"lagging": {...}} when messages were
    /// dropped; {"connection_lost": {...}} when the broker went away, then
    /// {"resubscribed": {...}} once subscribed again (messages in between may be missing).
    Sub {
        /// Topic patterns: `*` matches one word, `#` zero or more.
        #[arg(required = true, value_name = "PATTERN")]
        patterns: Vec<String>,
        /// Exit after this many messages (with --timeout: fail if they do not all arrive).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        /// Deliver the broker's retained messages matching the patterns first.
        #[arg(long)]
        backlog: bool,
    },
    /// Write a new CURVE key pair: BASE.key (public and secret) and BASE.pub (public), both
    /// mode 0600, never overwriting. Prints `{"public": "<Z85>", "key_file", "public_file"}`.
    Keygen {
        /// Path and name of the files, without extension.
        base: String,
    },
}

/// Why the command line was not run.
#[derive(Debug)]
pub enum Usage {
    /// `--help` or `--version`: print this on stdout and succeed.
    Print(String),
    /// Anything else: a usage error (code 902 `invalid_input`).
    Invalid(Error),
}

/// Parses the command line (the first item is the program name).
///
/// # Errors
/// [`Usage::Print`] for `--help`/`--version`, [`Usage::Invalid`] for usage errors.
pub fn parse<I, T>(args: I) -> Result<Cli, Usage>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(args).map_err(|e| {
        use clap::error::ErrorKind;
        match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Usage::Print(e.to_string()),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
                Usage::Invalid(Error::Invalid(
                    "a command is required: call, plan, status, cluster, functions, pub, sub or keygen (see --help)"
                        .to_string(),
                ))
            }
            _ => Usage::Invalid(Error::Invalid(usage_message(&e))),
        }
    })
}

/// clap's error as one line: its first paragraph (the error and, for missing arguments, their
/// names), without the `error: ` prefix, the tips and the usage.
fn usage_message(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let paragraph: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .collect();
    let line = paragraph.join(" ");
    match line.strip_prefix("error: ").unwrap_or(&line) {
        "" => "invalid command line".to_string(),
        message => message.to_string(),
    }
}

/// Parses `SECONDS` (a positive number, fractions allowed).
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if seconds.is_nan() || seconds <= 0.0 {
        return Err(format!("`{text}`: the timeout must be more than 0 seconds"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` seconds is too long"))
}

/// Parses `KEY=VALUE` (the value may contain `=`; the key may not be empty).
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("`{text}`: a header is KEY=VALUE")),
    }
}

/// A command-line argument as a value: JSON when it parses as JSON, else the string itself.
///
/// # Errors
/// [`Error::Invalid`] for JSON with a malformed `{"$bin": ..}`/`{"$ext": ..}` object.
pub fn parse_arg(text: &str) -> Result<Value, Error> {
    match serde_json::from_str::<Json>(text) {
        Ok(json) => from_json(&json).map_err(|e| Error::Invalid(format!("argument {text}: {e}"))),
        Err(_) => Ok(Value::from(text)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn z85_keys_may_start_with_a_hyphen() {
        let key = "-f3Ys&Pw6(x0=fvs^{w9t7-/OCSYqG%wXNWLLiKp";
        let cli = parsed(&["--server-key", key, "--key-file", "k.key", "status"]);
        assert_eq!(cli.server_key.as_deref(), Some(key));
    }

    fn parsed(args: &[&str]) -> Cli {
        match parse(std::iter::once("mpreg").chain(args.iter().copied())) {
            Ok(cli) => cli,
            Err(e) => panic!("{args:?}: {e:?}"),
        }
    }

    fn usage_error(args: &[&str]) -> Error {
        match parse(std::iter::once("mpreg").chain(args.iter().copied())) {
            Err(Usage::Invalid(e)) => e,
            other => panic!("{args:?}: expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn call_takes_args_locs_and_global_options_anywhere() {
        let cli = parsed(&[
            "call",
            "echo",
            "hi",
            "-5",
            "{\"a\":1}",
            "--locs",
            "a,b",
            "--timeout",
            "1.5",
            "--broker",
            "tcp://h:1",
        ]);
        assert_eq!(cli.broker, "tcp://h:1");
        assert_eq!(cli.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(
            cli.command,
            Command::Call {
                fun: "echo".into(),
                args: vec!["hi".into(), "-5".into(), "{\"a\":1}".into()],
                locs: vec!["a".into(), "b".into()],
                version_req: None,
                cache: None,
            }
        );
        let cli = parsed(&["call", "f", "--cache", "refresh"]);
        assert!(matches!(
            cli.command,
            Command::Call {
                cache: Some(mpreg::CacheMode::Refresh),
                ..
            }
        ));
        let cli = parsed(&["--timeout", "2", "call", "f", "--", "-x"]);
        assert_eq!(cli.timeout, Some(Duration::from_secs(2)));
        assert!(matches!(cli.command, Command::Call { ref args, .. } if args == &["-x"]));
    }

    #[test]
    fn plan_and_status() {
        let cli = parsed(&["plan", "-", "--all", "--progress", "--trace"]);
        assert_eq!(
            cli.command,
            Command::Plan {
                file: "-".into(),
                all: true,
                progress: true,
                trace: true,
            }
        );
        assert_eq!(cli.timeout, None);
        let cli = parsed(&["status"]);
        assert_eq!(cli.command, Command::Status);
    }

    #[test]
    fn pub_and_sub() {
        let cli = parsed(&[
            "pub",
            "orders.1.eu",
            "-3",
            "--header",
            "a=b=c",
            "--header",
            "k=",
            "--confirm",
        ]);
        assert_eq!(
            cli.command,
            Command::Pub {
                topic: "orders.1.eu".into(),
                payload: "-3".into(),
                headers: vec![("a".into(), "b=c".into()), ("k".into(), String::new())],
                confirm: true,
            }
        );
        let cli = parsed(&["pub", "t", "{\"x\":1}"]);
        assert!(
            matches!(cli.command, Command::Pub { confirm: false, ref headers, .. } if headers.is_empty())
        );
        let cli = parsed(&[
            "sub",
            "a.*",
            "b.#",
            "--count",
            "2",
            "--backlog",
            "--timeout",
            "1",
        ]);
        assert_eq!(
            cli.command,
            Command::Sub {
                patterns: vec!["a.*".into(), "b.#".into()],
                count: Some(2),
                backlog: true,
            }
        );
        assert_eq!(cli.timeout, Some(Duration::from_secs(1)));
        let cli = parsed(&["sub", "#"]);
        assert_eq!(
            cli.command,
            Command::Sub {
                patterns: vec!["#".into()],
                count: None,
                backlog: false,
            }
        );
    }

    #[test]
    fn broker_defaults_to_the_local_port() {
        // MPREG_BROKER may be set in the environment running the tests.
        if std::env::var_os("MPREG_BROKER").is_none() {
            assert_eq!(parsed(&["status"]).broker, DEFAULT_ENDPOINT);
        }
    }

    #[test]
    fn usage_errors_are_invalid_input_on_one_line() {
        for args in [
            &["call"][..],
            &[],
            &["frobnicate"],
            &["status", "--bogus"],
            &["status", "--timeout", "soon"],
            &["status", "--timeout", "0"],
            &["status", "--timeout", "-1"],
            &["status", "--timeout", "NaN"],
            &["pub", "t"],
            &["pub", "t", "1", "--header", "novalue"],
            &["pub", "t", "1", "--header", "=v"],
            &["sub"],
            &["sub", "t", "--count", "0"],
            &["sub", "t", "--count", "-1"],
        ] {
            let err = usage_error(args);
            assert_eq!((err.code(), err.kind()), (902, "invalid_input"), "{args:?}");
            assert!(!err.message().contains('\n'), "{:?}", err.message());
            assert!(!err.message().starts_with("error:"), "{:?}", err.message());
        }
        let err = usage_error(&["status", "--timeout", "soon"]);
        assert!(err.message().contains("not a number of seconds"), "{err}");
        let err = usage_error(&["call"]);
        assert!(err.message().contains("<FUN>"), "{err}");
        let err = usage_error(&[]);
        assert!(err.message().contains("a command is required"), "{err}");
    }

    #[test]
    fn help_and_version_print_normally() {
        for flag in ["--help", "--version"] {
            match parse(["mpreg", flag]) {
                Err(Usage::Print(text)) => assert!(text.contains("mpreg"), "{text}"),
                other => panic!("{flag}: {other:?}"),
            }
        }
    }

    #[test]
    fn args_are_json_or_strings() {
        assert_eq!(parse_arg("42").unwrap(), Value::from(42));
        assert_eq!(parse_arg("-3").unwrap(), Value::from(-3));
        assert_eq!(parse_arg("1.5").unwrap(), Value::F64(1.5));
        assert_eq!(parse_arg("true").unwrap(), Value::Boolean(true));
        assert_eq!(parse_arg("null").unwrap(), Value::Nil);
        assert_eq!(parse_arg("\"42\"").unwrap(), Value::from("42"));
        assert_eq!(parse_arg("hi there").unwrap(), Value::from("hi there"));
        assert_eq!(parse_arg("").unwrap(), Value::from(""));
        assert_eq!(
            parse_arg("[1, \"a\"]").unwrap(),
            Value::Array(vec![Value::from(1), Value::from("a")])
        );
        assert_eq!(
            parse_arg("{\"$bin\": \"0aff\"}").unwrap(),
            Value::Binary(vec![0x0a, 0xff])
        );
        let err = parse_arg("{\"$bin\": \"xyz\"}").unwrap_err();
        assert_eq!(err.code(), 902);
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_seconds("3"), Ok(Duration::from_secs(3)));
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("1e400").is_err());
    }
}
