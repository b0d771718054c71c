//! The bounded queue between the connection (which decodes events) and one [`Subscription`]
//! (which the application reads): a tokio `mpsc` channel, except that the sender stages a run
//! of deliveries on its side and hands them over, under one lock, with one wake-up.
//!
//! Measured with one subscriber of `publish_batch(256)`: with an `mpsc` channel the runtime's
//! two workers switched about 9 times per batch (the reader drained the channel faster than
//! the connection filled it, parked, and the next send woke it again; each wake-up of a tokio
//! worker from the connection's thread is a context switch); with this queue, about 1.5. A
//! `messages` event of any size wakes the reader at most once, and the reader takes
//! everything handed over under one lock.
//!
//! [`Subscription`]: crate::Subscription

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use crate::error::Error;
use crate::subscription::Delivery;

/// What the queue carries.
pub(crate) type Item = Result<Delivery, Error>;

/// A queued item did not fit, or the reader is gone; the item comes back.
#[derive(Debug)]
pub(crate) enum TrySendError {
    /// The queue holds its capacity.
    Full(Item),
    /// The [`DeliveryReceiver`] was dropped (the item is dropped too).
    Closed,
}

struct State {
    queued: VecDeque<Item>,
    /// The reader's waker while it waits for an empty queue to fill.
    waker: Option<Waker>,
    sender_alive: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Items sent and not yet returned by [`DeliveryReceiver::recv`]: the sender's staged ones,
    /// the queued ones and the ones the reader took but has not yielded yet. At most
    /// `capacity`.
    held: AtomicUsize,
    capacity: usize,
    receiver_alive: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one still holds a valid queue.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A bounded queue of `capacity` deliveries (at least 1).
pub(crate) fn delivery_queue(capacity: usize) -> (DeliverySender, DeliveryReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queued: VecDeque::new(),
            waker: None,
            sender_alive: true,
        }),
        held: AtomicUsize::new(0),
        capacity: capacity.max(1),
        receiver_alive: AtomicBool::new(true),
    });
    (
        DeliverySender {
            shared: Arc::clone(&shared),
            staged: Vec::new(),
        },
        DeliveryReceiver {
            shared,
            taken: VecDeque::new(),
        },
    )
}

/// The connection's end. Items sent with [`DeliverySender::try_send_quiet`] are staged on this
/// side (no lock) and handed over, under one lock, when [`DeliverySender::wake`] runs (or the
/// sender is dropped).
pub(crate) struct DeliverySender {
    shared: Arc<Shared>,
    /// Sent since the last wake, in order.
    staged: Vec<Item>,
}

impl DeliverySender {
    /// Room left.
    pub(crate) fn capacity(&self) -> usize {
        self.shared
            .capacity
            .saturating_sub(self.shared.held.load(Ordering::Acquire))
    }

    /// True once the reader is gone.
    pub(crate) fn is_closed(&self) -> bool {
        !self.shared.receiver_alive.load(Ordering::Acquire)
    }

    /// Queues an item without waking the reader: call [`DeliverySender::wake`] after the run.
    // The refused item comes back by value, as with tokio's `try_send`: the caller keeps it.
    #[allow(clippy::result_large_err)]
    pub(crate) fn try_send_quiet(&mut self, item: Item) -> Result<(), TrySendError> {
        if self.is_closed() {
            return Err(TrySendError::Closed);
        }
        // Only this side adds, so the room seen here cannot shrink before the add.
        if self.shared.held.load(Ordering::Acquire) >= self.shared.capacity {
            return Err(TrySendError::Full(item));
        }
        self.shared.held.fetch_add(1, Ordering::AcqRel);
        self.staged.push(item);
        Ok(())
    }

