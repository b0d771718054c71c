//! What goes into a broker call, as the checker reads it: a plan arriving (admitted, or to be
//! refused at once), a cancel, a client heartbeat, a worker's result or failure (accepted only
//! if its task is outstanding on that worker), registration and leaving; and what a tick does
//! by the protocol: expire workers and clients silent past their windows (one by one, in the
//! engine's order), fail plans past their deadline or with a step past its timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use mpreg_protocol::{
    BrokerToClient, ClientToBroker, ErrorCode, ErrorReply, TaskId, Value, WorkerToBroker,
};

use super::broker::{Input, Output};
use super::broker_view::{PlanKey, TaskView};
use super::model::{Expectation, Outcome};
use super::network::{ConnId, ProcessId};
use super::properties::{tag_of, Call, Checker, PlanTrack, Property};

impl Checker {
    pub(super) fn apply_input(&mut self, call: &mut Call, input: &Input) {
        let now = call.now;
        match input {
            Input::Client {
                conn,
                message,
                bytes,
            } => {
                self.view(call.broker).client_heard(*conn, now);
                match message {
                    ClientToBroker::Plan(p) => {
                        let key = PlanKey {
                            conn: *conn,
                            request: p.id,
                        };
                        self.plan_arrived(call, key, *bytes);
                    }
                    ClientToBroker::Cancel(c) => {
                        let key = PlanKey {
                            conn: *conn,
                            request: c.id,
                        };
                        call.cancel = Some(key);
                        if self.plans.get(&key).is_some_and(|t| t.in_flight) {
                            call.must_end.insert(key, "its client cancelled it");
                        }
                    }
                    ClientToBroker::Heartbeat(h) => {
                        let liveness = self.config.client_liveness;
                        self.view(call.broker).client_heartbeat(
                            *conn,
                            h.interval_ms,
                            liveness,
                            now,
                        );
                    }
                    other => self.fail(
                        Property::Protocol,
                        now,
                        format!("the simulation sent a {} request", other.kind()),
                    ),
                }
            }
            Input::Worker {
                conn,
                message,
                bytes,
            } => {
                let view = self.view(call.broker);
                let worker = view.workers.get_mut(conn).map(|w| {
                    w.last_heard = now;
                    w.name.clone()
                });
                match (message, worker) {
                    (WorkerToBroker::Register(r), _) => call.register = Some((*conn, r.clone())),
                    (WorkerToBroker::Disconnect(_), Some(_)) => {
                        if let Some(w) = self.view(call.broker).workers.get_mut(conn) {
                            w.draining = true;
                        }
                    }
                    (WorkerToBroker::Disconnect(_), None) => {}
                    (_, None) => call.reconnect_due = Some(*conn),
                    (WorkerToBroker::Heartbeat(_), Some(_)) => {}
                    (WorkerToBroker::Result(r), Some(_)) => {
                        if let Some((key, step)) = self.take_task(call.broker, *conn, r.task) {
                            self.accept_result(call, key, step, &r.value, *bytes);
                        }
                    }
                    (WorkerToBroker::Failure(f), Some(name)) => {
                        if let Some((key, step)) = self.take_task(call.broker, *conn, f.task) {
                            call.accepted_failure = Some((key, step, f.kind.clone(), name));
                            call.must_end.insert(key, "its step failed");
                        }
                    }
                }
            }
            Input::Tick | Input::Peer { .. } | Input::Gossip(_) | Input::PeerLink { .. } => {}
        }
    }

