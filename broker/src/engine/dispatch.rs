//! Dispatching ready steps to workers, and what happens when their results come back.

use super::*;

impl Engine {
    /// Finds a worker for a ready step and sends it, or queues it while matching workers are
    /// all busy, or fails the plan when nobody can run it.
    pub(super) fn dispatch(
        &mut self,
        out: &mut impl Outbox,
        key: PlanKey,
        step: StepIx,
        now: Instant,
    ) {
        let Some(plan) = self.plans.get(&key) else {
            return;
        };
        let def = &plan.request.steps[step as usize];
        match self.registry.select(&def.fun, &def.locs) {
            Selection::Worker(worker) => self.send_task(out, key, step, worker, now),
            Selection::Busy => {
                self.waiting
                    .entry(def.fun.clone())
                    .or_default()
                    .push_back((key, step));
                self.waiting_len += 1;
            }
            Selection::NoRoute => {
                let retried = plan.attempts[step as usize] > 0;
                let with_locs = if def.locs.is_empty() {
                    String::new()
                } else {
                    format!(" with resources [{}]", def.locs.join(", "))
                };
                let (code, message) = if retried {
                    (
                        ErrorCode::WorkerLost,
                        format!(
                            "the worker running step `{}` was lost and no other worker serves `{}`{with_locs}",
                            def.name, def.fun
                        ),
                    )
                } else if def.locs.is_empty() {
                    (
                        ErrorCode::NoRoute,
                        format!("no worker serves `{}`", def.fun),
                    )
                } else {
                    (
                        ErrorCode::NoRoute,
                        format!(
                            "no worker serves `{}` with resources [{}]",
                            def.fun,
                            def.locs.join(", ")
                        ),
                    )
                };
                let mut reply = ErrorReply::new(Some(plan.id), code, message)
                    .with_step(def.name.clone())
                    .with_fun(def.fun.clone());
                if !retried {
                    reply.locs = Some(def.locs.clone());
                }
                self.count("plans_no_route");
                self.fail_plan(out, key, reply);
            }
        }
    }

    pub(super) fn send_task(
        &mut self,
        out: &mut impl Outbox,
        key: PlanKey,
        step: StepIx,
        worker: WorkerId,
        now: Instant,
    ) {
        let Some(plan) = self.plans.get(&key) else {
            return;
        };
        let task_id = self.next_task;
        let def = &plan.request.steps[step as usize];
        let body = if plan.graph.has_refs[step as usize] {
            let results = PlanResults {
                index: &plan.graph.index,
                results: &plan.results,
            };
            // A few bytes of references can name a large result many times over: measure
            // first, copy only what fits in a task (its body map and `args` are 2 levels).
            let limits = &self.config.limits;
            let footprint = check_footprint(
                &def.args,
                &def.kwargs,
                &results,
                limits.max_message_bytes,
                limits.max_depth.saturating_sub(2),
            );
            if let Err(over) = footprint {
                let (code, what) = match over {
                    Oversize::Bytes(n) => (
                        ErrorCode::MessageTooLarge,
                        format!("would exceed {n} bytes (max_message_bytes)"),
                    ),
                    Oversize::Depth(n) => (
                        ErrorCode::NestingTooDeep,
                        format!("would nest deeper than max_depth (arguments: {n} levels)"),
                    ),
                };
                let reply = ErrorReply::new(
                    Some(plan.id),
                    code,
                    format!(
                        "step `{}`: its arguments with references resolved {what}",
                        def.name
                    ),
                )
                .with_step(def.name.clone())
                .with_fun(def.fun.clone());
                self.count("tasks_too_large");
                self.fail_plan(out, key, reply);
                return;
            }
            match resolve_args(&def.args, &def.kwargs, &results) {
                Ok((args, kwargs)) => encode_body(&Task {
                    task: task_id,
                    fun: Cow::Borrowed(&def.fun),
                    args: Cow::Owned(args),
                    kwargs: Cow::Owned(kwargs),
                    timeout_ms: def.timeout_ms,
                }),
                Err(Unresolved { reference, reason }) => {
                    let mut reply = ErrorReply::new(
                        Some(plan.id),
                        ErrorCode::UnresolvedReference,
                        format!(
                            "step `{}`: reference `{reference}` does not resolve: {reason}",
                            def.name
                        ),
                    )
                    .with_step(def.name.clone());
                    reply.path = Some(reference);
                    self.fail_plan(out, key, reply);
                    return;
                }
            }
        } else {
            encode_body(&Task {
                task: task_id,
                fun: Cow::Borrowed(&def.fun),
                args: Cow::Borrowed(&def.args),
                kwargs: Cow::Borrowed(&def.kwargs),
                timeout_ms: def.timeout_ms,
            })
        };
        let step_timeout = def.timeout_ms.map(Duration::from_millis);
        let Some(w) = self.registry.get_mut(worker) else {
            return;
        };
        match out.to_worker_as(&w.routing, w.compact, "task", &body) {
            Delivery::Sent => {
                self.next_task += 1;
                w.tasks.insert(task_id);
                self.tasks.insert(
                    task_id,
                    TaskState {
                        plan: key,
                        step,
                        worker,
                        sent: now,
                    },
                );
                if let Some(plan) = self.plans.get_mut(&key) {
                    plan.tasks.insert(task_id);
                }
                if let Some(timeout) = step_timeout {
                    self.timers
                        .push(Reverse((now + timeout, Timer::Task(task_id))));
                }
                self.count("tasks_dispatched");
            }
            Delivery::Full | Delivery::Gone => {
                // A worker whose queue is full or whose connection is gone cannot be trusted
                // with more: expire it (its tasks move elsewhere) and route this step again.
                self.expire_worker(out, worker, now);
                self.dispatch(out, key, step, now);
            }
        }
    }

