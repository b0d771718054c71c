//! Timing of plans and their steps: the latency histograms of every plan, and the trace a plan
//! asks for (`plan.trace`), returned in its `result` or `error`.
//!
//! Every plan keeps the instant it was accepted. A plan that asked for its trace also keeps
//! per step when it became ready, was dispatched and finished, where it ran and what its
//! worker reported ([`TaskTiming`]); the reply turns them into microseconds since acceptance
//! ([`PlanTrace`], time base in `mpreg_protocol::trace`). A step forwarded here by a peer is a
//! one-step plan: its worker's timing is converted into what the owner needs (the wait here
//! plus the worker's queue, and the run) and sent back with the result.

use std::time::{Duration, Instant, UNIX_EPOCH};

use mpreg_protocol::{PlanId, PlanTrace, StepOutcome, StepTrace, TaskTiming};

use super::plans::PlanState;
use super::scheduler::Runner;
use super::timing::{micros, PlanTiming, StepIx};
use super::Engine;

impl Engine {
    /// A step of `plan` joined the ready queue (or came out of it: the first time counts).
    pub(super) fn note_ready(&mut self, plan: PlanId, step: StepIx, now: Instant) {
        if let Some(m) = self.timing_of(plan).and_then(|t| t.mark(step)) {
            m.ready.get_or_insert(now);
        }
    }

    /// A ready step found every matching worker full: it waits from `now`.
    pub(super) fn note_waiting(&mut self, plan: PlanId, step: StepIx, now: Instant) {
        if let Some(t) = self.timing_of(plan) {
            t.waiting.push((step, now));
        }
    }

    /// A step was sent to a worker or forwarded to a peer at `now`.
    pub(super) fn note_dispatched(&mut self, plan: PlanId, step: StepIx, now: Instant) {
        let Some(t) = self.plans.get_mut(plan).map(|p| &mut p.timing) else {
            return;
        };
        let since = match t.waiting.iter().position(|&(s, _)| s == step) {
            Some(i) => t.waiting.swap_remove(i).1,
            None => now,
        };
        if let Some(m) = t.mark(step) {
            m.dispatched = Some(now);
            m.dispatches += 1;
        }
        self.metrics
            .queue
            .observe(now.saturating_duration_since(since));
    }

    /// A task of `plan` returned its result at `now` after running on `runner` since `sent`;
    /// `timing` is what the worker (or the peer) reported.
    pub(super) fn note_ran(
        &mut self,
        plan: PlanId,
        step: StepIx,
        runner: Runner,
        sent: Instant,
        timing: Option<TaskTiming>,
        now: Instant,
    ) {
        self.metrics
            .step
            .observe(now.saturating_duration_since(sent));
        if let Some(t) = timing {
            self.metrics
                .worker_queue
                .observe(Duration::from_micros(t.queued_us));
        }
        let traced = self.plans.get(plan).is_some_and(|p| p.timing.traced());
        let peer = match runner {
            Runner::Peer(id) if traced => Some(
                self.peers
                    .as_ref()
                    .and_then(|p| p.membership.get(id))
                    .map_or_else(|| id.to_string(), |m| m.name.clone()),
            ),
            _ => None,
        };
        let Some(state) = self.plans.get_mut(plan) else {
            return;
        };
        if matches!(state.reply_to, super::ReplyTo::Peer { .. }) {
            // Run here for a peer: what the owner needs is the wait from this broker's
            // acceptance to the function's start, and the run.
            state.timing.forward = timing.map(|t| {
                let started = now
                    .checked_sub(Duration::from_micros(t.ran_us))
                    .unwrap_or(now);
                TaskTiming {
                    queued_us: micros(state.timing.accepted, started),
                    ran_us: t.ran_us,
                }
            });
        }
        if let Some(m) = state.timing.mark(step) {
            m.peer = peer;
            m.timing = timing;
        }
    }

    /// A step of `plan` ended at `now` (`worker` ran it; `outcome` says how).
    pub(super) fn note_finished(
        &mut self,
        plan: PlanId,
        step: StepIx,
        worker: &str,
        outcome: StepOutcome,
        now: Instant,
    ) {
        if let Some(t) = self.timing_of(plan) {
            t.finish(step, worker, outcome, now);
        }
    }

    /// A plan of a local client ended at `now` (its reply is being sent): its latency is
    /// recorded, and its trace built when it asked for one.
    pub(super) fn plan_ended(
        &mut self,
        plan: PlanId,
        state: &PlanState,
        now: Instant,
    ) -> Option<Box<PlanTrace>> {
        self.metrics
            .plan
            .observe(now.saturating_duration_since(state.timing.accepted));
        let marks = state.timing.marks.as_ref()?;
        let accepted = state.timing.accepted;
        let since_start = accepted.saturating_duration_since(self.started);
        let wall = self.metrics.wall_origin + since_start;
        let mut steps: Vec<(u32, StepTrace)> = marks
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let finished = m.finished?;
                let def = state.step(i as StepIx);
                let started = m.timing.and_then(|t| {
                    let start = finished.checked_sub(Duration::from_micros(t.ran_us))?;
                    Some(m.dispatched.map_or(start, |d| start.max(d)))
                });
                let trace = StepTrace {
                    step: def.name.clone(),
                    fun: def.fun.clone(),
                    broker: m.peer.clone().unwrap_or_else(|| self.config.name.clone()),
                    worker: m.worker.clone(),
                    outcome: m.outcome.unwrap_or(StepOutcome::Ok),
                    ready_us: m.ready.map_or(0, |at| micros(accepted, at)),
                    dispatched_us: m.dispatched.map(|at| micros(accepted, at)),
                    started_us: started.map(|at| micros(accepted, at)),
                    finished_us: micros(accepted, finished),
                    queued_us: m.timing.map(|t| t.queued_us),
                    retries: m.dispatches.saturating_sub(1),
                };
                Some((m.order, trace))
            })
            .collect();
        steps.sort_by_key(|(order, _)| *order);
        Some(Box::new(PlanTrace {
            plan,
            broker: self.config.name.clone(),
            accepted_unix_us: wall
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            total_us: micros(accepted, now),
            steps: steps.into_iter().map(|(_, s)| s).collect(),
        }))
    }

    fn timing_of(&mut self, plan: PlanId) -> Option<&mut PlanTiming> {
        self.plans.get_mut(plan).map(|p| &mut p.timing)
    }
}
