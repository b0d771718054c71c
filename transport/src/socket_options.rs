//! Socket options, with presets for each role (see `shared/reference/zeromq.md` for why).

use crate::error::TransportError;

/// Default high-water mark, in messages per peer: enough to ride out a burst, small enough to
/// bound memory per slow peer.
pub const DEFAULT_HWM: i32 = 10_000;
/// Default ZMTP handshake timeout, in milliseconds: a peer that does not finish the greeting in
/// time is dropped, so half-open connections cannot pile up.
pub const DEFAULT_HANDSHAKE_MS: i32 = 10_000;
/// Default ZMTP heartbeat interval, in milliseconds (detects dead TCP, not stuck peers).
pub const DEFAULT_ZMTP_HEARTBEAT_MS: i32 = 1_000;
/// Default ZMTP heartbeat timeout, in milliseconds.
pub const DEFAULT_ZMTP_HEARTBEAT_TIMEOUT_MS: i32 = 3_000;

/// The options applied to a socket before it binds or connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOptions {
    /// Messages queued per peer before sends fail (ROUTER with mandatory) or drop (PUB).
    pub sndhwm: i32,
    /// Messages queued per peer on receive before libzmq stops reading from it.
    pub rcvhwm: i32,
    /// Frames larger than this (bytes) make libzmq drop the connection; `None`: no limit.
    pub max_frame_bytes: Option<i64>,
    /// ZMTP handshake timeout in milliseconds (0: none).
    pub handshake_ms: i32,
    /// ZMTP heartbeat interval in milliseconds (0: off).
    pub heartbeat_ms: i32,
    /// ZMTP heartbeat timeout in milliseconds.
    pub heartbeat_timeout_ms: i32,
    /// How long unsent messages are kept after close, in milliseconds (0: drop at once).
    pub linger_ms: i32,
    /// ROUTER: fail sends to unknown peers or full pipes instead of dropping silently.
    pub router_mandatory: bool,
    /// TCP keepalive on the underlying connections.
    pub tcp_keepalive: bool,
    /// DEALER/client: queue messages only to completed connections.
    pub immediate: bool,
    /// First reconnect delay in milliseconds.
    pub reconnect_ms: i32,
    /// Largest reconnect delay in milliseconds (exponential backoff up to it).
    pub reconnect_max_ms: i32,
    /// Explicit routing id for this socket (DEALER), if any.
    pub routing_id: Option<Vec<u8>>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            sndhwm: DEFAULT_HWM,
            rcvhwm: DEFAULT_HWM,
            max_frame_bytes: None,
            handshake_ms: DEFAULT_HANDSHAKE_MS,
            heartbeat_ms: DEFAULT_ZMTP_HEARTBEAT_MS,
            heartbeat_timeout_ms: DEFAULT_ZMTP_HEARTBEAT_TIMEOUT_MS,
            linger_ms: 0,
            router_mandatory: false,
            tcp_keepalive: true,
            immediate: false,
            reconnect_ms: 100,
            reconnect_max_ms: 5_000,
            routing_id: None,
        }
    }
}

impl SocketOptions {
    /// A ROUTER that serves many peers: mandatory routing, so a full or vanished peer is an
    /// error the owner sees instead of a silent drop.
    pub fn router_server() -> Self {
        SocketOptions {
            router_mandatory: true,
            ..SocketOptions::default()
        }
    }

    /// A DEALER that talks to one or more servers and reconnects by itself.
    pub fn dealer_client() -> Self {
        SocketOptions::default()
    }

    /// Sets the largest accepted frame.
    pub fn with_max_frame_bytes(mut self, bytes: usize) -> Self {
        self.max_frame_bytes = Some(i64::try_from(bytes).unwrap_or(i64::MAX));
        self
    }

    pub(crate) fn apply(
        &self,
        socket: &zmq::Socket,
        kind: zmq::SocketType,
    ) -> Result<(), TransportError> {
        let set = |what: &'static str, r: zmq::Result<()>| {
            r.map_err(|e| TransportError::Option {
                option: what,
                source: e,
            })
        };
        set("SNDHWM", socket.set_sndhwm(self.sndhwm))?;
        set("RCVHWM", socket.set_rcvhwm(self.rcvhwm))?;
        set(
            "MAXMSGSIZE",
            socket.set_maxmsgsize(self.max_frame_bytes.unwrap_or(-1)),
        )?;
        set("HANDSHAKE_IVL", socket.set_handshake_ivl(self.handshake_ms))?;
        set("HEARTBEAT_IVL", socket.set_heartbeat_ivl(self.heartbeat_ms))?;
        set(
            "HEARTBEAT_TIMEOUT",
            socket.set_heartbeat_timeout(self.heartbeat_timeout_ms),
        )?;
        set(
            "HEARTBEAT_TTL",
            socket.set_heartbeat_ttl(self.heartbeat_timeout_ms),
        )?;
        set("LINGER", socket.set_linger(self.linger_ms))?;
        set(
            "TCP_KEEPALIVE",
            socket.set_tcp_keepalive(i32::from(self.tcp_keepalive)),
        )?;
        set("RECONNECT_IVL", socket.set_reconnect_ivl(self.reconnect_ms))?;
        set(
            "RECONNECT_IVL_MAX",
            socket.set_reconnect_ivl_max(self.reconnect_max_ms),
        )?;
        if kind == zmq::ROUTER {
            set(
                "ROUTER_MANDATORY",
                socket.set_router_mandatory(self.router_mandatory),
            )?;
        }
        if matches!(kind, zmq::DEALER | zmq::REQ | zmq::PUSH) {
            set("IMMEDIATE", socket.set_immediate(self.immediate))?;
        }
        if let Some(id) = &self.routing_id {
            set("ROUTING_ID", socket.set_identity(id))?;
        }
        Ok(())
    }
}
