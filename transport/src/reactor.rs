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

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::error::{SendError, TransportError};
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

struct Slot {
    /// Declared before `socket`: fields drop in order, and a monitor must be detached from its
    /// socket while the socket is still open.
    monitor: Option<Monitor>,
    socket: zmq::Socket,
    kind: SocketKind,
    bound: Vec<String>,
    user_ids: bool,
    /// The context number the socket lives in (its monitor must live there too).
    context: u8,
}

/// Which half of a slot the poll found readable.
#[derive(Clone, Copy)]
enum Readable {
    Socket(usize),
    Monitor(usize),
}

/// The reactor's sockets, as a handler sees them during a callback.
pub struct Io {
    ctx: zmq::Context,
    /// More contexts (own I/O threads), by number.
    extra: Vec<(u8, zmq::Context)>,
    slots: Vec<Option<Slot>>,
    now: Instant,
    peer_user: Option<String>,
}

impl Io {
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
        };
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
        }
        Ok(())
    }

    fn slot(&self, id: SocketId) -> Option<&Slot> {
        self.slots.get(id.0).and_then(Option::as_ref)
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
        let slot = self
            .slots
            .get(id.0)
            .and_then(Option::as_ref)
            .ok_or(SendError::Closed)?;
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
        let slot = self
            .slots
            .get(id.0)
            .and_then(Option::as_ref)
            .ok_or(SendError::Closed)?;
        slot.socket
            .set_subscribe(prefix)
            .map_err(|e| SendError::Other(e.to_string()))
    }

    /// SUB: removes a prefix filter (XPUB in manual mode: from the peer received last).
    pub fn unsubscribe(&mut self, id: SocketId, prefix: &[u8]) -> Result<(), SendError> {
        let slot = self
            .slots
            .get(id.0)
            .and_then(Option::as_ref)
            .ok_or(SendError::Closed)?;
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

struct Waker {
    pipe: UnixStream,
    pending: AtomicBool,
}

impl Waker {
    fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            // A full pipe already guarantees a wake-up, so WouldBlock is fine to ignore.
            let _ = (&self.pipe).write(&[1]);
        }
    }
}

/// The reactor is gone; the command was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("reactor closed")]
pub struct Closed;

/// Why [`ReactorHandle::try_send`] failed; the command is handed back.
#[derive(Debug)]
pub enum TrySendError<C> {
    /// The command channel is at capacity.
    Full(C),
    /// The reactor is gone.
    Closed(C),
}

/// Sends commands to a reactor from any thread or task. Dropping the last handle wakes the
/// reactor so that it sees the closed channel ([`Handler::on_handles_dropped`]).
pub struct ReactorHandle<C> {
    // Declared before `waker`: fields drop in order, so the channel is closed before the wake.
    tx: mpsc::Sender<C>,
    waker: WakeOnDrop,
}

/// Wakes the reactor when dropped (after the handle's sender is gone).
struct WakeOnDrop(Arc<Waker>);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        self.0.wake();
    }
}

impl std::ops::Deref for WakeOnDrop {
    type Target = Waker;
    fn deref(&self) -> &Waker {
        &self.0
    }
}

impl<C> Clone for ReactorHandle<C> {
    fn clone(&self) -> Self {
        ReactorHandle {
            tx: self.tx.clone(),
            waker: WakeOnDrop(Arc::clone(&self.waker.0)),
        }
    }
}

