//! Every failure of a run, by the processes it touched: process faults (a worker killed,
//! restarted or leaving; a broker crashed or restarted; a client moving to another broker),
//! partitions, and messages the network lost. The properties that allow something only "after
//! a failure" (a step running twice at once, `worker_lost`) ask it whether one touched the
//! processes involved during the time in question.

use super::super::clock::SimTime;
use super::super::network::{Cut, ProcessId};

/// The failures of a run.
#[derive(Debug, Default)]
pub struct FaultLog {
    events: Vec<(SimTime, ProcessId)>,
    cuts: Vec<Cut>,
    losses: Vec<(SimTime, ProcessId, ProcessId)>,
}

impl FaultLog {
    /// A log knowing the run's partitions.
    pub fn new(cuts: Vec<Cut>) -> FaultLog {
        FaultLog {
            cuts,
            ..FaultLog::default()
        }
    }

    /// A fault of process `p` at `at`.
    pub fn fault(&mut self, at: SimTime, p: ProcessId) {
        self.events.push((at, p));
    }

    /// A message between `a` and `b` lost at `at`.
    pub fn lost(&mut self, at: SimTime, a: ProcessId, b: ProcessId) {
        self.losses.push((at, a, b));
    }

    /// True when a failure touched one of `processes` between `from` and `to`.
    pub fn touched(&self, processes: &[ProcessId], from: SimTime, to: SimTime) -> bool {
        let during = |t: SimTime| from <= t && t <= to;
        self.events
            .iter()
            .any(|(t, p)| during(*t) && processes.contains(p))
            || self
                .losses
                .iter()
                .any(|(t, a, b)| during(*t) && (processes.contains(a) || processes.contains(b)))
            || self
                .cuts
                .iter()
                .any(|c| c.from <= to && c.until >= from && processes.iter().any(|p| c.touches(*p)))
    }

    /// True when a failure came between `a` and `b` between `from` and `to`: a message
    /// between them lost (or refused as full), a partition separating them, or a fault of
    /// either.
    pub fn between(&self, a: ProcessId, b: ProcessId, from: SimTime, to: SimTime) -> bool {
        let during = |t: SimTime| from <= t && t <= to;
        self.losses
            .iter()
            .any(|&(t, x, y)| during(t) && ((x, y) == (a, b) || (x, y) == (b, a)))
            || self
                .events
                .iter()
                .any(|&(t, p)| during(t) && (p == a || p == b))
            || self
                .cuts
                .iter()
                .any(|c| c.from <= to && c.until >= from && c.separates(a, b))
    }

    /// True when any failure happened between `from` and `to`.
    pub fn any(&self, from: SimTime, to: SimTime) -> bool {
        let during = |t: SimTime| from <= t && t <= to;
        self.events.iter().any(|(t, _)| during(*t))
            || self.losses.iter().any(|(t, _, _)| during(*t))
            || self.cuts.iter().any(|c| c.from <= to && c.until >= from)
    }
}
