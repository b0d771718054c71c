//! `mpreg-broker`: serves plans on a client endpoint and workers on a worker endpoint.
//!
//! On start it prints one JSON line on stdout with the endpoints it bound:
//! `{"event":"listening","name":...,"client":"tcp://...","worker":"tcp://...","events":"tcp://...","http":"127.0.0.1:7405"}`
//! (`http` is `null` when the HTTP endpoint is off; a broker in a cluster adds `id`, its
//! incarnation, `peer`, `gossip` and `cluster`).
//! SIGTERM or SIGINT: stop accepting plans, let those in flight finish (up to
//! `shutdown_timeout_ms`), tell the workers, exit 0. SIGHUP: reload the access file of a CURVE
//! broker (an unreadable or invalid file is logged and the current rules stay).
//!
//! Protected mode: without CURVE keys (`security.key_file`) every endpoint must be loopback,
//! ipc or inproc, unless `--insecure` is given (then a warning is logged).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mpreg_broker::access::AccessList;
use mpreg_broker::{Broker, BrokerConfig, Flags};
use mpreg_process::logging::stderr_logger;
use mpreg_transport::Context;
use slog::{error, info, warn};

/// mimalloc, not glibc's malloc: under pipelined load glibc's arenas cost the broker about a
/// fifth of its CPU (locks shared with libzmq's I/O thread). Feature `mimalloc` (default).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// MPREG broker: resolves plans and routes their steps to workers.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "Every setting of broker/config/default.toml can also be given as MPREG_BROKER_<KEY> \
(nested keys joined by __, e.g. MPREG_BROKER_LIMITS__MAX_STEPS=1000). Precedence: defaults < \
--config file < environment < flags."
)]
struct Args {
    /// Configuration file (TOML); see broker/config/default.toml for every key.
    #[arg(long, env = "MPREG_BROKER_CONFIG")]
    config: Option<String>,
    #[command(flatten)]
    flags: Flags,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match BrokerConfig::load(args.config.as_deref(), std::env::vars(), &args.flags) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mpreg-broker: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // Validated by `load`.
    let level = config.log_level.parse().unwrap_or(slog::Level::Info);
    let (log, log_guard) = stderr_logger(level, slog::o!("broker" => config.name.clone()));
    if config.exposed_without_curve() {
        warn!(log, "INSECURE: listening beyond loopback without CURVE; anyone who can reach these endpoints can run functions and read topics";
            "client" => &config.client_endpoint, "worker" => &config.worker_endpoint, "events" => &config.event_endpoint);
    }
    let ctx = Context::new();
    let broker = match Broker::start(&config, &ctx, log.clone()) {
        Ok(broker) => broker,
        Err(e) => {
            error!(log, "cannot start"; "error" => %e);
            eprintln!("mpreg-broker: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let mut line = serde_json::json!({
        "event": "listening",
        "name": config.name,
        "client": broker.client_endpoint,
        "worker": broker.worker_endpoint,
        "events": broker.event_endpoint,
        "http": broker.http_endpoint.map(|a| a.to_string()),
    });
    if let Some((id, peer, gossip)) = &broker.cluster {
        line["id"] = serde_json::json!(id.to_string());
        line["peer"] = serde_json::json!(peer);
        line["gossip"] = serde_json::json!(gossip);
        line["cluster"] = serde_json::json!(config.cluster.name);
    }
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
    drop(stdout);
    info!(log, "listening"; "client" => &broker.client_endpoint, "worker" => &broker.worker_endpoint, "name" => &config.name);

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mpreg-broker: cannot start signal handling: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    if !config.curve() {
                        warn!(log, "SIGHUP ignored: no access file without CURVE");
                        continue;
                    }
                    let path = std::path::Path::new(&config.security.access_file);
                    match AccessList::load(path) {
                        Ok(access) => broker.reload(access),
                        Err(e) => error!(log, "access file not reloaded; the current rules stay"; "error" => e),
                    }
                }
            }
        }
    });
    broker.shutdown(Duration::from_millis(config.shutdown_timeout_ms));
    let result = broker.join();
    info!(log, "stopped");
    // The guard flushes what is still queued for stderr.
    drop(log);
    drop(log_guard);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mpreg-broker: {e}");
            ExitCode::from(1)
        }
    }
}
