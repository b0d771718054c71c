//! Transport errors.

use thiserror::Error;

/// What can go wrong creating or using sockets.
#[derive(Debug, Error)]
pub enum TransportError {
    /// A socket could not be created.
    #[error("cannot create socket: {0}")]
    Create(zmq::Error),
    /// A socket option was refused.
    #[error("cannot set {option}: {source}")]
    Option {
        /// The option's libzmq name.
        option: &'static str,
        /// libzmq's error.
        source: zmq::Error,
    },
    /// Binding failed (address in use, bad endpoint, ...).
    #[error("cannot bind {endpoint}: {source}")]
    Bind {
        /// The endpoint.
        endpoint: String,
        /// libzmq's error.
        source: zmq::Error,
    },
    /// Connecting failed (bad endpoint).
    #[error("cannot connect {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// libzmq's error.
        source: zmq::Error,
    },
    /// An endpoint string is not valid.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The reactor thread could not start or died during setup.
    #[error("reactor: {0}")]
    Reactor(String),
    /// A blocking send or receive failed.
    #[error("send/receive failed: {0}")]
    Socket(zmq::Error),
    /// An operating-system error (wake-up pipe, thread spawn).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a send did not happen. Sends never block.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SendError {
    /// The peer's queue is at its high-water mark (a slow consumer).
    #[error("peer queue full")]
    WouldBlock,
    /// ROUTER: no connected peer has this routing id (it went away).
    #[error("peer unreachable")]
    Unreachable,
    /// The socket id refers to a closed socket.
    #[error("socket closed")]
    Closed,
    /// Any other libzmq error.
    #[error("send failed: {0}")]
    Other(String),
}
