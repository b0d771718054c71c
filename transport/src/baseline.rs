//! Raw libzmq programs for benchmark baselines: the same topology as MPREG, minus MPREG.
//!
//! Benchmarks run these in their own processes next to the real broker and node, in the same
//! run, and report MPREG's figures as ratios to them. They are deliberately minimal: blocking
//! sockets, no codec, no bookkeeping beyond routing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::TransportError;

const READY: &[u8] = b"READY";

fn socket(ctx: &zmq::Context, kind: zmq::SocketType) -> Result<zmq::Socket, TransportError> {
    let s = ctx.socket(kind).map_err(TransportError::Create)?;
    let opt =
        |option, r: zmq::Result<()>| r.map_err(|source| TransportError::Option { option, source });
    opt("LINGER", s.set_linger(0))?;
    opt("SNDHWM", s.set_sndhwm(100_000))?;
    opt("RCVHWM", s.set_rcvhwm(100_000))?;
    Ok(s)
}

fn bind(s: &zmq::Socket, endpoint: &str) -> Result<String, TransportError> {
    s.bind(endpoint).map_err(|source| TransportError::Bind {
        endpoint: endpoint.into(),
        source,
    })?;
    Ok(s.get_last_endpoint()
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| endpoint.into()))
}

fn connect(s: &zmq::Socket, endpoint: &str) -> Result<(), TransportError> {
    s.connect(endpoint)
        .map_err(|source| TransportError::Connect {
            endpoint: endpoint.into(),
            source,
        })
}

/// A relay: clients' DEALERs -> ROUTER | ROUTER <- workers' DEALERs, round robin over workers
/// that said `READY`. Binds, calls `on_bound(client_endpoint, worker_endpoint)`, then relays
/// until `stop` is set.
pub fn run_relay(
    client_bind: &str,
    worker_bind: &str,
    stop: &AtomicBool,
    on_bound: impl FnOnce(&str, &str),
) -> Result<(), TransportError> {
    let ctx = zmq::Context::new();
    let front = socket(&ctx, zmq::ROUTER)?;
    let back = socket(&ctx, zmq::ROUTER)?;
    let client_ep = bind(&front, client_bind)?;
    let worker_ep = bind(&back, worker_bind)?;
    on_bound(&client_ep, &worker_ep);
    let mut workers: Vec<Vec<u8>> = Vec::new();
    let mut next = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let mut items = [
            front.as_poll_item(zmq::POLLIN),
            back.as_poll_item(zmq::POLLIN),
        ];
        if zmq::poll(&mut items, 100).is_err() {
            continue;
        }
        let (front_ready, back_ready) = (items[0].is_readable(), items[1].is_readable());
        if back_ready {
            while let Ok(mut frames) = back.recv_multipart(zmq::DONTWAIT) {
                if frames.len() == 2 && frames[1] == READY {
                    workers.push(frames.swap_remove(0));
                } else if frames.len() >= 3 {
                    let _ = front.send_multipart(&frames[1..], zmq::DONTWAIT);
                }
            }
        }
        if front_ready && !workers.is_empty() {
            while let Ok(frames) = front.recv_multipart(zmq::DONTWAIT) {
                next = (next + 1) % workers.len();
                let _ = back.send(&workers[next][..], zmq::SNDMORE | zmq::DONTWAIT);
                let _ = back.send_multipart(&frames, zmq::DONTWAIT);
            }
        }
    }
    Ok(())
}

/// An echo worker: connects a DEALER, says `READY`, returns every message as it came, until
/// `stop` is set.
pub fn run_echo_worker(endpoint: &str, stop: &AtomicBool) -> Result<(), TransportError> {
    let ctx = zmq::Context::new();
    let s = socket(&ctx, zmq::DEALER)?;
    connect(&s, endpoint)?;
    s.send(READY, 0)
        .map_err(|e| TransportError::Reactor(e.to_string()))?;
    while !stop.load(Ordering::Relaxed) {
        if s.poll(zmq::POLLIN, 100).unwrap_or(0) == 0 {
            continue;
        }
        while let Ok(frames) = s.recv_multipart(zmq::DONTWAIT) {
            let _ = s.send_multipart(&frames, 0);
        }
    }
    Ok(())
}

