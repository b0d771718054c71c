//! Deliberately broken brokers, to prove that every property can fail: a mutation sits
//! between the engine and the network and makes the broker misbehave in one way (a second
//! final reply, a wrong result, a task after the final reply, a step forwarded twice or
//! forwarded again, catalogue snapshots or probe answers never sent, ...). The simulation
//! test runs each (the cluster ones in clusters) and expects the property it breaks to fire.
//! Without a mutation nothing is touched.

use std::collections::BTreeMap;

use mpreg_broker::engine::ClientOrigin;
use mpreg_broker::outbox::ClientAddr;
use mpreg_protocol::peer::FwdStep;
use mpreg_protocol::{
    BrokerToClient, BrokerToWorker, ClientToBroker, PeerMessage, PlanRequest, Step, Task, TaskId,
    Value,
};

use super::broker::{owned, Input};
use super::cluster::links::{endpoints_of, process_of};
use super::functions::TAG;
use super::messages;
use super::network::{ConnId, ProcessId};
use super::properties::Property;
use super::Ctx;

/// The connection of the plan [`Mutation::HiddenPlan`] hides from the checker.
const HIDDEN: ConnId = ConnId(u32::MAX);

/// Offset of the ids of tasks a mutation sends itself.
const FORGED_TASK: u64 = 1_000_000;

/// One way to break the broker (or the model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// The real broker.
    None,
    /// The first final reply is sent twice.
    DuplicateFinal,
    /// The first final reply is never sent.
    DropFinal,
    /// The first non-empty `result` carries a wrong value.
    CorruptResult,
    /// After the first final reply of a plan that ran tasks, one of them is sent again.
    TaskAfterFinal,
    /// After the first `progress` event, its step is dispatched again.
    RedispatchAccepted,
    /// Workers are told a capacity one below what the engine uses.
    ShrinkCapacity,
    /// The engine runs one plan whose every message is hidden (a leak the checker must see).
    HiddenPlan,
    /// The model believes `echo` returns something else.
    WrongModel,
    /// (Cluster) Every forwarded step is also sent to another live broker.
    DoubleForward,
    /// (Cluster) A broker serving a forwarded step forwards it to another broker instead of
    /// running it.
    Reforward,
    /// (Cluster) Brokers never send their catalogue snapshot.
    DropSnapshots,
    /// (Cluster) The first broker never answers a probe.
    DropProbeAcks,
}

impl Mutation {
    /// Every mutation of the broker or the model.
    pub const ALL: &'static [Mutation] = &[
        Mutation::DuplicateFinal,
        Mutation::DropFinal,
        Mutation::CorruptResult,
        Mutation::TaskAfterFinal,
        Mutation::RedispatchAccepted,
        Mutation::ShrinkCapacity,
        Mutation::HiddenPlan,
        Mutation::WrongModel,
    ];

    /// The mutations a cluster run must catch: the cluster's own, and those of a single
    /// broker whose property the cluster's checker has too.
    pub const CLUSTER: &'static [Mutation] = &[
        Mutation::DoubleForward,
        Mutation::Reforward,
        Mutation::DropSnapshots,
        Mutation::DropProbeAcks,
        Mutation::DuplicateFinal,
        Mutation::DropFinal,
        Mutation::CorruptResult,
        Mutation::TaskAfterFinal,
        Mutation::RedispatchAccepted,
        Mutation::ShrinkCapacity,
        Mutation::HiddenPlan,
        Mutation::WrongModel,
    ];

    /// The properties this mutation breaks (the first violation must be one of them).
    pub fn breaks(self) -> &'static [Property] {
        match self {
            Mutation::None => &[],
            Mutation::DuplicateFinal => &[Property::ExactlyOnce],
            // The checker notices at once that the engine dropped a plan it did not answer.
            Mutation::DropFinal => &[Property::ExactlyOnce, Property::Bounded],
            Mutation::CorruptResult | Mutation::WrongModel => &[Property::Outcome],
            Mutation::TaskAfterFinal => &[Property::NoTaskAfterFinal],
            Mutation::RedispatchAccepted | Mutation::ShrinkCapacity => &[Property::NoRerun],
            Mutation::HiddenPlan => &[Property::Bounded],
            Mutation::DoubleForward => &[Property::NoRerun],
            Mutation::Reforward => &[Property::OneHop],
            Mutation::DropSnapshots | Mutation::DropProbeAcks => &[Property::Converges],
        }
    }
}

