//! What a broker sends workers, judged: tasks only for plans in flight, for steps whose
//! references have results, not accepted and not running, to a registered, non-draining worker
//! that serves the function with the resources and has a free slot, with the arguments the
//! model resolves; cancels only for outstanding tasks; `registered`, `reconnect` and
//! heartbeats only when due.

use std::collections::BTreeSet;
use std::time::Duration;

use mpreg_protocol::{BrokerToWorker, Task};

use super::broker_view::{TaskView, WorkerView};
use super::model::Expectation;
use super::network::ConnId;
use super::properties::{tag_of, Call, Checker, Property};

impl Checker {
    pub(super) fn task_out(
        &mut self,
        call: &mut Call,
        conn: ConnId,
        task: &Task<'static>,
        delivery: mpreg_broker::outbox::Delivery,
    ) {
        let now = call.now;
        let Some((key, ix)) = tag_of(task) else {
            return self.fail(
                Property::NoTaskAfterFinal,
                now,
                format!("task {} carries no plan tag", task.task),
            );
        };
        let Some(track) = self.plans.get(&key) else {
            return self.fail(
                Property::NoTaskAfterFinal,
                now,
                format!("task {} for plan {key}, which no client sent", task.task),
            );
        };
        let name = track.plan.steps.get(ix).map_or("?", |s| s.name.as_str());
        let what = format!("task {} (step {name:?} of {key}) to {conn}", task.task);
        if !track.in_flight {
            let state = if track.finals > 0 {
                "after its final reply"
            } else {
                "for a plan not in flight"
            };
            return self.fail(Property::NoTaskAfterFinal, now, format!("{what} {state}"));
        }
        if call.pending_expiry.contains(&conn) {
            let message = format!(
                "{what}: that worker is silent past its window and the engine expires it in this very tick (the step will be orphaned and charged a retry without having run)"
            );
            return self.fail(Property::Protocol, now, message);
        }
        let (def, st) = (&track.plan.steps[ix], &track.steps[ix]);
        let view = &self.views[&call.broker];
        let problem: Option<(Property, String)> = if st.accepted.is_some() {
            Some((
                Property::NoRerun,
                "its step's result was already accepted".into(),
            ))
        } else if let Some(t) = st.outstanding {
            Some((
                Property::NoRerun,
                format!("its step's task {t} is still outstanding"),
            ))
        } else if st.dispatches != st.orphaned {
            Some((
                Property::NoRerun,
                format!(
                    "its step was dispatched {} times and lost {} times",
                    st.dispatches, st.orphaned
                ),
            ))
        } else if st.pending > 0 {
            Some((
                Property::Outcome,
                format!("{} steps it references have no result yet", st.pending),
            ))
        } else {
            match view.workers.get(&conn) {
                None => Some((Property::Protocol, "not a registered worker".into())),
                Some(w) if !w.eligible(&def.fun, &def.locs) => Some((
                    Property::Protocol,
                    format!(
                        "worker {} cannot run it (serves {:?}, holds {:?}, draining {})",
                        w.name, w.functions, w.resources, w.draining
                    ),
                )),
                Some(w) if !w.has_room() => Some((
                    Property::NoRerun,
                    format!(
                        "worker {} already has {} tasks outstanding, capacity {}",
                        w.name,
                        w.tasks.len(),
                        w.capacity
                    ),
                )),
                Some(_) => None,
            }
        };
        let problem = problem.or_else(|| {
            let Expectation::Runs(run) = &track.expect else {
                return Some((
                    Property::Outcome,
                    "the model says the plan never runs".into(),
                ));
            };
            match &run.steps[ix].args {
                _ if task.fun != def.fun || task.timeout_ms != def.timeout_ms => Some((
                    Property::Outcome,
                    format!(
                        "fun {} timeout {:?} are not the step's",
                        task.fun, task.timeout_ms
                    ),
                )),
                Some((args, kwargs))
                    if task.args.as_ref() == args.as_slice() && task.kwargs.as_ref() == kwargs =>
                {
                    None
                }
                Some((args, kwargs)) => Some((
                    Property::Outcome,
                    format!(
                        "arguments {:?} {:?}, the model resolves {args:?} {kwargs:?}",
                        task.args, task.kwargs
                    ),
                )),
                None => Some((
                    Property::Outcome,
                    format!(
                        "the model says the step cannot run: {:?}",
                        run.steps[ix].outcome
                    ),
                )),
            }
        });
        if let Some((property, why)) = problem {
            return self.fail(property, now, format!("{what}: {why}"));
        }
        if delivery != mpreg_broker::outbox::Delivery::Sent {
            // The engine drops a worker it cannot send to; the step is placed again.
            return self.expire_worker(call, conn);
        }
        self.stats.tasks += 1;
        let timeout_at = def
            .timeout_ms
            .map(|ms| now.after(Duration::from_millis(ms)));
        let view = self
            .views
            .get_mut(&call.broker)
            .expect("created by after_call");
        view.ready.remove(&(key, ix));
        view.tasks.insert(
            task.task,
            TaskView {
                plan: key,
                step: ix,
                conn,
                timeout_at,
            },
        );
        if let Some(w) = view.workers.get_mut(&conn) {
            w.tasks.insert(task.task);
        }
        let st = &mut self.plans.get_mut(&key).expect("looked up above").steps[ix];
        st.outstanding = Some(task.task);
        st.dispatches += 1;
    }

