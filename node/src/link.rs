//! The node's reactor: one DEALER per broker, registration, heartbeats both ways, reconnection
//! with backoff, task execution within the node's capacity, graceful drain.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mpreg_protocol::{
    encode_body, failure_kind, parse_envelope, BrokerToWorker, Disconnect, Heartbeat, Limits,
    Register, Task, TaskFailure, TaskResult, VERSION,
};
use mpreg_transport::{
    Handler, Io, ReactorHandle, SocketId, SocketKind, SocketOptions, SocketSpec,
};
use slog::{debug, info, warn, Logger};

use crate::functions::{Failure, Function, Outcome};

/// First delay before reopening a connection to a broker that went silent.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest delay between reconnection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(32);
/// How often `register` is repeated until the broker answers.
pub const REGISTER_EVERY: Duration = Duration::from_secs(1);
/// How soon `register` is retried when the connection is not up yet.
pub const REGISTER_RETRY: Duration = Duration::from_millis(20);

/// Messages to the node's reactor.
pub enum Command {
    /// A task running off the reactor finished.
    Done {
        /// Which broker link it came from.
        link: usize,
        /// The link's connection generation when the task arrived.
        generation: u64,
        /// The broker's task id.
        task: u64,
        /// Its outcome.
        outcome: Outcome,
    },
    /// Stop taking tasks, finish the running ones until `deadline`, then end.
    Shutdown {
        /// Drain deadline.
        deadline: Instant,
    },
}

/// Called with a broker endpoint each time the node registers with it.
pub type OnRegistered = Arc<dyn Fn(&str) + Send + Sync>;

struct Link {
    endpoint: String,
    socket: Option<SocketId>,
    generation: u64,
    registered: bool,
    heartbeat: Duration,
    liveness: u32,
    last_heard: Instant,
    next_heartbeat: Instant,
    next_register: Instant,
    reopen_at: Option<Instant>,
    backoff: Duration,
}

struct Queued {
    link: usize,
    generation: u64,
    task: Task<'static>,
}

/// The node's state on its reactor thread.
pub struct NodeHandler {
    pub(crate) name: String,
    pub(crate) functions: HashMap<String, Function>,
    pub(crate) resources: Vec<String>,
    pub(crate) capacity: u32,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) handle: Arc<OnceLock<ReactorHandle<Command>>>,
    pub(crate) on_registered: Option<OnRegistered>,
    pub(crate) registered_count: Arc<AtomicUsize>,
    pub(crate) log: Logger,
    links: Vec<Link>,
    running: HashMap<(usize, u64), Option<tokio::task::AbortHandle>>,
    queue: VecDeque<Queued>,
    drain_deadline: Option<Instant>,
    finished: bool,
    limits: Limits,
}

