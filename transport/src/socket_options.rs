//! Socket options, with presets for each role (see `shared/reference/zeromq.md` for why).

use crate::curve::{Key, KeyPair};
use crate::error::TransportError;

/// The CURVE role of a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Curve {
    /// Accepts CURVE clients with this key pair; which client keys are let in is decided by
    /// the ZAP handler (bound at `inproc://zeromq.zap.01` in the same context).
    Server(KeyPair),
    /// Connects to a CURVE server whose public key is `server`, as `own`.
    Client {
        /// The server's public key.
        server: Key,
        /// This peer's key pair.
        own: KeyPair,
    },
}

/// Default high-water mark, in messages per peer: enough to ride out a burst, small enough to
/// bound memory per slow peer.
pub const DEFAULT_HWM: i32 = 10_000;
/// Default ZMTP handshake timeout, in milliseconds: a peer that does not finish the greeting in
/// time is dropped, so half-open connections cannot pile up.
pub const DEFAULT_HANDSHAKE_MS: i32 = 10_000;
/// Default listen backlog: libzmq's 100 overflows during a burst of connections (measured:
/// 1,000 connects at once made some legitimate ones wait a second).
pub const DEFAULT_BACKLOG: i32 = 1024;
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
    /// Pending TCP connections the kernel queues on a bound socket (`ZMQ_BACKLOG`).
    pub backlog: i32,
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
    /// XPUB: pass every subscribe and unsubscribe to the application (`XPUB_VERBOSER`).
    pub xpub_verboser: bool,
    /// XPUB: a full subscriber pipe makes sends fail with EAGAIN instead of dropping silently
    /// (`XPUB_NODROP`), so the owner can count drops per subscriber.
    pub xpub_nodrop: bool,
    /// XPUB: subscriptions take effect only when the owner confirms them by subscribing the
    /// XPUB itself to the prefix (`XPUB_MANUAL`), so it decides which peer gets what.
    pub xpub_manual: bool,
    /// CURVE encryption and authentication; `None`: plain (NULL mechanism).
    pub curve: Option<Curve>,
    /// The ZAP domain of a server socket, so the ZAP handler can tell sockets apart.
    pub zap_domain: Option<String>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            sndhwm: DEFAULT_HWM,
            rcvhwm: DEFAULT_HWM,
            max_frame_bytes: None,
            handshake_ms: DEFAULT_HANDSHAKE_MS,
            backlog: DEFAULT_BACKLOG,
            heartbeat_ms: DEFAULT_ZMTP_HEARTBEAT_MS,
            heartbeat_timeout_ms: DEFAULT_ZMTP_HEARTBEAT_TIMEOUT_MS,
            linger_ms: 0,
            router_mandatory: false,
            tcp_keepalive: true,
            immediate: false,
            reconnect_ms: 100,
            reconnect_max_ms: 5_000,
            routing_id: None,
            xpub_verboser: false,
            xpub_nodrop: false,
            xpub_manual: false,
            curve: None,
            zap_domain: None,
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

    /// Sets the CURVE role.
    pub fn with_curve(mut self, curve: Option<Curve>) -> Self {
        self.curve = curve;
        self
    }

    /// Sets the largest accepted frame.
    pub fn with_max_frame_bytes(mut self, bytes: usize) -> Self {
        self.max_frame_bytes = Some(i64::try_from(bytes).unwrap_or(i64::MAX));
        self
    }

    pub(crate) fn apply(
        &self,
        socket: &mut zmq::Socket,
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
        set("BACKLOG", socket.set_backlog(self.backlog))?;
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
        if let Some(domain) = &self.zap_domain {
            set("ZAP_DOMAIN", socket.set_zap_domain(domain))?;
        }
        match &self.curve {
            None => {}
            Some(Curve::Server(own)) => {
                set("CURVE_SERVER", socket.set_curve_server(true))?;
                set(
                    "CURVE_SECRETKEY",
                    socket.set_curve_secretkey(own.secret.as_bytes()),
                )?;
            }
            Some(Curve::Client { server, own }) => {
                set(
                    "CURVE_SERVERKEY",
                    socket.set_curve_serverkey(server.as_bytes()),
                )?;
                set(
                    "CURVE_PUBLICKEY",
                    socket.set_curve_publickey(own.public.as_bytes()),
                )?;
                set(
                    "CURVE_SECRETKEY",
                    socket.set_curve_secretkey(own.secret.as_bytes()),
                )?;
            }
        }
        if kind == zmq::XPUB {
            set(
                "XPUB_VERBOSER",
                set_int(
                    socket,
                    zmq_sys::ZMQ_XPUB_VERBOSER,
                    self.xpub_verboser.into(),
                ),
            )?;
            set(
                "XPUB_NODROP",
                set_int(socket, zmq_sys::ZMQ_XPUB_NODROP, self.xpub_nodrop.into()),
            )?;
            set(
                "XPUB_MANUAL",
                set_int(socket, zmq_sys::ZMQ_XPUB_MANUAL, self.xpub_manual.into()),
            )?;
        }
        Ok(())
    }

    /// An XPUB for topic delivery: sees every subscription and applies only those its owner
    /// confirms, reports full subscribers.
    pub fn xpub_events() -> Self {
        SocketOptions {
            xpub_verboser: true,
            xpub_nodrop: true,
            xpub_manual: true,
            ..SocketOptions::default()
        }
    }
}

/// Sets an integer option the `zmq` crate has no setter for.
#[allow(unsafe_code)]
fn set_int(socket: &mut zmq::Socket, option: u32, value: i32) -> zmq::Result<()> {
    let option = std::os::raw::c_int::try_from(option).map_err(|_| zmq::Error::EINVAL)?;
    let raw = socket.as_mut_ptr();
    // SAFETY: `raw` is the live socket borrowed mutably for this call (so no other thread
    // uses it); the value pointer and length describe one `c_int` on the stack, which is what
    // zmq_setsockopt reads for integer options.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            raw,
            option,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        Err(zmq::Error::from_raw(errno))
    }
}
