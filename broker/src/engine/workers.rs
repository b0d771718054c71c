//! The worker socket: registration, results and failures, expiry.

use super::*;

impl Engine {
    /// A message from the worker socket, routing id first.
    pub fn on_worker_message(&mut self, out: &mut impl Outbox, frames: &[Vec<u8>], now: Instant) {
        self.on_worker_message_as(out, frames, None, now);
    }

    /// A message from the worker socket, from a connection authenticated as `user`.
    pub fn on_worker_message_as(
        &mut self,
        out: &mut impl Outbox,
        frames: &[Vec<u8>],
        user: Option<&str>,
        now: Instant,
    ) {
        let Some(routing) = frames.first() else {
            return;
        };
        let known = self.registry.find(routing);
        if let Some(id) = known {
            if let Some(w) = self.registry.get_mut(id) {
                w.last_seen = now;
            }
        }
        // A result is sent on to the client inside two more maps (`result` -> `results` -> value):
        // one level less than clients accept for the worker's body keeps every reply readable.
        let limits = Limits {
            max_depth: self.config.limits.max_depth.saturating_sub(1),
            ..self.config.limits
        };
        let mut compact = false;
        let message = match parse_envelope(&frames[1..]) {
            Ok(env) => {
                compact = env.compact;
                WorkerToBroker::decode(env.kind, env.body, &limits).map_err(|e| {
                    let id = peek_request_id(env.body, &limits);
                    Box::new(ErrorReply::new(id, e.code(), e.to_string()))
                })
            }
            Err(e) => Err(Box::new(ErrorReply::new(None, e.code(), e.to_string()))),
        };
        let message = match message {
            Ok(message) => message,
            Err(mut reply) => {
                self.count("malformed_messages");
                if let Some(kind) = client_kind(&frames[1..]) {
                    // Someone pointed a client at the worker port: say where they are.
                    reply.message = format!(
                        "`{kind}` is a client message, but this is the broker's worker endpoint{}",
                        match self.config.client_endpoint.as_str() {
                            "" => String::new(),
                            e => format!("; clients connect to {e}"),
                        }
                    );
                }
                out.to_worker_as(routing, compact, "error", &encode_body(&*reply));
                return;
            }
        };
        match (message, known) {
            (WorkerToBroker::Register(register), _) => {
                let listed = match (&self.access, user) {
                    (None, _) => true,
                    (Some(access), Some(key)) => access.worker(key).is_some(),
                    (Some(_), None) => false,
                };
                if !listed {
                    self.count("requests_denied");
                    let reply = ErrorReply::new(
                        None,
                        ErrorCode::AccessDenied,
                        "this key is not (or no longer) allowed as a worker",
                    );
                    out.to_worker_as(routing, compact, "error", &encode_body(&reply));
                    return;
                }
                let key = user.map(str::to_owned);
                let routing = routing.clone();
                self.register(out, routing.clone(), compact, register, now);
                if let Some(w) = self
                    .registry
                    .find(&routing)
                    .and_then(|id| self.registry.get_mut(id))
                {
                    w.key = key;
                    w.compact = compact;
                }
            }
            (WorkerToBroker::Heartbeat(_), Some(_)) => {}
            (WorkerToBroker::Result(result), Some(worker)) => {
                if let Some(task) = self.take_task(worker, result.task) {
                    let bytes = frames.last().map_or(0, Vec::len);
                    if let Some(plan) = self.plans.get_mut(&task.plan) {
                        plan.bytes += bytes;
                        self.bytes_in_flight += bytes;
                    }
                    self.complete_step(out, task, result.value, now);
                    self.after_task_freed(out, worker, now);
                }
            }
            (WorkerToBroker::Failure(failure), Some(worker)) => {
                if let Some(task) = self.take_task(worker, failure.task) {
                    let worker_name = self
                        .registry
                        .get(worker)
                        .map(|w| w.name.clone())
                        .unwrap_or_default();
                    if let Some(plan) = self.plans.get(&task.plan) {
                        let def = &plan.request.steps[task.step as usize];
                        let mut reply = ErrorReply::new(
                            Some(plan.id),
                            ErrorCode::StepFailed,
                            format!(
                                "step `{}` ({}) failed on {worker_name}: {}",
                                def.name, def.fun, failure.message
                            ),
                        )
                        .with_step(def.name.clone())
                        .with_fun(def.fun.clone());
                        reply.worker = Some(worker_name);
                        reply.cause = Some(failure.kind);
                        self.count("steps_failed");
                        self.fail_plan(out, task.plan, reply);
                    }
                    self.after_task_freed(out, worker, now);
                }
            }
            (WorkerToBroker::Disconnect(_), Some(worker)) => {
                if let Some(w) = self.registry.get_mut(worker) {
                    w.draining = true;
                }
                self.after_task_freed(out, worker, now);
            }
            (WorkerToBroker::Disconnect(_), None) => {}
            (_, None) => {
                let reconnect = Reconnect {
                    reason: "this broker does not know you; register again".into(),
                };
                out.to_worker_as(routing, compact, "reconnect", &encode_body(&reconnect));
            }
        }
    }