    /// Sends waiting steps to a worker that has free slots.
    pub(super) fn fill_worker(&mut self, out: &mut impl Outbox, worker: WorkerId, now: Instant) {
        let Some(w) = self.registry.get(worker) else {
            return;
        };
        if self.waiting_len == 0 || w.draining {
            return;
        }
        let functions = w.functions.clone();
        for fun in functions {
            loop {
                let Some(w) = self.registry.get(worker) else {
                    return;
                };
                if w.draining || w.tasks.len() as u64 >= u64::from(w.capacity) {
                    return;
                }
                let Some(queue) = self.waiting.get_mut(&fun) else {
                    break;
                };
                // Drop entries of plans that ended; take the first the worker can run.
                let mut pick = None;
                let mut i = 0;
                while i < queue.len() {
                    let (key, step) = queue[i];
                    match self.plans.get(&key) {
                        None => {
                            queue.remove(i);
                            self.waiting_len -= 1;
                        }
                        Some(plan) if w.holds(&plan.request.steps[step as usize].locs) => {
                            queue.remove(i);
                            self.waiting_len -= 1;
                            pick = Some((key, step));
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                if queue.is_empty() {
                    self.waiting.remove(&fun);
                }
                match pick {
                    Some((key, step)) => self.send_task(out, key, step, worker, now),
                    None => break,
                }
            }
        }
    }

    // ----- results -------------------------------------------------------------------------

    pub(super) fn complete_step(
        &mut self,
        out: &mut impl Outbox,
        task: TaskState,
        value: Value,
        now: Instant,
    ) {
        let worker_name = self
            .registry
            .get(task.worker)
            .map(|w| w.name.clone())
            .unwrap_or_default();
        let Some(plan) = self.plans.get_mut(&task.plan) else {
            return;
        };
        let step = task.step as usize;
        if plan.results[step].is_some() {
            return;
        }
        if plan.request.progress || plan.request.progress_topic.is_some() {
            let event = Progress {
                id: plan.id,
                step: plan.request.steps[step].name.clone(),
                fun: plan.request.steps[step].fun.clone(),
                worker: worker_name,
                result: value.clone(),
                elapsed_us: now.saturating_duration_since(task.sent).as_micros() as u64,
            };
            let client = plan.client.clone();
            let topic = plan.request.progress_topic.clone();
            let to_client = plan.request.progress;
            if let Some(topic) = topic {
                // The progress body as a named map (what a client's `progress` message holds).
                let payload = rmpv::decode::read_value(&mut encode_body(&event).as_slice())
                    .unwrap_or(Value::Nil);
                let headers = BTreeMap::from([("plan".to_string(), event.id.to_string())]);
                self.exchange.publish(out, &topic, headers, payload, now);
            }
            if to_client {
                self.send_client(out, &client, &BrokerToClient::Progress(event));
            }
        }
        let Some(plan) = self.plans.get_mut(&task.plan) else {
            return;
        };
        plan.results[step] = Some(value);
        plan.finished += 1;
        if plan.finished == plan.results.len() {
            return self.finish_plan(out, task.plan);
        }
        let mut ready = Vec::new();
        for &d in &plan.graph.dependents[step] {
            plan.pending[d as usize] -= 1;
            if plan.pending[d as usize] == 0 {
                ready.push(d);
            }
        }
        for d in ready {
            if !self.plans.contains_key(&task.plan) {
                break;
            }
            self.dispatch(out, task.plan, d, now);
        }
    }

    pub(super) fn finish_plan(&mut self, out: &mut impl Outbox, key: PlanKey) {
        let Some(mut plan) = self.forget_plan(key) else {
            return;
        };
        self.count("plans_completed");
        let mut results = BTreeMap::new();
        for (i, (step, result)) in plan
            .request
            .steps
            .iter()
            .zip(plan.results.iter_mut())
            .enumerate()
        {
            if plan.request.all_results || plan.graph.is_sink(i) {
                results.insert(step.name.clone(), result.take().unwrap_or(Value::Nil));
            }
        }
        let reply = BrokerToClient::Result(PlanResult {
            id: plan.id,
            results,
        });
        self.send_client(out, &plan.client, &reply);
    }

    /// Removes a plan from every index and cancels its outstanding tasks.
    pub(super) fn forget_plan(&mut self, key: PlanKey) -> Option<PlanState> {
        let plan = self.plans.remove(&key)?;
        self.by_request
            .remove(&(plan.client.routing.clone(), plan.id));
        if let Some(n) = self.per_client.get_mut(&plan.quota) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&plan.quota);
            }
        }
        self.bytes_in_flight = self.bytes_in_flight.saturating_sub(plan.bytes);
        Some(plan)
    }