impl NodeHandler {
    /// A handler for these brokers; sockets open on the first tick.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        functions: HashMap<String, Function>,
        resources: Vec<String>,
        capacity: u32,
        brokers: Vec<String>,
        runtime: tokio::runtime::Handle,
        handle: Arc<OnceLock<ReactorHandle<Command>>>,
        on_registered: Option<OnRegistered>,
        registered_count: Arc<AtomicUsize>,
        log: Logger,
        io: &mut Io,
    ) -> Result<NodeHandler, mpreg_transport::TransportError> {
        let now = Instant::now();
        let mut handler = NodeHandler {
            name,
            functions,
            resources,
            capacity: capacity.max(1),
            runtime,
            handle,
            on_registered,
            registered_count,
            log,
            links: brokers
                .into_iter()
                .map(|endpoint| Link {
                    endpoint,
                    socket: None,
                    generation: 0,
                    registered: false,
                    heartbeat: Duration::from_secs(1),
                    liveness: 3,
                    last_heard: now,
                    next_heartbeat: now,
                    next_register: now,
                    reopen_at: None,
                    backoff: BACKOFF_MIN,
                })
                .collect(),
            running: HashMap::new(),
            queue: VecDeque::new(),
            drain_deadline: None,
            finished: false,
            limits: Limits::default(),
        };
        for i in 0..handler.links.len() {
            handler.open(io, i)?;
        }
        Ok(handler)
    }

    fn open(&mut self, io: &mut Io, i: usize) -> Result<(), mpreg_transport::TransportError> {
        let options = SocketOptions {
            immediate: true,
            ..SocketOptions::dealer_client()
        }
        .with_max_frame_bytes(self.limits.max_message_bytes.saturating_add(1 << 20));
        let socket = io.open(
            &SocketSpec::new(SocketKind::Dealer, options).connect(self.links[i].endpoint.clone()),
        )?;
        let now = io.now();
        let link = &mut self.links[i];
        link.socket = Some(socket);
        link.generation += 1;
        link.registered = false;
        link.last_heard = now;
        link.next_register = now;
        link.reopen_at = None;
        self.send_register(io, i);
        Ok(())
    }

    /// Sends to a broker; false if the message was dropped. A full or not yet connected pipe
    /// drops it: registration and heartbeats are repeated, and a lost result is re-run by the
    /// broker after it expires us.
    fn send(&self, io: &mut Io, i: usize, kind: &str, body: &[u8]) -> bool {
        match self.links[i].socket {
            Some(socket) => io.send(socket, &[VERSION, kind.as_bytes(), body]).is_ok(),
            None => false,
        }
    }

    fn send_register(&mut self, io: &mut Io, i: usize) {
        let mut functions: Vec<String> = self.functions.keys().cloned().collect();
        functions.sort();
        let body = encode_body(&Register {
            node: self.name.clone(),
            functions,
            resources: self.resources.clone(),
            capacity: self.capacity,
        });
        // Until the connection exists the send fails at once (IMMEDIATE): retry soon.
        let retry = if self.send(io, i, "register", &body) {
            REGISTER_EVERY
        } else {
            REGISTER_RETRY
        };
        self.links[i].next_register = io.now() + retry;
    }

    fn link_of(&self, socket: SocketId) -> Option<usize> {
        self.links.iter().position(|l| l.socket == Some(socket))
    }

    /// Forgets a broker connection and schedules a fresh one after the backoff.
    fn drop_link(&mut self, io: &mut Io, i: usize, why: &str) {
        let now = io.now();
        let link = &mut self.links[i];
        if let Some(socket) = link.socket.take() {
            io.close(socket);
        }
        if link.registered {
            self.registered_count.fetch_sub(1, Ordering::Relaxed);
        }
        link.registered = false;
        link.reopen_at = Some(now + link.backoff);
        warn!(self.log, "broker connection lost"; "broker" => &link.endpoint, "why" => why, "retry_in_ms" => link.backoff.as_millis() as u64);
        link.backoff = (link.backoff * 2).min(BACKOFF_MAX);
        self.queue.retain(|q| q.link != i);
    }

    fn on_broker_message(&mut self, io: &mut Io, i: usize, frames: Vec<Vec<u8>>) {
        self.links[i].last_heard = io.now();
        let message = match parse_envelope(&frames) {
            Ok(env) => BrokerToWorker::decode(env.kind, env.body, &self.limits),
            Err(e) => {
                warn!(self.log, "malformed message from broker"; "error" => %e);
                return;
            }
        };
        match message {
            Ok(BrokerToWorker::Registered(r)) => {
                let link = &mut self.links[i];
                if !link.registered {
                    self.registered_count.fetch_add(1, Ordering::Relaxed);
                }
                link.registered = true;
                link.heartbeat = Duration::from_millis(r.heartbeat_ms.max(10));
                link.liveness = r.liveness.max(1);
                link.backoff = BACKOFF_MIN;
                link.next_heartbeat = io.now() + link.heartbeat;
                info!(self.log, "registered"; "broker" => &r.broker, "endpoint" => &link.endpoint);
                if let Some(callback) = &self.on_registered {
                    callback(&self.links[i].endpoint);
                }
            }
            Ok(BrokerToWorker::Task(task)) => {
                let generation = self.links[i].generation;
                self.queue.push_back(Queued {
                    link: i,
                    generation,
                    task,
                });
                self.pump(io);
            }
            Ok(BrokerToWorker::Cancel(cancel)) => {
                if let Some(Some(abort)) = self.running.remove(&(i, cancel.task)) {
                    abort.abort();
                }
                self.queue
                    .retain(|q| !(q.link == i && q.task.task == cancel.task));
                self.pump(io);
            }
            Ok(BrokerToWorker::Heartbeat(_)) => {}
            Ok(BrokerToWorker::Reconnect(r)) => {
                debug!(self.log, "broker asks to register again"; "reason" => r.reason);
                if self.links[i].registered {
                    self.registered_count.fetch_sub(1, Ordering::Relaxed);
                }
                self.links[i].registered = false;
                if self.drain_deadline.is_none() {
                    self.send_register(io, i);
                }
            }
            Ok(BrokerToWorker::Disconnect(d)) => self.drop_link(io, i, &d.reason),
            Ok(BrokerToWorker::Error(e)) => {
                warn!(self.log, "broker reported an error"; "code" => e.code, "message" => e.message)
            }
            Err(e) => warn!(self.log, "undecodable message from broker"; "error" => %e),
        }
    }

    /// Starts queued tasks while there is capacity.
    fn pump(&mut self, io: &mut Io) {
        while self.running.len() < self.capacity as usize {
            let Some(Queued {
                link,
                generation,
                task,
            }) = self.queue.pop_front()
            else {
                return;
            };
            let key = (link, task.task);
            let args = task.args.into_owned();
            let kwargs = task.kwargs.into_owned();
            match self.functions.get(task.fun.as_ref()).cloned() {
                None => {
                    let failure = Failure {
                        kind: failure_kind::UNKNOWN_FUNCTION,
                        message: format!("this node does not serve `{}`", task.fun),
                    };
                    self.reply(io, link, generation, task.task, Err(failure));
                }
                Some(Function::Inline(f)) => {
                    let outcome = catch_unwind(AssertUnwindSafe(|| f(args, kwargs)))
                        .unwrap_or_else(|panic| Err(panicked(&panic)));
                    self.reply(io, link, generation, task.task, outcome);
                }
                Some(Function::Blocking(f)) => {
                    let handle = Arc::clone(&self.handle);
                    let join = self.runtime.spawn_blocking(move || {
                        let outcome = catch_unwind(AssertUnwindSafe(|| f(args, kwargs)))
                            .unwrap_or_else(|panic| Err(panicked(&panic)));
                        if let Some(h) = handle.get() {
                            let _ = h.blocking_send(Command::Done {
                                link,
                                generation,
                                task: task.task,
                                outcome,
                            });
                        }
                    });
                    self.running.insert(key, Some(join.abort_handle()));
                }
                Some(Function::Async(f)) => {
                    // The function runs in its own task, so a panic or an abort (cancel) ends
                    // only that task; the watcher reports the outcome.
                    let inner = self.runtime.spawn(f(args, kwargs));
                    self.running.insert(key, Some(inner.abort_handle()));
                    let handle = Arc::clone(&self.handle);
                    let id = task.task;
                    self.runtime.spawn(async move {
                        let outcome = match inner.await {
                            Ok(outcome) => outcome,
                            Err(e) if e.is_panic() => Err(panicked(&e.into_panic())),
                            Err(_) => return, // cancelled
                        };
                        if let Some(h) = handle.get() {
                            let _ = h
                                .send(Command::Done {
                                    link,
                                    generation,
                                    task: id,
                                    outcome,
                                })
                                .await;
                        }
                    });
                }
            }
        }
    }

    fn reply(&mut self, io: &mut Io, link: usize, generation: u64, task: u64, outcome: Outcome) {
        if self.links[link].generation != generation {
            return; // The connection it came on is gone; the broker re-dispatched it.
        }
        let sent = match outcome {
            Ok(value) => self.send(
                io,
                link,
                "result",
                &encode_body(&TaskResult { task, value }),
            ),
            Err(f) => {
                let body = encode_body(&TaskFailure {
                    task,
                    kind: f.kind.to_string(),
                    message: f.message,
                });
                self.send(io, link, "failure", &body)
            }
        };
        if !sent {
            debug!(self.log, "reply dropped (connection down or full)"; "task" => task);
        }
    }

    fn check_drained(&mut self, now: Instant) {
        if let Some(deadline) = self.drain_deadline {
            if (self.running.is_empty() && self.queue.is_empty()) || now >= deadline {
                for (_, abort) in self.running.drain() {
                    if let Some(abort) = abort {
                        abort.abort();
                    }
                }
                self.finished = true;
            }
        }
    }
}

