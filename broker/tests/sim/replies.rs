//! What a broker tells clients, judged: progress only for a result just accepted, one final
//! reply per plan, a `result` equal to the model's, an `error` whose code the situation allows
//! (and whose step, fields and `partial` are right).

use std::collections::BTreeMap;

use mpreg_protocol::{BrokerToClient, ErrorCode, ErrorReply, PlanResult, Progress, Value};

use super::broker::Output;
use super::broker_view::PlanKey;
use super::model::{Expectation, Outcome};
use super::properties::{Call, Checker, Property};

impl Checker {
    pub(super) fn apply_output(&mut self, call: &mut Call, output: &Output) {
        let now = call.now;
        match output {
            Output::Reply { conn, message, .. } => {
                let key = |request| PlanKey {
                    conn: *conn,
                    request,
                };
                match message {
                    BrokerToClient::Progress(p) => self.progress(call, key(p.id), p),
                    BrokerToClient::Result(r) => self.final_result(call, key(r.id), r),
                    BrokerToClient::Error(e) => match e.id {
                        Some(id) => self.final_error(call, key(id), e),
                        None => self.fail(
                            Property::Outcome,
                            now,
                            format!("an error without id: {e:?}"),
                        ),
                    },
                    other => self.fail(
                        Property::Outcome,
                        now,
                        format!("unexpected {} reply to {conn}", other.kind()),
                    ),
                }
            }
            Output::Task {
                conn,
                task,
                delivery,
            } => self.task_out(call, *conn, task, *delivery),
            Output::ToWorker { conn, message, .. } => self.worker_out(call, *conn, message),
            Output::ToPeer { .. } => {}
        }
    }

    pub(super) fn progress(&mut self, call: &mut Call, key: PlanKey, p: &Progress) {
        let now = call.now;
        let Some(track) = self.plans.get_mut(&key) else {
            return self.fail(
                Property::Outcome,
                now,
                format!("progress for unknown plan {key}"),
            );
        };
        let ix = track.plan.steps.iter().position(|s| s.name == p.step);
        let problem = if !track.in_flight {
            Some((
                Property::ExactlyOnce,
                "the plan is not in flight (progress after its final reply?)".to_string(),
            ))
        } else if !track.plan.progress {
            Some((
                Property::Outcome,
                "the plan did not ask for progress".to_string(),
            ))
        } else if ix.is_none() || call.accepted_result != Some((key, ix.unwrap_or(0))) {
            Some((
                Property::Outcome,
                "that step's result was not just accepted".to_string(),
            ))
        } else if !track.progressed.insert(ix.unwrap_or(0)) {
            Some((
                Property::ExactlyOnce,
                "a second progress event for the step".to_string(),
            ))
        } else if track.steps[ix.unwrap_or(0)].accepted.as_ref() != Some(&p.result) {
            Some((
                Property::Outcome,
                format!("its result {} is not the accepted one", p.result),
            ))
        } else {
            None
        };
        if let Some((property, why)) = problem {
            self.fail(
                property,
                now,
                format!("progress for step {:?} of {key}: {why}", p.step),
            );
        }
    }

    /// Counts a final reply; false when it must not be judged further.
    pub(super) fn count_final(&mut self, call: &Call, key: PlanKey, kind: String) -> bool {
        let now = call.now;
        let Some(track) = self.plans.get_mut(&key) else {
            self.fail(
                Property::ExactlyOnce,
                now,
                format!("{kind} for unknown plan {key}"),
            );
            return false;
        };
        track.finals += 1;
        let (finals, received, deadline, admitted) = (
            track.finals,
            track.received,
            track.deadline_at,
            matches!(track.expect, Expectation::Runs(_)),
        );
        if finals > 1 {
            self.fail(
                Property::ExactlyOnce,
                now,
                format!("a second final reply ({kind}) for {key}"),
            );
            return false;
        }
        if received.is_none() {
            self.fail(
                Property::ExactlyOnce,
                now,
                format!("{kind} for {key}, which the broker never received"),
            );
            return false;
        }
        if admitted && now > deadline {
            self.fail(
                Property::Outcome,
                now,
                format!("{kind} for {key} after its deadline {deadline}"),
            );
            return false;
        }
        true
    }

