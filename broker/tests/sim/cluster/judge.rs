//! What each broker of a cluster does, judged from its engine calls (the inputs it was given,
//! the outputs it emitted):
//!
//! - P2 (outcome): a `result` equals the model's; an `error` has a code the situation allows
//!   (the model's refusal for an invalid plan; for a valid one `step_failed` only for the
//!   model's failure, `unresolved_reference` only for the model's path, `no_route` only for a
//!   step that could run, `plan_timeout` only after the deadline, `step_timeout` only for a
//!   step with a timeout, `cancelled` only if its client cancelled it or sends heartbeats,
//!   `worker_lost` only after a failure), its `partial` results are the model's; progress
//!   events carry the model's value, once per step and run; tasks and forwarded steps carry
//!   exactly the arguments the model resolves; a forwarded step's value is the model's.
//! - P4 on the broker's side: a broker never sends a task or a forward for a step of a plan
//!   it runs after it reported that step's result in a progress event.
//! - P1, P3, P5 and P7 on the broker's side (see [`super::check`]).

use std::time::Duration;

use mpreg_broker::engine::Footprint;
use mpreg_protocol::{BrokerId, BrokerToClient, ClientToBroker, ErrorCode, PeerMessage, PlanId};

use super::super::broker::{Input, Output};
use super::super::clock::SimTime;
use super::super::model::{Expectation, Outcome};
use super::super::network::ProcessId;
use super::super::properties::Property;
use super::check::{tag_of, ClientPlan, ClusterChecker, Run, Served};

impl ClusterChecker {
    /// One engine call of incarnation `id` of `broker` at `now`.
    pub fn after_call(
        &mut self,
        broker: ProcessId,
        id: Option<BrokerId>,
        now: SimTime,
        input: &Input,
        outputs: &[Output],
        footprint: &Footprint,
    ) {
        let Some(me) = id.filter(|_| self.enabled) else {
            return;
        };
        self.incarnations.insert(me, broker);
        let mut resent = None;
        match input {
            Input::Client {
                conn,
                message: ClientToBroker::Plan(p),
                ..
            } => {
                let key = self.by_request.get(&(*conn, p.id)).copied();
                match (key, p.plan) {
                    (Some(key), Some(plan)) => {
                        resent = Some(plan);
                        if let Some(track) = self.plans.get_mut(&key) {
                            track.owners.insert(broker);
                        }
                        self.runs.entry((broker, me, plan)).or_insert(Run {
                            admitted: now,
                            ended: false,
                            progressed: Default::default(),
                        });
                    }
                    _ => {
                        let message = format!("{broker} received plan {} on {conn}, which no cluster client sent under a plan id", p.id);
                        return self.fail(Property::Outcome, now, message);
                    }
                }
            }
            Input::Peer {
                from,
                message: PeerMessage::FwdStep(s),
            } => {
                let owner = self
                    .incarnations
                    .get(from)
                    .copied()
                    .unwrap_or(ProcessId(u32::MAX));
                let served = Served {
                    plan: s.plan,
                    step: s.step.clone(),
                };
                self.served.insert((broker, me, owner, s.fid), served);
            }
            Input::Peer {
                from,
                message: PeerMessage::FwdCancel(c),
            } => {
                let owner = self
                    .incarnations
                    .get(from)
                    .copied()
                    .unwrap_or(ProcessId(u32::MAX));
                self.served.remove(&(broker, me, owner, c.fid));
            }
            _ => {}
        }
        for output in outputs {
            if !self.violations.is_empty() {
                return;
            }
            self.judge_output(broker, me, now, output, resent);
        }
        if !self.violations.is_empty() {
            return;
        }
        let runs = self
            .runs
            .range((broker, me, PlanId(ulid::Ulid(0)))..)
            .take_while(|((b, i, _), _)| *b == broker && *i == me)
            .filter(|(_, r)| !r.ended)
            .count();
        let served = self
            .served
            .range((broker, me, ProcessId(0), 0)..)
            .take_while(|((b, i, _, _), _)| *b == broker && *i == me)
            .count();
        if footprint.plans > runs + served || footprint.ready != 0 {
            let message = format!(
                "{broker} holds {} plans ({} ready steps between calls); its clients' plans in flight and the steps it serves for peers are {runs} + {served}",
                footprint.plans, footprint.ready
            );
            self.fail(Property::Bounded, now, message);
        }
    }

