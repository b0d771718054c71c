//! Socket monitoring over real sockets: a DEALER watching its connection to a ROUTER that
//! goes away and comes back on the same port, a handshake refused, a socket watched after it
//! was opened, and closing watched sockets without stalling libzmq's I/O thread.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

mod common;

use common::start_echo;
use mpreg_transport::*;

/// How long any one expected event may take (a reconnect backs off to at most 5 s).
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// What the test asks the watching reactor to do.
enum Ask {
    Open(Box<SocketSpec>),
    Monitor,
    Send(Vec<u8>),
    Close,
    /// Close the socket with this LINGER and end the reactor.
    Finish(Duration),
}

/// Opens sockets on command and reports their events and messages.
struct Watcher {
    socket: Option<SocketId>,
    events: Sender<(SocketId, SocketEvent)>,
    messages: Sender<Vec<Vec<u8>>>,
    done: bool,
}

impl Handler for Watcher {
    type Command = Ask;
    fn on_message(&mut self, _io: &mut Io, _s: SocketId, frames: Vec<Vec<u8>>) {
        let _ = self.messages.send(frames);
    }
    fn on_command(&mut self, io: &mut Io, ask: Ask) {
        match ask {
            Ask::Open(spec) => self.socket = Some(io.open(&spec).unwrap()),
            Ask::Monitor => io.monitor(self.socket.unwrap()).unwrap(),
            Ask::Send(payload) => io.send(self.socket.unwrap(), &[payload]).unwrap(),
            Ask::Close => io.close(self.socket.take().unwrap()),
            Ask::Finish(linger) => {
                if let Some(socket) = self.socket.take() {
                    io.close_with_linger(socket, linger);
                }
                self.done = true;
            }
        }
    }
    fn on_socket_event(&mut self, _io: &mut Io, event: MonitorEvent) {
        let _ = self.events.send((event.socket, event.event));
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

struct Watching {
    handle: ReactorHandle<Ask>,
    thread: ReactorThread<Watcher>,
    events: Receiver<(SocketId, SocketEvent)>,
    messages: Receiver<Vec<Vec<u8>>>,
}

fn start_watcher() -> Watching {
    let (events_tx, events) = channel();
    let (messages_tx, messages) = channel();
    let (handle, thread) = spawn("watcher", &Context::new(), 16, move |_io| {
        Ok(Watcher {
            socket: None,
            events: events_tx,
            messages: messages_tx,
            done: false,
        })
    })
    .unwrap();
    Watching {
        handle,
        thread,
        events,
        messages,
    }
}

impl Watching {
    fn ask(&self, ask: Ask) {
        self.handle.blocking_send(ask).unwrap();
    }

    /// Waits for an event matching `want`, returning the events seen before it.
    fn expect(&self, what: &str, want: impl Fn(&SocketEvent) -> bool) -> Vec<SocketEvent> {
        let deadline = Instant::now() + EVENT_WAIT;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok((_, event)) if want(&event) => return before,
                Ok((_, event)) => before.push(event),
                Err(_) => panic!("no {what} within {EVENT_WAIT:?}; saw {before:?}"),
            }
        }
    }

    fn echo_round_trip(&self, payload: &[u8]) {
        self.ask(Ask::Send(payload.to_vec()));
        let frames = self.messages.recv_timeout(EVENT_WAIT).unwrap();
        assert_eq!(frames, vec![payload.to_vec()]);
    }

    fn stop(self) {
        drop(self.handle);
        self.thread.join().unwrap();
    }
}

fn dealer_to(endpoint: &str) -> SocketSpec {
    SocketSpec::new(SocketKind::Dealer, SocketOptions::dealer_client()).connect(endpoint)
}

