//! The MPREG worker node library: serve Rust functions (sync and async) to one or more brokers.
//!
//! A node registers its functions, the resources it holds and its capacity (tasks it runs at
//! once) with every broker it is given; it heartbeats, re-registers when a broker restarts,
//! reconnects with backoff (1 s doubling to 32 s) when a broker goes silent, and on
//! [`Node::shutdown`] tells its brokers it is leaving and finishes the tasks it has.
//!
//! Layout:
//! - [`NodeBuilder`] / [`Node`] (this file): configure, start, wait for registration, stop.
//! - [`functions`]: how a function runs ([`Function`]), failures, panic catching, built-ins.
//! - `link` (private): the reactor handler, one DEALER per broker: registration, heartbeats,
//!   liveness, reconnection, the task queue and capacity, cancel, drain.
//! - [`config`]: the binary's layered configuration (defaults, file, environment, flags).
//! - [`metrics`]: the node's metrics and its HTTP endpoint (`/metrics`, `/healthz`,
//!   `/readyz`), when [`NodeBuilder::http`] asks for one.
//!
//! Threads: the broker connections live on one reactor thread (`mpreg-node`, from
//! `mpreg-transport`). Functions added with [`NodeBuilder::inline_function`] and the built-ins
//! `echo`, `echos` and `fail` run on that thread (no hop: lowest latency); functions added with
//! [`NodeBuilder::function`] run on tokio's blocking pool, async ones as tokio tasks, and both
//! post their outcome back to the reactor. A panicking function becomes a `panic` failure.
//!
//! The one rule: a task is answered at most once, and only on the broker session it came
//! from; tasks of a session that ended (silence, `disconnect`, `reconnect`) are abandoned,
//! because the broker has already re-dispatched them and may reuse their ids.
//!
//! ```no_run
//! use mpreg_node::{NodeBuilder, Value};
//!
//! # async fn run() -> Result<(), mpreg_node::NodeError> {
//! let node = NodeBuilder::new("featurizer")
//!     .broker("tcp://127.0.0.1:7401")
//!     .resources(["dataset-a", "gpu"])
//!     .capacity(8)
//!     .builtins()
//!     // Cheap and non-blocking: runs on the node's I/O thread.
//!     .inline_function("len", |args, _kwargs| Ok::<_, String>(Value::from(args.len() as u64)))
//!     // May block: runs on tokio's blocking pool.
//!     .function("checksum", |args, _kwargs| -> Result<Value, String> {
//!         let text = args.first().and_then(|v| v.as_str()).ok_or("checksum(text)")?;
//!         Ok(Value::from(text.bytes().map(u64::from).sum::<u64>()))
//!     })
//!     // Async.
//!     .async_function("later", |args, _kwargs| async move {
//!         Ok::<_, String>(args.into_iter().next().unwrap_or(Value::Nil))
//!     })
//!     .start()?;
//! node.wait_registered(std::time::Duration::from_secs(5)).await;
//! node.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

pub mod config;
pub mod functions;
mod link;
pub mod metrics;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use functions::{Args, Failure, Function, Kwargs, Outcome};
pub use mpreg_protocol::Value;
use mpreg_transport::{spawn_with_handle, Context, ReactorHandle, ReactorThread, TransportError};

use crate::link::{Command, NodeHandler, NodeSetup, OnRegistered};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// `start` was called outside a tokio runtime.
    #[error("mpreg-node needs a tokio runtime: call start() from within one")]
    NoRuntime,
    /// No broker endpoint was given.
    #[error("no broker endpoint given")]
    NoBroker,
    /// A socket could not be set up (bad endpoint, ...).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The HTTP endpoint could not be bound.
    #[error("http endpoint: {0}")]
    Http(String),
}

/// Builds a node: name, brokers, resources, capacity and functions.
pub struct NodeBuilder {
    name: String,
    brokers: Vec<String>,
    resources: Vec<String>,
    capacity: u32,
    functions: HashMap<String, Function>,
    versions: HashMap<String, String>,
    cacheable: HashMap<String, mpreg_protocol::CacheRule>,
    on_registered: Option<OnRegistered>,
    log: slog::Logger,
    curve: Option<mpreg_transport::Curve>,
    http: Option<std::net::SocketAddr>,
}

impl NodeBuilder {
    /// A node with this name, capacity 64 and no functions yet.
    pub fn new(name: impl Into<String>) -> NodeBuilder {
        NodeBuilder {
            name: name.into(),
            brokers: Vec::new(),
            resources: Vec::new(),
            capacity: 64,
            functions: HashMap::new(),
            versions: HashMap::new(),
            cacheable: HashMap::new(),
            on_registered: None,
            log: slog::Logger::root(slog::Discard, slog::o!()),
            curve: None,
            http: None,
        }
    }

