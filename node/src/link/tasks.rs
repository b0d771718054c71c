//! Running the node's tasks: the queue within the capacity, inline, blocking and async
//! functions, their timing, and the result or failure sent back on the task's session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mpreg_protocol::{encode_compact, failure_kind, Task, TaskFailure, TaskResult, TaskTiming};
use mpreg_transport::Io;
use slog::debug;
use tokio::task::{AbortHandle, JoinHandle};

use super::{Command, NodeHandler, TaskKey};
use crate::functions::{call_catching_panics, panicked, Failure, Function, Outcome};

pub(super) struct Queued {
    pub(super) key: TaskKey,
    pub(super) task: Task<'static>,
    /// When the task was read.
    pub(super) received: Instant,
}

/// A task running off the reactor; it counts against the capacity until its `Done` arrives.
pub(super) struct Running {
    pub(super) abort: AbortHandle,
    /// Cancelled or its session ended: its outcome is not sent.
    pub(super) abandoned: bool,
    /// Its function, and when the task was read (for its timing).
    pub(super) fun: String,
    pub(super) received: Instant,
}

impl NodeHandler {
    /// Starts queued tasks while there is capacity.
    pub(super) fn pump(&mut self, io: &mut Io) {
        while self.running.len() < self.capacity() {
            let Some(Queued {
                key,
                task,
                received,
            }) = self.queue.pop_front()
            else {
                return;
            };
            let args = task.args.into_owned();
            let kwargs = task.kwargs.into_owned();
            let fun = task.fun.into_owned();
            type Timed = (Outcome, Instant, Instant);
            let join: JoinHandle<Timed> = match self.setup.functions.get(fun.as_str()) {
                None => {
                    let failure = Failure {
                        kind: failure_kind::UNKNOWN_FUNCTION,
                        message: format!("this node does not serve `{fun}`"),
                    };
                    self.reply(io, key, Err(failure), None);
                    continue;
                }
                Some(Function::Inline(f)) => {
                    let started = Instant::now();
                    let outcome = call_catching_panics(f.as_ref(), args, kwargs);
                    let timing = self.timing(&fun, received, started, Instant::now());
                    self.reply(io, key, outcome, Some(timing));
                    continue;
                }
                Some(Function::Blocking(f)) => {
                    let f = Arc::clone(f);
                    self.setup.runtime.spawn_blocking(move || {
                        let started = Instant::now();
                        let outcome = f(args, kwargs);
                        (outcome, started, Instant::now())
                    })
                }
                Some(Function::Async(f)) => {
                    // Called inside the task: the closure's synchronous part (and any panic in
                    // it) stays off the reactor thread.
                    let f = Arc::clone(f);
                    self.setup.runtime.spawn(async move {
                        let started = Instant::now();
                        let outcome = f(args, kwargs).await;
                        (outcome, started, Instant::now())
                    })
                }
            };
            self.running.insert(
                key,
                Running {
                    abort: join.abort_handle(),
                    abandoned: false,
                    fun,
                    received,
                },
            );
            // The function runs in its own task, so a panic or an abort ends only that task;
            // the watcher always reports, so the capacity slot is always given back.
            let own = self.own.clone();
            self.setup.runtime.spawn(async move {
                let (outcome, ran) = match join.await {
                    Ok((outcome, started, ended)) => (Some(outcome), Some((started, ended))),
                    Err(e) if e.is_panic() => (Some(Err(panicked(e.into_panic().as_ref()))), None),
                    Err(_) => (None, None),
                };
                // None: the node is gone, and so is the slot to give back.
                if let Some(handle) = own.upgrade() {
                    let _ = handle.send(Command::Done { key, outcome, ran }).await;
                }
            });
        }
    }

    /// Records a task's times in the metrics; returns them as the broker is told them.
    pub(super) fn timing(
        &self,
        fun: &str,
        received: Instant,
        started: Instant,
        ended: Instant,
    ) -> TaskTiming {
        let queued = started.saturating_duration_since(received);
        let ran = ended.saturating_duration_since(started);
        self.setup.metrics.observe(fun, queued, ran);
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        TaskTiming {
            queued_us: micros(queued),
            ran_us: micros(ran),
        }
    }

    pub(super) fn reply(
        &mut self,
        io: &mut Io,
        key: TaskKey,
        outcome: Outcome,
        timing: Option<TaskTiming>,
    ) {
        if self.links[key.link].generation != key.generation {
            self.setup.metrics.abandoned.inc();
            return; // Its session is gone; the broker re-dispatches it.
        }
        let task = key.task;
        let sent = match outcome {
            Ok(value) => {
                self.setup.metrics.completed.inc();
                let result = TaskResult {
                    task,
                    value,
                    timing,
                };
                self.send_frame(io, key.link, encode_compact(b"result", &result).0)
            }
            Err(f) => {
                self.setup.metrics.failure(f.kind);
                let failure = TaskFailure {
                    task,
                    kind: f.kind.to_string(),
                    message: f.message,
                };
                self.send_frame(io, key.link, encode_compact(b"failure", &failure).0)
            }
        };
        if !sent {
            debug!(self.setup.log, "reply dropped (connection down or full)"; "task" => %task);
        }
    }
}
