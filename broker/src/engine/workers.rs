//! The worker edge: registration, results and failures, heartbeats, leaving.

use std::time::Instant;

use mpreg_protocol::{BrokerToWorker, Limits, Reconnect, Register, Registered, WorkerToBroker};

use super::failure::Failure;
use super::{Engine, WorkerOrigin};
use crate::outbox::{Outbox, WorkerAddr};
use crate::quote::quote;
use crate::registry::Registration;

impl Engine {
    /// A message from a worker connection.
    pub fn on_worker(
        &mut self,
        out: &mut impl Outbox,
        origin: WorkerOrigin,
        message: WorkerToBroker,
        now: Instant,
    ) {
        self.on_worker_message(out, origin, message, now);
        self.publish_catalogue(out);
    }

    fn on_worker_message(
        &mut self,
        out: &mut impl Outbox,
        origin: WorkerOrigin,
        message: WorkerToBroker,
        now: Instant,
    ) {
        let known = self.scheduler.registry().find(&origin.addr.routing);
        if let Some(w) = known.and_then(|id| self.scheduler.registry_mut().get_mut(id)) {
            w.last_seen = now;
        }
        match (message, known) {
            (WorkerToBroker::Register(register), _) => self.register(out, origin, register, now),
            (WorkerToBroker::Heartbeat(_), Some(_)) => {}
            (WorkerToBroker::Result(result), Some(worker)) => {
                if let Some(task) = self.scheduler.answered(worker, result.task) {
                    let (value, timing) = (result.value, result.timing);
                    self.complete_task(out, result.task, task, value, origin.bytes, timing, now);
                    self.after_task_freed(out, worker, now);
                    self.drain_ready(out, now);
                }
            }
            (WorkerToBroker::Failure(failure), Some(worker)) => {
                if let Some(task) = self.scheduler.answered(worker, failure.task) {
                    self.plans.task_ended(task.plan, failure.task);
                    let name = self
                        .scheduler
                        .registry()
                        .get(worker)
                        .map(|w| w.name.clone())
                        .unwrap_or_default();
                    if let Some(def) = self.plans.get(task.plan).map(|p| p.step(task.step)) {
                        let failed = Failure::StepFailed {
                            step: def.name.clone(),
                            fun: def.fun.clone(),
                            worker: name,
                            kind: failure.kind,
                            message: failure.message,
                        };
                        self.counters.steps_failed += 1;
                        self.cache_failure(out, task.plan, task.step, &failed, now);
                        self.fail_plan(out, task.plan, failed, now);
                    }
                    self.after_task_freed(out, worker, now);
                    self.drain_ready(out, now);
                }
            }
            (WorkerToBroker::Disconnect(_), Some(worker)) => {
                if let Some(w) = self.scheduler.registry_mut().get_mut(worker) {
                    w.draining = true;
                }
                self.catalogue_changed();
                self.after_task_freed(out, worker, now);
                self.drain_ready(out, now);
            }
            (WorkerToBroker::Disconnect(_), None) => {}
            (_, None) => {
                let reconnect = BrokerToWorker::Reconnect(Reconnect {
                    reason: "this broker does not know you; register again".into(),
                });
                let _ = out.to_worker(&origin.addr, &reconnect);
            }
        }
    }

    /// A worker message that could not be read.
    pub fn on_worker_malformed(
        &mut self,
        out: &mut impl Outbox,
        worker: &WorkerAddr,
        id: Option<u64>,
        failure: Failure,
        now: Instant,
    ) {
        if let Some(id) = self.scheduler.registry().find(&worker.routing) {
            if let Some(w) = self.scheduler.registry_mut().get_mut(id) {
                w.last_seen = now;
            }
        }
        self.counters.malformed_messages += 1;
        let _ = out.to_worker(worker, &BrokerToWorker::Error(failure.into_reply(id)));
    }

