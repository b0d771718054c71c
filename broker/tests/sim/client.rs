//! A simulated client: over one connection at a time it submits random plans (valid and
//! invalid) at random moments, cancels some of them (and now and then a plan that is not in
//! flight), and, if it is a heartbeating client, sends `heartbeat` until it vanishes without a
//! word. Every plan is reported to the checker as it is sent, every reply as it arrives.
//!
//! A client of a cluster ([`Failover`]) does what the SDK does when it is given several
//! brokers: every plan carries a plan id it chose; when its broker's connection is reset (the
//! broker crashed) or the broker stays silent for a failover window while plans are in flight
//! (then it pings, and after another window of silence gives up on it) it moves to the next
//! broker of its list and sends every plan in flight there again, under the same plan id and
//! request id (a plan whose deadline has passed since it was first sent is not sent again). A
//! plan still without a final reply a grace period after its deadline, counted from its last
//! sending, ends with the client's own error, as in the SDK: `904 connection_lost` if the
//! client moved while the plan was in flight, `901 request_timeout` otherwise; the checker
//! judges both.

use std::collections::BTreeMap;
use std::time::Duration;

use mpreg_protocol::{
    BrokerToClient, CancelRequest, ClientHeartbeat, ClientToBroker, Limits, Ping, PlanId,
    PlanRequest,
};

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
    /// A failover client watches its broker and its plans.
    Watch,
}

/// How a client of a cluster moves between brokers.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// Silence (with plans in flight) after which the broker is pinged, and after which,
    /// pinged, it is left.
    pub silence: Duration,
    /// How long after a plan's deadline (from its last sending) the client stops waiting.
    pub grace: Duration,
    /// The brokers' default and longest plan deadline.
    pub deadlines: (Duration, Duration),
}

/// Moves a client makes at most (a client whose every broker is gone stops there).
const MAX_MOVES: u32 = 12;

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
    /// The brokers it knows, in the order it tries them.
    pub brokers: Vec<ProcessId>,
    /// A client of a cluster: plan ids and failover.
    pub failover: Option<Failover>,
}

/// A plan in flight, at a failover client.
struct Flight {
    plan: PlanRequest,
    first_sent: SimTime,
    give_up_at: SimTime,
    /// The client moved while it was in flight.
    moved: bool,
    cancelled: bool,
}

/// The client process.
pub struct ClientNode {
    /// Its process id.
    pub id: ProcessId,
    rng: Rng,
    limits: Limits,
    script: ClientScript,
    conn: Option<ConnId>,
    /// Position of the current broker in the script's list.
    current: usize,
    next_request: u64,
    in_flight: BTreeMap<u64, Option<Flight>>,
    gone: bool,
    last_heard: SimTime,
    pinged: Option<SimTime>,
    moves: u32,
}

impl ClientNode {
    /// A client of the brokers its script names.
    pub fn new(id: ProcessId, rng: Rng, limits: Limits, script: ClientScript) -> ClientNode {
        ClientNode {
            id,
            rng,
            limits,
            script,
            conn: None,
            current: 0,
            next_request: 1,
            in_flight: BTreeMap::new(),
            gone: false,
            last_heard: SimTime::ZERO,
            pinged: None,
            moves: 0,
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
                self.conn = Some(ctx.connect(self.script.brokers[0]));
                self.last_heard = ctx.now;
                if self.script.heartbeat.is_some() {
                    self.on_timer(ctx, ClientTimer::Heartbeat);
                }
                if let Some(at) = self.script.vanish_at {
                    ctx.timer(at.since(ctx.now), Timer::Client(ClientTimer::Vanish));
                }
                if let Some(f) = self.script.failover {
                    ctx.timer(f.silence / 2, Timer::Client(ClientTimer::Watch));
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
                ctx.cluster.client_vanished(me);
                if let Some(conn) = self.conn.take() {
                    ctx.close(conn);
                }
            }
            ClientTimer::Act => {
                self.act(ctx);
                self.next_act(ctx);
            }
            ClientTimer::Watch => self.watch(ctx),
        }
    }

    fn act(&mut self, ctx: &mut Ctx<'_>) {
        let Some(conn) = self.conn else {
            return;
        };
        let roll = self.rng.below(100);
        if roll < 15 && !self.in_flight.is_empty() {
            let ids: Vec<u64> = self.in_flight.keys().copied().collect();
            let id = *self.rng.pick(&ids);
            if let Some(Some(flight)) = self.in_flight.get_mut(&id) {
                flight.cancelled = true;
                ctx.cluster.cancel_sent(self.id, id);
            }
            self.send(ctx, &ClientToBroker::Cancel(CancelRequest { id }));
        } else if roll < 18 {
            // Not in flight (done, or never sent): nothing must happen.
            let id = self.rng.range(1, self.next_request + 5);
            if !self.in_flight.contains_key(&id) {
                self.send(ctx, &ClientToBroker::Cancel(CancelRequest { id }));
            }
        } else if self.script.plans > 0 {
            self.script.plans -= 1;
            let id = self.next_request;
            self.next_request += 1;
            let clustered = self.script.failover.is_some();
            // A cluster's plans are tagged with the client, not the connection (they move).
            let tag = if clustered { ConnId(self.id.0) } else { conn };
            let mut plan =
                PlanGen::new(&mut self.rng, &self.limits, &self.script.offers).plan(id, tag);
            match self.script.failover {
                Some(f) => {
                    let ms = ctx.now.0 / 1000 + 1_767_225_600_000;
                    let random = u128::from(self.rng.next_u64()) << 16 | u128::from(self.id.0);
                    plan.plan = Some(PlanId(ulid::Ulid::from_parts(ms, random)));
                    let flight = Flight {
                        give_up_at: ctx.now.after(deadline(&plan, f) + f.grace),
                        first_sent: ctx.now,
                        plan: plan.clone(),
                        moved: false,
                        cancelled: false,
                    };
                    ctx.cluster.plan_sent(self.id, conn, plan.clone(), ctx.now);
                    self.in_flight.insert(id, Some(flight));
                }
                None => {
                    ctx.checker
                        .plan_sent(PlanKey { conn, request: id }, plan.clone());
                    self.in_flight.insert(id, None);
                }
            }
            self.send(ctx, &ClientToBroker::Plan(plan));
        }
    }