    pub(super) fn plan_arrived(&mut self, call: &mut Call, key: PlanKey, bytes: usize) {
        let now = call.now;
        let (default, max) = (self.config.default_deadline, self.config.max_deadline);
        let Some(track) = self.plans.get_mut(&key) else {
            return self.fail(
                Property::Outcome,
                now,
                format!("plan {key} arrived but no client sent it"),
            );
        };
        if track.received.is_some() {
            return self.fail(
                Property::ExactlyOnce,
                now,
                format!("plan {key} arrived twice"),
            );
        }
        self.stats.plans_received += 1;
        track.received = Some((call.broker, now));
        track.bytes = bytes;
        let wait = track
            .plan
            .deadline_ms
            .map_or(default, Duration::from_millis)
            .min(max);
        track.deadline_at = now.after(wait);
        call.plan_arrived = Some(key);
        if let Expectation::Runs(_) = track.expect {
            track.in_flight = true;
            let ready: Vec<usize> = (0..track.steps.len())
                .filter(|&i| track.steps[i].pending == 0)
                .collect();
            let view = self
                .views
                .get_mut(&call.broker)
                .expect("created by after_call");
            view.plans_in_flight += 1;
            view.plan_bytes += bytes;
            view.ready.extend(ready.into_iter().map(|i| (key, i)));
        } else {
            call.must_end
                .insert(key, "a plan refused or empty is answered at once");
        }
    }

    /// Ends task `task` if it is outstanding on `conn`; returns its plan and step.
    pub(super) fn take_task(
        &mut self,
        broker: ProcessId,
        conn: ConnId,
        task: TaskId,
    ) -> Option<(PlanKey, usize)> {
        let view = self.views.get_mut(&broker)?;
        if !view.workers.get_mut(&conn)?.tasks.remove(&task) {
            return None;
        }
        let TaskView { plan, step, .. } = view.tasks.remove(&task)?;
        if let Some(track) = self.plans.get_mut(&plan) {
            track.steps[step].outstanding = None;
        }
        Some((plan, step))
    }

    pub(super) fn accept_result(
        &mut self,
        call: &mut Call,
        key: PlanKey,
        step: usize,
        value: &Value,
        bytes: usize,
    ) {
        let now = call.now;
        let track = self
            .plans
            .get_mut(&key)
            .expect("tasks belong to tracked plans");
        let mut wrong = None;
        if let Expectation::Runs(run) = &track.expect {
            match &run.steps[step].outcome {
                Outcome::Ok(v) if v == value => {}
                other => wrong = Some(format!(
                    "the worker's result {value} for step {:?} of {key} is not the model's {other:?}",
                    track.plan.steps[step].name
                )),
            }
        }
        track.steps[step].accepted = Some(value.clone());
        track.result_bytes += bytes;
        call.accepted_result = Some((key, step));
        let mut ready = Vec::new();
        for &d in &track.dependents[step] {
            track.steps[d].pending -= 1;
            if track.steps[d].pending == 0 {
                ready.push(d);
            }
        }
        if track.steps.iter().all(|s| s.accepted.is_some()) {
            call.must_end.insert(key, "its last step finished");
        }
        let view = self
            .views
            .get_mut(&call.broker)
            .expect("created by after_call");
        view.plan_bytes += bytes;
        view.ready.extend(ready.into_iter().map(|d| (key, d)));
        if let Some(message) = wrong {
            self.fail(Property::Outcome, now, message);
        }
    }

    pub(super) fn apply_tick(&mut self, call: &mut Call) {
        let now = call.now;
        let heartbeat = self.config.heartbeat;
        let silence = heartbeat * self.config.liveness;
        let view = self.view(call.broker);
        if now >= view.next_heartbeat {
            call.heartbeat_tick = true;
            view.next_heartbeat = now.after(heartbeat);
            view.stale_steps = 0;
            call.heartbeat_due = view.workers.keys().copied().collect();
            call.pending_expiry = view.silent_workers(now, silence);
            let gone = self.view(call.broker).expire_clients(now);
            self.stats.clients_expired += gone.len() as u64;
            call.gone_clients.extend(gone);
            for (key, track) in &self.plans {
                if track.in_flight && call.gone_clients.contains(&key.conn) {
                    call.must_end
                        .insert(*key, "its client went silent past its grace period");
                }
            }
        }
        for (key, track) in &self.plans {
            let here = track.received.is_some_and(|(b, _)| b == call.broker);
            if here && track.in_flight && track.deadline_at <= now {
                call.must_end.insert(*key, "its deadline passed");
            }
        }
        for t in self.view(call.broker).tasks.values() {
            let expiring = call.pending_expiry.contains(&t.conn);
            if !expiring && t.timeout_at.is_some_and(|at| at <= now) {
                call.timed_out.insert((t.plan, t.step));
                call.must_end
                    .insert(t.plan, "a step ran past its timeout_ms");
            }
        }
    }

