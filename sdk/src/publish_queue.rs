//! The publish queue: unconfirmed publishes the application handed over, bounded in bytes, and
//! the reactor's side that coalesces them into `publish_batch` requests and settles them.
//!
//! **Never dropped.** [`Client::publish`](crate::Client::publish) encodes its message and puts
//! it in the [`PublishQueue`]; when the queued and unconfirmed messages already hold
//! [`ClientOptions::publish_buffer`](crate::ClientOptions::publish_buffer) bytes, it waits
//! (asynchronously) for room instead of failing. Memory is bounded by that figure (plus one
//! message: a message larger than the whole budget still goes, alone).
//!
//! **Coalesced.** The connection's reactor takes what is queued and sends it as one
//! `publish_batch` with `confirm: true` (at most [`MAX_BATCH_ITEMS`] messages and
//! [`MAX_BATCH_BYTES`] bytes, and never over the broker's `max_message_bytes`). While
//! [`EAGER_BATCHES`] batches are unconfirmed, a batch that is not full waits for a
//! confirmation: under load batches grow, when idle a message leaves at once. A subscriber
//! gets its share of a batch as one `messages` event.
//!
//! **Settled.** A message is settled once the broker confirmed its batch (it was routed), or
//! rejected it (counted in `publish_errors`, the latest kept), or the connection was lost while
//! its batch was unconfirmed (counted in `publishes_in_doubt`). A batch the broker rejects
//! because of one message (`messages[i].topic`: an invalid or forbidden topic) costs only that
//! message: the others are sent again at once, as a new batch (after batches already sent:
//! only in that case can messages of one publisher overtake each other).
//! [`PublishQueue::wait_settled`] is what [`Client::flush`](crate::Client::flush) waits on.
//!
//! **Ordered.** Requests that must not overtake queued publishes (a confirmed publish, a
//! `publish_batch`, flush's ping) join the same queue while it is not empty
//! ([`PublishQueue::push_request`]), and leave in order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mpreg_protocol::{BrokerToClient, ErrorReply};
use tokio::sync::Notify;

use crate::error::Error;
use crate::link::{LinkCounters, Request};

mod wire;

pub(crate) use wire::{encode_item, Batch, BATCH_OVERHEAD};

/// Most messages coalesced into one batch. A subscriber receives its share of a batch as one
/// event, which its client expands into its subscription buffer at once: kept well under the
/// default buffer of 4,096 so a subscriber that keeps up never finds it full because of one
/// event, and one event stays quick to decode. Past a few hundred, larger batches gain little.
pub(crate) const MAX_BATCH_ITEMS: usize = 256;
/// Largest coalesced batch body, in bytes (a broker announcing a smaller `max_message_bytes`
/// lowers it).
pub(crate) const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Batches unconfirmed beyond which a batch that is not full waits for a confirmation.
pub(crate) const EAGER_BATCHES: usize = 2;
/// Most batches unconfirmed at once: far below the socket's high-water mark (10,000
/// messages), so a batch never finds the socket full while the broker is connected.
pub(crate) const MAX_BATCHES_IN_FLIGHT: usize = 256;
/// Batch ids remembered after their batch was settled in doubt (the connection was lost), so
/// a late answer is recognised: 16 bytes each.
const MAX_DOUBTED: usize = 4096;
/// What the broker appends to the message of a whole-batch rejection.
const WHOLE_BATCH_TAIL: &str = "; nothing in the batch was published";

/// One unconfirmed publish, encoded (a `publish_batch` item: `{topic, headers, payload}`).
struct Queued {
    /// Its position among everything handed over to this queue.
    seq: u64,
    /// Its request id (what an error about it names).
    id: u64,
    item: Vec<u8>,
}

/// What waits in the queue, in the order it was handed over.
enum Entry {
    Message(Queued),
    Request(Request),
}