#[test]
fn a_monitored_dealer_sees_its_peer_go_and_come_back() {
    let (echo, echo_thread, endpoint) = start_echo(&Context::new(), "tcp://127.0.0.1:*");
    let watching = start_watcher();
    watching.ask(Ask::Open(Box::new(dealer_to(&endpoint).monitored())));

    // From the very first event: the TCP connection, then the handshake.
    let before = watching.expect("handshake", |e| *e == SocketEvent::HandshakeSucceeded);
    assert!(before.contains(&SocketEvent::Connected), "{before:?}");
    watching.echo_round_trip(b"one");

    // The peer goes away: reported at once, not at the next send.
    drop(echo);
    echo_thread.join().unwrap();
    let started = Instant::now();
    watching.expect("disconnect", |e| *e == SocketEvent::Disconnected);
    assert!(started.elapsed() < Duration::from_secs(2));

    // A new peer on the same port: the DEALER reconnects by itself and says so.
    let (_echo, _echo_thread, again) = start_echo(&Context::new(), &endpoint);
    assert_eq!(again, endpoint);
    watching.expect("handshake after the restart", |e| {
        *e == SocketEvent::HandshakeSucceeded
    });
    watching.echo_round_trip(b"two");
    watching.stop();
}

#[test]
fn a_refused_handshake_is_typed() {
    let (_echo, _echo_thread, endpoint) = start_echo(&Context::new(), "tcp://127.0.0.1:*");
    let watching = start_watcher();
    // A CURVE client against a plain server: the mechanisms do not match.
    let server = KeyPair::generate().unwrap().public;
    let own = KeyPair::generate().unwrap();
    let options = SocketOptions::dealer_client().with_curve(Some(Curve::Client { server, own }));
    let spec = SocketSpec::new(SocketKind::Dealer, options)
        .connect(endpoint)
        .monitored();
    watching.ask(Ask::Open(Box::new(spec)));
    watching.expect("a failed handshake", |e| {
        matches!(
            e,
            SocketEvent::HandshakeFailed(HandshakeFailure::Protocol { .. })
        )
    });
    watching.stop();
}

#[test]
fn an_open_socket_can_be_watched_and_closing_it_stops_the_events() {
    let (echo, echo_thread, endpoint) = start_echo(&Context::new(), "tcp://127.0.0.1:*");
    let watching = start_watcher();
    watching.ask(Ask::Open(Box::new(dealer_to(&endpoint))));
    watching.echo_round_trip(b"unwatched");
    watching.ask(Ask::Monitor);
    // Watching twice is harmless.
    watching.ask(Ask::Monitor);

    // Events from now on are reported: the peer leaving.
    drop(echo);
    echo_thread.join().unwrap();
    watching.expect("disconnect", |e| *e == SocketEvent::Disconnected);

    // Closing the watched socket while it keeps retrying must not leave libzmq's I/O thread
    // blocked on a monitor nobody reads: later sockets of the same reactor still work.
    watching.ask(Ask::Close);
    std::thread::sleep(Duration::from_millis(300));
    while watching.events.try_recv().is_ok() {}
    let (_echo, _echo_thread, endpoint) = start_echo(&Context::new(), "tcp://127.0.0.1:*");
    watching.ask(Ask::Open(Box::new(dealer_to(&endpoint).monitored())));
    watching.expect("a handshake on the next socket", |e| {
        *e == SocketEvent::HandshakeSucceeded
    });
    watching.echo_round_trip(b"after");
    watching.stop();
}

#[test]
fn closed_waits_for_lingering_messages_within_the_linger() {
    let (_echo, _echo_thread, endpoint) = start_echo(&Context::new(), "tcp://127.0.0.1:*");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // A message queued to a live peer leaves before `closed` returns.
    let watching = start_watcher();
    watching.ask(Ask::Open(Box::new(dealer_to(&endpoint).monitored())));
    watching.expect("handshake", |e| *e == SocketEvent::HandshakeSucceeded);
    watching.ask(Ask::Send(b"last words".to_vec()));
    watching.ask(Ask::Finish(Duration::from_secs(2)));
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), watching.handle.closed())
            .await
            .expect("the reactor ends");
    });
    assert!(watching.handle.is_closed());

    // A message nobody can take is kept only for the LINGER: `closed` still returns.
    let nobody = start_watcher();
    nobody.ask(Ask::Open(Box::new(dealer_to("tcp://127.0.0.1:9"))));
    nobody.ask(Ask::Send(b"lost".to_vec()));
    let started = Instant::now();
    nobody.ask(Ask::Finish(Duration::from_millis(200)));
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), nobody.handle.closed())
            .await
            .expect("the LINGER bounds the wait");
    });
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    nobody.stop();
    watching.stop();
}
