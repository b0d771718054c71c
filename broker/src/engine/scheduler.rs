//! The scheduler plane: the workers ([`Registry`]), the tasks running on them, the ready steps
//! waiting for a free slot, and step timeouts. A task runs on a local worker now; on a peer
//! broker once clusters exist (another [`Runner`]). It knows plans only by id and step index.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use mpreg_protocol::{BrokerId, BrokerToWorker, CancelTask, PlanId, Task, TaskId, WorkerId};

use super::plans::StepIx;
use crate::fast_hash::FastMap;
use crate::outbox::{Delivery, Outbox};
use crate::placement::Placement;
use crate::registry::{Registry, Worker};

/// Where a task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// On one of this broker's workers.
    Worker(WorkerId),
    /// Forwarded to a peer broker, which runs it on one of its workers (the forward's id is
    /// the task id).
    Peer(BrokerId),
}

/// One task in flight.
#[derive(Debug, Clone, Copy)]
pub struct TaskState {
    /// Its plan.
    pub plan: PlanId,
    /// Its step.
    pub step: StepIx,
    /// Where it runs.
    pub runner: Runner,
    /// When it was sent.
    pub sent: Instant,
    /// When its step's own timeout passes, if it has one.
    timeout_at: Option<Instant>,
}

/// Tasks, waiting steps and workers.
#[derive(Default)]
pub struct Scheduler {
    registry: Registry,
    tasks: FastMap<TaskId, TaskState>,
    next_task: u64,
    /// Ready steps waiting for a worker with a free slot, by function, oldest first.
    waiting: FastMap<String, VecDeque<(PlanId, StepIx)>>,
    waiting_len: usize,
    /// Step timeouts of running tasks, removed when the task ends.
    timeouts: BTreeSet<(Instant, TaskId)>,
}

impl Scheduler {
    /// The workers.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The workers, mutably (registration, heartbeats).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// A task in flight.
    pub fn task(&self, id: TaskId) -> Option<&TaskState> {
        self.tasks.get(&id)
    }

    /// Ready steps waiting for capacity.
    pub fn waiting(&self) -> usize {
        self.waiting_len
    }

    /// Decides where a step of `fun` (versions `version` accepts) with `locs` goes.
    pub fn place(
        &mut self,
        fun: &str,
        version: Option<&crate::versions::Requirement>,
        locs: &[String],
    ) -> Placement {
        self.registry.place(fun, version, locs)
    }

    /// Queues a ready step until a matching worker has a free slot.
    pub fn wait(&mut self, fun: &str, plan: PlanId, step: StepIx) {
        match self.waiting.get_mut(fun) {
            Some(queue) => queue.push_back((plan, step)),
            None => {
                self.waiting
                    .insert(fun.to_string(), VecDeque::from([(plan, step)]));
            }
        }
        self.waiting_len += 1;
    }

    /// The id the next dispatched task gets.
    pub fn next_task_id(&self) -> TaskId {
        TaskId(self.next_task + 1)
    }

    /// Sends `task` (built with [`Scheduler::next_task_id`]) to `worker`; on success the task
    /// is in flight. Anything but [`Delivery::Sent`] leaves nothing behind.
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch(
        &mut self,
        out: &mut impl Outbox,
        worker: WorkerId,
        task: &Task<'_>,
        plan: PlanId,
        step: StepIx,
        timeout: Option<Duration>,
        now: Instant,
    ) -> Delivery {
        let Some(w) = self.registry.get_mut(worker) else {
            return Delivery::Gone;
        };
        let delivery = out.task(&w.addr, task);
        if delivery == Delivery::Sent {
            self.next_task += 1;
            let id = task.task;
            w.tasks.insert(id);
            let timeout_at = timeout.map(|t| now + t);
            if let Some(at) = timeout_at {
                self.timeouts.insert((at, id));
            }
            self.tasks.insert(
                id,
                TaskState {
                    plan,
                    step,
                    runner: Runner::Worker(worker),
                    sent: now,
                    timeout_at,
                },
            );
        }
        delivery
    }

    fn forget(&mut self, id: TaskId) -> Option<TaskState> {
        let state = self.tasks.remove(&id)?;
        if let Some(at) = state.timeout_at {
            self.timeouts.remove(&(at, id));
        }
        if let Runner::Worker(worker) = state.runner {
            if let Some(w) = self.registry.get_mut(worker) {
                w.tasks.remove(&id);
            }
        }
        Some(state)
    }

    /// Records a step forwarded to a peer as task `task` (the forward's id).
    pub fn forwarded(
        &mut self,
        task: TaskId,
        peer: BrokerId,
        plan: PlanId,
        step: StepIx,
        timeout: Option<Duration>,
        now: Instant,
    ) {
        self.next_task = self.next_task.max(task.0);
        let timeout_at = timeout.map(|t| now + t);
        if let Some(at) = timeout_at {
            self.timeouts.insert((at, task));
        }
        self.tasks.insert(
            task,
            TaskState {
                plan,
                step,
                runner: Runner::Peer(peer),
                sent: now,
                timeout_at,
            },
        );
    }