/// What to do with one peer message.
#[derive(Default)]
pub struct PeerTamper {
    /// Do not send it.
    pub drop: bool,
    /// Send these too (peer endpoint, message).
    pub also: Vec<(String, PeerMessage)>,
}

/// What to do with one reply.
#[derive(Default)]
pub struct ReplyPlan {
    /// Send this instead.
    pub replace: Option<BrokerToClient>,
    /// Do not send it.
    pub drop: bool,
    /// Send it this many more times.
    pub repeat: u32,
    /// Then send these tasks (worker connection, task).
    pub then_tasks: Vec<(ConnId, Task<'static>)>,
}

type Tag = (u32, u64, usize);

fn tag_of(task: &Task<'_>) -> Option<Tag> {
    tag_of_kwargs(&task.kwargs)
}

fn tag_of_kwargs(kwargs: &BTreeMap<String, Value>) -> Option<Tag> {
    let tag = kwargs.get(TAG)?.as_array()?;
    match tag.as_slice() {
        [c, r, i] => Some((c.as_u64()? as u32, r.as_u64()?, i.as_u64()? as usize)),
        _ => None,
    }
}

/// A mutation and what it needs to remember.
pub struct MutationState {
    kind: Mutation,
    fired: bool,
    tasks: BTreeMap<Tag, (ConnId, Task<'static>)>,
    names: BTreeMap<(ConnId, u64), Vec<String>>,
    /// Steps forwarded to this broker, by their tag.
    forwarded: BTreeMap<Tag, FwdStep>,
}

impl MutationState {
    /// The state of `kind`.
    pub fn new(kind: Mutation) -> MutationState {
        MutationState {
            kind,
            fired: false,
            tasks: BTreeMap::new(),
            names: BTreeMap::new(),
            forwarded: BTreeMap::new(),
        }
    }

    /// A peer message reaches the engine.
    pub fn peer_input(&mut self, message: &PeerMessage) {
        if let (Mutation::Reforward, PeerMessage::FwdStep(s)) = (self.kind, message) {
            if let Some(tag) = tag_of_kwargs(&s.kwargs) {
                self.forwarded.insert(tag, s.clone());
            }
        }
    }

    /// A task for a step forwarded here, sent to another live broker instead (the endpoint
    /// and the forward), under [`Mutation::Reforward`].
    pub fn reforward(&mut self, task: &Task<'_>, ctx: &Ctx<'_>) -> Option<(String, PeerMessage)> {
        if self.kind != Mutation::Reforward {
            return None;
        }
        let step = self.forwarded.get(&tag_of(task)?)?;
        let owner = process_of(&step.owner)?;
        let to = ctx
            .live_brokers()
            .into_iter()
            .find(|&b| b != ctx.me && b != owner)?;
        let mut forward = step.clone();
        forward.fid += FORGED_TASK;
        forward.owner = endpoints_of(ctx.me).peer;
        Some((endpoints_of(to).peer, PeerMessage::FwdStep(forward)))
    }

    /// A peer message goes out to `endpoint`.
    pub fn peer(&mut self, endpoint: &str, message: &PeerMessage, ctx: &Ctx<'_>) -> PeerTamper {
        let mut tamper = PeerTamper::default();
        match (self.kind, message) {
            (Mutation::DoubleForward, PeerMessage::FwdStep(s)) => {
                let target = process_of(endpoint);
                let other = ctx
                    .live_brokers()
                    .into_iter()
                    .find(|&b| b != ctx.me && Some(b) != target);
                if let Some(other) = other {
                    let mut twin = s.clone();
                    twin.fid += FORGED_TASK;
                    tamper
                        .also
                        .push((endpoints_of(other).peer, PeerMessage::FwdStep(twin)));
                }
            }
            (Mutation::DropSnapshots, PeerMessage::Snapshot(_)) => tamper.drop = true,
            (Mutation::DropProbeAcks, PeerMessage::ProbeAck(_)) => {
                tamper.drop = ctx.me == ProcessId(0);
            }
            _ => {}
        }
        tamper
    }

    fn remembers(&self) -> bool {
        matches!(
            self.kind,
            Mutation::TaskAfterFinal | Mutation::RedispatchAccepted
        )
    }

    /// A client request reaches the engine.
    pub fn client_input(&mut self, conn: ConnId, message: &ClientToBroker) {
        if let (true, ClientToBroker::Plan(p)) = (self.remembers(), message) {
            let names = p.steps.iter().map(|s| s.name.clone()).collect();
            self.names.insert((conn, p.id), names);
        }
    }

