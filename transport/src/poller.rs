//! The loop of a reactor on its own thread: one `poll(2)` over the wake-up fd and every
//! socket's `ZMQ_FD`, and `ZMQ_EVENTS` asked only of the sockets that need it.
//!
//! `zmq_poll` would ask every socket for `ZMQ_EVENTS` twice per call (before and after it
//! sleeps), and each ask on an idle socket costs libzmq two system calls (a `poll` on the
//! socket's mailbox and a `getpid` fork check): with four sockets, about 25 system calls per
//! wait, two waits per request in a broker. Here a socket is asked only when its fd signalled
//! (its mailbox has commands, possibly "a message arrived") or when it is *dirty*
//! ([`crate::reactor::Slot::dirty`]): the handler used it since it was last asked (a send may
//! process the command that announced a message, consuming the fd's signal) or a read stopped
//! before it ran dry. A socket read until `EAGAIN` has processed its commands, so its fd will
//! signal the next one. The dirty sockets are asked right before the `poll`, after all handler
//! code of the iteration ran, so nothing readable is left waiting on a sleeping reactor.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::handle::Waker;
use crate::reactor::{close_sockets, read_monitor, read_socket, run_timer, Commands, Handler, Io};

/// Which half of a slot is (or may be) readable.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readable {
    Socket(usize),
    Monitor(usize),
}

/// The fds polled, rebuilt when sockets are opened, closed or monitored.
struct PollSet {
    /// The wake-up fd first, then one per watched socket or monitor.
    fds: Vec<libc::pollfd>,
    /// What each fd after the first belongs to.
    owners: Vec<Readable>,
    /// Per slot: the serial of its socket and whether it had a monitor, when the set was
    /// built.
    layout: Vec<Option<(u64, bool)>>,
}

impl PollSet {
    fn new(wake: &UnixStream) -> PollSet {
        PollSet {
            fds: vec![pollfd(wake.as_raw_fd())],
            owners: Vec::new(),
            layout: Vec::new(),
        }
    }

    /// Rebuilds the set if the sockets changed since it was built.
    fn refresh(&mut self, io: &Io) {
        let same = self.layout.len() == io.slots.len()
            && io.slots.iter().zip(&self.layout).all(|(slot, seen)| {
                slot.as_ref().map(|s| (s.serial, s.monitor.is_some())) == *seen
            });
        if same {
            return;
        }
        self.fds.truncate(1);
        self.owners.clear();
        self.layout.clear();
        for (index, slot) in io.slots.iter().enumerate() {
            self.layout
                .push(slot.as_ref().map(|s| (s.serial, s.monitor.is_some())));
            let Some(slot) = slot else { continue };
            if slot.kind.readable() {
                if let Ok(fd) = slot.socket.get_fd() {
                    self.fds.push(pollfd(fd));
                    self.owners.push(Readable::Socket(index));
                }
            }
            if let Some(monitor) = &slot.monitor {
                if let Ok(fd) = monitor.pair.get_fd() {
                    self.fds.push(pollfd(fd));
                    self.owners.push(Readable::Monitor(index));
                }
            }
            // Whatever happened before the socket was watched is looked at once.
            slot.dirty.set(true);
            slot.monitor_dirty.set(true);
        }
    }

    /// Waits for an fd (or the timeout, -1 for none); returns whether the wake-up fd
    /// signalled and adds the signalled sockets to `signalled`.
    fn wait(&mut self, timeout_ms: i32, signalled: &mut Vec<Readable>) -> bool {
        for fd in &mut self.fds {
            fd.revents = 0;
        }
        let count = libc::nfds_t::try_from(self.fds.len()).unwrap_or(libc::nfds_t::MAX);
        // SAFETY: `fds` is a live, exclusively borrowed array of `count` pollfd structs.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::poll(self.fds.as_mut_ptr(), count, timeout_ms) };
        if rc < 0 {
            // EINTR: look again. Anything else would repeat: do not spin on it.
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                std::thread::sleep(Duration::from_millis(1));
            }
            return false;
        }
        for (fd, owner) in self.fds[1..].iter().zip(&self.owners) {
            if fd.revents != 0 && !signalled.contains(owner) {
                signalled.push(*owner);
            }
        }
        self.fds[0].revents != 0
    }
}

