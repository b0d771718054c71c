//! The reactor run as a tokio task ([`spawn_task`]) over real sockets, on both runtime
//! flavours, and on a thread of its own ([`spawn_with_handle`]): request/reply one at a time (each reply arrives while the task waits on the
//! socket's fd, the case a mishandled `ZMQ_FD` edge hangs), a ping-pong driven from inside the
//! handler (a send right before waiting, which may consume the signal of the next message),
//! bursts, the timer, a socket replaced mid-run, and the end of the task.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

mod common;

use common::{start_echo, Echo};
use mpreg_transport::*;
use tokio::sync::oneshot;

enum Cmd {
    /// Send a payload; the reply goes to the sender (FIFO).
    Send(Vec<u8>, oneshot::Sender<Vec<u8>>),
    /// Bounce `n` messages off the echo from inside the handler, `window` at a time (each
    /// reply sends the next one), then answer with the number received.
    PingPong {
        n: u32,
        window: u32,
        done: oneshot::Sender<u32>,
    },
    /// Fire `on_timer` at this instant and tell the sender when it ran.
    Timer(Instant, oneshot::Sender<Instant>),
    /// Close the DEALER and open a new one to the same endpoint.
    Replace,
}

struct PingPong {
    to_send: u32,
    to_receive: u32,
    received: u32,
    done: Option<oneshot::Sender<u32>>,
}

/// A DEALER client run as a reactor task.
struct Client {
    endpoint: String,
    socket: SocketId,
    waiting: std::collections::VecDeque<oneshot::Sender<Vec<u8>>>,
    ping_pong: Option<PingPong>,
    timer: Option<(Instant, oneshot::Sender<Instant>)>,
    done: bool,
}

fn dealer(endpoint: &str) -> SocketSpec {
    SocketSpec::new(SocketKind::Dealer, SocketOptions::dealer_client()).connect(endpoint)
}

impl Handler for Client {
    type Command = Cmd;
    fn on_message(&mut self, io: &mut Io, _s: SocketId, mut frames: Vec<Vec<u8>>) {
        let payload = frames.pop().unwrap();
        if let Some(p) = &mut self.ping_pong {
            p.received += 1;
            if p.to_send > 0 {
                // Sent from inside the loop's look at the sockets, after which it may wait.
                p.to_send -= 1;
                io.send(self.socket, &[p.to_send.to_be_bytes()]).unwrap();
            }
            if p.received == p.to_receive {
                let _ = p.done.take().unwrap().send(p.received);
                self.ping_pong = None;
            }
            return;
        }
        if let Some(tx) = self.waiting.pop_front() {
            let _ = tx.send(payload);
        }
    }
    fn on_command(&mut self, io: &mut Io, command: Cmd) {
        match command {
            Cmd::Send(payload, tx) => {
                io.send(self.socket, &[payload]).expect("client send");
                self.waiting.push_back(tx);
            }
            Cmd::PingPong { n, window, done } => {
                for i in 0..window {
                    io.send(self.socket, &[i.to_be_bytes()]).unwrap();
                }
                self.ping_pong = Some(PingPong {
                    to_send: n - window,
                    to_receive: n,
                    received: 0,
                    done: Some(done),
                });
            }
            Cmd::Timer(at, tx) => self.timer = Some((at, tx)),
            Cmd::Replace => {
                io.close(self.socket);
                self.socket = io.open(&dealer(&self.endpoint)).unwrap();
            }
        }
    }
    fn on_timer(&mut self, _io: &mut Io) {
        if let Some((_, tx)) = self.timer.take() {
            let _ = tx.send(Instant::now());
        }
    }
    fn next_deadline(&self) -> Option<Instant> {
        self.timer.as_ref().map(|(at, _)| *at)
    }
    fn on_handles_dropped(&mut self, _io: &mut Io) {
        self.done = true;
    }
    fn is_finished(&self) -> bool {
        self.done
    }
}

/// The client's reactor, as a task or on a thread of its own.
enum Running {
    Task(ReactorTask<Client>),
    Thread(ReactorThread<Client>),
}

impl Running {
    async fn join(self) -> Result<Client, TransportError> {
        match self {
            Running::Task(task) => task.join().await,
            Running::Thread(thread) => tokio::task::spawn_blocking(move || thread.join())
                .await
                .unwrap(),
        }
    }
}