    /// A peer answered forward `task`: the task ends, if it was forwarded to that peer.
    pub fn answered_by_peer(&mut self, peer: BrokerId, task: TaskId) -> Option<TaskState> {
        match self.tasks.get(&task)?.runner {
            Runner::Peer(p) if p == peer => self.forget(task),
            _ => None,
        }
    }

    /// Ends every task forwarded to a peer that is gone; returns them (in task order) for
    /// re-dispatch.
    pub fn remove_peer(&mut self, peer: BrokerId) -> Vec<(TaskId, TaskState)> {
        let mut ids: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.runner == Runner::Peer(peer))
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| self.forget(id).map(|t| (id, t)))
            .collect()
    }

    /// A worker answered `task`: the task ends, if it was that worker's (else `None`: an
    /// unknown, late or foreign answer).
    pub fn answered(&mut self, worker: WorkerId, task: TaskId) -> Option<TaskState> {
        match self.tasks.get(&task)?.runner {
            Runner::Worker(w) if w == worker => self.forget(task),
            _ => None,
        }
    }

    /// Ends a task whose result is no longer wanted and tells its worker (best effort).
    /// Returns where it ran (a worker now has a free slot; a peer must be told).
    pub fn cancel(&mut self, out: &mut impl Outbox, task: TaskId) -> Option<Runner> {
        let state = self.forget(task)?;
        if let Runner::Worker(worker) = state.runner {
            let w = self.registry.get(worker)?;
            let _ = out.to_worker(&w.addr, &BrokerToWorker::Cancel(CancelTask { task }));
        }
        Some(state.runner)
    }

    /// Removes a worker; returns it with the tasks it was running (in dispatch order), which
    /// are no longer in flight.
    pub fn remove_worker(
        &mut self,
        worker: WorkerId,
    ) -> Option<(Worker, Vec<(TaskId, TaskState)>)> {
        let w = self.registry.remove(worker)?;
        let orphans = w
            .tasks
            .iter()
            .filter_map(|&task| {
                let state = self.tasks.remove(&task)?;
                if let Some(at) = state.timeout_at {
                    self.timeouts.remove(&(at, task));
                }
                Some((task, state))
            })
            .collect();
        Some((w, orphans))
    }

    /// The oldest waiting step `worker` can run now, taken off the queue; `locs_of` gives a
    /// waiting step's resources, or `None` when its plan has ended (the entry is dropped).
    pub fn next_waiting_for<'p>(
        &mut self,
        worker: WorkerId,
        locs_of: impl Fn(PlanId, StepIx) -> Option<&'p [String]>,
    ) -> Option<(PlanId, StepIx)> {
        if self.waiting_len == 0 {
            return None;
        }
        let w = self.registry.get(worker)?;
        if !w.has_room() {
            return None;
        }
        for fun in &w.functions {
            let Some(queue) = self.waiting.get_mut(fun) else {
                continue;
            };
            let mut pick = None;
            let mut i = 0;
            while i < queue.len() {
                let (plan, step) = queue[i];
                match locs_of(plan, step) {
                    None => {
                        queue.remove(i);
                        self.waiting_len -= 1;
                    }
                    Some(locs) if w.holds(locs) => {
                        queue.remove(i);
                        self.waiting_len -= 1;
                        pick = Some((plan, step));
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
            if queue.is_empty() {
                self.waiting.remove(fun);
            }
            if pick.is_some() {
                return pick;
            }
        }
        None
    }

    /// Drops waiting entries whose plan has ended (`alive` says which plans are in flight),
    /// so that steps of plans that failed while waiting do not pile up.
    pub fn prune_waiting(&mut self, alive: impl Fn(PlanId) -> bool) {
        let mut dropped = 0;
        self.waiting.retain(|_, queue| {
            let before = queue.len();
            queue.retain(|&(plan, _)| alive(plan));
            dropped += before - queue.len();
            !queue.is_empty()
        });
        self.waiting_len -= dropped;
    }

    /// The next task whose step timeout has passed at `now`.
    pub fn timed_out(&self, now: Instant) -> Option<TaskId> {
        self.timeouts
            .first()
            .filter(|(at, _)| *at <= now)
            .map(|&(_, id)| id)
    }

    /// When the earliest step timeout passes.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timeouts.first().map(|&(at, _)| at)
    }

    /// Sizes of the indexes (each drops back to zero when idle, the workers aside).
    pub fn footprint(&self) -> [usize; 3] {
        [self.tasks.len(), self.waiting_len, self.timeouts.len()]
    }
}
