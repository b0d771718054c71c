//! The reactor over real sockets: echo through two reactors that both end when their handles
//! are dropped, init errors, ROUTER_MANDATORY, CURVE in the linked libzmq.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

mod common;

use common::{start_echo, Echo};
use mpreg_transport::*;
use tokio::sync::oneshot;

/// A DEALER client: each command carries a payload and a oneshot for the reply, matched FIFO.
struct Client {
    socket: SocketId,
    waiting: std::collections::VecDeque<oneshot::Sender<Vec<u8>>>,
    done: bool,
}

impl Handler for Client {
    type Command = (Vec<u8>, oneshot::Sender<Vec<u8>>);
    fn on_message(&mut self, _io: &mut Io, _s: SocketId, mut frames: Vec<Vec<u8>>) {
        if let Some(tx) = self.waiting.pop_front() {
            let _ = tx.send(frames.pop().unwrap());
        }
    }
    fn on_command(&mut self, io: &mut Io, (payload, tx): Self::Command) {
        io.send(self.socket, &[payload]).expect("client send");
        self.waiting.push_back(tx);
    }
    fn on_timer(&mut self, _io: &mut Io) {}
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
    fn on_handles_dropped(&mut self, _io: &mut Io) {
        self.done = true;
    }
    fn is_finished(&self) -> bool {
        self.done
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_two_reactors_that_end_with_their_handles() {
    let ctx = Context::new();
    let (echo_handle, echo_thread, endpoint) = start_echo(&ctx, "tcp://127.0.0.1:*");
    assert!(
        endpoint.starts_with("tcp://127.0.0.1:") && !endpoint.ends_with('*'),
        "{endpoint}"
    );
    let (client, client_thread) = spawn("client", &ctx, 64, move |io| {
        let socket = io.open(
            &SocketSpec::new(SocketKind::Dealer, SocketOptions::dealer_client()).connect(endpoint),
        )?;
        Ok(Client {
            socket,
            waiting: Default::default(),
            done: false,
        })
    })
    .unwrap();

    // A few round trips (bursts, ping-pongs and the timer: reactor_loops.rs, on every loop).
    for i in 0..10u32 {
        let (tx, rx) = oneshot::channel();
        client.send((i.to_be_bytes().to_vec(), tx)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, i.to_be_bytes().to_vec());
    }

    drop(client);
    drop(echo_handle);
    let client_state = tokio::task::spawn_blocking(move || client_thread.join())
        .await
        .unwrap()
        .unwrap();
    assert!(client_state.waiting.is_empty());
    tokio::task::spawn_blocking(move || echo_thread.join())
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn init_errors_reach_the_caller() {
    let ctx = Context::new();
    let (_h, _t, endpoint) = start_echo(&ctx, "tcp://127.0.0.1:*");
    // Binding the same port twice fails, and the error names the endpoint.
    let result = spawn("dup", &ctx, 1, move |io| {
        io.open(
            &SocketSpec::new(SocketKind::Router, SocketOptions::router_server())
                .bind(endpoint.clone()),
        )?;
        Ok(Echo { socket: None })
    });
    let err = result.err().expect("second bind must fail");
    assert!(err.to_string().contains("cannot bind"), "{err}");
    let bad = spawn("bad", &ctx, 1, |io| {
        io.open(
            &SocketSpec::new(SocketKind::Router, SocketOptions::router_server())
                .bind("tcp://nohost"),
        )?;
        Ok(Echo { socket: None })
    });
    assert!(bad.err().unwrap().to_string().contains("invalid endpoint"));
}

#[test]
fn router_mandatory_reports_unknown_peers() {
    let ctx = Context::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let (_h, _t) = spawn("m", &ctx, 1, move |io| {
        let s = io.open(
            &SocketSpec::new(SocketKind::Router, SocketOptions::router_server())
                .bind("tcp://127.0.0.1:*"),
        )?;
        tx.send(io.send(s, &[&b"nobody"[..], b"x"])).unwrap();
        Ok(Echo { socket: None })
    })
    .unwrap();
    assert_eq!(rx.recv().unwrap(), Err(SendError::Unreachable));
}

#[test]
fn linked_libzmq_has_curve() {
    assert!(
        curve_available(),
        "libzmq was built without CURVE: link the system libzmq (libzmq3-dev)"
    );
    assert!(libzmq_version() >= (4, 3, 0));
}