    /// Serves `/metrics` (Prometheus text format), `/healthz` and `/readyz` (registered with
    /// a broker and not draining) on `addr` (port 0: the OS chooses; see
    /// [`Node::http_endpoint`]). It has no authentication: prefer a loopback address.
    ///
    /// ```
    /// let node = mpreg_node::NodeBuilder::new("n")
    ///     .builtins()
    ///     .http("127.0.0.1:0".parse().unwrap());
    /// ```
    pub fn http(mut self, addr: std::net::SocketAddr) -> Self {
        self.http = Some(addr);
        self
    }

    /// Connects with CURVE: `server` is the brokers' public key, `own` this node's key pair
    /// (its public key must be in the brokers' access file as a worker).
    pub fn curve(mut self, server: mpreg_transport::Key, own: mpreg_transport::KeyPair) -> Self {
        self.curve = Some(mpreg_transport::Curve::Client { server, own });
        self
    }

    /// Adds a broker's worker endpoint (call again for more brokers).
    pub fn broker(mut self, endpoint: impl Into<String>) -> Self {
        self.brokers.push(endpoint.into());
        self
    }

    /// Adds a resource this node holds.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// Adds resources this node holds.
    pub fn resources<I, S>(mut self, resources: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.resources.extend(resources.into_iter().map(Into::into));
        self
    }

    /// Tasks run at once (at least 1); more wait in the node's queue.
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// A synchronous function that may block: it runs on tokio's blocking pool.
    pub fn function<F, E>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(Args, Kwargs) -> Result<Value, E> + Send + Sync + 'static,
        E: Into<Failure>,
    {
        self.functions.insert(
            name.into(),
            Function::Blocking(Arc::new(move |a, k| f(a, k).map_err(Into::into))),
        );
        self
    }

    /// A cheap, non-blocking synchronous function: it runs on the node's I/O thread, which is
    /// fastest but stalls the node while it runs.
    pub fn inline_function<F, E>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(Args, Kwargs) -> Result<Value, E> + Send + Sync + 'static,
        E: Into<Failure>,
    {
        self.functions.insert(
            name.into(),
            Function::Inline(Arc::new(move |a, k| f(a, k).map_err(Into::into))),
        );
        self
    }

    /// An async function: it runs as a tokio task.
    pub fn async_function<F, Fut, E>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(Args, Kwargs) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, E>> + Send + 'static,
        E: Into<Failure>,
    {
        let f = Arc::new(f);
        self.functions.insert(
            name.into(),
            Function::Async(Arc::new(move |a, k| {
                let fut = f(a, k);
                Box::pin(async move { fut.await.map_err(Into::into) })
            })),
        );
        self
    }

    /// Registers `function` with a semantic version (`"1.4.2"`): steps may then ask for a
    /// version requirement (`">=1.2, <2"`) and only workers whose version satisfies it run
    /// them. A function given no version counts as `0.0.0` for requirements.
    ///
    /// ```
    /// let node = mpreg_node::NodeBuilder::new("n")
    ///     .builtins()
    ///     .version("echo", "2.1.0");
    /// ```
    pub fn version(mut self, function: impl Into<String>, version: impl Into<String>) -> Self {
        self.versions.insert(function.into(), version.into());
        self
    }

    /// Declares `function` pure: the brokers may answer an identical call (same function,
    /// version, resources and arguments) from their result cache, for `ttl` (`None`: until
    /// evicted or invalidated), and invalidate its results by any of `tags`. Declare only
    /// functions whose result depends on nothing but their arguments; a function no worker
    /// declares is never cached.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let node = mpreg_node::NodeBuilder::new("n")
    ///     .builtins()
    ///     .cacheable("echo", Some(Duration::from_secs(30)), &["demo"]);
    /// ```
    pub fn cacheable(
        mut self,
        function: impl Into<String>,
        ttl: Option<Duration>,
        tags: &[&str],
    ) -> Self {
        let rule = mpreg_protocol::CacheRule {
            ttl_ms: ttl.map(|t| (t.as_millis() as u64).max(1)),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        };
        self.cacheable.insert(function.into(), rule);
        self
    }

    /// Adds the built-ins: `echo`, `echos`, `echokw`, `sleep`, `fail`, and `slow` (declared
    /// cacheable for 60 s).
    pub fn builtins(mut self) -> Self {
        for (name, f) in functions::builtins() {
            self.functions.insert(name.to_string(), f);
        }
        self.cacheable("slow", Some(functions::SLOW_TTL), &[])
    }

    /// Called with the broker endpoint each time the node registers.
    pub fn on_registered(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_registered = Some(Arc::new(f));
        self
    }

    /// Logs connection events through `log`.
    pub fn logger(mut self, log: slog::Logger) -> Self {
        self.log = log;
        self
    }