fn panicked(panic: &Box<dyn std::any::Any + Send>) -> Failure {
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

impl Handler for NodeHandler {
    type Command = Command;

    fn on_message(&mut self, io: &mut Io, socket: SocketId, frames: Vec<Vec<u8>>) {
        if let Some(i) = self.link_of(socket) {
            self.on_broker_message(io, i, frames);
        }
    }

    fn on_command(&mut self, io: &mut Io, command: Command) {
        match command {
            Command::Done {
                link,
                generation,
                task,
                outcome,
            } => {
                if self.running.remove(&(link, task)).is_some() {
                    self.reply(io, link, generation, task, outcome);
                }
                self.pump(io);
                self.check_drained(io.now());
            }
            Command::Shutdown { deadline } => {
                if self.drain_deadline.is_none() {
                    let body = encode_body(&Disconnect {
                        reason: "node shutting down".into(),
                    });
                    for i in 0..self.links.len() {
                        if self.links[i].registered {
                            self.send(io, i, "disconnect", &body);
                        }
                    }
                    info!(self.log, "draining"; "running" => self.running.len(), "queued" => self.queue.len());
                }
                self.drain_deadline = Some(deadline);
                self.check_drained(io.now());
            }
        }
    }

    fn on_timer(&mut self, io: &mut Io) {
        let now = io.now();
        let heartbeat = encode_body(&Heartbeat {});
        for i in 0..self.links.len() {
            let link = &self.links[i];
            if link.socket.is_none() {
                if link.reopen_at.is_some_and(|at| now >= at) && self.drain_deadline.is_none() {
                    if let Err(e) = self.open(io, i) {
                        warn!(self.log, "cannot reconnect"; "broker" => &self.links[i].endpoint, "error" => %e);
                        self.links[i].reopen_at = Some(now + self.links[i].backoff);
                    }
                }
                continue;
            }
            if link.registered {
                if now >= link.last_heard + link.heartbeat * link.liveness {
                    self.drop_link(io, i, "no message within the liveness window");
                    continue;
                }
                if now >= link.next_heartbeat {
                    self.send(io, i, "heartbeat", &heartbeat);
                    self.links[i].next_heartbeat = now + self.links[i].heartbeat;
                }
            } else if now >= link.next_register && self.drain_deadline.is_none() {
                self.send_register(io, i);
            }
        }
        self.check_drained(now);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.drain_deadline;
        for link in &self.links {
            let at = if link.socket.is_none() {
                link.reopen_at
            } else if link.registered {
                Some(
                    link.next_heartbeat
                        .min(link.last_heard + link.heartbeat * link.liveness),
                )
            } else {
                Some(link.next_register)
            };
            next = match (next, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        next
    }

    fn on_handles_dropped(&mut self, io: &mut Io) {
        self.on_command(io, Command::Shutdown { deadline: io.now() });
    }

    fn is_finished(&self) -> bool {
        self.finished
    }
}