    fn judge_output(
        &mut self,
        broker: ProcessId,
        me: BrokerId,
        now: SimTime,
        output: &Output,
        resent: Option<PlanId>,
    ) {
        match output {
            Output::Reply { conn, message } => {
                let (request, plan) = match message {
                    BrokerToClient::Result(r) => (r.id, r.plan),
                    BrokerToClient::Error(e) => (e.id.unwrap_or(u64::MAX), e.plan),
                    BrokerToClient::Progress(p) => (p.id, None),
                    _ => return,
                };
                let Some(key) = self.by_request.get(&(*conn, request)).copied() else {
                    let message = format!(
                        "{broker} sent {message:?} to {conn} for a request never sent there"
                    );
                    return self.fail(Property::Outcome, now, message);
                };
                let plan = plan
                    .or(self.plans[&key].plan.plan)
                    .expect("cluster plans carry ids");
                if let BrokerToClient::Progress(p) = message {
                    return self.judge_progress(broker, me, now, key, plan, &p.step, &p.result);
                }
                let Some(run) = self.runs.get_mut(&(broker, me, plan)) else {
                    let message =
                        format!("{broker} sent a final reply for {key}, which it never received");
                    return self.fail(Property::ExactlyOnce, now, message);
                };
                if run.ended && resent != Some(plan) {
                    let message =
                        format!("{broker} sent a second final reply for {key}: {message:?}");
                    return self.fail(Property::ExactlyOnce, now, message);
                }
                run.ended = true;
                let admitted = run.admitted;
                if let Err(why) = self.judge_final(key, admitted, now, message) {
                    let message =
                        format!("{broker}'s final reply for {key} is wrong: {why}: {message:?}");
                    self.fail(Property::Outcome, now, message);
                }
            }
            Output::Task { conn, task, .. } => {
                self.task_sent.insert((*conn, task.task), now);
                let Some((key, step)) = tag_of(task) else {
                    return;
                };
                let Some(plan) = self.plans.get(&key).and_then(|t| t.plan.plan) else {
                    return;
                };
                let name = self.plans[&key].plan.steps[step].name.clone();
                let owns = self.runs.get(&(broker, me, plan)).is_some_and(|r| !r.ended);
                let serves = self.served.iter().any(|((b, i, _, _), s)| {
                    *b == broker && *i == me && s.plan == plan && s.step == name
                });
                if !owns && !serves {
                    let message = format!("{broker} sent task {} (step {name:?} of {key}) for no plan or forwarded step in flight there", task.task);
                    return self.fail(Property::NoTaskAfterFinal, now, message);
                }
                if !serves && self.reported(broker, me, plan, &name) {
                    let message = format!("{broker} sent task {} for step {name:?} of {key}, whose result it already reported", task.task);
                    return self.fail(Property::NoRerun, now, message);
                }
                if let Err(why) = self.judge_args(key, step, &task.args, &task.kwargs) {
                    self.fail(
                        Property::Outcome,
                        now,
                        format!("task {} of {key}: {why}", task.task),
                    );
                }
            }
            Output::ToPeer {
                to,
                message,
                delivery,
            } => self.judge_peer(broker, me, now, *to, message, *delivery),
            Output::ToWorker { .. } => {}
        }
    }

    fn judge_peer(
        &mut self,
        broker: ProcessId,
        me: BrokerId,
        now: SimTime,
        to: ProcessId,
        message: &PeerMessage,
        delivery: mpreg_broker::outbox::Delivery,
    ) {
        match message {
            PeerMessage::FwdStep(s) => {
                let Some(key) = self.by_id.get(&s.plan).copied() else {
                    return self.fail(
                        Property::OneHop,
                        now,
                        format!(
                            "{broker} forwarded step {:?} of plan {}, which no client sent",
                            s.step, s.plan
                        ),
                    );
                };
                let owns = self
                    .runs
                    .get(&(broker, me, s.plan))
                    .is_some_and(|r| !r.ended);
                if !owns {
                    let serves = self
                        .served
                        .keys()
                        .any(|(b, i, _, _)| *b == broker && *i == me)
                        && self.served.iter().any(|((b, i, _, _), sv)| {
                            *b == broker && *i == me && sv.plan == s.plan
                        });
                    let (property, what) = if serves {
                        (Property::OneHop, "a step it was forwarded")
                    } else {
                        (Property::NoTaskAfterFinal, "a plan it does not run")
                    };
                    let message = format!(
                        "{broker} forwarded step {:?} of {key} to {to}: {what}",
                        s.step
                    );
                    return self.fail(property, now, message);
                }
                if self.reported(broker, me, s.plan, &s.step) {
                    let message = format!(
                        "{broker} forwarded step {:?} of {key}, whose result it already reported",
                        s.step
                    );
                    return self.fail(Property::NoRerun, now, message);
                }
                if delivery == mpreg_broker::outbox::Delivery::Sent {
                    self.stats.forwarded += 1;
                }
                let step = self.plans[&key]
                    .plan
                    .steps
                    .iter()
                    .position(|d| d.name == s.step);
                let Some(step) = step else {
                    return self.fail(
                        Property::Outcome,
                        now,
                        format!("{broker} forwarded step {:?}, not a step of {key}", s.step),
                    );
                };
                if let Err(why) = self.judge_args(key, step, &s.args, &s.kwargs) {
                    self.fail(Property::Outcome, now, format!("forward of {key}: {why}"));
                }
            }
            PeerMessage::FwdResult(r) => {
                if let Some(served) = self.served.remove(&(broker, me, to, r.fid)) {
                    let key = self.by_id.get(&served.plan).copied();
                    if let Some(key) = key {
                        let track = &self.plans[&key];
                        let step = track.plan.steps.iter().position(|d| d.name == served.step);
                        if let (Expectation::Runs(run), Some(step)) = (&track.expect, step) {
                            if run.steps[step].outcome != Outcome::Ok(r.value.clone()) {
                                let message = format!("{broker} answered the forward of step {:?} of {key} with {}, the model says {:?}", served.step, r.value, run.steps[step].outcome);
                                self.fail(Property::Outcome, now, message);
                            }
                        }
                    }
                }
            }
            PeerMessage::FwdFailure(f) => {
                self.served.remove(&(broker, me, to, f.fid));
            }
            PeerMessage::FwdReject(r) => {
                self.served.remove(&(broker, me, to, r.fid));
            }
            _ => {}
        }
    }