    /// The hidden plan, to be fed to the engine once, before the first client plan.
    pub fn hidden_plan(&mut self, input: &Input) -> Option<(ClientOrigin, PlanRequest)> {
        let first_plan = matches!(
            input,
            Input::Client {
                message: ClientToBroker::Plan(_),
                ..
            }
        );
        if self.kind != Mutation::HiddenPlan || self.fired || !first_plan {
            return None;
        }
        self.fired = true;
        let mut step = Step::new("hidden", "echo", vec![Value::from(1)]);
        let tag = Value::Array(vec![Value::from(HIDDEN.0), Value::from(1), Value::from(0)]);
        step.kwargs.insert(TAG.into(), tag);
        let origin = ClientOrigin {
            addr: ClientAddr {
                routing: HIDDEN.routing(),
                delimiter: false,
                compact: false,
            },
            user: None,
            bytes: 10,
        };
        let plan = messages::plan(1, vec![step]);
        Some((origin, plan))
    }

    /// True for the hidden plan's connection.
    pub fn is_hidden(&self, conn: ConnId) -> bool {
        self.kind == Mutation::HiddenPlan && conn == HIDDEN
    }

    /// True for the hidden plan's tasks.
    pub fn is_hidden_task(&self, task: &Task<'_>) -> bool {
        self.kind == Mutation::HiddenPlan && tag_of(task).is_some_and(|t| t.0 == HIDDEN.0)
    }

    /// A task goes out to `worker`.
    pub fn task(&mut self, worker: ConnId, task: &Task<'_>) {
        if self.remembers() {
            if let Some(tag) = tag_of(task) {
                self.tasks.insert(tag, (worker, owned(task)));
            }
        }
    }

    fn forged(&self, tag: Tag) -> Option<(ConnId, Task<'static>)> {
        let (worker, task) = self.tasks.get(&tag)?;
        let mut task = task.clone();
        task.task = TaskId(task.task.0 + FORGED_TASK);
        Some((*worker, task))
    }

    /// A reply goes out to client `conn`.
    pub fn reply(&mut self, conn: ConnId, message: &BrokerToClient) -> ReplyPlan {
        let mut plan = ReplyPlan::default();
        if self.fired {
            return plan;
        }
        let is_final = matches!(
            message,
            BrokerToClient::Result(_) | BrokerToClient::Error(_)
        );
        match (self.kind, message) {
            (Mutation::DuplicateFinal, _) if is_final => {
                plan.repeat = 1;
                self.fired = true;
            }
            (Mutation::DropFinal, _) if is_final => {
                plan.drop = true;
                self.fired = true;
            }
            (Mutation::CorruptResult, BrokerToClient::Result(r)) if !r.results.is_empty() => {
                let mut r = r.clone();
                if let Some(v) = r.results.values_mut().next() {
                    *v = Value::from("corrupted");
                }
                plan.replace = Some(BrokerToClient::Result(r));
                self.fired = true;
            }
            (Mutation::TaskAfterFinal, BrokerToClient::Result(r)) => {
                let tag = self
                    .tasks
                    .keys()
                    .find(|t| t.0 == conn.0 && t.1 == r.id)
                    .copied();
                if let Some(forged) = tag.and_then(|t| self.forged(t)) {
                    plan.then_tasks.push(forged);
                    self.fired = true;
                }
            }
            (Mutation::RedispatchAccepted, BrokerToClient::Progress(p)) => {
                let ix = self
                    .names
                    .get(&(conn, p.id))
                    .and_then(|names| names.iter().position(|n| *n == p.step));
                if let Some(forged) = ix.and_then(|ix| self.forged((conn.0, p.id, ix))) {
                    plan.then_tasks.push(forged);
                    self.fired = true;
                }
            }
            _ => {}
        }
        plan
    }

    /// A message other than a task goes out to a worker: what to send instead, if anything.
    pub fn worker_message(&mut self, message: &BrokerToWorker) -> Option<BrokerToWorker> {
        match (self.kind, message) {
            (Mutation::ShrinkCapacity, BrokerToWorker::Registered(r)) if r.capacity > 1 => {
                let mut r = r.clone();
                r.capacity -= 1;
                Some(BrokerToWorker::Registered(r))
            }
            _ => None,
        }
    }
}
