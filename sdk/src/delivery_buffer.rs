//! The sending side of one subscription's bounded buffer, on the reactor thread: messages that
//! find it full are dropped and counted (a [`Lagging`] notice precedes the next one that
//! fits); notices about the connection ([`Delivery::ConnectionLost`],
//! [`Delivery::Resubscribed`]) and a final error are never dropped: when the buffer is full
//! they are *owed*, kept in order, and go out before anything else as soon as there is room.
//! Pure: no sockets, no clock.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use crate::delivery_queue::{DeliverySender, TrySendError};
use crate::error::Error;
use crate::link::LinkCounters;
use crate::subscription::{Delivery, LagSource, Lagging};

/// Most notices owed to one subscription. Only an application that stops reading through
/// several broker restarts gets there; then the oldest notice is merged away (a lagging count
/// is added to the next one; of two `resubscribed`, the later one says enough).
pub(crate) const MAX_OWED_NOTICES: usize = 8;

/// One subscription's buffer, with its drop accounting and owed notices.
pub(crate) struct DeliveryBuffer {
    deliveries: DeliverySender,
    /// Messages dropped since the last client-side lagging notice.
    dropped_pending: u64,
    dropped_total: u64,
    /// Notices (and a final error) that found the buffer full, oldest first.
    owed: VecDeque<Result<Delivery, Error>>,
}

impl DeliveryBuffer {
    pub(crate) fn new(deliveries: DeliverySender) -> Self {
        DeliveryBuffer {
            deliveries,
            dropped_pending: 0,
            dropped_total: 0,
            owed: VecDeque::new(),
        }
    }

    /// True once the receiver is gone (the subscription was dropped).
    pub(crate) fn is_closed(&self) -> bool {
        self.deliveries.is_closed()
    }

    /// True while notices wait for room.
    pub(crate) fn owes(&self) -> bool {
        !self.owed.is_empty()
    }

    /// Queues one message (or an error about one event), preceded by a lagging notice if some
    /// were dropped before; drops it if there is no room. Returns false once the receiver is
    /// gone.
    pub(crate) fn push(&mut self, item: Result<Delivery, Error>, counters: &LinkCounters) -> bool {
        let open = self.push_quiet(item, counters);
        self.deliveries.wake();
        open
    }

    /// [`DeliveryBuffer::push`] for each item of a run (the messages of one `messages` event),
    /// waking the reader once at the end. Returns false once the receiver is gone.
    pub(crate) fn push_all(
        &mut self,
        items: impl IntoIterator<Item = Result<Delivery, Error>>,
        counters: &LinkCounters,
    ) -> bool {
        let open = items
            .into_iter()
            .all(|item| self.push_quiet(item, counters));
        self.deliveries.wake();
        open
    }

