//! A scripted broker for the node's tests: a real ZeroMQ ROUTER (through mpreg-transport)
//! driven by each test, speaking the worker protocol frame by frame.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mpreg_node::Value;
use mpreg_protocol::{
    parse_envelope, BrokerToWorker, Limits, Register, Registered, Task, TaskId, WorkerToBroker,
};
use mpreg_transport::{
    spawn, Context, Handler, Io, ReactorHandle, ReactorThread, SocketId, SocketKind, SocketOptions,
    SocketSpec,
};
use tokio::sync::mpsc;

/// Longest wait for anything the node should do promptly.
pub const PROMPT: Duration = Duration::from_secs(5);

/// What the scripted broker received.
#[derive(Debug)]
pub struct Got {
    pub routing: Vec<u8>,
    pub message: WorkerToBroker,
    pub at: Instant,
}

enum Cmd {
    Send(Vec<Vec<u8>>),
    Stop,
}

struct RouterHandler {
    socket: SocketId,
    received: mpsc::UnboundedSender<Got>,
    stopped: bool,
}

impl Handler for RouterHandler {
    type Command = Cmd;

    fn on_message(&mut self, _io: &mut Io, _s: SocketId, frames: Vec<Vec<u8>>) {
        let env = parse_envelope(&frames[1..]).expect("the node sends well-formed envelopes");
        let message = WorkerToBroker::decode(env.kind, env.body, &Limits::default())
            .expect("the node sends decodable messages");
        let _ = self.received.send(Got {
            routing: frames[0].clone(),
            message,
            at: Instant::now(),
        });
    }

    fn on_command(&mut self, io: &mut Io, command: Cmd) {
        match command {
            // A send to a vanished peer fails (ROUTER_MANDATORY); the tests check effects.
            Cmd::Send(frames) => drop(io.send(self.socket, &frames)),
            Cmd::Stop => self.stopped = true,
        }
    }

    fn on_timer(&mut self, _io: &mut Io) {}

    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    fn on_handles_dropped(&mut self, _io: &mut Io) {
        self.stopped = true;
    }

    fn is_finished(&self) -> bool {
        self.stopped
    }
}

/// A broker whose every move the test makes.
pub struct Scripted {
    pub endpoint: String,
    handle: ReactorHandle<Cmd>,
    thread: Option<ReactorThread<RouterHandler>>,
    received: mpsc::UnboundedReceiver<Got>,
}

impl Scripted {
    pub fn start() -> Scripted {
        let (tx, received) = mpsc::unbounded_channel();
        let (ep_tx, ep_rx) = std::sync::mpsc::channel();
        let (handle, thread) = spawn("scripted-broker", &Context::new(), 64, move |io| {
            let socket = io.open(
                &SocketSpec::new(SocketKind::Router, SocketOptions::router_server())
                    .bind("tcp://127.0.0.1:*"),
            )?;
            ep_tx.send(io.bound_endpoints(socket)[0].clone()).unwrap();
            Ok(RouterHandler {
                socket,
                received: tx,
                stopped: false,
            })
        })
        .unwrap();
        Scripted {
            endpoint: ep_rx.recv().unwrap(),
            handle,
            thread: Some(thread),
            received,
        }
    }

    pub async fn send_raw(&self, routing: &[u8], frames: &[&[u8]]) {
        let mut all = vec![routing.to_vec()];
        all.extend(frames.iter().map(|f| f.to_vec()));
        self.handle.send(Cmd::Send(all)).await.unwrap();
    }

    pub async fn send(&self, routing: &[u8], message: BrokerToWorker) {
        let [v, k, b] = message.to_frames();
        self.send_raw(routing, &[&v, &k, &b]).await;
    }

    pub async fn task(&self, routing: &[u8], id: u64, fun: &str, args: Vec<Value>) {
        self.send(
            routing,
            BrokerToWorker::Task(Task {
                task: TaskId(id),
                fun: fun.to_string().into(),
                args: args.into(),
                kwargs: std::borrow::Cow::Owned(BTreeMap::new()),
                timeout_ms: None,
            }),
        )
        .await;
    }

    /// The next message of any type.
    pub async fn next(&mut self, within: Duration) -> Got {
        tokio::time::timeout(within, self.received.recv())
            .await
            .unwrap_or_else(|_| panic!("nothing from the node within {within:?}"))
            .expect("the scripted broker is running")
    }

    /// The next message that is not a heartbeat.
    pub async fn next_not_heartbeat(&mut self, within: Duration) -> Got {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = tokio::time::timeout_at(deadline, self.received.recv())
                .await
                .unwrap_or_else(|_| panic!("no message but heartbeats within {within:?}"))
                .expect("the scripted broker is running");
            if !matches!(got.message, WorkerToBroker::Heartbeat(_)) {
                return got;
            }
        }
    }

    /// Asserts that for `period` the node sends nothing but heartbeats.
    pub async fn expect_quiet(&mut self, period: Duration) {
        let deadline = tokio::time::Instant::now() + period;
        while let Ok(got) = tokio::time::timeout_at(deadline, self.received.recv()).await {
            let got = got.expect("the scripted broker is running");
            assert!(
                matches!(got.message, WorkerToBroker::Heartbeat(_)),
                "expected only heartbeats, got {:?}",
                got.message
            );
        }
    }

    /// Waits for `register`, answers `registered`, returns the node's routing id.
    pub async fn accept(&mut self, heartbeat_ms: u64, liveness: u32) -> (Vec<u8>, Register) {
        let got = self.next_not_heartbeat(PROMPT).await;
        let WorkerToBroker::Register(register) = got.message else {
            panic!("expected register, got {:?}", got.message);
        };
        self.send(
            &got.routing,
            BrokerToWorker::Registered(Registered {
                broker: "scripted".into(),
                heartbeat_ms,
                liveness,
                capacity: register.capacity,
            }),
        )
        .await;
        (got.routing, register)
    }

    /// Sends a task and returns its outcome: the value, or the failure's (kind, message).
    pub async fn call(
        &mut self,
        routing: &[u8],
        id: u64,
        fun: &str,
        args: Vec<Value>,
    ) -> Result<Value, (String, String)> {
        self.task(routing, id, fun, args).await;
        outcome_of(self.next_not_heartbeat(PROMPT).await, id)
    }

    pub async fn stop(mut self) {
        let _ = self.handle.send(Cmd::Stop).await;
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join().unwrap())
                .await
                .unwrap();
        }
    }
}

/// A task's outcome from a `result` or `failure` message, checking its id.
pub fn outcome_of(got: Got, id: u64) -> Result<Value, (String, String)> {
    match got.message {
        WorkerToBroker::Result(r) => {
            assert_eq!(r.task, TaskId(id), "result of another task");
            Ok(r.value)
        }
        WorkerToBroker::Failure(f) => {
            assert_eq!(f.task, TaskId(id), "failure of another task");
            Err((f.kind, f.message))
        }
        other => panic!("expected the outcome of task {id}, got {other:?}"),
    }
}
