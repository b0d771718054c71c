//! Socket monitoring: libzmq reports a socket's connection events (connected, handshake done,
//! disconnected, ...) as messages on an `inproc://` PAIR socket; the reactor reads that PAIR
//! like any other socket and hands each event, decoded into a [`SocketEvent`], to
//! [`Handler::on_socket_event`](crate::Handler::on_socket_event).
//!
//! Watch a socket from its creation with [`SocketSpec::monitored`](crate::SocketSpec::monitored)
//! (nothing is missed: the monitor is attached before the socket binds or connects), or later
//! with [`Io::monitor`](crate::Io::monitor).
//!
//! libzmq sends monitor events with blocking sends from its I/O thread, so two rules keep that
//! thread from ever waiting on us: the reactor reads every monitor in each loop iteration, and
//! a monitor is detached from its socket (`zmq_socket_monitor(socket, NULL, 0)`) before the
//! PAIR that reads it is closed (see `Monitor`'s `Drop`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::TransportError;
use crate::reactor::SocketId;

/// Events queued on a monitor before libzmq's I/O thread would block sending the next one. The
/// reactor drains monitors every loop iteration and events come at most a few per second per
/// connection (reconnect attempts), so this is only reached by a reactor stalled for minutes.
pub const MONITOR_HWM: i32 = 10_000;

/// Every event libzmq reports except `MONITOR_STOPPED`: that one is sent while the monitor is
/// being torn down, when nobody may be reading any more.
const MONITORED_EVENTS: u32 = zmq_sys::ZMQ_EVENT_ALL & !zmq_sys::ZMQ_EVENT_MONITOR_STOPPED;

/// Why a ZMTP handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// libzmq gave no detail (for instance, the peer closed during the handshake).
    NoDetail,
    /// The peer broke the protocol (wrong mechanism, malformed greeting); libzmq's code.
    Protocol {
        /// libzmq's protocol error code (`ZMQ_PROTOCOL_ERROR_*`).
        code: u32,
    },
    /// The peer was refused by authentication (ZAP); the ZAP status code (400, 500, ...).
    Auth {
        /// The ZAP status code.
        status: u32,
    },
}

/// A connection event of a monitored socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketEvent {
    /// A connecting socket's TCP connection is up; the ZMTP handshake follows.
    Connected,
    /// A connect did not complete at once and goes on in the background.
    ConnectDelayed,
    /// A connect failed and will be retried after this delay.
    ConnectRetried {
        /// The delay before the next attempt.
        after: Duration,
    },
    /// A bound socket listens.
    Listening,
    /// A bind failed (the OS error number).
    BindFailed {
        /// The OS error number.
        errno: u32,
    },
    /// A bound socket accepted a connection.
    Accepted,
    /// A bound socket could not accept a connection (the OS error number).
    AcceptFailed {
        /// The OS error number.
        errno: u32,
    },
    /// The ZMTP handshake (and CURVE authentication, if any) completed: messages flow.
    HandshakeSucceeded,
    /// The ZMTP handshake failed; the connection is dropped (and retried, for a connecting
    /// socket).
    HandshakeFailed(HandshakeFailure),
    /// A connection ended: the peer went away, a ZMTP heartbeat timed out, or the handshake
    /// failed. A connecting socket retries by itself.
    Disconnected,
    /// A connection's file descriptor was closed.
    Closed,
    /// Closing a connection's file descriptor failed (the OS error number).
    CloseFailed {
        /// The OS error number.
        errno: u32,
    },
    /// An event this crate does not know (a newer libzmq).
    Other {
        /// libzmq's event number.
        code: u16,
        /// The value that came with it.
        value: u32,
    },
}

/// One event of one monitored socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorEvent {
    /// The monitored socket.
    pub socket: SocketId,
    /// What happened.
    pub event: SocketEvent,
    /// The endpoint it happened on (`tcp://127.0.0.1:7400`), as libzmq reports it.
    pub endpoint: String,
}

