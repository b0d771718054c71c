//! A simulated client: over one connection it submits random plans (valid and invalid) at
//! random moments, cancels some of them (and now and then a plan that is not in flight), and,
//! if it is a heartbeating client, sends `heartbeat` until it vanishes without a word. Every
//! plan is reported to the checker as it is sent, every reply as it arrives.

use std::collections::BTreeSet;
use std::time::Duration;

use mpreg_protocol::{BrokerToClient, CancelRequest, ClientHeartbeat, ClientToBroker, Limits};

use super::broker_view::PlanKey;
use super::clock::SimTime;
use super::network::{ConnId, ProcessId, Wire};
use super::plan_gen::PlanGen;
use super::rng::Rng;
use super::worker::WorkerSpec;
use super::{Ctx, Timer};

/// A client's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTimer {
    /// Connect and start.
    Start,
    /// Submit or cancel something.
    Act,
    /// Send a heartbeat.
    Heartbeat,
    /// Vanish.
    Vanish,
}

/// What a client does in a run.
#[derive(Debug, Clone)]
pub struct ClientScript {
    /// Plans it submits.
    pub plans: u32,
    /// Heartbeat interval, for a heartbeating client.
    pub heartbeat: Option<Duration>,
    /// When it vanishes, if it does.
    pub vanish_at: Option<SimTime>,
    /// It acts until then.
    pub active_until: SimTime,
    /// What the workers serve (clients mostly ask for that).
    pub offers: Vec<WorkerSpec>,
}

/// The client process.
pub struct ClientNode {
    /// Its process id.
    pub id: ProcessId,
    broker: ProcessId,
    rng: Rng,
    limits: Limits,
    script: ClientScript,
    conn: Option<ConnId>,
    next_request: u64,
    in_flight: BTreeSet<u64>,
    gone: bool,
}

impl ClientNode {
    /// A client of `broker`.
    pub fn new(
        id: ProcessId,
        broker: ProcessId,
        rng: Rng,
        limits: Limits,
        script: ClientScript,
    ) -> ClientNode {
        ClientNode {
            id,
            broker,
            rng,
            limits,
            script,
            conn: None,
            next_request: 1,
            in_flight: BTreeSet::new(),
            gone: false,
        }
    }

    fn send(&mut self, ctx: &mut Ctx<'_>, message: &ClientToBroker) {
        if let Some(conn) = self.conn {
            ctx.send(conn, Wire::client(message));
        }
    }

    fn next_act(&mut self, ctx: &mut Ctx<'_>) {
        let gap = Duration::from_micros(self.rng.range(100, 250_000));
        if ctx.now.after(gap) < self.script.active_until {
            ctx.timer(gap, Timer::Client(ClientTimer::Act));
        }
    }

    /// One of its timers fired.
    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: ClientTimer) {
        if self.gone {
            return;
        }
        match timer {
            ClientTimer::Start => {
                self.conn = Some(ctx.connect(self.broker));
                if self.script.heartbeat.is_some() {
                    self.on_timer(ctx, ClientTimer::Heartbeat);
                }
                if let Some(at) = self.script.vanish_at {
                    ctx.timer(at.since(ctx.now), Timer::Client(ClientTimer::Vanish));
                }
                self.next_act(ctx);
            }
            ClientTimer::Heartbeat => {
                let Some(interval) = self.script.heartbeat else {
                    return;
                };
                let beat = ClientToBroker::Heartbeat(ClientHeartbeat {
                    id: 0,
                    interval_ms: interval.as_millis() as u64,
                });
                self.send(ctx, &beat);
                ctx.timer(interval, Timer::Client(ClientTimer::Heartbeat));
            }
            ClientTimer::Vanish => {
                let me = self.id;
                ctx.trace.line(ctx.now, || format!("{me} vanishes"));
                self.gone = true;
                if let Some(conn) = self.conn.take() {
                    ctx.close(conn);
                }
            }
            ClientTimer::Act => {
                self.act(ctx);
                self.next_act(ctx);
            }
        }
    }

    fn act(&mut self, ctx: &mut Ctx<'_>) {
        let Some(conn) = self.conn else {
            return;
        };
        let roll = self.rng.below(100);
        if roll < 15 && !self.in_flight.is_empty() {
            let ids: Vec<u64> = self.in_flight.iter().copied().collect();
            let id = *self.rng.pick(&ids);
            self.send(ctx, &ClientToBroker::Cancel(CancelRequest { id }));
        } else if roll < 18 {
            // Not in flight (done, or never sent): nothing must happen.
            let id = self.rng.range(1, self.next_request + 5);
            if !self.in_flight.contains(&id) {
                self.send(ctx, &ClientToBroker::Cancel(CancelRequest { id }));
            }
        } else if self.script.plans > 0 {
            self.script.plans -= 1;
            let id = self.next_request;
            self.next_request += 1;
            let plan =
                PlanGen::new(&mut self.rng, &self.limits, &self.script.offers).plan(id, conn);
            ctx.checker
                .plan_sent(PlanKey { conn, request: id }, plan.clone());
            self.in_flight.insert(id);
            self.send(ctx, &ClientToBroker::Plan(plan));
        }
    }

    /// A reply arrived on `conn`.
    pub fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, wire: Wire) {
        if self.gone || self.conn != Some(conn) {
            return;
        }
        let message = wire
            .decode_to_client(&self.limits)
            .expect("the broker sends valid replies");
        match &message {
            BrokerToClient::Result(r) => {
                self.in_flight.remove(&r.id);
            }
            BrokerToClient::Error(e) => {
                if let Some(id) = e.id {
                    self.in_flight.remove(&id);
                }
            }
            _ => {}
        }
        ctx.checker.client_received(conn, &message, ctx.now);
    }
}
