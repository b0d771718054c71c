//! `mpreg-node`: a worker serving the built-in functions (`echo`, `echos`, `sleep`, `fail`).
//!
//! Prints one JSON line on stdout once it runs, with its HTTP endpoint (`null` when off):
//! `{"event":"listening","node":"<name>","http":"127.0.0.1:NNNN"}`, then one each time it
//! registers with a broker: `{"event":"registered","node":"<name>","broker":"<endpoint>"}`.
//! SIGTERM or SIGINT: tell the brokers, finish running tasks (`drain_timeout_ms`), exit 0.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mpreg_node::config::{Flags, NodeConfig};
use mpreg_node::NodeBuilder;
use mpreg_process::logging::stderr_logger;

/// MPREG worker node serving the built-in functions.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "Every setting of node/config/default.toml can also be given as MPREG_NODE_<KEY> \
(lists comma-separated, e.g. MPREG_NODE_BROKERS=tcp://a:7401,tcp://b:7401). Precedence: \
defaults < --config file < environment < flags."
)]
struct Args {
    /// Configuration file (TOML); see node/config/default.toml.
    #[arg(long, env = "MPREG_NODE_CONFIG")]
    config: Option<String>,
    #[command(flatten)]
    flags: Flags,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match NodeConfig::load(args.config.as_deref(), std::env::vars(), &args.flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mpreg-node: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // Installed before the node starts, so a signal during start-up is a graceful stop too.
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("mpreg-node: cannot install signal handlers");
        return ExitCode::from(1);
    };
    let (log, log_guard) =
        stderr_logger(config.slog_level(), slog::o!("node" => config.name.clone()));
    let name = config.name.clone();
    // `registered` lines wait for the `listening` line.
    let listening_gate = std::sync::Arc::new(std::sync::Mutex::new(()));
    let gate = std::sync::Arc::clone(&listening_gate);
    let mut builder = NodeBuilder::new(&config.name)
        .resources(config.resources.clone())
        .capacity(config.capacity)
        .builtins()
        .logger(log.clone())
        .on_registered(move |broker| {
            // After the `listening` line, which main prints holding the gate.
            let _after_listening = gate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let line = serde_json::json!({"event": "registered", "node": name, "broker": broker});
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        });
    for broker in &config.brokers {
        builder = builder.broker(broker);
    }
    for (function, version) in &config.versions {
        builder = builder.version(function, version);
    }
    // Validated by `load`.
    if let Ok(Some(addr)) = config.http_addr() {
        builder = builder.http(addr);
    }
    match (config.server_key.is_empty(), config.key_file.is_empty()) {
        (true, true) => {}
        (false, false) => {
            let keys = mpreg_transport::curve::load_public(&config.server_key).and_then(|server| {
                mpreg_transport::KeyPair::load(&config.key_file).map(|own| (server, own))
            });
            match keys {
                Ok((server, own)) => builder = builder.curve(server, own),
                Err(e) => {
                    eprintln!("mpreg-node: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => {
            eprintln!(
                "mpreg-node: invalid configuration: CURVE needs both server_key and key_file"
            );
            return ExitCode::from(2);
        }
    }
    let listening = listening_gate
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let node = match builder.start() {
        Ok(node) => node,
        Err(e) => {
            eprintln!("mpreg-node: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let http = node.http_endpoint();
    let line = serde_json::json!({"event": "listening", "node": config.name, "http": http.map(|a| a.to_string())});
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    drop(out);
    drop(listening);
    slog::info!(log, "started"; "node" => &config.name, "brokers" => config.brokers.join(","), "resources" => config.resources.join(","), "capacity" => config.capacity);
    let refused = tokio::select! {
        _ = term.recv() => None,
        _ = int.recv() => None,
        reason = node.refused() => Some(reason),
    };
    if let Some(reason) = refused {
        eprintln!("mpreg-node: {reason}");
        node.shutdown(Duration::ZERO).await;
        drop(log);
        drop(log_guard);
        return ExitCode::from(2);
    }
    node.shutdown(Duration::from_millis(config.drain_timeout_ms))
        .await;
    slog::info!(log, "stopped");
    drop(log);
    drop(log_guard);
    ExitCode::SUCCESS
}