    /// True when run `plan` of incarnation `me` of `broker` sent a progress event for `step`:
    /// its result was accepted, and it must never run again in that run (at-least-once
    /// execution re-runs a step only while no result of it was accepted).
    fn reported(&self, broker: ProcessId, me: BrokerId, plan: PlanId, step: &str) -> bool {
        self.runs
            .get(&(broker, me, plan))
            .is_some_and(|r| r.progressed.contains(step))
    }

    #[allow(clippy::too_many_arguments)]
    fn judge_progress(
        &mut self,
        broker: ProcessId,
        me: BrokerId,
        now: SimTime,
        key: ClientPlan,
        plan: PlanId,
        step: &str,
        value: &mpreg_protocol::Value,
    ) {
        let track = &self.plans[&key];
        let model = match &track.expect {
            Expectation::Runs(run) => run.graph.index(step).map(|i| run.steps[i].outcome.clone()),
            _ => None,
        };
        let asked = track.plan.progress;
        let Some(run) = self.runs.get_mut(&(broker, me, plan)) else {
            return self.fail(
                Property::Outcome,
                now,
                format!("{broker} sent progress for {key}, which it does not run"),
            );
        };
        let problem = if run.ended {
            Some("after the final reply".to_string())
        } else if !asked {
            Some("the plan did not ask for progress".to_string())
        } else if !run.progressed.insert(step.to_string()) {
            Some("a second one for the step".to_string())
        } else if model != Some(Outcome::Ok(value.clone())) {
            Some(format!("{value}, the model says {model:?}"))
        } else {
            None
        };
        if let Some(why) = problem {
            let property = if why.starts_with("after") || why.starts_with("a second") {
                Property::ExactlyOnce
            } else {
                Property::Outcome
            };
            self.fail(
                property,
                now,
                format!("{broker}'s progress for step {step:?} of {key}: {why}"),
            );
        }
    }

    fn judge_args(
        &self,
        key: ClientPlan,
        step: usize,
        args: &[mpreg_protocol::Value],
        kwargs: &std::collections::BTreeMap<String, mpreg_protocol::Value>,
    ) -> Result<(), String> {
        let track = &self.plans[&key];
        let Expectation::Runs(run) = &track.expect else {
            return Err("the model says the plan never runs".into());
        };
        match &run.steps[step].args {
            Some((a, k)) if a.as_slice() == args && k == kwargs => Ok(()),
            Some((a, k)) => Err(format!(
                "arguments {args:?} {kwargs:?}, the model resolves {a:?} {k:?}"
            )),
            None => Err(format!(
                "the model says the step cannot run: {:?}",
                run.steps[step].outcome
            )),
        }
    }

    /// How long a failure can stay unnoticed by a broker: a worker silent for its liveness
    /// window, or a crashed peer found by a failed probe (two probe periods and the probe
    /// timeout) and then suspected for the suspicion timeout.
    pub(super) fn unnoticed(&self) -> Duration {
        let workers = self.config.heartbeat * self.config.liveness;
        let peers = self.config.cluster.as_ref().map_or(Duration::ZERO, |c| {
            c.swim.probe_interval * 2 + c.swim.probe_timeout + c.swim.suspicion_timeout
        });
        workers.max(peers)
    }