    pub(super) fn fail_plan(&mut self, out: &mut impl Outbox, key: PlanKey, mut reply: ErrorReply) {
        let Some(mut plan) = self.forget_plan(key) else {
            return;
        };
        self.count("plans_failed");
        let mut freed = Vec::new();
        for task in plan.tasks.drain() {
            if let Some(state) = self.tasks.remove(&task) {
                if let Some(w) = self.registry.get_mut(state.worker) {
                    w.tasks.remove(&task);
                    let routing = w.routing.clone();
                    out.to_worker(&routing, "cancel", &encode_body(&CancelTask { task }));
                    freed.push(state.worker);
                }
            }
        }
        reply.partial = plan.partial();
        self.reply_error(out, &plan.client, reply);
        let now = Instant::now();
        freed.sort_unstable();
        freed.dedup();
        for worker in freed {
            self.after_task_freed(out, worker, now);
        }
    }

    /// A worker has one task fewer: remove it if it is draining and idle, else fill it.
    pub(super) fn after_task_freed(
        &mut self,
        out: &mut impl Outbox,
        worker: WorkerId,
        now: Instant,
    ) {
        match self.registry.get(worker) {
            Some(w) if w.draining && w.tasks.is_empty() => {
                self.registry.remove(worker);
            }
            Some(_) => self.fill_worker(out, worker, now),
            None => {}
        }
    }
}