    fn register(
        &mut self,
        out: &mut impl Outbox,
        origin: WorkerOrigin,
        register: Register,
        now: Instant,
    ) {
        let listed = match (&self.access, origin.user.as_deref()) {
            (None, _) => true,
            (Some(access), Some(key)) => access.worker(key).is_some(),
            (Some(_), None) => false,
        };
        if !listed {
            self.counters.requests_denied += 1;
            return self.worker_error(out, &origin.addr, Failure::WorkerNotAllowed);
        }
        if let Err(problem) = check_registration(&register, &self.config.limits) {
            self.counters.registrations_refused += 1;
            return self.worker_error(out, &origin.addr, Failure::RegistrationRefused(problem));
        }
        let capacity = register
            .capacity
            .clamp(1, self.config.max_worker_capacity.max(1));
        let id = self.scheduler.registry_mut().register(
            Registration {
                addr: origin.addr.clone(),
                name: register.node,
                functions: register.functions,
                resources: register.resources,
                versions: register.versions,
                capacity,
                key: origin.user,
                cacheable: register.cacheable,
            },
            now,
        );
        self.counters.workers_registered += 1;
        self.catalogue_changed();
        if let Some(w) = self.scheduler.registry().get(id) {
            slog::info!(self.log, "worker registered"; "worker" => &w.name, "worker_id" => %id, "functions" => w.functions.len(), "capacity" => capacity);
        }
        let reply = BrokerToWorker::Registered(Registered {
            broker: self.config.name.clone(),
            heartbeat_ms: self.config.heartbeat.as_millis() as u64,
            liveness: self.config.liveness,
            capacity,
        });
        let _ = out.to_worker(&origin.addr, &reply);
        self.fill_worker(out, id, now);
        self.drain_ready(out, now);
    }
}

/// What is wrong with a registration, naming the field: names must be non-empty and at most
/// `max_name_bytes` long, and a worker may hold at most `max_locs` resources.
fn check_registration(register: &Register, limits: &Limits) -> Result<(), String> {
    let max = limits.max_name_bytes;
    if register.node.len() > max {
        return Err(format!(
            "the node name is {} bytes long; the limit is {max} (max_name_bytes)",
            register.node.len()
        ));
    }
    for (field, names) in [
        ("function", &register.functions),
        ("resource", &register.resources),
    ] {
        if let Some(name) = names.iter().find(|n| n.is_empty() || n.len() > max) {
            return Err(match name.len() {
                0 => format!("a {field} name is empty"),
                n => format!(
                    "{field} name {:?} is {n} bytes long; the limit is {max} (max_name_bytes)",
                    quote(name)
                ),
            });
        }
    }
    for (fun, version) in &register.versions {
        if !register.functions.contains(fun) {
            return Err(format!(
                "a version is given for `{}`, which the worker does not register",
                quote(fun)
            ));
        }
        crate::versions::check_version(version)?;
    }
    for (fun, rule) in &register.cacheable {
        if !register.functions.contains(fun) {
            return Err(format!(
                "`{}` is declared cacheable but the worker does not register it",
                quote(fun)
            ));
        }
        if rule.ttl_ms == Some(0) {
            return Err(format!(
                "cacheable `{}`: ttl_ms must be at least 1 (leave it out for no expiry)",
                quote(fun)
            ));
        }
        if rule.tags.len() > limits.max_locs {
            return Err(format!(
                "cacheable `{}`: {} tags; the limit is {} (max_locs)",
                quote(fun),
                rule.tags.len(),
                limits.max_locs
            ));
        }
        if let Some(tag) = rule.tags.iter().find(|t| t.is_empty() || t.len() > max) {
            return Err(format!(
                "cacheable `{}`: tag {:?} must be 1 to {max} bytes long (max_name_bytes)",
                quote(fun),
                quote(tag)
            ));
        }
    }
    if register.resources.len() > limits.max_locs {
        return Err(format!(
            "{} resources; the limit is {} (max_locs)",
            register.resources.len(),
            limits.max_locs
        ));
    }
    Ok(())
}