impl SocketEvent {
    /// Decodes an event message: frame 0 is a 16-bit event number and a 32-bit value (native
    /// byte order, libzmq's monitor format 1), frame 1 the endpoint. `None` if malformed.
    pub(crate) fn decode(frames: &[Vec<u8>]) -> Option<(SocketEvent, String)> {
        let [head, endpoint] = frames else {
            return None;
        };
        let head: &[u8; 6] = head.as_slice().try_into().ok()?;
        let code = u16::from_ne_bytes([head[0], head[1]]);
        let value = u32::from_ne_bytes([head[2], head[3], head[4], head[5]]);
        let endpoint = String::from_utf8_lossy(endpoint).into_owned();
        Some((SocketEvent::from_raw(code, value), endpoint))
    }

    fn from_raw(code: u16, value: u32) -> SocketEvent {
        match u32::from(code) {
            zmq_sys::ZMQ_EVENT_CONNECTED => SocketEvent::Connected,
            zmq_sys::ZMQ_EVENT_CONNECT_DELAYED => SocketEvent::ConnectDelayed,
            zmq_sys::ZMQ_EVENT_CONNECT_RETRIED => SocketEvent::ConnectRetried {
                after: Duration::from_millis(u64::from(value)),
            },
            zmq_sys::ZMQ_EVENT_LISTENING => SocketEvent::Listening,
            zmq_sys::ZMQ_EVENT_BIND_FAILED => SocketEvent::BindFailed { errno: value },
            zmq_sys::ZMQ_EVENT_ACCEPTED => SocketEvent::Accepted,
            zmq_sys::ZMQ_EVENT_ACCEPT_FAILED => SocketEvent::AcceptFailed { errno: value },
            zmq_sys::ZMQ_EVENT_HANDSHAKE_SUCCEEDED => SocketEvent::HandshakeSucceeded,
            zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL => {
                SocketEvent::HandshakeFailed(HandshakeFailure::NoDetail)
            }
            zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL => {
                SocketEvent::HandshakeFailed(HandshakeFailure::Protocol { code: value })
            }
            zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_AUTH => {
                SocketEvent::HandshakeFailed(HandshakeFailure::Auth { status: value })
            }
            zmq_sys::ZMQ_EVENT_DISCONNECTED => SocketEvent::Disconnected,
            zmq_sys::ZMQ_EVENT_CLOSED => SocketEvent::Closed,
            zmq_sys::ZMQ_EVENT_CLOSE_FAILED => SocketEvent::CloseFailed { errno: value },
            _ => SocketEvent::Other { code, value },
        }
    }
}

/// The reading end of one socket's monitor: a PAIR connected to the `inproc://` endpoint libzmq
/// bound for it.
pub(crate) struct Monitor {
    /// The monitored socket's raw handle, to detach the monitor before `pair` closes.
    watched: *mut std::ffi::c_void,
    pub(crate) pair: zmq::Socket,
}

impl Monitor {
    /// Attaches a monitor to `socket` and connects the PAIR that reads it, in `ctx` (the
    /// socket's own context: `inproc://` endpoints are per context). Call it before the socket
    /// binds or connects to see every event.
    pub(crate) fn attach(
        ctx: &zmq::Context,
        socket: &mut zmq::Socket,
    ) -> Result<Monitor, TransportError> {
        /// Numbers the monitor endpoints of this process: they must be unique per context,
        /// and contexts may be shared between reactors.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let endpoint = format!(
            "inproc://mpreg-monitor-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let option = |option: &'static str| move |source| TransportError::Option { option, source };
        let events = i32::try_from(MONITORED_EVENTS).map_err(|_| TransportError::Option {
            option: "MONITOR",
            source: zmq::Error::EINVAL,
        })?;
        socket
            .monitor(&endpoint, events)
            .map_err(option("MONITOR"))?;
        let pair = ctx.socket(zmq::PAIR).map_err(TransportError::Create)?;
        let monitor = Monitor {
            watched: socket.as_mut_ptr(),
            pair,
        };
        // From here on, dropping `monitor` detaches it from `socket` again.
        monitor.pair.set_linger(0).map_err(option("LINGER"))?;
        monitor
            .pair
            .set_rcvhwm(MONITOR_HWM)
            .map_err(option("RCVHWM"))?;
        monitor
            .pair
            .connect(&endpoint)
            .map_err(|source| TransportError::Connect { endpoint, source })?;
        Ok(monitor)
    }

