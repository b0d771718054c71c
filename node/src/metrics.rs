//! The node's figures and its HTTP endpoint: `/metrics` (Prometheus text format, every name
//! `mpreg_node_*`, listed in docs/OPERATIONS.md), `/healthz` (the node runs) and `/readyz`
//! (registered with at least one broker and not draining).
//!
//! The reactor updates the metrics as tasks come and go (`prometheus-client` counters, gauges
//! and histograms: atomics and short locks, no I/O); the HTTP threads only read them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mpreg_process::http::{HttpLimits, HttpServer, Request, Response, Routes};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Bucket bounds of the task histograms, in seconds (50 us to 60 s).
const BUCKETS: [f64; 19] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Labels naming a function.
type FunctionLabel = Vec<(&'static str, String)>;

/// The node's metrics, shared by the reactor (which updates them) and the HTTP threads.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    /// Tasks read from brokers.
    pub received: Counter,
    /// Tasks answered with a result.
    pub completed: Counter,
    /// Tasks answered with a failure, by kind.
    pub failed: Family<Vec<(&'static str, String)>, Counter>,
    /// Tasks dropped unanswered: cancelled, their broker session ended, or refused while
    /// closing.
    pub abandoned: Counter,
    /// Tasks running now.
    pub running: Gauge,
    /// Tasks waiting for a free slot in the node's queue.
    pub queued: Gauge,
    /// Brokers the node is registered with.
    pub brokers: Gauge,
    /// Connections to brokers lost (silence, `disconnect`).
    pub connections_lost: Counter,
    /// Function run time, by function.
    pub run: Family<FunctionLabel, Histogram, fn() -> Histogram>,
    /// Time in the node's queue before the function started, by function.
    pub queue: Family<FunctionLabel, Histogram, fn() -> Histogram>,
}

impl NodeMetrics {
    /// Fresh metrics of a node with `capacity` slots.
    pub fn new(capacity: u32) -> NodeMetrics {
        let mut registry = Registry::with_prefix("mpreg_node");
        let m = NodeMetrics {
            registry: Registry::default(),
            received: Counter::default(),
            completed: Counter::default(),
            failed: Family::default(),
            abandoned: Counter::default(),
            running: Gauge::default(),
            queued: Gauge::default(),
            brokers: Gauge::default(),
            connections_lost: Counter::default(),
            run: Family::new_with_constructor(histogram),
            queue: Family::new_with_constructor(histogram),
        };
        let capacity_gauge: Gauge = Gauge::default();
        capacity_gauge.set(i64::from(capacity));
        registry.register(
            "tasks_received",
            "Tasks read from brokers",
            m.received.clone(),
        );
        registry.register(
            "tasks_completed",
            "Tasks answered with a result",
            m.completed.clone(),
        );
        registry.register(
            "tasks_failed",
            "Tasks answered with a failure, by kind (function_error, unknown_function, bad_arguments, panic)",
            m.failed.clone(),
        );
        registry.register(
            "tasks_abandoned",
            "Tasks dropped unanswered: cancelled by their broker, their broker session ended, or refused while closing",
            m.abandoned.clone(),
        );
        registry.register("tasks_running", "Tasks running now", m.running.clone());
        registry.register(
            "tasks_queued",
            "Tasks waiting in the node's queue for a free slot",
            m.queued.clone(),
        );
        registry.register("capacity", "Tasks the node runs at once", capacity_gauge);
        registry.register(
            "brokers_registered",
            "Brokers the node is registered with",
            m.brokers.clone(),
        );
        registry.register(
            "connections_lost",
            "Broker connections lost (silence or disconnect); each is reopened with backoff",
            m.connections_lost.clone(),
        );
        registry.register(
            "task_run_seconds",
            "Time functions ran, by function",
            m.run.clone(),
        );
        registry.register(
            "task_queue_seconds",
            "Time tasks waited in the node's queue before their function started, by function",
            m.queue.clone(),
        );
        NodeMetrics { registry, ..m }
    }

    /// One task of `function` ran after waiting `queued`, for `ran`.
    pub fn observe(&self, function: &str, queued: Duration, ran: Duration) {
        let label = vec![("function", function.to_string())];
        self.queue
            .get_or_create(&label)
            .observe(queued.as_secs_f64());
        self.run.get_or_create(&label).observe(ran.as_secs_f64());
    }

    /// A failure of `kind` was answered.
    pub fn failure(&self, kind: &str) {
        self.failed
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    /// The exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// What the node's HTTP endpoint reads.
pub(crate) struct HttpState {
    pub(crate) metrics: Arc<NodeMetrics>,
    pub(crate) registered: tokio::sync::watch::Receiver<usize>,
    pub(crate) draining: Arc<AtomicBool>,
}

fn respond(state: &HttpState, request: &Request) -> Response {
    let registered = *state.registered.borrow();
    match request.path.as_str() {
        "/metrics" => {
            state.metrics.brokers.set(registered as i64);
            match state.metrics.encode() {
                Ok(text) => Response::new(200, prometheus_text::CONTENT_TYPE, text),
                Err(_) => Response::text(500, "the metrics could not be encoded"),
            }
        }
        "/healthz" => Response::text(200, "ok"),
        "/readyz" => {
            if state.draining.load(Ordering::SeqCst) {
                Response::text(503, "not ready: draining")
            } else if registered == 0 {
                Response::text(503, "not ready: not registered with any broker")
            } else {
                Response::text(
                    200,
                    &format!("ready: registered with {registered} broker(s)"),
                )
            }
        }
        other => Response::not_found(other),
    }
}

/// Serves the node's endpoints on `addr`.
pub(crate) fn serve(
    addr: SocketAddr,
    state: HttpState,
    log: slog::Logger,
) -> std::io::Result<HttpServer> {
    let routes: Routes = Arc::new(move |request: &Request| respond(&state, request));
    HttpServer::start(addr, HttpLimits::default(), routes, log)
}
