//! The reactor: one thread owns a group of sockets, polls them together with a wake-up fd, and
//! hands every message to a synchronous [`Handler`]. Other threads (tokio tasks included) talk
//! to it through a bounded command channel; a sender writes to the wake-up fd only when the
//! reactor may be asleep (the first command after it drained the channel), so a burst of
//! commands costs one wake-up, and the reactor drains them in batches.
//!
//! libzmq sockets are not thread-safe: a socket opened through [`Io::open`] never leaves the
//! reactor thread.
//!
//! A socket may also be monitored ([`SocketSpec::monitored`], [`Io::monitor`]): its connection
//! events reach [`Handler::on_socket_event`] (see [`crate::monitor`]).

use std::cell::Cell;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::error::{SendError, TransportError};
use crate::handle::channel;
pub use crate::handle::{Closed, ReactorHandle, TrySendError, WeakReactorHandle};
use crate::monitor::{Monitor, MonitorEvent};
pub use crate::socket_spec::{Context, SocketKind, SocketSpec};

/// Messages read from one socket before the reactor looks at the others and its timers.
const MESSAGE_BATCH: usize = 512;
/// Longest the reactor goes on reading sockets before it looks at its commands and timers
/// again, checked every [`SLICE_CHECK`] messages: a burst of large messages must not delay a
/// heartbeat (the peer would take a live connection for a dead one).
const READ_SLICE: Duration = Duration::from_millis(20);
/// Messages between two looks at the clock while reading.
const SLICE_CHECK: usize = 16;
/// Commands drained per loop iteration before sockets get their turn again.
const COMMAND_BATCH: usize = 1024;
/// Stack for reactor threads: handlers decode depth-limited msgpack recursively.
const REACTOR_STACK_BYTES: usize = 8 * 1024 * 1024;

/// Identifies a socket inside one reactor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId(usize);

pub(crate) struct Slot {
    /// Declared before `socket`: fields drop in order, and a monitor must be detached from its
    /// socket while the socket is still open.
    pub(crate) monitor: Option<Monitor>,
    pub(crate) socket: zmq::Socket,
    pub(crate) kind: SocketKind,
    /// Numbers the sockets this reactor opened, so that a reused slot is told apart.
    pub(crate) serial: u64,
    /// The socket may have messages waiting that its fd will not announce: the handler used
    /// it (a send may process the command that announced a message, consuming the fd's
    /// signal) or a read stopped before the socket ran dry. The loop asks libzmq
    /// (`ZMQ_EVENTS`) about exactly these sockets, and about those whose fd signalled.
    pub(crate) dirty: Cell<bool>,
    /// The same for the monitor.
    pub(crate) monitor_dirty: Cell<bool>,
    bound: Vec<String>,
    user_ids: bool,
    /// The context number the socket lives in (its monitor must live there too).
    context: u8,
}

/// The reactor's sockets, as a handler sees them during a callback.
pub struct Io {
    ctx: zmq::Context,
    /// More contexts (own I/O threads), by number.
    extra: Vec<(u8, zmq::Context)>,
    pub(crate) slots: Vec<Option<Slot>>,
    pub(crate) now: Instant,
    peer_user: Option<String>,
    /// Sockets opened so far (the next [`Slot::serial`]).
    opened: u64,
}

impl Io {
    pub(crate) fn new(ctx: zmq::Context) -> Io {
        Io {
            ctx,
            extra: Vec::new(),
            slots: Vec::new(),
            now: Instant::now(),
            peer_user: None,
            opened: 0,
        }
    }

