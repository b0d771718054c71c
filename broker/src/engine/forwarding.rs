//! Forwarding: this broker's side of steps and publishes that cross to a peer.
//!
//! A ready step with no local worker that can run it goes to the best peer whose catalogue can
//! ([`Engine::forward_step`]); the peer runs it as a one-step plan on its own workers only (one
//! hop) and answers with its value, a failure, or a reject (the owner then tries the next
//! candidate). Deadlines travel as remaining time.

use std::collections::BTreeMap;
use std::time::Instant;

use mpreg_protocol::peer::{FwdCancel, FwdFailure, FwdPublish, FwdReject, FwdStep};
use mpreg_protocol::{BrokerId, PeerMessage, PlanId, TaskId, Value};

use super::failure::Failure;
use super::plans::{ReplyTo, StepIx};
use super::Engine;
use crate::outbox::{Delivery, Link, Outbox};

impl Engine {
    /// Sends a ready step that no local worker can run to the best peer that can; false when
    /// no peer can (or this broker is not in a cluster).
    pub(super) fn forward_step(
        &mut self,
        out: &mut impl Outbox,
        plan: PlanId,
        step: StepIx,
        now: Instant,
    ) -> bool {
        let Some(state) = self.plans.get(plan) else {
            return true;
        };
        if matches!(state.reply_to, ReplyTo::Peer { .. }) {
            return false; // One hop: a forwarded step is never forwarded again.
        }
        let Some(peers) = &mut self.peers else {
            return false;
        };
        let def = state.step(step);
        let exclude: Vec<BrokerId> = state
            .rejected
            .iter()
            .filter(|(s, _)| *s == step)
            .map(|(_, p)| *p)
            .collect();
        let candidates = peers.candidates(&def.fun, state.version(step), &def.locs, &exclude);
        let owner = peers.config.endpoints.peer.clone();
        let args = match state.task_args(step, &self.config.limits) {
            Ok(args) => args,
            Err(failure) => {
                self.fail_plan(out, plan, failure, now);
                return true;
            }
        };
        let task = self.scheduler.next_task_id();
        let message = PeerMessage::FwdStep(FwdStep {
            fid: task.0,
            plan,
            step: def.name.clone(),
            fun: def.fun.clone(),
            version: def.version.clone(),
            args: args.args.into_owned(),
            kwargs: args.kwargs.into_owned(),
            locs: def.locs.clone(),
            remaining_ms: state.remaining(now).as_millis() as u64,
            timeout_ms: def.timeout_ms,
            owner,
            cache: def.cache,
        });
        let timeout = def.timeout_ms.map(std::time::Duration::from_millis);
        for peer in candidates {
            let Some(endpoint) = self.peer_endpoint(peer) else {
                continue;
            };
            if out.to_peer(&endpoint, Link::Data, &message) == Delivery::Sent {
                self.scheduler
                    .forwarded(task, peer, plan, step, timeout, now);
                self.plans.task_started(plan, task);
                self.counters.tasks_forwarded += 1;
                return true;
            }
        }
        false
    }

    /// Runs a step forwarded by `from` as a one-step plan on this broker's workers.
    pub(super) fn serve_forward(
        &mut self,
        out: &mut impl Outbox,
        from: BrokerId,
        step: FwdStep,
        now: Instant,
    ) {
        let fid = step.fid;
        let endpoint = step.owner.clone();
        if self.shutdown_deadline.is_some() {
            let reject = PeerMessage::FwdReject(FwdReject {
                fid,
                reason: "draining".into(),
            });
            let _ = out.to_peer(&endpoint, Link::Data, &reject);
            return;
        }
        let id = self.ids.plan(now);
        self.counters.forwards_served += 1;
        if let Err(failure) =
            self.plans
                .admit_forward(id, from, endpoint.clone(), step, now, &mut self.ready)
        {
            let reject = PeerMessage::FwdReject(FwdReject {
                fid,
                reason: failure.into_reply(None).message,
            });
            let _ = out.to_peer(&endpoint, Link::Data, &reject);
        }
    }

    /// The answer to a forwarded step that failed here, or that no worker here can run.
    pub(super) fn answer_forward_failure(
        &mut self,
        out: &mut impl Outbox,
        endpoint: &str,
        fid: u64,
        failure: Failure,
    ) {
        let message = match failure {
            Failure::NoRoute { .. } | Failure::WorkerLostNoOther { .. } => {
                PeerMessage::FwdReject(FwdReject {
                    fid,
                    reason: failure.into_reply(None).message,
                })
            }
            Failure::Cancelled | Failure::ClientGone => return,
            other => {
                let reply = other.into_reply(None);
                PeerMessage::FwdFailure(FwdFailure {
                    fid,
                    code: reply.code,
                    cause: reply.cause,
                    message: reply.message,
                    worker: reply.worker,
                })
            }
        };
        let _ = out.to_peer(endpoint, Link::Data, &message);
    }

    /// Tells the peer running a forwarded task that it is no longer wanted.
    pub(super) fn cancel_forward(&mut self, out: &mut impl Outbox, peer: BrokerId, task: TaskId) {
        if let Some(endpoint) = self.peer_endpoint(peer) {
            let cancel = PeerMessage::FwdCancel(FwdCancel { fid: task.0 });
            let _ = out.to_peer(&endpoint, Link::Data, &cancel);
        }
    }

    /// Hands a message published here to the peers whose subscribers want it.
    pub(super) fn forward_publish(
        &mut self,
        out: &mut impl Outbox,
        peers: &[BrokerId],
        id: &str,
        topic: &str,
        headers: &BTreeMap<String, String>,
        payload: &Value,
    ) {
        if peers.is_empty() {
            return;
        }
        let message = PeerMessage::FwdPublish(FwdPublish {
            id: id.to_string(),
            topic: topic.to_string(),
            headers: headers.clone(),
            payload: payload.clone(),
        });
        for &peer in peers {
            if let Some(endpoint) = self.peer_endpoint(peer) {
                if out.to_peer(&endpoint, Link::Data, &message) == Delivery::Sent {
                    self.counters.publishes_forwarded += 1;
                } else {
                    self.counters.publishes_not_forwarded += 1;
                }
            }
        }
    }

    /// The peers wanting `topic` (none outside a cluster).
    pub(super) fn interested_peers(&mut self, topic: &str) -> Vec<BrokerId> {
        match &mut self.peers {
            Some(peers) => peers.interested(topic),
            None => Vec::new(),
        }
    }
}
