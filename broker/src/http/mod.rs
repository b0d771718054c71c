//! The broker's HTTP side (docs/OPERATIONS.md): `/metrics` (Prometheus text format),
//! `/healthz`, `/readyz`, the dashboard at `/` and the JSON it polls at `/api/dashboard`,
//! served by [`mpreg_process::http`] on threads of their own.
//!
//! Nothing here touches the engine: the figures come from the reactor as a
//! [`MetricsSnapshot`], asked for through the broker's command channel (`ask`, given by the
//! shell) and answered over a one-slot channel. One request is in flight at a time and its
//! answer serves every request for [`SNAPSHOT_REUSE`], so a storm of scrapes costs the
//! reactor at most a few snapshots a second; a reactor that does not answer within
//! [`SNAPSHOT_WAIT`] (or whose command queue is full) gets `503`, never a blocked thread.
//!
//! - `exposition`: the snapshot as Prometheus metrics (`prometheus-client`).
//! - `dashboard_data`: the snapshot as the dashboard's JSON.
//! - `dashboard.html`: the page (inline CSS and script, nothing fetched from elsewhere).

mod dashboard_data;
mod exposition;

use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpreg_process::http::{HttpLimits, HttpServer, Method, Request, Response, Routes};

use crate::engine::MetricsSnapshot;

/// The dashboard page.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// How long one snapshot answers every request (the dashboard polls once a second).
pub const SNAPSHOT_REUSE: Duration = Duration::from_millis(100);

/// How long a request waits for the reactor's snapshot before answering `503`.
pub const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

/// Where a snapshot is sent once the reactor made it.
pub type SnapshotReply = SyncSender<Box<MetricsSnapshot>>;

/// Why no snapshot could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The reactor's command queue is full.
    Busy,
    /// The reactor has ended.
    Stopped,
    /// No answer within [`SNAPSHOT_WAIT`].
    Slow,
}

impl Unavailable {
    fn text(self) -> &'static str {
        match self {
            Unavailable::Busy => "the broker's command queue is full",
            Unavailable::Stopped => "the broker has stopped",
            Unavailable::Slow => "the broker did not answer within 2 s",
        }
    }
}

/// Asks the reactor for a snapshot, to be sent on the given channel.
pub type Ask = Box<dyn Fn(SnapshotReply) -> Result<(), Unavailable> + Send + Sync>;

/// Snapshots from the reactor, one request at a time, reused for a moment.
pub struct Snapshots {
    ask: Ask,
    last: Mutex<Option<(Instant, Arc<MetricsSnapshot>)>>,
}

impl Snapshots {
    /// Snapshots asked for with `ask`.
    pub fn new(ask: Ask) -> Snapshots {
        Snapshots {
            ask,
            last: Mutex::new(None),
        }
    }

    /// A snapshot at most [`SNAPSHOT_REUSE`] old.
    pub fn get(&self) -> Result<Arc<MetricsSnapshot>, Unavailable> {
        // Held while asking: concurrent requests wait for the one answer, bounded by
        // SNAPSHOT_WAIT.
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, snapshot)) = last.as_ref() {
            if at.elapsed() < SNAPSHOT_REUSE {
                return Ok(Arc::clone(snapshot));
            }
        }
        let (tx, rx): (SnapshotReply, Receiver<Box<MetricsSnapshot>>) = sync_channel(1);
        (self.ask)(tx)?;
        let snapshot: Arc<MetricsSnapshot> = match rx.recv_timeout(SNAPSHOT_WAIT) {
            Ok(snapshot) => Arc::from(snapshot),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return Err(Unavailable::Slow),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Unavailable::Stopped)
            }
        };
        *last = Some((Instant::now(), Arc::clone(&snapshot)));
        Ok(snapshot)
    }
}

/// Answers one request.
pub fn respond(snapshots: &Snapshots, request: &Request) -> Response {
    debug_assert!(matches!(request.method, Method::Get | Method::Head));
    match request.path.as_str() {
        "/" | "/index.html" => Response::new(200, "text/html; charset=utf-8", DASHBOARD_HTML),
        "/metrics" => match snapshots.get() {
            Ok(snapshot) => match exposition::encode(&snapshot) {
                Ok(text) => Response::new(200, exposition::CONTENT_TYPE, text),
                Err(_) => Response::text(500, "the metrics could not be encoded"),
            },
            Err(why) => unavailable(why),
        },
        "/api/dashboard" => match snapshots.get() {
            Ok(snapshot) => Response::json(200, &dashboard_data::to_json(&snapshot)),
            Err(why) => unavailable(why),
        },
        "/healthz" => match snapshots.get() {
            Ok(_) => Response::text(200, "ok"),
            Err(why) => unavailable(why),
        },
        "/readyz" => match snapshots.get() {
            Ok(s) if s.shutting_down => Response::text(503, "not ready: shutting down"),
            Ok(_) => Response::text(200, "ready"),
            Err(why) => unavailable(why),
        },
        other => Response::not_found(other),
    }
}

fn unavailable(why: Unavailable) -> Response {
    Response::text(503, why.text()).with_header("Retry-After", "1")
}

/// Serves the broker's HTTP endpoints on `addr`.
///
/// # Errors
/// The address could not be bound.
pub fn start(addr: SocketAddr, ask: Ask, log: slog::Logger) -> std::io::Result<HttpServer> {
    let snapshots = Arc::new(Snapshots::new(ask));
    let routes: Routes = Arc::new(move |request: &Request| respond(&snapshots, request));
    HttpServer::start(addr, HttpLimits::default(), routes, log)
}