    /// Creates a socket, applies its options, binds and connects it, and adds it to the poll
    /// set. Bound endpoints with a `*` port are resolved (see [`Io::bound_endpoints`]).
    pub fn open(&mut self, spec: &SocketSpec) -> Result<SocketId, TransportError> {
        let ctx = self.context(spec.context);
        let mut socket = ctx
            .socket(spec.kind.raw())
            .map_err(TransportError::Create)?;
        spec.options.apply(&mut socket, spec.kind.raw())?;
        // Before any bind or connect, so that no event is missed.
        let monitor = if spec.monitor {
            Some(Monitor::attach(&ctx, &mut socket)?)
        } else {
            None
        };
        let mut bound = Vec::new();
        for endpoint in &spec.bind {
            crate::endpoint::validate(endpoint)?;
            socket
                .bind(endpoint)
                .map_err(|source| TransportError::Bind {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            let actual = socket
                .get_last_endpoint()
                .ok()
                .and_then(Result::ok)
                .unwrap_or_else(|| endpoint.clone());
            bound.push(actual);
        }
        for endpoint in &spec.connect {
            crate::endpoint::validate(endpoint)?;
            socket
                .connect(endpoint)
                .map_err(|source| TransportError::Connect {
                    endpoint: endpoint.clone(),
                    source,
                })?;
        }
        if spec.kind == SocketKind::Sub {
            for prefix in &spec.subscribe {
                socket
                    .set_subscribe(prefix)
                    .map_err(|source| TransportError::Option {
                        option: "SUBSCRIBE",
                        source,
                    })?;
            }
        }
        let slot = Slot {
            monitor,
            socket,
            kind: spec.kind,
            bound,
            user_ids: spec.user_ids,
            context: spec.context,
            serial: self.opened,
            dirty: Cell::new(true),
            monitor_dirty: Cell::new(true),
        };
        self.opened += 1;
        let index = match self.slots.iter().position(Option::is_none) {
            Some(free) => {
                self.slots[free] = Some(slot);
                free
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        Ok(SocketId(index))
    }

    /// The libzmq context number `n` of this reactor (created on first use).
    fn context(&mut self, n: u8) -> zmq::Context {
        if n == 0 {
            return self.ctx.clone();
        }
        if let Some((_, ctx)) = self.extra.iter().find(|(k, _)| *k == n) {
            return ctx.clone();
        }
        let ctx = zmq::Context::new();
        self.extra.push((n, ctx.clone()));
        ctx
    }

    /// Starts reporting an open socket's connection events to [`Handler::on_socket_event`]
    /// (events before this call are not reported: use [`SocketSpec::monitored`] to see them
    /// all). Does nothing if the socket is already monitored.
    pub fn monitor(&mut self, id: SocketId) -> Result<(), TransportError> {
        let Some(context) = self.slot(id).map(|s| s.context) else {
            return Err(TransportError::Reactor(format!("no open socket {id:?}")));
        };
        let ctx = self.context(context);
        let Some(slot) = self.slots.get_mut(id.0).and_then(Option::as_mut) else {
            return Err(TransportError::Reactor(format!("no open socket {id:?}")));
        };
        if slot.monitor.is_none() {
            slot.monitor = Some(Monitor::attach(&ctx, &mut slot.socket)?);
            slot.monitor_dirty.set(true);
        }
        Ok(())
    }

    /// An open socket the handler is about to use (so it is marked dirty).
    fn slot(&self, id: SocketId) -> Option<&Slot> {
        let slot = self.slots.get(id.0).and_then(Option::as_ref)?;
        slot.dirty.set(true);
        Some(slot)
    }

    /// Connects an open socket to one more endpoint (a SUB following a new publisher).
    pub fn connect(&mut self, id: SocketId, endpoint: &str) -> Result<(), TransportError> {
        crate::endpoint::validate(endpoint)?;
        let slot = self
            .slot(id)
            .ok_or_else(|| TransportError::Reactor(format!("no open socket {id:?}")))?;
        slot.socket
            .connect(endpoint)
            .map_err(|source| TransportError::Connect {
                endpoint: endpoint.to_string(),
                source,
            })
    }

    /// Disconnects an open socket from an endpoint it connected to (nothing if it did not).
    pub fn disconnect(&mut self, id: SocketId, endpoint: &str) {
        if let Some(slot) = self.slot(id) {
            let _ = slot.socket.disconnect(endpoint);
        }
    }

    /// Closes a socket at once (unsent messages are dropped, LINGER 0), and its monitor.
    pub fn close(&mut self, id: SocketId) {
        self.close_with_linger(id, Duration::ZERO);
    }

    /// Closes a socket, letting libzmq's I/O thread go on sending what is still queued for at
    /// most `linger` (the reactor does not wait: its context does, when the reactor ends, see
    /// [`ReactorHandle::closed`]).
    pub fn close_with_linger(&mut self, id: SocketId, linger: Duration) {
        if let Some(slot) = self.slots.get_mut(id.0).and_then(Option::take) {
            let _ = slot.socket.set_linger(linger_ms(linger));
        }
    }

    /// The endpoints a socket is bound to, with OS-chosen ports resolved.
    pub fn bound_endpoints(&self, id: SocketId) -> &[String] {
        self.slots
            .get(id.0)
            .and_then(Option::as_ref)
            .map_or(&[], |s| s.bound.as_slice())
    }

    /// Sends a multipart message without blocking.
    pub fn send<F: AsRef<[u8]>>(&mut self, id: SocketId, frames: &[F]) -> Result<(), SendError> {
        let slot = self.slot(id).ok_or(SendError::Closed)?;
        let last = frames.len().saturating_sub(1);
        for (i, frame) in frames.iter().enumerate() {
            let flags = zmq::DONTWAIT | if i < last { zmq::SNDMORE } else { 0 };
            if let Err(e) = slot.socket.send(frame.as_ref(), flags) {
                return Err(match (i, e) {
                    (0, zmq::Error::EAGAIN) => SendError::WouldBlock,
                    (0, zmq::Error::EHOSTUNREACH) => SendError::Unreachable,
                    (_, e) => SendError::Other(e.to_string()),
                });
            }
        }
        Ok(())
    }

    /// SUB: adds a prefix filter. XPUB in manual mode: applies the prefix to the peer whose
    /// subscription message was received last.
    pub fn subscribe(&mut self, id: SocketId, prefix: &[u8]) -> Result<(), SendError> {
        let slot = self.slot(id).ok_or(SendError::Closed)?;
        slot.socket
            .set_subscribe(prefix)
            .map_err(|e| SendError::Other(e.to_string()))
    }

    /// SUB: removes a prefix filter (XPUB in manual mode: from the peer received last).
    pub fn unsubscribe(&mut self, id: SocketId, prefix: &[u8]) -> Result<(), SendError> {
        let slot = self.slot(id).ok_or(SendError::Closed)?;
        slot.socket
            .set_unsubscribe(prefix)
            .map_err(|e| SendError::Other(e.to_string()))
    }

    /// The ZAP `User-Id` of the message being handled (moved out: ask once per message), when
    /// its socket was opened [`SocketSpec::with_user_ids`] and the peer authenticated through
    /// ZAP.
    pub fn take_peer_user(&mut self) -> Option<String> {
        self.peer_user.take()
    }

    /// The time the current loop iteration started.
    pub fn now(&self) -> Instant {
        self.now
    }
}

/// The owner of a reactor's logic. Every method runs on the reactor thread and must not block.
pub trait Handler: Send + 'static {
    /// What other threads send to this handler.
    type Command: Send + 'static;

    /// A message arrived on one of the reactor's sockets.
    fn on_message(&mut self, io: &mut Io, socket: SocketId, frames: Vec<Vec<u8>>);

    /// A command arrived through a [`ReactorHandle`].
    fn on_command(&mut self, io: &mut Io, command: Self::Command);

    /// The deadline returned by [`Handler::next_deadline`] passed.
    fn on_timer(&mut self, io: &mut Io);

    /// A monitored socket ([`SocketSpec::monitored`], [`Io::monitor`]) reported a connection
    /// event. The default ignores it.
    fn on_socket_event(&mut self, _io: &mut Io, _event: MonitorEvent) {}

    /// When `on_timer` should next run, if ever.
    fn next_deadline(&self) -> Option<Instant>;

    /// Every [`ReactorHandle`] was dropped. The default does nothing.
    fn on_handles_dropped(&mut self, _io: &mut Io) {}

    /// True once the reactor should close its sockets and end.
    fn is_finished(&self) -> bool;

    /// How long libzmq may keep sending what is still queued when the reactor closes its
    /// sockets at the end (LINGER). The default, zero, discards it: right for a peer that
    /// repeats itself; a handler whose last messages matter (a broker's `disconnect` to its
    /// workers) asks for a bounded flush instead.
    fn close_linger(&self) -> Duration {
        Duration::ZERO
    }
}

/// The running reactor thread.
pub struct ReactorThread<H> {
    join: JoinHandle<Option<H>>,
}

impl<H> ReactorThread<H> {
    /// Waits for the reactor to finish and returns its handler.
    pub fn join(self) -> Result<H, TransportError> {
        match self.join.join() {
            Ok(Some(handler)) => Ok(handler),
            Ok(None) => Err(TransportError::Reactor("reactor init failed".into())),
            Err(_) => Err(TransportError::Reactor("reactor thread panicked".into())),
        }
    }

    /// True once the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }
}

/// Starts a reactor thread. `init` runs on that thread: it opens the sockets and builds the
/// handler; its error is returned here, so a failed bind is reported to the caller.
pub fn spawn<H, F>(
    name: &str,
    ctx: &Context,
    command_capacity: usize,
    init: F,
) -> Result<(ReactorHandle<H::Command>, ReactorThread<H>), TransportError>
where
    H: Handler,
    F: FnOnce(&mut Io) -> Result<H, TransportError> + Send + 'static,
{
    spawn_with_handle(name, ctx, command_capacity, move |io, _| init(io))
}

/// [`spawn`], with the handler's own (weak) handle given to `init`: a handler whose tasks
/// report back to it (a worker's functions running off the reactor) keeps it from the start.
pub fn spawn_with_handle<H, F>(
    name: &str,
    ctx: &Context,
    command_capacity: usize,
    init: F,
) -> Result<(ReactorHandle<H::Command>, ReactorThread<H>), TransportError>
where
    H: Handler,
    F: FnOnce(&mut Io, WeakReactorHandle<H::Command>) -> Result<H, TransportError> + Send + 'static,
{
    let (wake_tx, wake_rx) = UnixStream::pair()?;
    wake_tx.set_nonblocking(true)?;
    wake_rx.set_nonblocking(true)?;
    let (handle, weak, waker, rx) = channel(command_capacity, Some(wake_tx));
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let zctx = ctx.raw().clone();
    let join = std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(REACTOR_STACK_BYTES)
        .spawn(move || {
            let mut io = Io::new(zctx);
            match init(&mut io, weak) {
                Ok(handler) => {
                    let _ = ready_tx.send(Ok(()));
                    Some(crate::poller::run(handler, io, rx, wake_rx, &waker))
                }
                Err(e) => {
                    // Dropping `io` closes any socket init opened.
                    let _ = ready_tx.send(Err(e));
                    None
                }
            }
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((handle, ReactorThread { join })),
        Ok(Err(e)) => {
            let _ = join.join();
            Err(e)
        }
        Err(_) => Err(TransportError::Reactor(
            "reactor thread died during init".into(),
        )),
    }
}

/// The reactor's side of the command channel.
#[derive(Default)]
pub(crate) struct Commands {
    /// Every handle was dropped (told to the handler once).
    handles_dropped: bool,
    /// The last drain stopped at [`COMMAND_BATCH`]: more may be waiting.
    pub(crate) more: bool,
}

impl Commands {
    /// Hands the waiting commands to the handler, at most a batch.
    pub(crate) fn drain<H: Handler>(
        &mut self,
        handler: &mut H,
        io: &mut Io,
        rx: &mut mpsc::Receiver<H::Command>,
    ) {
        self.more = false;
        if self.handles_dropped {
            return;
        }
        for taken in 0.. {
            if taken == COMMAND_BATCH {
                self.more = true;
                return;
            }
            match rx.try_recv() {
                Ok(command) => handler.on_command(io, command),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closed(handler, io);
                    return;
                }
            }
        }
    }

    /// The channel reported itself closed: every handle is gone.
    pub(crate) fn closed<H: Handler>(&mut self, handler: &mut H, io: &mut Io) {
        if !self.handles_dropped {
            self.handles_dropped = true;
            handler.on_handles_dropped(io);
        }
    }

    /// True while commands may still arrive.
    pub(crate) fn open(&self) -> bool {
        !self.handles_dropped
    }
}

/// Runs the handler's timer if its deadline passed.
pub(crate) fn run_timer<H: Handler>(handler: &mut H, io: &mut Io) {
    if handler.next_deadline().is_some_and(|d| d <= Instant::now()) {
        io.now = Instant::now();
        handler.on_timer(io);
    }
}

/// Sets the handler's LINGER on every socket and closes them (the contexts, dropped with the
/// [`Io`], wait for what is still queued).
pub(crate) fn close_sockets<H: Handler>(handler: &H, io: &mut Io) {
    let linger = linger_ms(handler.close_linger());
    for slot in io.slots.iter_mut() {
        if let Some(slot) = slot.take() {
            let _ = slot.socket.set_linger(linger);
        }
    }
}

/// Hands the messages waiting on slot `index`'s socket to the handler, at most a batch and
/// at most [`READ_SLICE`] after `reading_since`. Returns true when it stopped with messages
/// possibly left (the socket stays readable).
pub(crate) fn read_socket<H: Handler>(
    handler: &mut H,
    io: &mut Io,
    index: usize,
    reading_since: Instant,
) -> bool {
    for n in 0..MESSAGE_BATCH {
        if n % SLICE_CHECK == SLICE_CHECK - 1 && reading_since.elapsed() > READ_SLICE {
            mark_dirty(io, index);
            return true;
        }
        let Some(slot) = io.slots.get(index).and_then(Option::as_ref) else {
            return false;
        };
        let received = if slot.user_ids {
            recv_with_user(&slot.socket).map(|(frames, user)| {
                io.peer_user = user;
                frames
            })
        } else {
            slot.socket.recv_multipart(zmq::DONTWAIT)
        };
        match received {
            Ok(frames) => handler.on_message(io, SocketId(index), frames),
            Err(_) => return false,
        }
        io.peer_user = None;
    }
    mark_dirty(io, index);
    true
}

/// Slot `index`'s socket may have messages left that its fd will not announce.
fn mark_dirty(io: &Io, index: usize) {
    if let Some(slot) = io.slots.get(index).and_then(Option::as_ref) {
        slot.dirty.set(true);
    }
}

/// A LINGER in libzmq's unit (milliseconds), saturated.
fn linger_ms(linger: Duration) -> i32 {
    i32::try_from(linger.as_millis()).unwrap_or(i32::MAX)
}

/// Hands the events waiting on slot `index`'s monitor to the handler, at most a batch.
/// Returns true when it stopped with events possibly left.
pub(crate) fn read_monitor<H: Handler>(handler: &mut H, io: &mut Io, index: usize) -> bool {
    for _ in 0..MESSAGE_BATCH {
        let Some(monitor) = io
            .slots
            .get(index)
            .and_then(Option::as_ref)
            .and_then(|s| s.monitor.as_ref())
        else {
            return false;
        };
        match monitor.recv() {
            None => return false,
            // A malformed event (not libzmq's format) is skipped.
            Some(None) => {}
            Some(Some((event, endpoint))) => handler.on_socket_event(
                io,
                MonitorEvent {
                    socket: SocketId(index),
                    event,
                    endpoint,
                },
            ),
        }
    }
    if let Some(slot) = io.slots.get(index).and_then(Option::as_ref) {
        slot.monitor_dirty.set(true);
    }
    true
}

/// Receives a multipart message frame by frame, keeping the `User-Id` property libzmq
/// attached from the ZAP reply (the same on every frame of a message).
fn recv_with_user(socket: &zmq::Socket) -> zmq::Result<(Vec<Vec<u8>>, Option<String>)> {
    let mut frames = Vec::new();
    let mut user = None;
    loop {
        let flags = if frames.is_empty() { zmq::DONTWAIT } else { 0 };
        let mut msg = socket.recv_msg(flags)?;
        if user.is_none() {
            user = msg.gets("User-Id").map(str::to_owned);
        }
        frames.push(msg.to_vec());
        if !msg.get_more() {
            return Ok((frames, user));
        }
    }
}