    /// Whether a final reply for `key`, admitted at `admitted`, is right at `now`.
    fn judge_final(
        &self,
        key: ClientPlan,
        admitted: SimTime,
        now: SimTime,
        message: &BrokerToClient,
    ) -> Result<(), String> {
        let track = &self.plans[&key];
        let e = match (message, &track.expect) {
            (BrokerToClient::Result(r), Expectation::Empty) if r.results.is_empty() => {
                return Ok(())
            }
            (BrokerToClient::Result(r), Expectation::Runs(run)) => {
                return match &run.result {
                    Some(want) if *want == r.results => Ok(()),
                    want => Err(format!("the model says {want:?}")),
                }
            }
            (BrokerToClient::Result(_), other) => return Err(format!("the model says {other:?}")),
            (BrokerToClient::Error(e), _) => e,
            _ => return Ok(()),
        };
        let code = e
            .error_code()
            .ok_or_else(|| format!("unknown code {}", e.code))?;
        let run = match &track.expect {
            Expectation::Rejected {
                code: want, graph, ..
            } => {
                if code != *want {
                    return Err(format!("the model rejects it with {want}"));
                }
                if code == ErrorCode::PlanCycle {
                    let cycle = e.cycle.as_deref().unwrap_or(&[]);
                    if !graph.as_ref().is_some_and(|g| g.is_cycle(cycle)) {
                        return Err(format!("{cycle:?} is not a cycle of the plan"));
                    }
                }
                return Ok(());
            }
            Expectation::Empty => return Err("an empty plan returns an empty result".into()),
            Expectation::Runs(run) => run,
        };
        for (name, value) in &e.partial {
            let i = run
                .graph
                .index(name)
                .ok_or(format!("partial result of {name:?}, no step"))?;
            if run.steps[i].outcome != Outcome::Ok(value.clone()) {
                return Err(format!(
                    "partial result {value} of {name:?}, the model says {:?}",
                    run.steps[i].outcome
                ));
            }
        }
        let step = || {
            e.step
                .as_deref()
                .and_then(|s| run.graph.index(s))
                .ok_or_else(|| format!("it names no step of the plan ({:?})", e.step))
        };
        let (default, max) = (self.config.default_deadline, self.config.max_deadline);
        let deadline = track
            .plan
            .deadline_ms
            .map_or(default, Duration::from_millis)
            .min(max);
        match code {
            ErrorCode::StepFailed => {
                let i = step()?;
                match &run.steps[i].outcome {
                    Outcome::Fails(f)
                        if e.cause.as_deref() == Some(f.kind) && e.message.contains(&f.message) =>
                    {
                        Ok(())
                    }
                    other => Err(format!("cause {:?}; the model says {other:?}", e.cause)),
                }
            }
            ErrorCode::UnresolvedReference => match &run.steps[step()?].outcome {
                Outcome::Unresolved(refs) if e.path.as_ref().is_some_and(|p| refs.contains(p)) => {
                    Ok(())
                }
                other => Err(format!("path {:?}; the model says {other:?}", e.path)),
            },
            ErrorCode::NoRoute => {
                let i = step()?;
                let def = &track.plan.steps[i];
                if run.steps[i].args.is_none() {
                    Err("its step could not run".into())
                } else if e.fun.as_deref() != Some(def.fun.as_str()) {
                    Err(format!("fun {:?}", e.fun))
                } else {
                    Ok(())
                }
            }
            ErrorCode::WorkerLost => {
                step()?;
                // A failure shortly before the plan came may still be unknown to its broker
                // when it places a step (a step forwarded to a peer that just crashed, sent
                // to a worker already gone): the window opens as long before the admission
                // as a failure can stay unnoticed.
                let since = SimTime(
                    admitted
                        .0
                        .saturating_sub(self.unnoticed().as_micros() as u64),
                );
                if self.faults.any(since, now) {
                    Ok(())
                } else {
                    Err("no failure happened while it ran".into())
                }
            }
            ErrorCode::PlanTimeout => {
                let due = admitted.after(deadline).0.saturating_sub(1000);
                if now.0 >= due {
                    Ok(())
                } else {
                    Err(format!("its deadline is {}", admitted.after(deadline)))
                }
            }
            ErrorCode::StepTimeout => {
                let i = step()?;
                if track.plan.steps[i].timeout_ms.is_some() {
                    Ok(())
                } else {
                    Err("its step has no timeout".into())
                }
            }
            ErrorCode::Cancelled => {
                if track.cancelled || self.heartbeating.contains(&key.client) {
                    Ok(())
                } else {
                    Err("its client neither cancelled it nor sends heartbeats".into())
                }
            }
            other => Err(format!("{other} is not expected in this simulation")),
        }
    }
}