    pub(super) fn worker_out(&mut self, call: &mut Call, conn: ConnId, message: &BrokerToWorker) {
        let now = call.now;
        match message {
            BrokerToWorker::Registered(r) => {
                let Some((_, register)) = call.register.clone().filter(|(c, _)| *c == conn) else {
                    return self.fail(
                        Property::Protocol,
                        now,
                        format!("registered sent to {conn}, which did not register"),
                    );
                };
                call.registered_seen = true;
                if r.capacity < 1 || r.capacity > register.capacity.max(1) {
                    return self.fail(
                        Property::NoRerun,
                        now,
                        format!(
                            "{conn} asked for capacity {} and was granted {}",
                            register.capacity, r.capacity
                        ),
                    );
                }
                let view = self.view(call.broker);
                let (tasks, seq) = match view.workers.remove(&conn) {
                    Some(w) => (w.tasks, w.seq),
                    None => {
                        view.registrations += 1;
                        (BTreeSet::new(), view.registrations)
                    }
                };
                view.workers.insert(
                    conn,
                    WorkerView {
                        name: register.node,
                        functions: register.functions.into_iter().collect(),
                        resources: register.resources.into_iter().collect(),
                        capacity: r.capacity,
                        last_heard: now,
                        draining: false,
                        tasks,
                        seq,
                    },
                );
            }
            BrokerToWorker::Cancel(c) => match self.take_task(call.broker, conn, c.task) {
                Some((key, _)) => {
                    call.must_end.insert(key, "the broker cancelled its task");
                    // A draining worker left with nothing to answer is forgotten at once (not
                    // expired, even if it was about to be).
                    let view = self.view(call.broker);
                    if view
                        .workers
                        .get(&conn)
                        .is_some_and(|w| w.draining && w.tasks.is_empty())
                    {
                        view.workers.remove(&conn);
                        call.pending_expiry.retain(|&c| c != conn);
                    }
                }
                None => self.fail(
                    Property::Protocol,
                    now,
                    format!(
                        "cancel for task {} which is not outstanding on {conn}",
                        c.task
                    ),
                ),
            },
            BrokerToWorker::Reconnect(_) => {
                if self.view(call.broker).workers.contains_key(&conn) {
                    return self.fail(
                        Property::Protocol,
                        now,
                        format!("reconnect to {conn}, a registered worker: the engine forgot it without the silence or send failure that expires a worker"),
                    );
                }
                if call.reconnect_due != Some(conn) {
                    return self.fail(
                        Property::Protocol,
                        now,
                        format!("reconnect to {conn}, which sent nothing to answer"),
                    );
                }
                call.reconnect_seen = true;
            }
            BrokerToWorker::Heartbeat(_) => {
                if !call.heartbeat_due.contains(&conn) {
                    return self.fail(
                        Property::Protocol,
                        now,
                        format!("heartbeat to {conn} outside a heartbeat tick or not registered"),
                    );
                }
                call.heartbeat_sent.insert(conn);
            }
            other => self.fail(
                Property::Protocol,
                now,
                format!("unexpected {} to {conn}: {other:?}", other.kind()),
            ),
        }
    }
}
