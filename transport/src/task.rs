//! A reactor run as a tokio task instead of on a thread of its own: the same [`Handler`], the
//! same [`ReactorHandle`], but the sockets are watched through the runtime's I/O driver
//! (libzmq's `ZMQ_FD` of each socket, registered with [`AsyncFd`]), so a command from a task
//! of the same runtime reaches the handler without waking another thread, and a reply reaches
//! the waiting task the same way. That saves two thread wake-ups per request against
//! [`crate::reactor::spawn`] (task to reactor thread, reactor thread back to the task), which
//! on a virtual machine cost tens of microseconds each.
//!
//! The price: the handler runs on the runtime's worker threads, so a runtime whose threads
//! block for long also stalls the reactor (heartbeats included), and the runtime must have I/O
//! and time enabled (`#[tokio::main]` and `#[tokio::test]` do). Handler callbacks must not
//! block, as on a reactor thread.
//!
//! **`ZMQ_FD` is edge-like**: it signals that the socket's command mailbox changed, not that a
//! message is waiting, and any libzmq call on the socket (a send included) may consume that
//! signal. So the loop never trusts the fd alone: the last thing it does before waiting is ask
//! `ZMQ_EVENTS` of every socket that may be readable without its fd saying so (the *dirty*
//! ones, as in [`crate::poller`]: used by the handler, or read short of `EAGAIN`) and of those
//! whose fd signalled, and it waits only if none is readable and no handler code ran after
//! that check.

use std::future::{poll_fn, Future};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::time::Sleep;

use crate::error::TransportError;
use crate::handle::{channel, ReactorHandle, WeakReactorHandle};
use crate::poller::{ask, dirty, Readable};
use crate::reactor::{close_sockets, read_monitor, read_socket, run_timer, Commands, Handler, Io};

/// When a socket could not be registered with the runtime (it should not happen), the loop
/// looks at the sockets at least this often instead of waiting for their fds.
const FALLBACK_POLL: Duration = Duration::from_millis(1);

/// The runtime registrations of one reactor slot.
struct Watch {
    /// The [`crate::reactor::Slot`] serial they were made for.
    serial: u64,
    socket: Option<AsyncFd<OwnedFd>>,
    monitor: Option<AsyncFd<OwnedFd>>,
}

/// A reactor running as a tokio task.
pub struct ReactorTask<H> {
    join: tokio::task::JoinHandle<H>,
}

impl<H> ReactorTask<H> {
    /// Waits for the reactor to finish and returns its handler.
    pub async fn join(self) -> Result<H, TransportError> {
        self.join
            .await
            .map_err(|e| TransportError::Reactor(format!("reactor task failed: {e}")))
    }

    /// True once the task has ended.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }
}

/// Starts a reactor as a task on the current tokio runtime. `init` runs at once, on the
/// caller's thread: it opens the sockets and builds the handler; its error is returned here.
///
/// # Panics
/// Here, on the caller's thread, when the runtime was built without I/O or time (as tokio's
/// own I/O and timer types do): never later inside the task.
pub fn spawn_task<H, F>(
    ctx: &crate::Context,
    command_capacity: usize,
    init: F,
) -> Result<(ReactorHandle<H::Command>, ReactorTask<H>), TransportError>
where
    H: Handler,
    F: FnOnce(&mut Io, WeakReactorHandle<H::Command>) -> Result<H, TransportError>,
{
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        TransportError::Reactor("a reactor task must be started within a tokio runtime".into())
    })?;
    let (handle, weak, _waker, rx) = channel(command_capacity, None);
    let mut io = Io::new(ctx.raw().clone());
    let handler = init(&mut io, weak)?;
    let mut watches = Vec::new();
    sync_watches(&io, &mut watches)?;
    let timer = Timer::new();
    let join = runtime.spawn(run(handler, io, rx, watches, timer));
    Ok((handle, ReactorTask { join }))
}

async fn run<H: Handler>(
    mut handler: H,
    mut io: Io,
    mut rx: mpsc::Receiver<H::Command>,
    mut watches: Vec<Option<Watch>>,
    mut timer: Timer,
) -> H {
    let mut commands = Commands::default();
    // Sockets whose fd signalled during the last wait, then those with a message waiting.
    let mut candidates: Vec<Readable> = Vec::new();
    let mut readable: Vec<Readable> = Vec::new();
    while !handler.is_finished() {
        io.now = Instant::now();
        commands.drain(&mut handler, &mut io, &mut rx);
        run_timer(&mut handler, &mut io);
        // Last before waiting: a check that runs no handler code is what makes waiting safe.
        let (handled, more) = read_ready(&mut handler, &mut io, &mut candidates, &mut readable);
        if handler.is_finished() {
            break;
        }
        // The handler may have opened or closed sockets; a socket that could not be
        // registered is looked at every FALLBACK_POLL instead (registration is tried again
        // each turn).
        let unwatched = sync_watches(&io, &mut watches).is_err();
        if more || commands.more {
            // A batch limit was reached: let the runtime's other tasks run first.
            tokio::task::yield_now().await;
            continue;
        }
        if handled {
            // Look again before waiting (see the module documentation).
            continue;
        }
        let deadline = match (handler.next_deadline(), unwatched) {
            (deadline, false) => deadline,
            (deadline, true) => {
                let soon = Instant::now() + FALLBACK_POLL;
                Some(deadline.map_or(soon, |d| d.min(soon)))
            }
        };
        timer.arm(deadline);
        match wait(
            &mut rx,
            &watches,
            commands.open(),
            &mut timer,
            &mut candidates,
        )
        .await
        {
            Woken::Command(command) => {
                io.now = Instant::now();
                handler.on_command(&mut io, command);
            }
            Woken::Closed => commands.closed(&mut handler, &mut io),
            Woken::Look => {}
        }
    }
    // Registrations go before the sockets close.
    drop(watches);
    close_sockets(&handler, &mut io);
    // Dropping the contexts waits for what the sockets still have queued (within their
    // LINGER): off the runtime's workers. Only then is the command channel closed, which is
    // what `ReactorHandle::closed` waits for.
    let _ = tokio::task::spawn_blocking(move || drop(io)).await;
    drop(rx);
    handler
}