    /// A failover client's watch: pings a silent broker, leaves it if it stays silent, and
    /// gives up on plans past their grace period.
    fn watch(&mut self, ctx: &mut Ctx<'_>) {
        let Some(f) = self.script.failover else {
            return;
        };
        ctx.timer(f.silence / 2, Timer::Client(ClientTimer::Watch));
        // A cancelled plan is still waited for (its final reply is `cancelled`): a broker
        // that stays silent about it is as gone as any other (say it never started, and the
        // socket holds the plan and the cancel).
        let waiting = self.in_flight.values().flatten().next().is_some();
        if waiting && ctx.now.since(self.last_heard) > f.silence {
            match self.pinged {
                Some(at) if ctx.now.since(at) > f.silence => self.move_on(ctx),
                Some(_) => {}
                None => {
                    self.pinged = Some(ctx.now);
                    self.send(ctx, &ClientToBroker::Ping(Ping { id: 0 }));
                }
            }
        }
        let due: Vec<u64> = self
            .in_flight
            .iter()
            .filter_map(|(&id, fl)| {
                fl.as_ref()
                    .filter(|fl| fl.give_up_at <= ctx.now)
                    .map(|_| id)
            })
            .collect();
        for id in due {
            // The SDK's own deadline: `904 connection_lost` if it moved while the plan was in
            // flight, `901 request_timeout` otherwise (a reply the network lost, or one the
            // broker dropped at the client's high-water mark); the checker judges whether a
            // failure explains it.
            let moved = matches!(self.in_flight.get(&id), Some(Some(fl)) if fl.moved);
            self.in_flight.remove(&id);
            ctx.cluster.client_gave_up(self.id, id, moved, ctx.now);
        }
    }

    /// Leaves the current broker for the next one of its list, sending the plans in flight
    /// there again.
    fn move_on(&mut self, ctx: &mut Ctx<'_>) {
        let Some(f) = self.script.failover else {
            return;
        };
        if let Some(conn) = self.conn.take() {
            ctx.close(conn);
        }
        for flight in self.in_flight.values_mut().flatten() {
            flight.moved = true;
        }
        if self.moves >= MAX_MOVES {
            return;
        }
        self.moves += 1;
        self.current = (self.current + 1) % self.script.brokers.len();
        let conn = ctx.connect(self.script.brokers[self.current]);
        self.conn = Some(conn);
        self.last_heard = ctx.now;
        self.pinged = None;
        let me = self.id;
        ctx.trace.line(ctx.now, || {
            format!("{me} moves to broker {}", self.script.brokers[self.current])
        });
        ctx.cluster.client_moved(me, ctx.now);
        let mut resend = Vec::new();
        for (&id, flight) in &mut self.in_flight {
            let Some(flight) = flight else { continue };
            if flight.cancelled || ctx.now >= flight.first_sent.after(deadline(&flight.plan, f)) {
                continue;
            }
            flight.give_up_at = ctx.now.after(deadline(&flight.plan, f) + f.grace);
            resend.push((id, flight.plan.clone()));
        }
        for (id, plan) in resend {
            ctx.cluster.plan_resent(me, id, conn, ctx.now);
            self.send(ctx, &ClientToBroker::Plan(plan));
        }
    }

    /// The broker end of `conn` was reset (the broker crashed).
    pub fn on_closed(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        if !self.gone && self.conn == Some(conn) && self.script.failover.is_some() {
            self.move_on(ctx);
        }
    }

    /// A reply arrived on `conn`.
    pub fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, wire: Wire) {
        if self.gone || self.conn != Some(conn) {
            return;
        }
        self.last_heard = ctx.now;
        self.pinged = None;
        let message = wire
            .decode_to_client(&self.limits)
            .expect("the broker sends valid replies");
        let finished = match &message {
            BrokerToClient::Result(r) => Some(r.id),
            BrokerToClient::Error(e) => e.id,
            BrokerToClient::Pong(_) => return,
            _ => None,
        };
        if self.script.failover.is_some() {
            let waiting = finished.is_some_and(|id| self.in_flight.contains_key(&id));
            ctx.cluster
                .client_received(self.id, conn, &message, waiting, ctx.now);
        } else {
            ctx.checker.client_received(conn, &message, ctx.now);
        }
        if let Some(id) = finished {
            self.in_flight.remove(&id);
        }
    }
}

/// A plan's deadline as the brokers apply it.
fn deadline(plan: &PlanRequest, f: Failover) -> Duration {
    let (default, max) = f.deadlines;
    plan.deadline_ms
        .map_or(default, Duration::from_millis)
        .min(max)
}