    pub(super) fn end_plan(&mut self, call: &mut Call, key: PlanKey) {
        call.ended.insert(key);
        let Some(track) = self.plans.get_mut(&key) else {
            return;
        };
        if !track.in_flight {
            return;
        }
        track.in_flight = false;
        let (bytes, n) = (track.bytes + track.result_bytes, track.steps.len());
        let view = self
            .views
            .get_mut(&call.broker)
            .expect("created by after_call");
        view.plans_in_flight -= 1;
        view.plan_bytes -= bytes;
        view.stale_steps += n;
        for i in 0..n {
            view.ready.remove(&(key, i));
        }
    }

    pub(super) fn final_result(&mut self, call: &mut Call, key: PlanKey, r: &PlanResult) {
        self.stats.results += 1;
        if !self.count_final(call, key, "result".into()) {
            return;
        }
        let track = &self.plans[&key];
        let problem = match &track.expect {
            Expectation::Empty if !r.results.is_empty() => {
                Some("an empty plan's result must be empty".to_string())
            }
            Expectation::Empty if call.plan_arrived != Some(key) => {
                Some("an empty plan is answered at once".to_string())
            }
            Expectation::Empty => None,
            Expectation::Rejected { code, .. } => {
                Some(format!("the model rejects the plan with {code}"))
            }
            Expectation::Runs(_) if track.steps.iter().any(|s| s.accepted.is_none()) => {
                Some("a result before every step's result was accepted".to_string())
            }
            Expectation::Runs(run) => match &run.result {
                Some(want) if *want == r.results => None,
                Some(want) => Some(format!("got {:?}, the model says {:?}", r.results, want)),
                None => Some(format!(
                    "the model says a step does not succeed: {:?}",
                    run.steps
                        .iter()
                        .map(|s| &s.outcome)
                        .find(|o| !matches!(o, Outcome::Ok(_)))
                )),
            },
        };
        if let Some(why) = problem {
            self.fail(
                Property::Outcome,
                call.now,
                format!("result for {key}: {why}"),
            );
        }
        self.end_plan(call, key);
    }

    pub(super) fn final_error(&mut self, call: &mut Call, key: PlanKey, e: &ErrorReply) {
        *self.stats.errors.entry(e.code).or_default() += 1;
        if !self.count_final(call, key, format!("error {} {}", e.code, e.kind)) {
            return;
        }
        if let Err(why) = self.error_allowed(call, key, e) {
            return self.fail(
                Property::Outcome,
                call.now,
                format!(
                    "{key} failed with {} {} ({}), which is not allowed here: {why}",
                    e.code, e.kind, e.message
                ),
            );
        }
        let track = &self.plans[&key];
        let accepted: BTreeMap<String, Value> = track
            .steps
            .iter()
            .zip(&track.plan.steps)
            .filter_map(|(s, def)| s.accepted.clone().map(|v| (def.name.clone(), v)))
            .collect();
        if e.partial != accepted {
            return self.fail(
                Property::Outcome,
                call.now,
                format!(
                    "{key}: partial results {:?}, accepted {:?}",
                    e.partial, accepted
                ),
            );
        }
        self.end_plan(call, key);
    }

