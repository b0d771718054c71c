//! The life of the client's connection to its broker, as the DEALER's monitor reports it, and
//! when a heartbeat is due. Pure: events and time are passed in.
//!
//! libzmq reconnects a DEALER by itself, silently. The monitor makes it visible: a
//! `Disconnected` after the handshake succeeded means the broker died, restarted or went silent
//! past the ZMTP heartbeat timeout, and whatever it was doing for us is gone; the next
//! `HandshakeSucceeded` means a broker (maybe a new one, knowing nothing of us) is there again.
//! [`Link`](crate::link) turns these transitions into failed requests, resent pings and
//! re-subscriptions.

use std::time::{Duration, Instant};

use mpreg_transport::SocketEvent;

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Never connected yet: requests wait in the socket's queue.
    Connecting,
    /// Connected and past the handshake.
    Up,
    /// Was up, then broke; libzmq is reconnecting.
    Lost,
}

/// What a monitor event means for the requests and subscriptions of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Nothing changes.
    None,
    /// The first handshake succeeded.
    FirstUp,
    /// The connection broke: what was in flight at the broker is gone.
    Lost,
    /// Up again after a loss: the broker may be a new one that knows nothing of us.
    Restored,
}

/// The connection's phase and heartbeat schedule.
#[derive(Debug)]
pub(crate) struct Connection {
    phase: Phase,
    /// How often to show the broker we are alive; `None`: never (the broker does not track us).
    heartbeat: Option<Duration>,
    /// When the last message left for the broker (any message counts as a heartbeat).
    last_send: Instant,
}

impl Connection {
    pub(crate) fn new(heartbeat: Option<Duration>, now: Instant) -> Self {
        Connection {
            phase: Phase::Connecting,
            heartbeat: heartbeat.filter(|h| !h.is_zero()),
            last_send: now,
        }
    }

    /// Where the connection is in its life.
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Applies one monitor event of the DEALER.
    pub(crate) fn on_socket_event(&mut self, event: SocketEvent) -> Transition {
        match (self.phase, event) {
            (Phase::Connecting, SocketEvent::HandshakeSucceeded) => {
                self.phase = Phase::Up;
                Transition::FirstUp
            }
            (Phase::Lost, SocketEvent::HandshakeSucceeded) => {
                self.phase = Phase::Up;
                Transition::Restored
            }
            // Only a connection that was up can be lost: before the first handshake (and while
            // reconnecting) failed attempts are libzmq's business, and requests keep waiting.
            (Phase::Up, SocketEvent::Disconnected) => {
                self.phase = Phase::Lost;
                Transition::Lost
            }
            _ => Transition::None,
        }
    }

    /// A message left for the broker at `now`.
    pub(crate) fn sent(&mut self, now: Instant) {
        self.last_send = now;
    }

    /// When the next heartbeat is due: an interval after the last message sent, while the
    /// connection is up. (While it is down a heartbeat would only wait in the queue, and on
    /// reconnection one is sent at once.)
    pub(crate) fn heartbeat_due(&self) -> Option<Instant> {
        match (self.phase, self.heartbeat) {
            (Phase::Up, Some(interval)) => Some(self.last_send + interval),
            _ => None,
        }
    }

    /// The heartbeat interval, if heartbeats are on.
    pub(crate) fn heartbeat(&self) -> Option<Duration> {
        self.heartbeat
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpreg_transport::HandshakeFailure;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_connection_is_lost_only_after_it_was_up() {
        let now = Instant::now();
        let mut c = Connection::new(Some(SECOND), now);
        // Attempts before the first handshake change nothing.
        for event in [
            SocketEvent::ConnectDelayed,
            SocketEvent::ConnectRetried { after: SECOND },
            SocketEvent::Connected,
            SocketEvent::HandshakeFailed(HandshakeFailure::NoDetail),
            SocketEvent::Disconnected,
        ] {
            assert_eq!(c.on_socket_event(event), Transition::None, "{event:?}");
        }
        assert_eq!(c.phase(), Phase::Connecting);
        assert_eq!(
            c.on_socket_event(SocketEvent::HandshakeSucceeded),
            Transition::FirstUp
        );
        assert_eq!(c.on_socket_event(SocketEvent::Closed), Transition::None);
        assert_eq!(
            c.on_socket_event(SocketEvent::Disconnected),
            Transition::Lost
        );
        // Reconnection attempts, a refused handshake: still lost, told once.
        for event in [
            SocketEvent::Disconnected,
            SocketEvent::ConnectRetried { after: SECOND },
            SocketEvent::HandshakeFailed(HandshakeFailure::Auth { status: 400 }),
        ] {
            assert_eq!(c.on_socket_event(event), Transition::None, "{event:?}");
        }
        assert_eq!(c.phase(), Phase::Lost);
        assert_eq!(
            c.on_socket_event(SocketEvent::HandshakeSucceeded),
            Transition::Restored
        );
        assert_eq!(c.phase(), Phase::Up);
    }

    #[test]
    fn heartbeats_are_due_an_interval_after_the_last_send_while_up() {
        let start = Instant::now();
        let mut c = Connection::new(Some(SECOND), start);
        assert_eq!(c.heartbeat_due(), None, "not before the first handshake");
        c.on_socket_event(SocketEvent::HandshakeSucceeded);
        assert_eq!(c.heartbeat_due(), Some(start + SECOND));
        // Any message sent postpones it.
        c.sent(start + SECOND / 2);
        assert_eq!(c.heartbeat_due(), Some(start + SECOND * 3 / 2));
        c.on_socket_event(SocketEvent::Disconnected);
        assert_eq!(c.heartbeat_due(), None, "none while the connection is down");

        for off in [None, Some(Duration::ZERO)] {
            let mut c = Connection::new(off, start);
            c.on_socket_event(SocketEvent::HandshakeSucceeded);
            assert_eq!((c.heartbeat_due(), c.heartbeat()), (None, None));
        }
    }
}