struct Shared {
    entries: VecDeque<Entry>,
    /// Bytes of the messages queued or unconfirmed (the bound).
    bytes: usize,
    /// Bytes and count of the messages in `entries`.
    queued_bytes: usize,
    queued_messages: usize,
    /// Requests in `entries`.
    queued_requests: usize,
    /// The next message's `seq`.
    next_seq: u64,
    /// Every message with a lower `seq` is settled.
    settled_below: u64,
    /// The reactor has been told there is work, and has not emptied the queue since: a new
    /// entry needs no wake-up.
    reactor_owes_drain: bool,
    /// Someone waits for room, or for messages to settle.
    waiting_for_room: bool,
    waiting_for_settled: bool,
    closed: bool,
}

/// The queue shared by the client's tasks (who push) and its reactor (who takes).
pub(crate) struct PublishQueue {
    shared: Mutex<Shared>,
    room: Notify,
    settled: Notify,
    /// Bytes of queued and unconfirmed messages beyond which a publish waits.
    budget: usize,
}

/// What pushing an entry asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Wake {
    /// Tell the reactor there is work (`Command::DrainPublishes`).
    Reactor,
    /// The reactor already knows.
    No,
}

impl PublishQueue {
    /// A queue holding at most `budget` bytes of queued and unconfirmed messages.
    pub(crate) fn new(budget: usize) -> Self {
        PublishQueue {
            shared: Mutex::new(Shared {
                entries: VecDeque::new(),
                bytes: 0,
                queued_bytes: 0,
                queued_messages: 0,
                queued_requests: 0,
                next_seq: 0,
                settled_below: 0,
                reactor_owes_drain: false,
                waiting_for_room: false,
                waiting_for_settled: false,
                closed: false,
            }),
            room: Notify::new(),
            settled: Notify::new(),
            budget: budget.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent data.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands over an encoded message with request id `id`, waiting for room while the queue
    /// is full.
    ///
    /// # Errors
    /// [`Error::Closed`] once the client is closed.
    pub(crate) async fn push(&self, id: u64, item: Vec<u8>) -> Result<Wake, Error> {
        let len = item.len();
        let mut item = Some(item);
        wait_until(&self.room, || {
            let mut s = self.lock();
            if s.closed {
                return Some(Err(Error::Closed));
            }
            // An empty queue takes any message, so one larger than the budget still goes.
            if s.bytes > 0 && s.bytes + len > self.budget {
                s.waiting_for_room = true;
                return None;
            }
            let seq = s.next_seq;
            s.next_seq += 1;
            s.bytes += len;
            s.queued_bytes += len;
            s.queued_messages += 1;
            let item = item
                .take()
                .expect("pushed once: the closure returns after it");
            s.entries
                .push_back(Entry::Message(Queued { seq, id, item }));
            Some(Ok(s.wake()))
        })
        .await
    }

    /// Queues `request` behind the messages still queued, or hands it back when none is (it
    /// may then go straight to the reactor: nothing it could overtake is left here).
    pub(crate) fn push_request(&self, request: Request) -> Result<Option<Request>, Error> {
        let mut s = self.lock();
        if s.closed {
            return Err(Error::Closed);
        }
        if s.entries.is_empty() {
            return Ok(Some(request));
        }
        // Not empty: the reactor owes a drain already.
        s.queued_requests += 1;
        s.entries.push_back(Entry::Request(request));
        Ok(None)
    }

    /// The `seq` the next message will get: [`PublishQueue::wait_settled`] with it waits for
    /// everything handed over so far.
    pub(crate) fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Waits until every message numbered below `target` is settled.
    ///
    /// # Errors
    /// [`Error::Closed`] when the client is closed first.
    pub(crate) async fn wait_settled(&self, target: u64) -> Result<(), Error> {
        wait_until(&self.settled, || {
            let mut s = self.lock();
            if s.settled_below >= target {
                return Some(Ok(()));
            }
            if s.closed {
                return Some(Err(Error::Closed));
            }
            s.waiting_for_settled = true;
            None
        })
        .await
    }

    /// Bytes of queued and unconfirmed messages (for tests and counters).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

impl Shared {
    /// A new entry was queued: does the reactor need telling?
    fn wake(&mut self) -> Wake {
        if self.reactor_owes_drain {
            Wake::No
        } else {
            self.reactor_owes_drain = true;
            Wake::Reactor
        }
    }

    /// The lowest `seq` of a queued message, if any (requests are few: the scan is short).
    fn first_queued_seq(&self) -> Option<u64> {
        self.entries.iter().find_map(|e| match e {
            Entry::Message(m) => Some(m.seq),
            Entry::Request(_) => None,
        })
    }
}

/// Polls `ready` until it returns a value, waiting on `notify` in between. The waiter is
/// registered before `ready` looks, so a notification between the two is never missed.
async fn wait_until<T>(notify: &Notify, mut ready: impl FnMut() -> Option<T>) -> T {
    // Fast path: registering a waiter costs a lock of the `Notify`, and there is usually room.
    if let Some(value) = ready() {
        return value;
    }
    loop {
        let notified = notify.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if let Some(value) = ready() {
            return value;
        }
        notified.await;
    }
}

/// What the reactor sends next.
pub(crate) enum Outgoing {
    /// A coalesced batch.
    Batch(Batch),
    /// A request that was queued behind messages.
    Request(Request),
}

/// The reactor's side: builds batches from the queue, remembers them until the broker
/// answers, and settles them.
pub(crate) struct Coalescer {
    queue: Arc<PublishQueue>,
    /// Sent, unanswered, by the `seq` of their first message.
    in_flight: BTreeMap<u64, Batch>,
    /// Request id of an unanswered batch -> its key in `in_flight`.
    by_id: HashMap<u64, u64>,
    /// Built but not sent (the socket was full, or what is left of a rejected batch): they go
    /// before anything still queued.
    ready: VecDeque<Batch>,
    /// Batches settled in doubt, oldest first: a late answer to one is not an unmatched reply.
    doubted: VecDeque<u64>,
    next_id: Arc<AtomicU64>,
    counters: Arc<LinkCounters>,
}

impl Coalescer {
    pub(crate) fn new(
        queue: Arc<PublishQueue>,
        next_id: Arc<AtomicU64>,
        counters: Arc<LinkCounters>,
    ) -> Self {
        Coalescer {
            queue,
            in_flight: BTreeMap::new(),
            by_id: HashMap::new(),
            ready: VecDeque::new(),
            doubted: VecDeque::new(),
            next_id,
            counters,
        }
    }

    /// The next thing to send, if the window allows; `max_body` is the broker's
    /// `max_message_bytes`. `None` with messages still queued means: wait for an answer (the
    /// reactor calls again after each one).
    pub(crate) fn next(&mut self, max_body: usize) -> Option<Outgoing> {
        let full = self.in_flight.len() >= MAX_BATCHES_IN_FLIGHT;
        if !self.ready.is_empty() {
            return if full {
                None
            } else {
                self.ready.pop_front().map(Outgoing::Batch)
            };
        }
        let mut s = self.queue.lock();
        let limit = MAX_BATCH_BYTES
            .min(max_body.saturating_sub(BATCH_OVERHEAD))
            .max(1);
        match s.entries.front() {
            None => {
                s.reactor_owes_drain = false;
                None
            }
            Some(Entry::Request(_)) => {
                s.queued_requests -= 1;
                match s.entries.pop_front() {
                    Some(Entry::Request(request)) => Some(Outgoing::Request(request)),
                    _ => unreachable!("the front entry was just seen to be a request"),
                }
            }
            Some(Entry::Message(_)) if full => None,
            Some(Entry::Message(_))
                if self.in_flight.len() >= EAGER_BATCHES
                    && s.queued_requests == 0
                    && s.queued_bytes < limit
                    && s.queued_messages < MAX_BATCH_ITEMS =>
            {
                // Not a full batch, and the broker is busy with earlier ones: let it grow.
                None
            }
            Some(Entry::Message(_)) => {
                let mut taken: Vec<Queued> = Vec::new();
                let mut bytes = 0;
                while let Some(Entry::Message(m)) = s.entries.front() {
                    let len = m.item.len();
                    if !taken.is_empty() && (bytes + len > limit || taken.len() == MAX_BATCH_ITEMS)
                    {
                        break;
                    }
                    bytes += len;
                    match s.entries.pop_front() {
                        Some(Entry::Message(m)) => taken.push(m),
                        _ => unreachable!("the front entry was just seen to be a message"),
                    }
                }
                s.queued_bytes -= bytes;
                s.queued_messages -= taken.len();
                drop(s);
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let batch = Batch::encode(id, taken.iter().map(|m| (m.seq, m.id, &m.item[..])));
                Some(Outgoing::Batch(batch))
            }
        }
    }

    /// The batch was handed to the socket.
    pub(crate) fn sent(&mut self, batch: Batch) {
        let key = batch.first_seq();
        self.by_id.insert(batch.id, key);
        self.in_flight.insert(key, batch);
    }

    /// The socket refused the batch (its queue is full): it goes first next time.
    pub(crate) fn refused(&mut self, batch: Batch) {
        self.ready.push_front(batch);
    }

    /// The batch could not be sent for another reason (`error`): its messages are lost, and
    /// counted.
    pub(crate) fn failed(&mut self, batch: Batch, error: Error) {
        self.count_errors(batch.items.len(), error);
        self.settle(batch.message_bytes());
    }

    /// Is `id` one of this coalescer's batches (unanswered, or settled in doubt)?
    pub(crate) fn owns(&self, id: u64) -> bool {
        self.by_id.contains_key(&id) || self.doubted.contains(&id)
    }

    /// The broker answered batch `id` (which [`Coalescer::owns`]).
    pub(crate) fn answer(&mut self, id: u64, reply: BrokerToClient) {
        let Some(batch) = self
            .by_id
            .remove(&id)
            .and_then(|key| self.in_flight.remove(&key))
        else {
            // Settled in doubt already; an error still says a message was not published.
            self.doubted.retain(|&d| d != id);
            if let BrokerToClient::Error(e) = reply {
                self.count_errors(1, Error::from(e));
            }
            return;
        };
        let bytes = batch.message_bytes();
        match reply {
            BrokerToClient::PublishedBatch(_) => {}
            BrokerToClient::Error(e) => match rejected_index(&e, batch.items.len()) {
                Some(bad) => {
                    let item = batch.items[bad];
                    self.count_errors(1, Error::from(own_error(e, bad, item.id)));
                    if batch.items.len() > 1 {
                        let rest = batch
                            .items
                            .iter()
                            .enumerate()
                            .filter(|&(i, _)| i != bad)
                            .map(|(_, r)| (r.seq, r.id, &batch.frame[r.start..r.end]));
                        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                        let again = Batch::encode(id, rest.collect::<Vec<_>>().into_iter());
                        let kept = again.message_bytes();
                        self.ready.push_front(again);
                        // Still counted against the budget: only the bad one leaves.
                        self.settle(bytes - kept);
                        return;
                    }
                }
                None => self.count_errors(batch.items.len(), Error::from(e)),
            },
            other => {
                let error = crate::pending_reply::unexpected("published_batch", &other);
                self.count_errors(batch.items.len(), error);
            }
        }
        self.settle(bytes);
    }

    /// The connection was lost: unanswered batches may or may not have reached the broker.
    /// They are settled in doubt (counted); what is still queued goes out once it is back.
    pub(crate) fn on_lost(&mut self) {
        let batches = std::mem::take(&mut self.in_flight);
        self.by_id.clear();
        let mut bytes = 0;
        let mut messages = 0;
        for (_, batch) in batches {
            bytes += batch.message_bytes();
            messages += batch.items.len() as u64;
            if self.doubted.len() == MAX_DOUBTED {
                self.doubted.pop_front();
            }
            self.doubted.push_back(batch.id);
        }
        self.counters
            .publishes_in_doubt
            .fetch_add(messages, Ordering::Relaxed);
        self.settle(bytes);
    }

    /// The client is closing: later publishes fail with [`Error::Closed`], and what is still
    /// queued or unanswered is dropped (counted as publish errors). Returns the requests that
    /// were queued, for the reactor to fail.
    pub(crate) fn close(&mut self) -> Vec<Request> {
        let mut dropped = 0usize;
        let mut requests = Vec::new();
        {
            let mut s = self.queue.lock();
            s.closed = true;
            for entry in s.entries.drain(..) {
                match entry {
                    Entry::Message(_) => dropped += 1,
                    Entry::Request(r) => requests.push(r),
                }
            }
            s.queued_bytes = 0;
            s.queued_messages = 0;
            s.queued_requests = 0;
            s.bytes = 0;
            s.settled_below = s.next_seq;
        }
        dropped += self
            .in_flight
            .values()
            .map(|b| b.items.len())
            .sum::<usize>();
        dropped += self.ready.iter().map(|b| b.items.len()).sum::<usize>();
        self.in_flight.clear();
        self.by_id.clear();
        self.ready.clear();
        if dropped > 0 {
            self.count_errors(dropped, Error::Closed);
        }
        self.queue.room.notify_waiters();
        self.queue.settled.notify_waiters();
        requests
    }

    fn count_errors(&self, n: usize, error: Error) {
        self.counters
            .publish_errors
            .fetch_add(n as u64, Ordering::Relaxed);
        if let Ok(mut last) = self.counters.last_publish_error.lock() {
            *last = Some(error);
        }
    }

    /// `bytes` of messages left the queue's budget: wake whoever waits for room, and move the
    /// settled mark.
    fn settle(&mut self, bytes: usize) {
        let mut s = self.queue.lock();
        s.bytes = s.bytes.saturating_sub(bytes);
        let mark = [
            self.in_flight.keys().next().copied(),
            self.ready.iter().map(Batch::first_seq).min(),
            s.first_queued_seq(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(s.next_seq);
        let advanced = mark > s.settled_below;
        s.settled_below = s.settled_below.max(mark);
        let room = std::mem::take(&mut s.waiting_for_room);
        let settled = advanced && std::mem::take(&mut s.waiting_for_settled);
        drop(s);
        if room {
            self.queue.room.notify_waiters();
        }
        if settled {
            self.queue.settled.notify_waiters();
        }
    }
}

/// The message a whole-batch rejection names (`messages[i]...`), if it is one of `n`.
fn rejected_index(e: &ErrorReply, n: usize) -> Option<usize> {
    let path = e.path.as_deref()?;
    let rest = path.strip_prefix("messages[")?;
    let (index, _) = rest.split_once(']')?;
    index.parse().ok().filter(|&i| i < n)
}

/// A whole-batch rejection about message `index`, told as the error of that one publish
/// (request id `id`): the batch was the SDK's doing, not the application's.
fn own_error(mut e: ErrorReply, index: usize, id: u64) -> ErrorReply {
    let prefix = format!("messages[{index}].");
    if let Some(rest) = e.message.strip_prefix(&prefix) {
        e.message = rest.to_string();
    }
    if let Some(rest) = e.message.strip_suffix(WHOLE_BATCH_TAIL) {
        e.message = rest.to_string();
    }
    if let Some(path) = e.path.as_deref().and_then(|p| p.strip_prefix(&prefix)) {
        e.path = Some(path.to_string());
    }
    e.id = Some(id);
    e
}

#[cfg(test)]
#[path = "publish_queue_tests.rs"]
mod tests;