/// Asks the sockets that need it (dirty ones, and those whose fd signalled: `candidates`,
/// emptied) whether a message waits, and hands those messages to the handler (a batch each).
/// Returns whether any handler code ran, and whether a batch limit was reached.
fn read_ready<H: Handler>(
    handler: &mut H,
    io: &mut Io,
    candidates: &mut Vec<Readable>,
    readable: &mut Vec<Readable>,
) -> (bool, bool) {
    readable.clear();
    dirty(io, candidates);
    ask(io, candidates, readable);
    candidates.clear();
    let reading_since = Instant::now();
    let mut more = false;
    for &ready in readable.iter() {
        more |= match ready {
            Readable::Socket(index) => read_socket(handler, io, index, reading_since),
            Readable::Monitor(index) => read_monitor(handler, io, index),
        };
    }
    (!readable.is_empty(), more)
}

/// Brings the registrations in line with the open sockets: those of closed or reused slots
/// are dropped, new sockets and monitors registered.
fn sync_watches(io: &Io, watches: &mut Vec<Option<Watch>>) -> std::io::Result<()> {
    watches.resize_with(io.slots.len().max(watches.len()), || None);
    for (index, watch) in watches.iter_mut().enumerate() {
        let current = io.slots.get(index).and_then(Option::as_ref);
        let fresh = match (current, watch.as_ref()) {
            (Some(slot), Some(w)) => {
                w.serial == slot.serial && w.monitor.is_some() == slot.monitor.is_some()
            }
            (None, None) => true,
            _ => false,
        };
        if !fresh {
            *watch = None;
        }
    }
    for (index, watch) in watches.iter_mut().enumerate() {
        let Some(slot) = io.slots.get(index).and_then(Option::as_ref) else {
            continue;
        };
        if watch.is_none() {
            let socket = if slot.kind.readable() {
                Some(register(&slot.socket)?)
            } else {
                None
            };
            let monitor = match &slot.monitor {
                Some(monitor) => Some(register(&monitor.pair)?),
                None => None,
            };
            *watch = Some(Watch {
                serial: slot.serial,
                socket,
                monitor,
            });
        }
    }
    Ok(())
}

/// Registers a duplicate of the socket's `ZMQ_FD` (its mailbox's eventfd): the duplicate is
/// ours, so it stays open, on the same file, until the registration is dropped, however soon
/// libzmq closes its own fd after the socket is closed (an fd number reused by then can never
/// be deregistered by mistake).
#[allow(unsafe_code)]
fn register(socket: &zmq::Socket) -> std::io::Result<AsyncFd<OwnedFd>> {
    let raw = socket.get_fd().map_err(std::io::Error::other)?;
    // SAFETY: `raw` is the open socket's mailbox fd, and the socket stays open for this call.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) }.try_clone_to_owned()?;
    // SAFETY: `fd` is owned by the `AsyncFd` and closed only when it is dropped.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Why the reactor task woke up.
enum Woken<C> {
    Command(C),
    /// Every handle is gone.
    Closed,
    /// A socket's fd signalled, or the deadline passed: look again.
    Look,
}

/// The task's one timer, armed at most as late as the handler's next deadline: a later
/// deadline leaves it armed where it is (it then fires early, the loop finds nothing due and
/// arms it again), so a deadline that moves forward with every request (a heartbeat after
/// the last send) does not re-register the timer each time.
struct Timer {
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl Timer {
    fn new() -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            armed: None,
        }
    }

    fn arm(&mut self, deadline: Option<Instant>) {
        if let Some(deadline) = deadline {
            if self.armed.is_none_or(|armed| deadline < armed) {
                self.sleep.as_mut().reset(deadline.into());
                self.armed = Some(deadline);
            }
        }
    }

    fn poll_fired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.armed.is_some() && self.sleep.as_mut().poll(cx).is_ready() {
            self.armed = None;
            return true;
        }
        false
    }
}

async fn wait<C>(
    rx: &mut mpsc::Receiver<C>,
    watches: &[Option<Watch>],
    commands_open: bool,
    timer: &mut Timer,
    signalled: &mut Vec<Readable>,
) -> Woken<C> {
    poll_fn(|cx| {
        if commands_open {
            match rx.poll_recv(cx) {
                Poll::Ready(Some(command)) => return Poll::Ready(Woken::Command(command)),
                Poll::Ready(None) => return Poll::Ready(Woken::Closed),
                Poll::Pending => {}
            }
        }
        let before = signalled.len();
        for (index, watch) in watches.iter().enumerate() {
            let Some(watch) = watch else { continue };
            let halves = [
                (&watch.socket, Readable::Socket(index)),
                (&watch.monitor, Readable::Monitor(index)),
            ];
            for (fd, half) in halves {
                let Some(fd) = fd else { continue };
                if let Poll::Ready(ready) = fd.poll_read_ready(cx) {
                    // Cleared at once: the loop asks the socket itself before waiting again.
                    if let Ok(mut guard) = ready {
                        guard.clear_ready();
                    }
                    signalled.push(half);
                }
            }
        }
        if signalled.len() > before || timer.poll_fired(cx) {
            return Poll::Ready(Woken::Look);
        }
        Poll::Pending
    })
    .await
}