    pub(super) fn register(
        &mut self,
        out: &mut impl Outbox,
        routing: RoutingId,
        compact: bool,
        register: Register,
        now: Instant,
    ) {
        if let Err(problem) = check_registration(&register, &self.config.limits) {
            let reply = ErrorReply::new(
                None,
                ErrorCode::InvalidBody,
                format!("register refused: {problem}"),
            );
            self.count("registrations_refused");
            out.to_worker_as(&routing, compact, "error", &encode_body(&reply));
            return;
        }
        let capacity = register
            .capacity
            .clamp(1, self.config.max_worker_capacity.max(1));
        let id = self.registry.register(
            routing.clone(),
            register.node,
            register.functions,
            register.resources,
            capacity,
            now,
        );
        self.count("workers_registered");
        if let Some(w) = self.registry.get(id) {
            slog::info!(self.log, "worker registered"; "worker" => &w.name, "functions" => w.functions.len(), "capacity" => capacity);
        }
        let reply = Registered {
            broker: self.config.name.clone(),
            heartbeat_ms: self.config.heartbeat.as_millis() as u64,
            liveness: self.config.liveness,
            capacity,
        };
        out.to_worker_as(&routing, compact, "registered", &encode_body(&reply));
        self.fill_worker(out, id, now);
    }

    /// Removes a task answered by `worker`; `None` if unknown or answered by someone else.
    pub(super) fn take_task(&mut self, worker: WorkerId, task: u64) -> Option<TaskState> {
        if self.tasks.get(&task)?.worker != worker {
            return None;
        }
        let state = self.tasks.remove(&task)?;
        if let Some(w) = self.registry.get_mut(worker) {
            w.tasks.remove(&task);
        }
        if let Some(plan) = self.plans.get_mut(&state.plan) {
            plan.tasks.remove(&task);
        }
        Some(state)
    }

    /// Removes a dead worker and re-dispatches its tasks (bounded retries per step).
    pub(super) fn expire_worker(&mut self, out: &mut impl Outbox, worker: WorkerId, now: Instant) {
        let Some(w) = self.registry.remove(worker) else {
            return;
        };
        self.count("workers_expired");
        slog::warn!(self.log, "worker lost"; "worker" => &w.name, "tasks" => w.tasks.len());
        for task in w.tasks {
            let Some(state) = self.tasks.remove(&task) else {
                continue;
            };
            let Some(plan) = self.plans.get_mut(&state.plan) else {
                continue;
            };
            plan.tasks.remove(&task);
            let step = state.step as usize;
            plan.attempts[step] += 1;
            let allowed = plan.request.steps[step]
                .retries
                .unwrap_or(self.config.max_retries);
            if plan.attempts[step] > allowed {
                let def = &plan.request.steps[step];
                let mut reply = ErrorReply::new(
                    Some(plan.id),
                    ErrorCode::WorkerLost,
                    format!(
                        "step `{}`: worker {} was lost and the step was retried {allowed} times",
                        def.name, w.name
                    ),
                )
                .with_step(def.name.clone())
                .with_fun(def.fun.clone());
                reply.worker = Some(w.name.clone());
                self.fail_plan(out, state.plan, reply);
            } else {
                self.count("tasks_retried");
                self.dispatch(out, state.plan, state.step, now);
            }
        }
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
                    super::truncate(name)
                ),
            });
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

/// The type of a client message that arrived on the worker socket, if it is one.
fn client_kind<F: AsRef<[u8]>>(frames: &[F]) -> Option<&'static str> {
    let kind = parse_envelope(frames).ok()?.kind;
    ClientToBroker::KINDS
        .iter()
        .copied()
        .find(|k| k.as_bytes() == kind && !WorkerToBroker::KINDS.contains(k))
}
