//! How other threads and tasks reach a reactor: a bounded command channel, and for a reactor
//! on its own thread ([`crate::reactor::spawn`]) a wake-up fd written only when the reactor
//! may be asleep (the first command after it drained the channel), so a burst of commands
//! costs one wake-up. A reactor running as a tokio task ([`crate::task::spawn_task`]) needs no
//! fd: the channel wakes the task.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

pub(crate) struct Waker {
    /// The reactor thread's wake-up fd; `None` for a reactor task (the channel wakes it).
    pipe: Option<UnixStream>,
    pending: AtomicBool,
}

impl Waker {
    fn wake(&self) {
        let Some(pipe) = &self.pipe else { return };
        if !self.pending.swap(true, Ordering::AcqRel) {
            // A full pipe already guarantees a wake-up, so WouldBlock is fine to ignore.
            let _ = (&*pipe).write(&[1]);
        }
    }

    /// The reactor drained its wake-up fd: the next command must write to it again.
    pub(crate) fn rearm(&self) {
        self.pending.store(false, Ordering::Release);
    }
}

/// A new command channel and the handles around it: `pipe` is the write end of a reactor
/// thread's wake-up fd, `None` for a reactor task.
pub(crate) fn channel<C>(
    capacity: usize,
    pipe: Option<UnixStream>,
) -> (
    ReactorHandle<C>,
    WeakReactorHandle<C>,
    Arc<Waker>,
    mpsc::Receiver<C>,
) {
    let waker = Arc::new(Waker {
        pipe,
        pending: AtomicBool::new(false),
    });
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let weak = WeakReactorHandle {
        tx: tx.downgrade(),
        waker: Arc::clone(&waker),
    };
    let handle = ReactorHandle {
        tx,
        waker: WakeOnDrop(Arc::clone(&waker)),
    };
    (handle, weak, waker, rx)
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