impl<C: Send + 'static> ReactorHandle<C> {
    /// Sends a command, waiting for room in the channel.
    pub async fn send(&self, command: C) -> Result<(), Closed> {
        self.tx.send(command).await.map_err(|_| Closed)?;
        self.waker.wake();
        Ok(())
    }

    /// Sends a command if there is room now.
    pub fn try_send(&self, command: C) -> Result<(), TrySendError<C>> {
        match self.tx.try_send(command) {
            Ok(()) => {
                self.waker.wake();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(c)) => Err(TrySendError::Full(c)),
            Err(mpsc::error::TrySendError::Closed(c)) => Err(TrySendError::Closed(c)),
        }
    }

    /// Sends a command from a thread outside any async runtime, waiting for room.
    pub fn blocking_send(&self, command: C) -> Result<(), Closed> {
        self.tx.blocking_send(command).map_err(|_| Closed)?;
        self.waker.wake();
        Ok(())
    }

    /// True once the reactor has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until the reactor has ended: its sockets are closed and what they still had
    /// queued was sent, or their LINGER ran out.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}

impl<C> ReactorHandle<C> {
    /// A handle that does not keep the reactor's channel open (see [`WeakReactorHandle`]).
    pub fn downgrade(&self) -> WeakReactorHandle<C> {
        WeakReactorHandle {
            tx: self.tx.downgrade(),
            waker: Arc::clone(&self.waker.0),
        }
    }
}

/// A handle a reactor's own handler (and the tasks it starts) can keep without keeping the
/// reactor alive: once every [`ReactorHandle`] is gone, [`WeakReactorHandle::upgrade`]
/// returns `None` and the reactor sees its handles dropped. Given to the handler at start by
/// [`spawn_with_handle`].
pub struct WeakReactorHandle<C> {
    tx: mpsc::WeakSender<C>,
    waker: Arc<Waker>,
}

impl<C> Clone for WeakReactorHandle<C> {
    fn clone(&self) -> Self {
        WeakReactorHandle {
            tx: self.tx.clone(),
            waker: Arc::clone(&self.waker),
        }
    }
}

