//! How work flows between the planes: ready steps become tasks on workers (through
//! placement), results become progress and newly ready steps, the last result becomes the
//! plan's reply, and a failure ends the plan and cancels what it still runs.
//!
//! Ready steps go through one queue, drained in a loop ([`Engine::drain_ready`]): however many
//! steps one result (or a cache hit, or a peer's answer) completes, nothing recurses.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mpreg_protocol::peer::FwdResult;
use mpreg_protocol::{
    BrokerToClient, BrokerToWorker, PeerMessage, PlanId, PlanResult, Progress, StepOutcome, Task,
    TaskId, TaskTiming, Value, WorkerId,
};

use super::failure::Failure;
use super::plans::{ReplyTo, StepIx};
use super::scheduler::{Runner, TaskState};
use super::Engine;
use crate::outbox::{Delivery, Link, Outbox, WorkerAddr};
use crate::placement::Placement;

impl Engine {
    /// Places every ready step: on a worker, in the waiting queue, or (nobody can run it)
    /// failing its plan.
    pub(super) fn drain_ready(&mut self, out: &mut impl Outbox, now: Instant) {
        while let Some((plan, step)) = self.ready.pop_front() {
            self.note_ready(plan, step, now);
            if self.cache_before_placing(out, plan, step, now) {
                continue;
            }
            let Some(state) = self.plans.get(plan) else {
                continue;
            };
            let def = state.step(step);
            match self
                .scheduler
                .place(&def.fun, state.version(step), &def.locs)
            {
                Placement::Local(worker) => self.send_task(out, plan, step, worker, now),
                Placement::Wait => {
                    let fun = def.fun.clone();
                    self.scheduler.wait(&fun, plan, step);
                    self.note_waiting(plan, step, now);
                }
                Placement::NoRoute(reason) => {
                    if self.forward_step(out, plan, step, now) {
                        // Forwarded (or the plan ended trying: then nothing is noted).
                        self.note_dispatched(plan, step, now);
                        continue;
                    }
                    let Some(def) = self.plans.get(plan).map(|p| p.step(step)) else {
                        continue;
                    };
                    let failure = if self.plans.was_retried(plan, step) {
                        Failure::WorkerLostNoOther {
                            step: def.name.clone(),
                            fun: def.fun.clone(),
                            locs: def.locs.clone(),
                        }
                    } else {
                        Failure::NoRoute {
                            step: def.name.clone(),
                            fun: def.fun.clone(),
                            version: def.version.clone(),
                            locs: def.locs.clone(),
                            reason,
                        }
                    };
                    self.counters.plans_no_route += 1;
                    self.fail_plan(out, plan, failure, now);
                }
            }
        }
    }

    /// Builds the step's task and sends it to `worker`. A worker whose queue is full or whose
    /// connection is gone cannot be trusted with more: it is expired (its tasks move
    /// elsewhere) and the step is placed again.
    fn send_task(
        &mut self,
        out: &mut impl Outbox,
        plan: PlanId,
        step: StepIx,
        worker: WorkerId,
        now: Instant,
    ) {
        let Some(state) = self.plans.get(plan) else {
            return;
        };
        let def = state.step(step);
        let args = match state.task_args(step, &self.config.limits) {
            Ok(args) => args,
            Err(failure) => {
                if matches!(failure, Failure::TaskTooLarge { .. }) {
                    self.counters.tasks_too_large += 1;
                }
                return self.fail_plan(out, plan, failure, now);
            }
        };
        let task = Task {
            task: self.scheduler.next_task_id(),
            fun: def.fun.as_str().into(),
            args: args.args,
            kwargs: args.kwargs,
            timeout_ms: def.timeout_ms,
        };
        let timeout = def.timeout_ms.map(Duration::from_millis);
        match self
            .scheduler
            .dispatch(out, worker, &task, plan, step, timeout, now)
        {
            Delivery::Sent => {
                self.counters.tasks_dispatched += 1;
                self.plans.task_started(plan, task.task);
                self.note_dispatched(plan, step, now);
            }
            _ => {
                self.expire_worker(out, worker, now);
                self.ready.push_back((plan, step));
            }
        }
    }