fn start_client(ctx: &Context, endpoint: String, task: bool) -> (ReactorHandle<Cmd>, Running) {
    let init = move |io: &mut Io, _| {
        let socket = io.open(&dealer(&endpoint))?;
        Ok(Client {
            endpoint,
            socket,
            waiting: Default::default(),
            ping_pong: None,
            timer: None,
            done: false,
        })
    };
    if task {
        let (handle, task) = spawn_task(ctx, 64, init).unwrap();
        (handle, Running::Task(task))
    } else {
        let (handle, thread) = spawn_with_handle("client", ctx, 64, init).unwrap();
        (handle, Running::Thread(thread))
    }
}

async fn request(client: &ReactorHandle<Cmd>, payload: Vec<u8>) -> Vec<u8> {
    let (tx, rx) = oneshot::channel();
    client.send(Cmd::Send(payload, tx)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("a reply within 5 s: the task missed a readable socket")
        .unwrap()
}

async fn exercise(ctx: &Context, endpoint: String, task: bool) {
    let (client, running) = start_client(ctx, endpoint, task);

    // One at a time: every reply arrives while the task waits.
    for i in 0..500u32 {
        let got = request(&client, i.to_be_bytes().to_vec()).await;
        assert_eq!(got, i.to_be_bytes().to_vec());
    }

    // Driven from inside the handler, one and then 64 at a time: every send is made while
    // replies may be arriving, right before the loop would wait.
    for (window, n) in [(1, 2_000), (64, 20_000)] {
        let (done, rx) = oneshot::channel();
        client
            .send(Cmd::PingPong { n, window, done })
            .await
            .unwrap();
        let received = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .expect("the ping-pong stalled: a signal consumed by a send was not looked at again")
            .unwrap();
        assert_eq!(received, n);
    }

    // A burst through a channel of 64: nothing lost, order kept.
    let mut replies = Vec::new();
    for i in 0..5_000u32 {
        let (tx, rx) = oneshot::channel();
        client
            .send(Cmd::Send(i.to_be_bytes().to_vec(), tx))
            .await
            .unwrap();
        replies.push(rx);
    }
    for (i, rx) in replies.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, (i as u32).to_be_bytes().to_vec());
    }

    // The timer fires on time (not early, not much later), with nothing else happening.
    let at = Instant::now() + Duration::from_millis(50);
    let (tx, rx) = oneshot::channel();
    client.send(Cmd::Timer(at, tx)).await.unwrap();
    let fired = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .unwrap()
        .unwrap();
    assert!(fired >= at, "fired {:?} early", at - fired);
    assert!(
        fired - at < Duration::from_millis(500),
        "{:?} late",
        fired - at
    );

    // A socket replaced mid-run is watched: its replies arrive.
    for round in 0..20u32 {
        client.send(Cmd::Replace).await.unwrap();
        let got = request(&client, round.to_be_bytes().to_vec()).await;
        assert_eq!(got, round.to_be_bytes().to_vec());
    }

    // Dropping the last handle ends the task, which hands its handler back.
    let watcher = client.downgrade();
    drop(client);
    let state = tokio::time::timeout(Duration::from_secs(5), running.join())
        .await
        .expect("the task ends once its handles are gone")
        .unwrap();
    assert!(state.done && state.waiting.is_empty());
    assert!(watcher.upgrade().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reactor_task_serves_its_socket_on_a_multi_thread_runtime() {
    let ctx = Context::new();
    let (_echo, _thread, endpoint) = start_echo(&ctx, "tcp://127.0.0.1:*");
    exercise(&ctx, endpoint, true).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_reactor_task_serves_its_socket_on_a_current_thread_runtime() {
    let ctx = Context::new();
    let (_echo, _thread, endpoint) = start_echo(&ctx, "tcp://127.0.0.1:*");
    exercise(&ctx, endpoint, true).await;
}

/// The same with the client on a reactor thread (its poll loop asks libzmq only about the
/// sockets that need it: see `transport/src/poller.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reactor_thread_serves_its_socket() {
    let ctx = Context::new();
    let (_echo, _thread, endpoint) = start_echo(&ctx, "tcp://127.0.0.1:*");
    exercise(&ctx, endpoint, false).await;
}

#[test]
fn a_reactor_task_needs_a_runtime_and_reports_init_errors() {
    let ctx = Context::new();
    let outside = spawn_task(&ctx, 1, |_io, _| -> Result<Echo, TransportError> {
        panic!("init must not run outside a runtime")
    });
    assert!(outside
        .err()
        .unwrap()
        .to_string()
        .contains("within a tokio runtime"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _inside = runtime.enter();
    let bad = spawn_task(&ctx, 1, |io, _| {
        io.open(
            &SocketSpec::new(SocketKind::Router, SocketOptions::router_server())
                .bind("tcp://nohost"),
        )?;
        Ok(Echo { socket: None })
    });
    assert!(bad.err().unwrap().to_string().contains("invalid endpoint"));
}