impl<C> WeakReactorHandle<C> {
    /// A full handle, while any other full handle exists.
    pub fn upgrade(&self) -> Option<ReactorHandle<C>> {
        Some(ReactorHandle {
            tx: self.tx.upgrade()?,
            waker: WakeOnDrop(Arc::clone(&self.waker)),
        })
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
    let waker = Arc::new(Waker {
        pipe: wake_tx,
        pending: AtomicBool::new(false),
    });
    let (tx, rx) = mpsc::channel(command_capacity.max(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let zctx = ctx.raw().clone();
    let thread_waker = Arc::clone(&waker);
    let weak = WeakReactorHandle {
        tx: tx.downgrade(),
        waker: Arc::clone(&waker),
    };
    let join = std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(REACTOR_STACK_BYTES)
        .spawn(move || {
            let mut io = Io {
                ctx: zctx,
                extra: Vec::new(),
                slots: Vec::new(),
                now: Instant::now(),
                peer_user: None,
            };
            match init(&mut io, weak) {
                Ok(handler) => {
                    let _ = ready_tx.send(Ok(()));
                    Some(run(handler, io, rx, wake_rx, &thread_waker))
                }
                Err(e) => {
                    // Dropping `io` closes any socket init opened.
                    let _ = ready_tx.send(Err(e));
                    None
                }
            }
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((
            ReactorHandle {
                tx,
                waker: WakeOnDrop(waker),
            },
            ReactorThread { join },
        )),
        Ok(Err(e)) => {
            let _ = join.join();
            Err(e)
        }
        Err(_) => Err(TransportError::Reactor(
            "reactor thread died during init".into(),
        )),
    }
}

fn run<H: Handler>(
    mut handler: H,
    mut io: Io,
    mut rx: mpsc::Receiver<H::Command>,
    mut wake_rx: UnixStream,
    waker: &Waker,
) -> H {
    let mut handles_dropped = false;
    let mut more_commands = false;
    let mut readable: Vec<Readable> = Vec::new();
    while !handler.is_finished() {
        io.now = Instant::now();
        let timeout_ms = if more_commands {
            0
        } else {
            match handler.next_deadline() {
                None => -1,
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(io.now);
                    // Round up so the poll does not return just before the deadline and spin.
                    i64::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i64::MAX)
                }
            }
        };
        let wake_ready;
        readable.clear();
        {
            let mut items: Vec<zmq::PollItem<'_>> = Vec::with_capacity(io.slots.len() + 1);
            let mut owners: Vec<Readable> = Vec::with_capacity(io.slots.len());
            items.push(zmq::PollItem::from_fd(wake_rx.as_raw_fd(), zmq::POLLIN));
            for (index, slot) in io.slots.iter().enumerate() {
                let Some(slot) = slot.as_ref() else { continue };
                if slot.kind.readable() {
                    items.push(slot.socket.as_poll_item(zmq::POLLIN));
                    owners.push(Readable::Socket(index));
                }
                if let Some(monitor) = &slot.monitor {
                    items.push(monitor.pair.as_poll_item(zmq::POLLIN));
                    owners.push(Readable::Monitor(index));
                }
            }
            match zmq::poll(&mut items, timeout_ms) {
                Ok(_) => {}
                Err(zmq::Error::EINTR) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
            wake_ready = items[0].is_readable();
            for (item, owner) in items[1..].iter().zip(&owners) {
                if item.is_readable() {
                    readable.push(*owner);
                }
            }
        }
        io.now = Instant::now();
        if wake_ready {
            let mut sink = [0u8; 64];
            while matches!(wake_rx.read(&mut sink), Ok(n) if n > 0) {}
            // Cleared before draining: a command sent after this point wakes us again.
            waker.pending.store(false, Ordering::Release);
        }
        more_commands = false;
        if !handles_dropped {
            for taken in 0.. {
                if taken == COMMAND_BATCH {
                    more_commands = true;
                    break;
                }
                match rx.try_recv() {
                    Ok(command) => handler.on_command(&mut io, command),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        handles_dropped = true;
                        handler.on_handles_dropped(&mut io);
                        break;
                    }
                }
            }
        }
        let reading_since = io.now;
        for &ready in &readable {
            let index = match ready {
                Readable::Socket(index) => index,
                Readable::Monitor(index) => {
                    read_monitor(&mut handler, &mut io, index);
                    continue;
                }
            };
            for n in 0..MESSAGE_BATCH {
                // What is left stays readable: the next poll returns at once.
                if n % SLICE_CHECK == SLICE_CHECK - 1 && reading_since.elapsed() > READ_SLICE {
                    break;
                }
                let Some(slot) = io.slots.get(index).and_then(Option::as_ref) else {
                    break;
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
                    Ok(frames) => handler.on_message(&mut io, SocketId(index), frames),
                    Err(_) => break,
                }
                io.peer_user = None;
            }
        }
        if handler.next_deadline().is_some_and(|d| d <= Instant::now()) {
            io.now = Instant::now();
            handler.on_timer(&mut io);
        }
    }
    let linger = linger_ms(handler.close_linger());
    for slot in io.slots.iter_mut() {
        if let Some(slot) = slot.take() {
            let _ = slot.socket.set_linger(linger);
        }
    }
    // Dropping the contexts waits for what the sockets still have queued (within their
    // LINGER); only then is the command channel closed, which is what
    // `ReactorHandle::closed` waits for.
    drop(io);
    drop(rx);
    handler
}

/// A LINGER in libzmq's unit (milliseconds), saturated.
fn linger_ms(linger: Duration) -> i32 {
    i32::try_from(linger.as_millis()).unwrap_or(i32::MAX)
}

/// Hands the events waiting on slot `index`'s monitor to the handler, at most a batch.
fn read_monitor<H: Handler>(handler: &mut H, io: &mut Io, index: usize) {
    for _ in 0..MESSAGE_BATCH {
        let Some(monitor) = io
            .slots
            .get(index)
            .and_then(Option::as_ref)
            .and_then(|s| s.monitor.as_ref())
        else {
            return;
        };
        match monitor.recv() {
            None => return,
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