    /// A worker (or a peer) answered `task` with a value, and with how long it waited in the
    /// worker's queue and ran when it says (`timing`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn complete_task(
        &mut self,
        out: &mut impl Outbox,
        task: TaskId,
        state: TaskState,
        value: Value,
        bytes: usize,
        timing: Option<TaskTiming>,
        now: Instant,
    ) {
        self.plans.task_ended(state.plan, task);
        self.note_ran(
            state.plan,
            state.step,
            state.runner,
            state.sent,
            timing,
            now,
        );
        let Some(plan) = self.plans.get(state.plan) else {
            return;
        };
        if plan.is_done(state.step) {
            return;
        }
        let worker = match state.runner {
            Runner::Worker(worker) => self
                .scheduler
                .registry()
                .get(worker)
                .map(|w| w.name.clone())
                .unwrap_or_default(),
            // Set from the peer's answer before this call.
            Runner::Peer(_) => plan.ran_on.clone(),
        };
        if matches!(plan.reply_to, ReplyTo::Peer { .. }) {
            self.plans.ran_on(state.plan, &worker);
        }
        self.cache_result(out, state.plan, state.step, &value, now);
        let elapsed_us = now.saturating_duration_since(state.sent).as_micros() as u64;
        self.record_step(
            out, state.plan, state.step, value, bytes, worker, elapsed_us, now,
        );
        self.drain_ready(out, now);
    }

    /// Records a step's result (from its worker, a peer or the cache): progress to the client
    /// when it asked, the steps it makes ready queued, the plan's reply when it was the last.
    /// Does not place the steps made ready (the caller drains the queue).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_step(
        &mut self,
        out: &mut impl Outbox,
        id: PlanId,
        step: StepIx,
        value: Value,
        bytes: usize,
        worker: String,
        elapsed_us: u64,
        now: Instant,
    ) {
        let outcome = match worker.as_str() {
            super::caching::CACHE_WORKER => StepOutcome::Cached,
            _ => StepOutcome::Ok,
        };
        self.note_finished(id, step, &worker, outcome, now);
        let Some(plan) = self.plans.get(id) else {
            return;
        };
        if plan.request.progress || plan.request.progress_topic.is_some() {
            let def = plan.step(step);
            let event = Progress {
                id: plan.request_id,
                plan: Some(id),
                step: def.name.clone(),
                fun: def.fun.clone(),
                worker,
                result: value.clone(),
                elapsed_us,
            };
            let client = match &plan.reply_to {
                ReplyTo::Client(client) => Some(client.clone()),
                ReplyTo::Peer { .. } => None,
            };
            let topic = plan.request.progress_topic.clone();
            let to_client = plan.request.progress;
            if let Some(topic) = topic {
                // The payload: the progress body as a named map (what `progress` holds).
                let payload = progress_payload(&event);
                let headers = BTreeMap::from([("plan".to_string(), event.id.to_string())]);
                self.publish_everywhere(out, &topic, headers, payload, now);
            }
            if let (true, Some(client)) = (to_client, client) {
                self.reply(out, &client, &BrokerToClient::Progress(event));
            }
        }
        let recorded = self.plans.record(id, step, value, bytes, &mut self.ready);
        if recorded == super::plans::Recorded::Complete {
            self.finish_plan(out, id, now);
        }
    }

    /// Removes a plan that ended, and takes its steps out of the cache's calls in flight.
    pub(super) fn remove_plan(&mut self, plan: PlanId) -> Option<super::plans::PlanState> {
        let mut state = self.plans.remove(plan)?;
        if !state.cache.is_empty() {
            let steps = std::mem::take(&mut state.cache);
            self.cache_plan_ended(plan, &steps);
        }
        Some(state)
    }

    fn finish_plan(&mut self, out: &mut impl Outbox, plan: PlanId, now: Instant) {
        let Some(mut state) = self.remove_plan(plan) else {
            return;
        };
        slog::debug!(self.log, "plan completed"; "plan" => %plan);
        match state.reply_to.clone() {
            ReplyTo::Client(client) => {
                self.counters.plans_completed += 1;
                let trace = self.plan_ended(plan, &state, now);
                let reply = BrokerToClient::Result(PlanResult {
                    id: state.request_id,
                    plan: Some(plan),
                    results: state.results(),
                    trace,
                });
                self.reply(out, &client, &reply);
                if state.request.plan == Some(plan) {
                    self.replays
                        .keep(plan, state.quota.clone(), reply, state.held_bytes(), now);
                }
            }
            ReplyTo::Peer { endpoint, fid, .. } => {
                let value = state.results().into_values().next().unwrap_or(Value::Nil);
                let worker = std::mem::take(&mut state.ran_on);
                let timing = state.timing.forward.take();
                self.answer_forward(out, &endpoint, fid, value, worker, timing);
            }
        }
    }

    /// Ends a plan with `failure`: its tasks are cancelled on their workers (whose freed
    /// slots then take waiting steps) and its client gets the error with the results that had
    /// finished.
    pub(super) fn fail_plan(
        &mut self,
        out: &mut impl Outbox,
        plan: PlanId,
        failure: Failure,
        now: Instant,
    ) {
        let Some(mut state) = self.remove_plan(plan) else {
            return;
        };
        slog::debug!(self.log, "plan failed"; "plan" => %plan, "code" => failure.code().code());
        let mut freed: Vec<WorkerId> = Vec::new();
        for &task in &state.tasks {
            match self.scheduler.cancel(out, task) {
                Some(Runner::Worker(worker)) => freed.push(worker),
                Some(Runner::Peer(peer)) => self.cancel_forward(out, peer, task),
                None => {}
            }
        }
        match state.reply_to.clone() {
            ReplyTo::Client(client) => {
                self.counters.plans_failed += 1;
                let mut reply = failure.into_reply(Some(state.request_id));
                *self.metrics.plans_failed.entry(reply.code).or_default() += 1;
                if let (true, Some(step)) = (state.timing.traced(), &reply.step) {
                    let worker = reply.worker.as_deref().unwrap_or_default();
                    state.timing.failed(&state.request.steps, step, worker, now);
                }
                reply.trace = self.plan_ended(plan, &state, now);
                reply.plan = Some(plan);
                reply.partial = state.partial();
                let reply = BrokerToClient::Error(reply);
                self.reply(out, &client, &reply);
                if state.request.plan == Some(plan) {
                    self.replays
                        .keep(plan, state.quota.clone(), reply, state.held_bytes(), now);
                }
            }
            ReplyTo::Peer { endpoint, fid, .. } => {
                self.answer_forward_failure(out, &endpoint, fid, failure);
            }
        }
        freed.sort_unstable();
        freed.dedup();
        for worker in freed {
            self.after_task_freed(out, worker, now);
        }
    }

    /// A worker has a slot free: forget it if it is draining and idle, else give it waiting
    /// steps.
    pub(super) fn after_task_freed(
        &mut self,
        out: &mut impl Outbox,
        worker: WorkerId,
        now: Instant,
    ) {
        match self.scheduler.registry().get(worker) {
            Some(w) if w.draining && w.tasks.is_empty() => {
                self.scheduler.remove_worker(worker);
                self.catalogue_changed();
            }
            Some(_) => self.fill_worker(out, worker, now),
            None => {}
        }
    }

    /// Sends a worker the oldest waiting steps it can run, while it has room.
    pub(super) fn fill_worker(&mut self, out: &mut impl Outbox, worker: WorkerId, now: Instant) {
        loop {
            let plans = &self.plans;
            let next = self.scheduler.next_waiting_for(worker, |plan, step| {
                plans.get(plan).map(|p| p.step(step).locs.as_slice())
            });
            let Some((plan, step)) = next else {
                return;
            };
            self.send_task(out, plan, step, worker, now);
            if self.scheduler.registry().get(worker).is_none() {
                return;
            }
        }
    }

    /// Removes a lost worker and puts its tasks back in the ready queue (at-least-once
    /// execution), within each step's retries.
    pub(super) fn expire_worker(&mut self, out: &mut impl Outbox, worker: WorkerId, now: Instant) {
        if let Some((w, orphans)) = self.scheduler.remove_worker(worker) {
            self.worker_lost(out, worker, w, orphans, now);
        }
    }

    /// Several workers lost at once (the silent ones of a heartbeat): all leave the registry
    /// before any orphan is placed again, so a step freed by one of them can never be sent to
    /// another that is about to be expired in the same pass (a dispatch that would be charged
    /// a retry without ever reaching a live worker).
    pub(super) fn expire_workers(
        &mut self,
        out: &mut impl Outbox,
        workers: Vec<WorkerId>,
        now: Instant,
    ) {
        let lost: Vec<_> = workers
            .into_iter()
            .filter_map(|id| self.scheduler.remove_worker(id).map(|(w, o)| (id, w, o)))
            .collect();
        for (id, w, orphans) in lost {
            self.worker_lost(out, id, w, orphans, now);
        }
    }

    /// A worker removed from the registry: its tasks go back to the ready queue within each
    /// step's retries, or fail their plans.
    fn worker_lost(
        &mut self,
        out: &mut impl Outbox,
        worker: WorkerId,
        w: crate::registry::Worker,
        orphans: Vec<(TaskId, TaskState)>,
        now: Instant,
    ) {
        self.counters.workers_expired += 1;
        self.catalogue_changed();
        slog::warn!(self.log, "worker lost"; "worker" => &w.name, "worker_id" => %worker, "tasks" => orphans.len());
        for (task, orphan) in orphans {
            self.plans.task_ended(orphan.plan, task);
            match self
                .plans
                .retry(orphan.plan, orphan.step, self.config.max_retries)
            {
                Ok(()) => {
                    if self.plans.get(orphan.plan).is_some() {
                        self.counters.tasks_retried += 1;
                        self.ready.push_back((orphan.plan, orphan.step));
                    }
                }
                Err(retries) => {
                    let Some(def) = self.plans.get(orphan.plan).map(|p| p.step(orphan.step)) else {
                        continue;
                    };
                    slog::warn!(self.log, "step lost too often"; "plan" => %orphan.plan, "step" => &def.name);
                    let failure = Failure::WorkerLost {
                        step: def.name.clone(),
                        fun: def.fun.clone(),
                        worker: w.name.clone(),
                        retries,
                    };
                    self.fail_plan(out, orphan.plan, failure, now);
                }
            }
        }
    }

    /// The answer to a step forwarded here by a peer: its value, the worker that ran it, and
    /// how long it waited here and ran (for the owner's trace).
    fn answer_forward(
        &mut self,
        out: &mut impl Outbox,
        endpoint: &str,
        fid: u64,
        value: Value,
        worker: String,
        timing: Option<TaskTiming>,
    ) {
        let result = PeerMessage::FwdResult(FwdResult {
            fid,
            value,
            worker,
            timing,
        });
        let _ = out.to_peer(endpoint, Link::Data, &result);
    }

    /// Sends a worker an `error` about something it did.
    pub(super) fn worker_error(
        &mut self,
        out: &mut impl Outbox,
        to: &WorkerAddr,
        failure: Failure,
    ) {
        let _ = out.to_worker(to, &BrokerToWorker::Error(failure.into_reply(None)));
    }
}

/// A progress event as a msgpack map, the payload of its `progress_topic` message.
fn progress_payload(event: &Progress) -> Value {
    let body = mpreg_protocol::encode_body(event);
    rmpv::decode::read_value(&mut body.as_slice()).unwrap_or(Value::Nil)
}