    /// Whether the situation allows error `e` for plan `key` now.
    pub(super) fn error_allowed(
        &self,
        call: &Call,
        key: PlanKey,
        e: &ErrorReply,
    ) -> Result<(), String> {
        let track = &self.plans[&key];
        let view = &self.views[&call.broker];
        let code = e
            .error_code()
            .ok_or_else(|| format!("unknown code {}", e.code))?;
        let run = match &track.expect {
            Expectation::Rejected {
                code: want,
                step,
                graph,
            } => {
                if code != *want {
                    return Err(format!("the model rejects it with {want}"));
                }
                if call.plan_arrived != Some(key) {
                    return Err("a refusal answers the plan at once".into());
                }
                if code == ErrorCode::PlanCycle {
                    let cycle = e.cycle.as_deref().unwrap_or(&[]);
                    let graph = graph.as_ref().ok_or("a cycle without its graph")?;
                    if !graph.is_cycle(cycle) {
                        return Err(format!("{cycle:?} is not a cycle of the plan"));
                    }
                    if e.step.as_deref() != cycle.first().map(String::as_str) {
                        return Err("`step` is not the cycle's first step".into());
                    }
                } else if e.step != *step {
                    return Err(format!("it names step {:?}, the model {step:?}", e.step));
                }
                return Ok(());
            }
            Expectation::Empty => return Err("an empty plan returns an empty result".into()),
            Expectation::Runs(run) => run,
        };
        let step = || {
            e.step
                .as_deref()
                .and_then(|s| run.graph.index(s))
                .ok_or_else(|| format!("it names no step of the plan ({:?})", e.step))
        };
        let same_fun = |i: usize| e.fun.as_deref() == Some(track.plan.steps[i].fun.as_str());
        match code {
            ErrorCode::NoRoute => {
                let i = step()?;
                let (def, st) = (&track.plan.steps[i], &track.steps[i]);
                if st.pending > 0 || st.outstanding.is_some() || st.accepted.is_some() {
                    Err("its step was not waiting to be placed".into())
                } else if st.orphaned > 0 {
                    Err("its step ran before (a lost worker is `worker_lost`)".into())
                } else if let Some((c, w)) = view.eligible_worker(&def.fun, &def.locs) {
                    Err(format!(
                        "worker {} ({c}) serves `{}` with {:?}",
                        w.name, def.fun, w.resources
                    ))
                } else if !same_fun(i) || e.locs.as_deref() != Some(def.locs.as_slice()) {
                    Err(format!(
                        "fun {:?} locs {:?} are not the step's",
                        e.fun, e.locs
                    ))
                } else {
                    Ok(())
                }
            }
            ErrorCode::WorkerLost => {
                let i = step()?;
                let (def, st) = (&track.plan.steps[i], &track.steps[i]);
                let retries = def.retries.unwrap_or(self.config.max_retries);
                if st.orphaned == 0 || st.outstanding.is_some() {
                    Err("no worker running its step was lost".into())
                } else if st.orphaned <= retries
                    && view.eligible_worker(&def.fun, &def.locs).is_some()
                {
                    Err(format!(
                        "lost {} times with {retries} retries, and a worker could take it over",
                        st.orphaned
                    ))
                } else if !same_fun(i) {
                    Err(format!("fun {:?}", e.fun))
                } else {
                    Ok(())
                }
            }
            ErrorCode::StepFailed => {
                let i = step()?;
                match &call.accepted_failure {
                    Some((k, s, kind, worker)) if *k == key && *s == i => {
                        let model = &run.steps[i].outcome;
                        if e.cause.as_deref() != Some(kind.as_str())
                            || e.worker.as_deref() != Some(worker.as_str())
                            || !same_fun(i)
                        {
                            Err(format!("cause {:?} worker {:?} fun {:?}, the failure was {kind} on {worker}", e.cause, e.worker, e.fun))
                        } else if !matches!(model, Outcome::Fails(f) if f.kind == kind && e.message.contains(&f.message))
                        {
                            Err(format!("the model says {model:?}"))
                        } else {
                            Ok(())
                        }
                    }
                    _ => Err("no failure of that step was just accepted from its worker".into()),
                }
            }
            ErrorCode::PlanTimeout if call.tick && call.now >= track.deadline_at => Ok(()),
            ErrorCode::PlanTimeout => Err(format!("its deadline is {}", track.deadline_at)),
            ErrorCode::StepTimeout => {
                let i = step()?;
                if call.timed_out.contains(&(key, i)) && same_fun(i) {
                    Ok(())
                } else {
                    Err("no task of that step ran past its timeout_ms".into())
                }
            }
            ErrorCode::Cancelled => {
                if call.cancel == Some(key) || call.gone_clients.contains(&key.conn) {
                    Ok(())
                } else {
                    Err("its client neither cancelled it nor went silent".into())
                }
            }
            ErrorCode::UnresolvedReference => {
                let i = step()?;
                match &run.steps[i].outcome {
                    _ if track.steps[i].pending > 0 => Err("its step was not ready".into()),
                    Outcome::Unresolved(refs)
                        if e.path.as_ref().is_some_and(|p| refs.contains(p)) =>
                    {
                        Ok(())
                    }
                    other => Err(format!("path {:?}; the model says {other:?}", e.path)),
                }
            }
            other => Err(format!("{other} is not expected in this simulation")),
        }
    }
}
