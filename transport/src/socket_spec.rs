//! What a reactor opens: the libzmq [`Context`], the [`SocketKind`]s MPREG uses, and the
//! [`SocketSpec`] of one socket (type, options, endpoints, subscriptions, monitoring).

use crate::socket_options::SocketOptions;

/// One libzmq context per process; cheap to clone.
#[derive(Clone)]
pub struct Context {
    inner: zmq::Context,
}

impl Context {
    /// A new context with libzmq's default single I/O thread.
    pub fn new() -> Self {
        Context {
            inner: zmq::Context::new(),
        }
    }
}

impl Context {
    pub(crate) fn raw(&self) -> &zmq::Context {
        &self.inner
    }
}

impl Default for Context {
    fn default() -> Self {
        Context::new()
    }
}

/// The ZeroMQ socket types MPREG uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// Serves many peers, addressed by routing id.
    Router,
    /// Asynchronous client of one or more ROUTERs.
    Dealer,
    /// Fan-out publisher.
    Pub,
    /// Subscriber with prefix filters.
    Sub,
    /// Publisher that sees subscriptions.
    XPub,
    /// Synchronous replier (ZAP handler).
    Rep,
    /// Synchronous requester.
    Req,
}

impl SocketKind {
    pub(crate) fn raw(self) -> zmq::SocketType {
        match self {
            SocketKind::Router => zmq::ROUTER,
            SocketKind::Dealer => zmq::DEALER,
            SocketKind::Pub => zmq::PUB,
            SocketKind::Sub => zmq::SUB,
            SocketKind::XPub => zmq::XPUB,
            SocketKind::Rep => zmq::REP,
            SocketKind::Req => zmq::REQ,
        }
    }

    pub(crate) fn readable(self) -> bool {
        !matches!(self, SocketKind::Pub)
    }
}

/// How to create a socket: its type, options, and where it binds and connects.
#[derive(Debug, Clone)]
pub struct SocketSpec {
    /// Socket type.
    pub kind: SocketKind,
    /// Options applied before binding or connecting.
    pub options: SocketOptions,
    /// Endpoints to bind.
    pub bind: Vec<String>,
    /// Endpoints to connect.
    pub connect: Vec<String>,
    /// SUB: prefixes to subscribe to.
    pub subscribe: Vec<Vec<u8>>,
    /// Read the ZAP `User-Id` of every message received (see [`Io::take_peer_user`](crate::Io::take_peer_user)).
    pub user_ids: bool,
    /// The libzmq context: 0 is the reactor's; another number is a context of this reactor
    /// with its own I/O thread (where CURVE encryption runs), shared by the sockets that name
    /// it. `inproc://` endpoints (such as the ZAP handler) are per context.
    pub context: u8,
    /// Report the socket's connection events to [`Handler::on_socket_event`](crate::Handler::on_socket_event), from before it
    /// binds or connects.
    pub monitor: bool,
}

impl SocketSpec {
    /// A socket of this type with the given options and no endpoints yet.
    pub fn new(kind: SocketKind, options: SocketOptions) -> Self {
        SocketSpec {
            kind,
            options,
            bind: Vec::new(),
            connect: Vec::new(),
            subscribe: Vec::new(),
            user_ids: false,
            context: 0,
            monitor: false,
        }
    }

    /// Reports the socket's connection events (connected, handshake succeeded, disconnected,
    /// ...) to [`Handler::on_socket_event`](crate::Handler::on_socket_event), from the first one on.
    pub fn monitored(mut self) -> Self {
        self.monitor = true;
        self
    }

    /// Puts the socket in context `n` (see [`SocketSpec::context`]).
    pub fn in_context(mut self, n: u8) -> Self {
        self.context = n;
        self
    }

    /// Reads the ZAP `User-Id` of every message received (CURVE server sockets whose owner
    /// checks what each peer may do).
    pub fn with_user_ids(mut self) -> Self {
        self.user_ids = true;
        self
    }

    /// Adds an endpoint to bind.
    pub fn bind(mut self, endpoint: impl Into<String>) -> Self {
        self.bind.push(endpoint.into());
        self
    }

    /// Adds an endpoint to connect.
    pub fn connect(mut self, endpoint: impl Into<String>) -> Self {
        self.connect.push(endpoint.into());
        self
    }
}