    /// Hands the staged items to the reader and wakes it if it waits for them.
    pub(crate) fn wake(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let waker = {
            let mut state = self.shared.lock();
            if self.is_closed() {
                // Nobody will read them.
                drop(state);
                self.staged.clear();
                return;
            }
            state.queued.extend(self.staged.drain(..));
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for DeliverySender {
    fn drop(&mut self) {
        self.wake();
        let waker = {
            let mut state = self.shared.lock();
            state.sender_alive = false;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The subscription's end.
pub(crate) struct DeliveryReceiver {
    shared: Arc<Shared>,
    /// Items taken from the queue in one go, not yet yielded.
    taken: VecDeque<Item>,
}

impl DeliveryReceiver {
    /// The next item, waiting for one; `None` once the sender is gone and everything it sent
    /// was yielded.
    pub(crate) async fn recv(&mut self) -> Option<Item> {
        poll_fn(|cx| self.poll_take(Some(cx.waker()))).await
    }

    /// The next item if one is queued, without waiting.
    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Option<Item> {
        match self.poll_take(None) {
            Poll::Ready(item) => item,
            Poll::Pending => None,
        }
    }

    /// Yields from what was taken; when that is empty, takes the whole queue under one lock,
    /// or leaves `waker` to be woken when it fills.
    fn poll_take(&mut self, waker: Option<&Waker>) -> Poll<Option<Item>> {
        if self.taken.is_empty() {
            let mut state = self.shared.lock();
            if state.queued.is_empty() {
                if !state.sender_alive {
                    return Poll::Ready(None);
                }
                if let Some(waker) = waker {
                    match &mut state.waker {
                        Some(w) if w.will_wake(waker) => {}
                        slot => *slot = Some(waker.clone()),
                    }
                }
                return Poll::Pending;
            }
            std::mem::swap(&mut self.taken, &mut state.queued);
        }
        let item = self.taken.pop_front();
        if item.is_some() {
            self.shared.held.fetch_sub(1, Ordering::AcqRel);
        }
        Poll::Ready(item)
    }
}

impl Drop for DeliveryReceiver {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        self.shared.receiver_alive.store(false, Ordering::Release);
        state.waker = None;
        // Dropped here, on the reader's side, rather than by the connection's thread.
        let queued = std::mem::take(&mut state.queued);
        drop(state);
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Wake};

    fn item(n: u64) -> Item {
        Ok(Delivery::Lagging(crate::subscription::Lagging {
            dropped: n,
            dropped_total: n,
            source: crate::subscription::LagSource::Client,
        }))
    }

    impl DeliverySender {
        #[allow(clippy::result_large_err)]
        fn try_send(&mut self, item: Item) -> Result<(), TrySendError> {
            self.try_send_quiet(item)?;
            self.wake();
            Ok(())
        }
    }

    fn number(item: Item) -> u64 {
        match item {
            Ok(Delivery::Lagging(l)) => l.dropped,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Counts its wake-ups.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_recv(rx: &mut DeliveryReceiver, waker: &Arc<CountingWaker>) -> Poll<Option<Item>> {
        let waker = Waker::from(Arc::clone(waker));
        let mut cx = Context::from_waker(&waker);
        let future = std::pin::pin!(rx.recv());
        future.poll(&mut cx)
    }

    use std::future::Future;

    #[test]
    fn items_come_out_in_order_and_the_bound_holds_until_they_are_read() {
        let (mut tx, mut rx) = delivery_queue(3);
        for n in 1..=3 {
            tx.try_send(item(n)).unwrap();
        }
        assert_eq!(tx.capacity(), 0);
        assert!(matches!(tx.try_send(item(4)), Err(TrySendError::Full(_))));
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
        // Taking the queue into the reader's hands frees nothing until items are yielded.
        let Poll::Ready(Some(first)) = poll_recv(&mut rx, &waker) else {
            panic!("an item is queued");
        };
        assert_eq!(number(first), 1);
        assert_eq!(tx.capacity(), 1);
        tx.try_send(item(4)).unwrap();
        assert!(matches!(tx.try_send(item(5)), Err(TrySendError::Full(_))));
        let mut rest = Vec::new();
        while let Poll::Ready(Some(i)) = poll_recv(&mut rx, &waker) {
            rest.push(number(i));
        }
        assert_eq!(rest, [2, 3, 4]);
        assert_eq!(tx.capacity(), 3);
    }

    #[test]
    fn a_quiet_run_wakes_the_waiting_reader_once() {
        let (mut tx, mut rx) = delivery_queue(1000);
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
        assert!(poll_recv(&mut rx, &waker).is_pending());
        for n in 0..256 {
            tx.try_send_quiet(item(n)).unwrap();
        }
        assert_eq!(
            waker.0.load(Ordering::SeqCst),
            0,
            "nothing woken before wake()"
        );
        tx.wake();
        tx.wake();
        assert_eq!(waker.0.load(Ordering::SeqCst), 1);
        let mut got = 0;
        while let Poll::Ready(Some(_)) = poll_recv(&mut rx, &waker) {
            got += 1;
        }
        assert_eq!(got, 256);
    }

    #[test]
    fn each_plain_send_to_a_waiting_reader_wakes_it() {
        let (mut tx, mut rx) = delivery_queue(10);
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
        for n in 0..3 {
            assert!(poll_recv(&mut rx, &waker).is_pending());
            tx.try_send(item(n)).unwrap();
            assert_eq!(waker.0.load(Ordering::SeqCst), n as usize + 1);
            assert!(matches!(poll_recv(&mut rx, &waker), Poll::Ready(Some(_))));
        }
    }

    #[test]
    fn the_reader_sees_the_end_after_the_last_item_and_the_sender_sees_a_closed_reader() {
        let (mut tx, mut rx) = delivery_queue(4);
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
        assert!(poll_recv(&mut rx, &waker).is_pending());
        tx.try_send_quiet(item(7)).unwrap();
        drop(tx);
        assert_eq!(
            waker.0.load(Ordering::SeqCst),
            1,
            "dropping the sender wakes"
        );
        assert!(matches!(poll_recv(&mut rx, &waker), Poll::Ready(Some(_))));
        assert!(matches!(poll_recv(&mut rx, &waker), Poll::Ready(None)));

        let (mut tx, rx) = delivery_queue(4);
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert!(matches!(tx.try_send(item(1)), Err(TrySendError::Closed)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_on_the_runtime_gets_everything_a_thread_sends() {
        let (mut tx, mut rx) = delivery_queue(64);
        let sender = std::thread::spawn(move || {
            let mut sent = 0u64;
            while sent < 20_000 {
                match tx.try_send_quiet(item(sent)) {
                    Ok(()) => sent += 1,
                    Err(TrySendError::Full(_)) => {
                        tx.wake();
                        std::thread::yield_now();
                    }
                    Err(TrySendError::Closed) => panic!("reader gone"),
                }
                if sent.is_multiple_of(100) {
                    tx.wake();
                }
            }
            tx.wake();
        });
        let mut expected = 0;
        while let Some(i) = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("no stall")
        {
            assert_eq!(number(i), expected);
            expected += 1;
        }
        assert_eq!(expected, 20_000);
        sender.join().unwrap();
    }
}
