//! The reactor's glue to the publish queue ([`crate::publish_queue`]): send what the
//! [`Coalescer`](crate::publish_queue::Coalescer) hands out while the socket takes it, settle
//! batches when the broker answers, retry a batch the socket refused.

use std::sync::atomic::Ordering;
use std::time::Duration;

use mpreg_protocol::BrokerToClient;
use mpreg_transport::{Io, SendError};

use super::Link;
use crate::error::Error;
use crate::publish_queue::Outgoing;

/// How soon to try again when the socket's queue was full (it only is when the broker is
/// not reading and other requests filled it: batches alone stay far below it).
const PUBLISH_RETRY: Duration = Duration::from_millis(5);

impl Link {
    /// Sends queued publishes (coalesced) and the requests queued behind them, as far as the
    /// window of unconfirmed batches and the socket allow.
    pub(super) fn drain_publishes(&mut self, io: &mut Io) {
        let Some(socket) = self.socket else {
            return;
        };
        if self.publish_retry.is_some() {
            // The socket was full a moment ago; the timer tries again.
            return;
        }
        let max_body = self.max_body();
        while let Some(next) = self.publishes.next(max_body) {
            let batch = match next {
                Outgoing::Request(request) => {
                    self.start(io, request);
                    continue;
                }
                Outgoing::Batch(batch) => batch,
            };
            match io.send(socket, &[batch.frame()]) {
                Ok(()) => {
                    self.sent += 1;
                    self.connection.sent(io.now());
                    self.publishes.sent(batch);
                }
                Err(SendError::WouldBlock) => {
                    self.publishes.refused(batch);
                    self.publish_retry = Some(io.now() + PUBLISH_RETRY);
                    return;
                }
                Err(other) => {
                    let error = Error::Connect {
                        endpoint: self.endpoint.clone(),
                        reason: other.to_string(),
                    };
                    self.publishes.failed(batch, error);
                }
            }
        }
    }

    /// The broker answered one of the coalesced batches: settle it, and send what waited for
    /// room in the window.
    pub(super) fn on_publishes_answered(&mut self, io: &mut Io, id: u64, reply: BrokerToClient) {
        self.publishes.answer(id, reply);
        self.drain_publishes(io);
    }

    /// The client closes: queued publishes are dropped (counted), requests queued behind them
    /// fail like every other request.
    pub(super) fn close_publishes(&mut self, _io: &mut Io) {
        for request in self.publishes.close() {
            let _ = request.reply.send(Err(Error::Closed));
        }
        self.publish_retry = None;
    }

    /// The largest body the broker accepts: what its latest `pong` said, else the limits.
    fn max_body(&self) -> usize {
        match self
            .counters
            .broker_max_message_bytes
            .load(Ordering::Relaxed)
        {
            0 => self.limits.max_message_bytes,
            said => usize::try_from(said).unwrap_or(usize::MAX),
        }
    }
}