/// A connected client DEALER for the baseline measurements.
pub struct BaselineClient {
    _ctx: zmq::Context,
    socket: zmq::Socket,
}

impl BaselineClient {
    /// Connects a DEALER to `endpoint`.
    pub fn connect(endpoint: &str) -> Result<Self, TransportError> {
        let ctx = zmq::Context::new();
        let socket = socket(&ctx, zmq::DEALER)?;
        connect(&socket, endpoint)?;
        Ok(BaselineClient { _ctx: ctx, socket })
    }

    /// One request and its reply; `None` if no reply came within `timeout`.
    pub fn round_trip(&self, payload: &[u8], timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        self.socket.send(payload, 0).ok()?;
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        if self.socket.poll(zmq::POLLIN, ms).ok()? == 0 {
            return None;
        }
        self.socket.recv_multipart(0).ok()?;
        Some(start.elapsed())
    }

    /// Sends `count` requests keeping at most `window` in flight; returns the elapsed time, or
    /// `None` if replies stopped coming for `timeout`.
    pub fn pipelined(
        &self,
        payload: &[u8],
        count: usize,
        window: usize,
        timeout: Duration,
    ) -> Option<Duration> {
        let start = Instant::now();
        let (mut sent, mut received) = (0usize, 0usize);
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        while received < count {
            while sent < count && sent - received < window {
                self.socket.send(payload, 0).ok()?;
                sent += 1;
            }
            if self.socket.poll(zmq::POLLIN, ms).ok()? == 0 {
                return None;
            }
            while let Ok(_reply) = self.socket.recv_multipart(zmq::DONTWAIT) {
                received += 1;
            }
        }
        Some(start.elapsed())
    }
}

/// Raw PUB -> SUB throughput: binds a PUB, lets `subscribers` SUBs (threads of this process)
/// connect, publishes `count` messages of `size` bytes and returns the time until every
/// subscriber received them all (HWM 0: lossless), or `None` on timeout.
pub fn pub_sub_throughput(
    count: usize,
    size: usize,
    subscribers: usize,
    timeout: Duration,
) -> Result<Option<Duration>, TransportError> {
    let ctx = zmq::Context::new();
    let publisher = socket(&ctx, zmq::PUB)?;
    let opt =
        |option, r: zmq::Result<()>| r.map_err(|source| TransportError::Option { option, source });
    opt("SNDHWM", publisher.set_sndhwm(0))?;
    let endpoint = bind(&publisher, "tcp://127.0.0.1:*")?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut threads = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    for _ in 0..subscribers {
        let sub = socket(&ctx, zmq::SUB)?;
        opt("RCVHWM", sub.set_rcvhwm(0))?;
        opt("SUBSCRIBE", sub.set_subscribe(b""))?;
        connect(&sub, &endpoint)?;
        let done = std::sync::Arc::clone(&done);
        let ready_tx = ready_tx.clone();
        threads.push(std::thread::spawn(move || {
            // The first message proves the subscription is live; the publisher repeats a
            // probe until every subscriber has seen one.
            let mut got_probe = false;
            let mut received = 0usize;
            let deadline = Instant::now() + timeout;
            while received < count && Instant::now() < deadline {
                if sub.poll(zmq::POLLIN, 100).unwrap_or(0) == 0 {
                    continue;
                }
                while let Ok(msg) = sub.recv_bytes(zmq::DONTWAIT) {
                    if msg.first() == Some(&b'P') {
                        if !got_probe {
                            got_probe = true;
                            let _ = ready_tx.send(());
                        }
                    } else {
                        received += 1;
                    }
                }
            }
            if received == count {
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let mut ready = 0;
    let wait_until = Instant::now() + timeout;
    while ready < subscribers && Instant::now() < wait_until {
        let _ = publisher.send(&b"P"[..], 0);
        while ready_rx.try_recv().is_ok() {
            ready += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut payload = vec![b'x'; size.max(1)];
    payload[0] = b'D';
    let start = Instant::now();
    for _ in 0..count {
        let _ = publisher.send(&payload[..], 0);
    }
    for t in threads {
        let _ = t.join();
    }
    let elapsed = start.elapsed();
    Ok((done.load(Ordering::SeqCst) == subscribers).then_some(elapsed))
}
