//! Timers: heartbeats, worker expiry, deadlines, step timeouts, shutdown.

use super::*;

impl Engine {
    /// Runs what is due: heartbeats, worker expiry, plan deadlines, step timeouts, shutdown.
    pub fn on_tick(&mut self, out: &mut impl Outbox, now: Instant) {
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.config.heartbeat;
            self.exchange.on_tick(now);
            let body = encode_body(&Heartbeat {});
            let routings: Vec<RoutingId> = self
                .registry
                .iter()
                .map(|(_, w)| w.routing.clone())
                .collect();
            for routing in routings {
                out.to_worker(&routing, "heartbeat", &body);
            }
            let silence = self.config.heartbeat * self.config.liveness;
            if let Some(cutoff) = now.checked_sub(silence) {
                for worker in self.registry.silent_since(cutoff) {
                    self.expire_worker(out, worker, now);
                }
            }
            self.expire_clients(out, now);
        }
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Plan(key) => {
                    let Some(plan) = self.plans.get(&key) else {
                        continue;
                    };
                    if plan.deadline > now {
                        continue;
                    }
                    let waiting_for: Vec<&str> = plan
                        .tasks
                        .iter()
                        .filter_map(|t| self.tasks.get(t))
                        .map(|t| plan.request.steps[t.step as usize].name.as_str())
                        .take(5)
                        .collect();
                    let reply = ErrorReply::new(
                        Some(plan.id),
                        ErrorCode::PlanTimeout,
                        format!(
                            "the plan's deadline passed with {} of {} steps finished (running: {})",
                            plan.finished,
                            plan.results.len(),
                            waiting_for.join(", ")
                        ),
                    );
                    self.count("plans_timed_out");
                    self.fail_plan(out, key, reply);
                }
                Timer::Task(task) => {
                    let Some(state) = self.tasks.get(&task) else {
                        continue;
                    };
                    let Some(plan) = self.plans.get(&state.plan) else {
                        continue;
                    };
                    let def = &plan.request.steps[state.step as usize];
                    let reply = ErrorReply::new(
                        Some(plan.id),
                        ErrorCode::StepTimeout,
                        format!(
                            "step `{}` ran longer than its timeout of {} ms",
                            def.name,
                            def.timeout_ms.unwrap_or(0)
                        ),
                    )
                    .with_step(def.name.clone())
                    .with_fun(def.fun.clone());
                    let key = state.plan;
                    self.count("steps_timed_out");
                    self.fail_plan(out, key, reply);
                }
            }
        }
        if self.shutdown_deadline.is_some_and(|at| now >= at) {
            let keys: Vec<PlanKey> = self.plans.keys().copied().collect();
            for key in keys {
                let id = self.plans.get(&key).map(|p| p.id);
                let reply = ErrorReply::new(
                    id,
                    ErrorCode::ShuttingDown,
                    "the broker shut down before the plan finished",
                );
                self.fail_plan(out, key, reply);
            }
        }
    }

    /// Forgets the clients that sent heartbeats and then fell silent for their window: their
    /// plans are cancelled (their tasks too, freeing worker slots) and their subscriptions end.
    fn expire_clients(&mut self, out: &mut impl Outbox, now: Instant) {
        let mut gone: Vec<RoutingId> = self
            .clients
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.last_seen) > c.window)
            .map(|(routing, _)| routing.clone())
            .collect();
        gone.sort_unstable();
        for routing in gone {
            self.clients.remove(&routing);
            self.count("clients_expired");
            let mut plans: Vec<(u64, PlanKey)> = self
                .by_request
                .iter()
                .filter(|((r, _), _)| *r == routing)
                .map(|((_, id), key)| (*id, *key))
                .collect();
            plans.sort_unstable();
            let subscriptions = self.exchange.drop_client(&routing);
            slog::info!(self.log, "client gone: its plans are cancelled";
                "plans" => plans.len(), "subscriptions" => subscriptions);
            for (id, key) in plans {
                self.count("plans_cancelled_client_gone");
                let reply = ErrorReply::new(
                    Some(id),
                    ErrorCode::Cancelled,
                    "the client stopped sending heartbeats: its plans were cancelled",
                );
                self.fail_plan(out, key, reply);
            }
        }
    }

    /// Stops accepting plans; plans in flight have until `deadline` to finish.
    pub fn begin_shutdown(&mut self, deadline: Instant) {
        self.shutdown_deadline = Some(deadline);
    }

    /// True once shutdown was asked for.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown_deadline.is_some()
    }

    /// True once shutdown was asked for and no plan is left.
    pub fn is_drained(&self) -> bool {
        self.shutdown_deadline.is_some() && self.plans.is_empty()
    }

    /// Tells every worker the broker is leaving.
    pub fn disconnect_workers(&mut self, out: &mut impl Outbox) {
        let body = encode_body(&Disconnect {
            reason: "broker shutting down".into(),
        });
        for (_, w) in self.registry.iter() {
            out.to_worker(&w.routing, "disconnect", &body);
        }
    }
}
