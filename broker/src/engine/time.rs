//! Timers: heartbeats, worker and client expiry, plan deadlines, step timeouts, shutdown.

use std::time::Instant;

use mpreg_protocol::{BrokerToWorker, Disconnect, Heartbeat};

use super::failure::Failure;
use super::Engine;
use crate::outbox::Outbox;

/// Steps still running that a `plan_timeout` error names.
const RUNNING_NAMED: usize = 5;

impl Engine {
    /// Runs what is due at `now`.
    pub fn on_tick(&mut self, out: &mut impl Outbox, now: Instant) {
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.config.heartbeat;
            self.heartbeat(out, now);
        }
        self.cluster_tick(out, now);
        while let Some(plan) = self.plans.due(now) {
            let Some(state) = self.plans.get(plan) else {
                break;
            };
            let running: Vec<String> = state
                .tasks
                .iter()
                .filter_map(|&t| self.scheduler.task(t))
                .map(|t| state.step(t.step).name.clone())
                .take(RUNNING_NAMED)
                .collect();
            let (finished, total) = state.progress();
            self.counters.plans_timed_out += 1;
            let failure = Failure::PlanTimeout {
                finished,
                total,
                running,
            };
            self.fail_plan(out, plan, failure, now);
        }
        while let Some(task) = self.scheduler.timed_out(now) {
            let Some(state) = self.scheduler.task(task).copied() else {
                break;
            };
            let Some(def) = self.plans.get(state.plan).map(|p| p.step(state.step)) else {
                // The plan ended without cancelling its task: a bug, but never a stuck timer.
                let _ = self.scheduler.cancel(out, task);
                continue;
            };
            let failure = Failure::StepTimeout {
                step: def.name.clone(),
                fun: def.fun.clone(),
                timeout_ms: def.timeout_ms.unwrap_or(0),
            };
            self.counters.steps_timed_out += 1;
            self.fail_plan(out, state.plan, failure, now);
        }
        self.tier_timeouts(now);
        if self.shutdown_deadline.is_some_and(|at| now >= at) {
            for plan in self.plans.ids() {
                self.fail_plan(out, plan, Failure::ShutDown, now);
            }
        }
        self.drain_ready(out, now);
    }

    /// Every heartbeat interval: heartbeats to workers, expiry of silent workers and clients,
    /// the exchange's housekeeping, stale waiting entries.
    fn heartbeat(&mut self, out: &mut impl Outbox, now: Instant) {
        self.exchange.on_tick(now);
        self.cache_sweep(now);
        let beat = BrokerToWorker::Heartbeat(Heartbeat {});
        for (_, w) in self.scheduler.registry().iter() {
            let _ = out.to_worker(&w.addr, &beat);
        }
        let silence = self.config.heartbeat * self.config.liveness;
        if let Some(cutoff) = now.checked_sub(silence) {
            let silent = self.scheduler.registry().silent_since(cutoff);
            self.expire_workers(out, silent, now);
        }
        for routing in self.clients.expire(now) {
            self.catalogue_changed();
            self.counters.clients_expired += 1;
            let plans = self.plans.of_connection(&routing);
            let subscriptions = self.exchange.drop_client(&routing);
            slog::info!(self.log, "client gone: its plans are cancelled";
                "plans" => plans.len(), "subscriptions" => subscriptions);
            for plan in plans {
                self.counters.plans_cancelled_client_gone += 1;
                self.fail_plan(out, plan, Failure::ClientGone, now);
            }
        }
        let plans = &self.plans;
        self.scheduler
            .prune_waiting(|plan| plans.get(plan).is_some());
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
        let bye = BrokerToWorker::Disconnect(Disconnect {
            reason: "broker shutting down".into(),
        });
        for (_, w) in self.scheduler.registry().iter() {
            let _ = out.to_worker(&w.addr, &bye);
        }
    }
}