    fn push_quiet(&mut self, item: Result<Delivery, Error>, counters: &LinkCounters) -> bool {
        if !self.flush_quiet() {
            return false;
        }
        if self.owes() {
            // Owed notices go first; this one cannot overtake them.
            self.drop_one(counters);
            return true;
        }
        if self.dropped_pending > 0 {
            // The notice and the item go together or not at all; this thread is the only
            // sender, so the room cannot shrink in between.
            if self.deliveries.capacity() < 2 {
                self.drop_one(counters);
                return true;
            }
            let notice = self.lagging_notice();
            let _ = self.deliveries.try_send_quiet(Ok(notice));
        }
        match self.deliveries.try_send_quiet(item) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.drop_one(counters);
                true
            }
            Err(TrySendError::Closed) => false,
        }
    }

    /// Queues a notice (or the error that ends the stream) that must not be lost: sent now if
    /// there is room, else owed. Returns false once the receiver is gone.
    pub(crate) fn notify(&mut self, notice: Result<Delivery, Error>) -> bool {
        if self.is_closed() {
            return false;
        }
        if self.dropped_pending > 0 {
            // Messages dropped before this notice are reported before it.
            let lagging = self.lagging_notice();
            self.owe(Ok(lagging));
        }
        self.owe(notice);
        self.flush()
    }

    /// Sends what is owed while there is room. Returns false once the receiver is gone.
    pub(crate) fn flush(&mut self) -> bool {
        let open = self.flush_quiet();
        self.deliveries.wake();
        open
    }

    fn flush_quiet(&mut self) -> bool {
        while let Some(item) = self.owed.pop_front() {
            match self.deliveries.try_send_quiet(item) {
                Ok(()) => {}
                Err(TrySendError::Full(item)) => {
                    self.owed.push_front(item);
                    return true;
                }
                Err(TrySendError::Closed) => return false,
            }
        }
        !self.is_closed()
    }

    fn lagging_notice(&mut self) -> Delivery {
        let notice = Lagging {
            dropped: self.dropped_pending,
            dropped_total: self.dropped_total,
            source: LagSource::Client,
        };
        self.dropped_pending = 0;
        Delivery::Lagging(notice)
    }

    fn owe(&mut self, item: Result<Delivery, Error>) {
        match (self.owed.back_mut(), &item) {
            // Lost twice without being back in between says nothing new.
            (Some(Ok(Delivery::ConnectionLost)), Ok(Delivery::ConnectionLost)) => return,
            (Some(Ok(Delivery::Lagging(last))), Ok(Delivery::Lagging(next))) => {
                last.dropped += next.dropped;
                last.dropped_total = next.dropped_total;
                return;
            }
            _ => {}
        }
        if self.owed.len() == MAX_OWED_NOTICES {
            self.merge_oldest();
        }
        self.owed.push_back(item);
    }

    /// Makes room for one more owed notice without losing what matters: a `resubscribed`
    /// that a later one supersedes goes first (with the loss it followed, when a loss also
    /// follows it), else the oldest lagging count moves into the next lagging notice, else the
    /// oldest notice goes.
    fn merge_oldest(&mut self) {
        let is_lost = |item: Option<&Result<Delivery, Error>>| {
            matches!(item, Some(Ok(Delivery::ConnectionLost)))
        };
        let resubscribed: Vec<usize> = (0..self.owed.len())
            .filter(|&i| matches!(self.owed[i], Ok(Delivery::Resubscribed { .. })))
            .collect();
        if let [at, _, ..] = resubscribed[..] {
            self.owed.remove(at);
            if at > 0 && is_lost(self.owed.get(at - 1)) && is_lost(self.owed.get(at)) {
                self.owed.remove(at);
            }
            return;
        }
        let lagging =
            (0..self.owed.len()).find(|&i| matches!(self.owed[i], Ok(Delivery::Lagging(_))));
        if let Some(at) = lagging {
            if let Some(Ok(Delivery::Lagging(old))) = self.owed.remove(at) {
                let next = self.owed.iter_mut().skip(at).find_map(|i| match i {
                    Ok(Delivery::Lagging(l)) => Some(l),
                    _ => None,
                });
                match next {
                    Some(next) => next.dropped += old.dropped,
                    None => self.dropped_pending += old.dropped,
                }
            }
            return;
        }
        self.owed.pop_front();
    }

    fn drop_one(&mut self, counters: &LinkCounters) {
        self.dropped_pending += 1;
        self.dropped_total += 1;
        counters.events_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::delivery_queue::{delivery_queue, DeliveryReceiver};
    use crate::subscription::Message;
    use std::collections::BTreeMap;

    fn message(seq: u64) -> Result<Delivery, Error> {
        Ok(Delivery::Message(Message {
            topic: "t".into(),
            headers: BTreeMap::new(),
            payload: 0.into(),
            seq,
            id: String::new(),
            retained: false,
        }))
    }

    fn resubscribed(token: &str) -> Result<Delivery, Error> {
        Ok(Delivery::Resubscribed {
            id: token.into(),
            backlog: 0,
            broker: String::new(),
            last_message_id: None,
            down_for: std::time::Duration::ZERO,
        })
    }

    fn seq(item: Option<Result<Delivery, Error>>) -> u64 {
        match item {
            Some(Ok(Delivery::Message(m))) => m.seq,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn next(rx: &mut DeliveryReceiver) -> Result<Delivery, Error> {
        rx.try_recv().expect("an item")
    }

    #[test]
    fn a_full_buffer_drops_then_reports_before_the_next_delivery() {
        let counters = LinkCounters::default();
        let (tx, mut rx) = delivery_queue(2);
        let mut buffer = DeliveryBuffer::new(tx);
        for n in 1..=5 {
            assert!(buffer.push(message(n), &counters));
        }
        assert_eq!(counters.events_dropped.load(Ordering::Relaxed), 3);
        assert_eq!(seq(rx.try_recv()), 1);
        // One slot free is not enough for the notice and the message: dropped too.
        assert!(buffer.push(message(6), &counters));
        assert_eq!(buffer.dropped_pending, 4);
        assert_eq!(seq(rx.try_recv()), 2);
        assert!(buffer.push(message(7), &counters));
        match rx.try_recv() {
            Some(Ok(Delivery::Lagging(l))) => assert_eq!(
                l,
                Lagging {
                    dropped: 4,
                    dropped_total: 4,
                    source: LagSource::Client
                }
            ),
            other => panic!("expected a notice, got {other:?}"),
        }
        assert_eq!(seq(rx.try_recv()), 7);
        assert_eq!(buffer.dropped_pending, 0);
        // The next drop starts a new count; the total goes on.
        assert!(buffer.push(message(8), &counters));
        assert!(buffer.push(message(9), &counters));
        assert!(buffer.push(message(10), &counters));
        assert_eq!((buffer.dropped_pending, buffer.dropped_total), (1, 5));
    }

    #[test]
    fn a_dropped_receiver_is_reported() {
        let counters = LinkCounters::default();
        let (tx, rx) = delivery_queue(4);
        let mut buffer = DeliveryBuffer::new(tx);
        assert!(buffer.push(message(1), &counters));
        drop(rx);
        assert!(!buffer.push(message(2), &counters));
        assert!(!buffer.notify(Ok(Delivery::ConnectionLost)));
        assert_eq!(counters.events_dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn notices_that_find_no_room_are_owed_and_go_first() {
        let counters = LinkCounters::default();
        let (tx, mut rx) = delivery_queue(2);
        let mut buffer = DeliveryBuffer::new(tx);
        assert!(buffer.push(message(1), &counters));
        assert!(buffer.push(message(2), &counters));
        assert!(buffer.push(message(3), &counters)); // dropped: full
        assert!(buffer.notify(Ok(Delivery::ConnectionLost)));
        assert!(buffer.notify(Ok(Delivery::ConnectionLost))); // says nothing new
        assert!(buffer.notify(resubscribed("s2")));
        assert!(buffer.owes());
        // A message arriving while notices are owed cannot overtake them: dropped.
        assert!(buffer.push(message(1), &counters));
        assert_eq!(counters.events_dropped.load(Ordering::Relaxed), 2);

        assert_eq!(seq(rx.try_recv()), 1);
        assert_eq!(seq(rx.try_recv()), 2);
        assert!(buffer.flush());
        // The drop before the loss, then the loss, in order.
        assert!(matches!(next(&mut rx), Ok(Delivery::Lagging(l)) if l.dropped == 1));
        assert_eq!(next(&mut rx), Ok(Delivery::ConnectionLost));
        assert!(buffer.flush());
        assert_eq!(next(&mut rx), resubscribed("s2"));
        assert!(!buffer.owes());
        // Then the message dropped while they were owed is reported before the next one.
        assert!(buffer.push(message(2), &counters));
        assert!(matches!(next(&mut rx), Ok(Delivery::Lagging(l)) if l.dropped == 1));
        assert_eq!(seq(rx.try_recv()), 2);
    }

    #[test]
    fn owed_notices_are_bounded_without_losing_the_last_word() {
        let counters = LinkCounters::default();
        let (tx, mut rx) = delivery_queue(2);
        let mut buffer = DeliveryBuffer::new(tx);
        assert!(buffer.push(message(1), &counters));
        assert!(buffer.push(message(2), &counters));
        for round in 0..20 {
            assert!(buffer.notify(Ok(Delivery::ConnectionLost)));
            assert!(buffer.notify(resubscribed(&format!("s{round}"))));
        }
        assert!(buffer.notify(Err(Error::Closed)));
        assert!(buffer.owed.len() <= MAX_OWED_NOTICES);
        let _ = (next(&mut rx), next(&mut rx));
        let mut seen = Vec::new();
        while buffer.owes() {
            assert!(buffer.flush());
            while let Some(item) = rx.try_recv() {
                seen.push(item);
            }
        }
        // The stream still ends with the latest re-subscription, then the error.
        assert_eq!(seen[seen.len() - 2], resubscribed("s19"));
        assert_eq!(seen[seen.len() - 1], Err(Error::Closed));
        assert_eq!(seen[0], Ok(Delivery::ConnectionLost));
    }
}
