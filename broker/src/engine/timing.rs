//! What a plan remembers of time: when it was accepted and, for a plan that asked for its
//! trace, per step when it became ready, was dispatched and finished. A leaf of the engine:
//! the plan plane keeps a [`PlanTiming`] in every plan, and `trace.rs` turns it into the
//! histograms and the reply's trace.

use std::time::Instant;

use mpreg_protocol::{Step, StepOutcome, TaskTiming};

/// The index of a step in its plan.
pub type StepIx = u32;

/// What a plan remembers of time.
#[derive(Debug)]
pub struct PlanTiming {
    /// When the broker accepted it.
    pub accepted: Instant,
    /// Per-step marks, for a plan that asked for its trace.
    pub(super) marks: Option<Box<[StepMarks]>>,
    /// Steps finished so far (the order of the trace's entries).
    pub(super) finished: u32,
    /// Steps waiting for a worker slot, and since when (usually empty).
    pub(super) waiting: Vec<(StepIx, Instant)>,
    /// For a step run here for a peer: the timing to answer with.
    pub forward: Option<TaskTiming>,
}

/// What a traced plan remembers of one step.
#[derive(Debug, Clone, Default)]
pub(super) struct StepMarks {
    pub(super) ready: Option<Instant>,
    pub(super) dispatched: Option<Instant>,
    pub(super) dispatches: u32,
    pub(super) finished: Option<Instant>,
    pub(super) order: u32,
    /// The peer that ran it, when it was forwarded.
    pub(super) peer: Option<String>,
    pub(super) worker: String,
    pub(super) timing: Option<TaskTiming>,
    pub(super) outcome: Option<StepOutcome>,
}

impl PlanTiming {
    /// A plan accepted at `accepted`, with `steps` steps, traced or not.
    pub fn new(accepted: Instant, traced: bool, steps: usize) -> PlanTiming {
        PlanTiming {
            accepted,
            marks: traced.then(|| vec![StepMarks::default(); steps].into_boxed_slice()),
            finished: 0,
            waiting: Vec::new(),
            forward: None,
        }
    }

    pub(super) fn mark(&mut self, step: StepIx) -> Option<&mut StepMarks> {
        self.marks.as_mut()?.get_mut(step as usize)
    }

    /// A step ended at `now` (`worker` ran it; `outcome` says how); the first end counts.
    pub(super) fn finish(
        &mut self,
        step: StepIx,
        worker: &str,
        outcome: StepOutcome,
        now: Instant,
    ) {
        let order = self.finished;
        let Some(m) = self.mark(step) else {
            return;
        };
        if m.finished.is_some() {
            return;
        }
        m.ready.get_or_insert(now);
        m.finished = Some(now);
        m.order = order;
        m.outcome = Some(outcome);
        m.worker.clear();
        m.worker.push_str(worker);
        self.finished += 1;
    }

    /// The failure that ended the plan names `step` (run by `worker`): that step finished,
    /// with the failure, when it had been dispatched (a step refused before it ran, say for
    /// `no_route`, never ran and is left out).
    pub fn failed(&mut self, steps: &[Step], step: &str, worker: &str, now: Instant) {
        let Some(ix) = steps.iter().position(|s| s.name == step) else {
            return;
        };
        let ix = ix as StepIx;
        if self.mark(ix).is_some_and(|m| m.dispatched.is_some()) {
            self.finish(ix, worker, StepOutcome::Failed, now);
        }
    }

    /// True when the plan asked for its trace.
    pub fn traced(&self) -> bool {
        self.marks.is_some()
    }
}

/// Microseconds from `from` to `to` (zero when `to` is earlier).
pub(super) fn micros(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_micros()).unwrap_or(u64::MAX)
}