    /// Reads one event without blocking; `None` when there is none left.
    pub(crate) fn recv(&self) -> Option<Option<(SocketEvent, String)>> {
        let frames = self.pair.recv_multipart(zmq::DONTWAIT).ok()?;
        Some(SocketEvent::decode(&frames))
    }
}

// SAFETY: `watched` is only used in `drop`, by whichever thread owns the reactor's sockets at
// that time (a reactor task may move between a runtime's threads, with its sockets: libzmq
// allows a socket to change threads across a full memory barrier, which the runtime's task
// hand-over provides).
#[allow(unsafe_code)]
unsafe impl Send for Monitor {}

impl Drop for Monitor {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: `watched` is the socket this monitor was attached to, still open: a reactor
        // slot drops its `Monitor` before its socket (field order), on the thread that owns
        // both. A NULL endpoint is libzmq's documented way to stop monitoring; it closes
        // libzmq's sending PAIR, so no event is ever sent towards `pair` once it is gone
        // (libzmq's sends to it block).
        unsafe {
            zmq_sys::zmq_socket_monitor(self.watched, std::ptr::null(), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(code: u32, value: u32, endpoint: &str) -> Vec<Vec<u8>> {
        let mut head = u16::try_from(code).unwrap_or(0).to_ne_bytes().to_vec();
        head.extend_from_slice(&value.to_ne_bytes());
        vec![head, endpoint.as_bytes().to_vec()]
    }

    #[test]
    fn events_decode_with_their_values() {
        let cases = [
            (zmq_sys::ZMQ_EVENT_CONNECTED, 7, SocketEvent::Connected),
            (
                zmq_sys::ZMQ_EVENT_CONNECT_RETRIED,
                250,
                SocketEvent::ConnectRetried {
                    after: Duration::from_millis(250),
                },
            ),
            (
                zmq_sys::ZMQ_EVENT_HANDSHAKE_SUCCEEDED,
                0,
                SocketEvent::HandshakeSucceeded,
            ),
            (
                zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_AUTH,
                400,
                SocketEvent::HandshakeFailed(HandshakeFailure::Auth { status: 400 }),
            ),
            (
                zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL,
                0x1100_0001,
                SocketEvent::HandshakeFailed(HandshakeFailure::Protocol { code: 0x1100_0001 }),
            ),
            (
                zmq_sys::ZMQ_EVENT_DISCONNECTED,
                9,
                SocketEvent::Disconnected,
            ),
            (zmq_sys::ZMQ_EVENT_CLOSED, 9, SocketEvent::Closed),
            (
                1 << 15,
                3,
                SocketEvent::Other {
                    code: 1 << 15,
                    value: 3,
                },
            ),
        ];
        for (code, value, want) in cases {
            let decoded = SocketEvent::decode(&frames(code, value, "tcp://127.0.0.1:5"));
            assert_eq!(decoded, Some((want, "tcp://127.0.0.1:5".to_string())));
        }
    }

    #[test]
    fn malformed_events_are_refused() {
        assert_eq!(SocketEvent::decode(&[]), None);
        assert_eq!(SocketEvent::decode(&[vec![0; 6]]), None);
        assert_eq!(SocketEvent::decode(&[vec![0; 5], vec![]]), None);
        assert_eq!(SocketEvent::decode(&[vec![0; 6], vec![], vec![]]), None);
    }

    #[test]
    fn the_mask_leaves_out_monitor_stopped() {
        assert_eq!(MONITORED_EVENTS & zmq_sys::ZMQ_EVENT_MONITOR_STOPPED, 0);
        assert_ne!(MONITORED_EVENTS & zmq_sys::ZMQ_EVENT_DISCONNECTED, 0);
    }
}