    /// Connects to the brokers and starts serving.
    ///
    /// Must be called within a tokio runtime: async functions run as tasks on it, and
    /// functions added with [`NodeBuilder::function`] on its blocking pool. The broker
    /// connections live on a dedicated reactor thread (`mpreg-node`), so the runtime may be a
    /// current-thread one as long as it keeps running.
    ///
    /// # Errors
    /// [`NodeError::NoRuntime`] outside a tokio runtime, [`NodeError::NoBroker`] when no
    /// broker was given, [`NodeError::Transport`] for an invalid endpoint, [`NodeError::Http`]
    /// when the HTTP address cannot be bound.
    pub fn start(self) -> Result<Node, NodeError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NodeError::NoRuntime)?;
        if self.brokers.is_empty() {
            return Err(NodeError::NoBroker);
        }
        for endpoint in &self.brokers {
            mpreg_transport::endpoint::validate(endpoint)?;
        }
        let (registered_tx, registered) = tokio::sync::watch::channel(0usize);
        let (refused_tx, refused) = tokio::sync::watch::channel(None);
        let metrics = Arc::new(metrics::NodeMetrics::new(self.capacity));
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let http = match self.http {
            Some(addr) => {
                let state = metrics::HttpState {
                    metrics: Arc::clone(&metrics),
                    registered: registered.clone(),
                    draining: Arc::clone(&draining),
                };
                let log = self.log.new(slog::o!("component" => "http"));
                Some(
                    metrics::serve(addr, state, log)
                        .map_err(|e| NodeError::Http(format!("cannot listen on {addr}: {e}")))?,
                )
            }
            None => None,
        };
        let ctx = Context::new();
        let setup = NodeSetup {
            name: self.name,
            functions: self.functions,
            versions: self.versions,
            cacheable: self.cacheable,
            resources: self.resources,
            capacity: self.capacity,
            brokers: self.brokers,
            curve: self.curve,
            runtime,
            on_registered: self.on_registered,
            registered: registered_tx,
            refused: refused_tx,
            log: self.log,
            metrics,
        };
        let (handle, thread) =
            spawn_with_handle("mpreg-node", &ctx, COMMAND_CAPACITY, move |io, own| {
                NodeHandler::new(setup, own, io)
            })?;
        Ok(Node {
            handle,
            thread: Some(thread),
            registered,
            refused,
            http,
            draining,
        })
    }
}

/// Commands (finished tasks, shutdown) queued to the reactor before senders wait: finished
/// tasks beyond it wait in their tokio tasks, so this bounds memory, not throughput.
const COMMAND_CAPACITY: usize = 1024;

/// A running node. Dropping it without [`Node::shutdown`] stops it at once (running tasks are
/// abandoned; the brokers re-dispatch them).
pub struct Node {
    handle: ReactorHandle<Command>,
    thread: Option<ReactorThread<NodeHandler>>,
    registered: tokio::sync::watch::Receiver<usize>,
    refused: tokio::sync::watch::Receiver<Option<String>>,
    /// The HTTP endpoint, stopped with the node.
    http: Option<mpreg_process::http::HttpServer>,
    /// Set at shutdown (`/readyz` then answers 503).
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl Node {
    /// The HTTP endpoint actually bound, when [`NodeBuilder::http`] asked for one.
    pub fn http_endpoint(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(|h| h.local_addr())
    }

    /// Brokers this node is registered with now.
    pub fn registered_brokers(&self) -> usize {
        *self.registered.borrow()
    }

    /// Waits until registered with at least one broker; false on timeout.
    pub async fn wait_registered(&self, timeout: Duration) -> bool {
        let mut registered = self.registered.clone();
        tokio::time::timeout(timeout, registered.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Resolves when every broker refused this node's registration as invalid (an over-long
    /// name, say: retrying cannot help, so the node stops trying), with the last broker's
    /// reason. Never resolves while any broker may still accept it.
    pub async fn refused(&self) -> String {
        let mut refused = self.refused.clone();
        let reason = match refused.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            // The reactor is gone without a refusal: never resolve.
            None => std::future::pending().await,
        }
    }

    /// Graceful stop: tells every broker the node is leaving (`disconnect`), so no new tasks
    /// arrive; lets running and queued tasks finish and sends their results, for at most
    /// `drain`; then closes the connections. Returns when the node has stopped.
    pub async fn shutdown(mut self, drain: Duration) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self
            .handle
            .send(Command::Shutdown {
                deadline: Instant::now() + drain,
            })
            .await;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(http) = self.http.take() {
            // Joins the accept thread: off the runtime's worker threads.
            let _ = tokio::task::spawn_blocking(move || drop(http)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.handle.try_send(Command::Shutdown {
                deadline: Instant::now(),
            });
        }
    }
}