    /// The engine forgets a worker: its tasks are orphaned, to be retried within their
    /// step's retries.
    pub(super) fn expire_worker(&mut self, call: &mut Call, conn: ConnId) {
        let max_retries = self.config.max_retries;
        let view = self
            .views
            .get_mut(&call.broker)
            .expect("created by after_call");
        let Some(worker) = view.workers.remove(&conn) else {
            return;
        };
        call.expired.push(conn);
        self.stats.workers_expired += 1;
        for task in worker.tasks {
            let Some(t) = view.tasks.remove(&task) else {
                continue;
            };
            self.stats.orphaned += 1;
            let Some(track) = self.plans.get_mut(&t.plan) else {
                continue;
            };
            let st = &mut track.steps[t.step];
            st.outstanding = None;
            st.orphaned += 1;
            if track.in_flight {
                let retries = track.plan.steps[t.step].retries.unwrap_or(max_retries);
                if st.orphaned > retries {
                    call.must_end.insert(
                        t.plan,
                        "its step's workers were lost more often than its retries",
                    );
                } else {
                    view.ready.insert((t.plan, t.step));
                }
            }
        }
    }

    /// The pending worker a step's outstanding task runs on: its position in the queue.
    pub(super) fn expiring_runner(
        &self,
        call: &Call,
        key: PlanKey,
        step: Option<usize>,
    ) -> Option<usize> {
        let task = self.plans.get(&key)?.steps.get(step?)?.outstanding?;
        let conn = self.views[&call.broker].tasks.get(&task)?.conn;
        call.pending_expiry.iter().position(|&c| c == conn)
    }

    /// Applies the pending expiries that `output` shows have happened: all of them before an
    /// output of a later phase of the tick, those up to a step's worker before an output about
    /// that step (its `worker_lost`, its re-dispatch).
    pub(super) fn settle_expiries(&mut self, call: &mut Call, output: &Output) {
        if call.pending_expiry.is_empty() {
            return;
        }
        let all = call.pending_expiry.len();
        let step_of = |e: &ErrorReply, plans: &BTreeMap<PlanKey, PlanTrack>, key: PlanKey| {
            let track = plans.get(&key)?;
            let name = e.step.as_deref()?;
            track.plan.steps.iter().position(|s| s.name == name)
        };
        let upto = match output {
            Output::Reply {
                conn,
                message: BrokerToClient::Error(e),
                ..
            } => {
                let key = PlanKey {
                    conn: *conn,
                    request: e.id.unwrap_or(u64::MAX),
                };
                let step = step_of(e, &self.plans, key);
                match e.error_code() {
                    // A plan failing inside the expiry phase (a freed slot refilled with a step
                    // whose arguments do not resolve): nothing to settle.
                    Some(
                        ErrorCode::UnresolvedReference
                        | ErrorCode::MessageTooLarge
                        | ErrorCode::NestingTooDeep,
                    ) => 0,
                    // Out of retries when that step's worker expires: during its expiry. Else
                    // no other worker could take it: when the orphans are placed, after every
                    // expiry.
                    Some(ErrorCode::WorkerLost) => {
                        let max_retries = self.config.max_retries;
                        let exhausted = step.and_then(|i| {
                            let track = self.plans.get(&key)?;
                            let retries = track.plan.steps[i].retries.unwrap_or(max_retries);
                            Some(track.steps[i].orphaned + 1 > retries)
                        });
                        match (self.expiring_runner(call, key, step), exhausted) {
                            (Some(k), Some(true)) => k + 1,
                            _ => all,
                        }
                    }
                    _ => all,
                }
            }
            Output::Reply { .. } => all,
            Output::Task { task, .. } => match tag_of(task) {
                Some((key, ix)) => self
                    .expiring_runner(call, key, Some(ix))
                    .map_or(0, |k| k + 1),
                None => 0,
            },
            Output::ToWorker { .. } | Output::ToPeer { .. } => 0,
        };
        let settled: Vec<ConnId> = call.pending_expiry.drain(..upto).collect();
        for conn in settled {
            self.expire_worker(call, conn);
        }
    }
}