fn pollfd(fd: std::os::fd::RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// `ZMQ_EVENTS` says a message is waiting (asking processes the socket's pending commands).
fn has_message(socket: &zmq::Socket) -> bool {
    socket
        .get_events()
        .is_ok_and(|events| events.contains(zmq::POLLIN))
}

/// Asks each candidate for `ZMQ_EVENTS` (clearing its dirty mark) and keeps in `readable`
/// those with a message waiting.
pub(crate) fn ask(io: &Io, candidates: &[Readable], readable: &mut Vec<Readable>) {
    for &candidate in candidates {
        let (index, monitor) = match candidate {
            Readable::Socket(index) => (index, false),
            Readable::Monitor(index) => (index, true),
        };
        let Some(slot) = io.slots.get(index).and_then(Option::as_ref) else {
            continue;
        };
        let waiting = if monitor {
            slot.monitor_dirty.set(false);
            slot.monitor.as_ref().is_some_and(|m| has_message(&m.pair))
        } else {
            slot.dirty.set(false);
            slot.kind.readable() && has_message(&slot.socket)
        };
        if waiting && !readable.contains(&candidate) {
            readable.push(candidate);
        }
    }
}

/// Adds the dirty halves of the open slots to `into`.
pub(crate) fn dirty(io: &Io, into: &mut Vec<Readable>) {
    for (index, slot) in io.slots.iter().enumerate() {
        let Some(slot) = slot.as_ref() else { continue };
        if slot.dirty.get() && slot.kind.readable() {
            into.push(Readable::Socket(index));
        }
        if slot.monitor_dirty.get() && slot.monitor.is_some() {
            into.push(Readable::Monitor(index));
        }
    }
}

pub(crate) fn run<H: Handler>(
    mut handler: H,
    mut io: Io,
    mut rx: mpsc::Receiver<H::Command>,
    mut wake_rx: UnixStream,
    waker: &Waker,
) -> H {
    let mut commands = Commands::default();
    let mut set = PollSet::new(&wake_rx);
    let mut candidates: Vec<Readable> = Vec::new();
    let mut readable: Vec<Readable> = Vec::new();
    while !handler.is_finished() {
        io.now = Instant::now();
        set.refresh(&io);
        // Last before sleeping, after every handler call of the previous iteration.
        candidates.clear();
        readable.clear();
        dirty(&io, &mut candidates);
        ask(&io, &candidates, &mut readable);
        let timeout_ms = if commands.more || !readable.is_empty() {
            0
        } else {
            match handler.next_deadline() {
                None => -1,
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(io.now);
                    // Round up so the poll does not return just before the deadline and spin.
                    i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
                }
            }
        };
        candidates.clear();
        let wake_ready = set.wait(timeout_ms, &mut candidates);
        ask(&io, &candidates, &mut readable);
        io.now = Instant::now();
        if wake_ready {
            let mut sink = [0u8; 64];
            while matches!(wake_rx.read(&mut sink), Ok(n) if n > 0) {}
            // Cleared before draining: a command sent after this point wakes us again.
            waker.rearm();
        }
        commands.drain(&mut handler, &mut io, &mut rx);
        let reading_since = io.now;
        for &ready in &readable {
            match ready {
                Readable::Socket(index) => {
                    read_socket(&mut handler, &mut io, index, reading_since);
                }
                Readable::Monitor(index) => {
                    read_monitor(&mut handler, &mut io, index);
                }
            }
        }
        run_timer(&mut handler, &mut io);
    }
    close_sockets(&handler, &mut io);
    // Dropping the contexts waits for what the sockets still have queued (within their
    // LINGER); only then is the command channel closed, which is what
    // `ReactorHandle::closed` waits for.
    drop(io);
    drop(rx);
    handler
}
