//! What the connection to its one broker does when it breaks and when it is back (libzmq
//! reconnects the same socket): fail or keep the requests in flight, tell the subscriptions,
//! send again what may be sent twice, subscribe again. With another broker to go to, the
//! connection moves instead (`failover.rs`).

use std::sync::atomic::Ordering;

use mpreg_transport::Io;

use super::Link;
use crate::error::Error;

impl Link {
    /// The connection broke: what the broker was doing for us is gone.
    pub(super) fn on_lost(&mut self, io: &mut Io) {
        self.counters
            .connections_lost
            .fetch_add(1, Ordering::Relaxed);
        let error = Error::ConnectionLost {
            endpoint: self.endpoint.clone(),
        };
        // Unanswered publishes are settled in doubt before any request fails, so that an
        // application woken by a `904` (a flush, say) already reads them in the counters.
        self.publishes.on_lost();
        let mut ids: Vec<u64> = self.waiters.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(waiter) = self.waiters.get_mut(&id).filter(|w| w.kind.resendable()) {
                waiter.resend = true;
                continue;
            }
            let Some(waiter) = self.take_waiter(id) else {
                continue;
            };
            if waiter.kind.is_plan() {
                // If the plan is still queued here, it reaches the next broker, and this
                // cancel right behind it; if not, the cancel is ignored.
                self.send_cancel(io, id);
            }
            self.fail_waiter(io, waiter, error.clone());
        }
        self.events.on_lost(io, &error);
    }

    /// The connection is back after a loss, maybe to a broker that knows nothing of us.
    pub(super) fn on_restored(&mut self, io: &mut Io) {
        self.send_heartbeat(io);
        let mut resend: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.resend)
            .map(|(&id, _)| id)
            .collect();
        resend.sort_unstable();
        for id in resend {
            let Some(socket) = self.socket else {
                return;
            };
            self.send_again(io, socket, id);
        }
        for key in self.events.lost() {
            self.send_subscribe(io, key);
        }
        self.drain_publishes(io);
    }
}
