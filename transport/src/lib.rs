//! MPREG transport: the only crate that names the ZeroMQ library.
//!
//! Layout:
//! - [`reactor`]: one thread owns a group of sockets and runs a synchronous [`Handler`] over
//!   them; other threads and tokio tasks reach it through a bounded [`ReactorHandle`] whose
//!   wake-ups are batched.
//! - [`task`]: the same reactor run as a tokio task, its sockets watched by the runtime (no
//!   thread of its own, no thread wake-up between a task and its sockets); the SDK's choice.
//! - [`monitor`]: a socket's connection events (connected, handshake succeeded, disconnected,
//!   ...) as typed [`SocketEvent`]s, read by the reactor from libzmq's monitor socket.
//! - [`socket_spec`]: the libzmq context, socket kinds, and how to open one socket.
//! - [`socket_options`]: options and per-role presets (HWMs, max frame size, handshake and
//!   heartbeat timeouts, ROUTER_MANDATORY, LINGER).
//! - [`curve`]: CURVE keys (Z85, key files with private permissions).
//! - [`endpoint`]: endpoint validation and the loopback test used by protected mode.
//! - [`baseline`]: raw libzmq programs (relay, echo worker, clients) that benchmarks measure
//!   MPREG against in the same run.
//! - [`error`]: transport errors; sends never block and report why they failed.
//!
//! The one rule: a libzmq socket is only ever used by its reactor (a thread, or a task that
//! the runtime hands between threads with a full memory barrier).

pub mod baseline;
pub mod curve;
pub mod endpoint;
pub mod error;
mod handle;
pub mod monitor;
mod poller;
pub mod raw;
pub mod reactor;
pub mod socket_options;
pub mod socket_spec;
pub mod task;

pub use curve::{Key, KeyError, KeyPair};
pub use error::{SendError, TransportError};
pub use monitor::{HandshakeFailure, MonitorEvent, SocketEvent};
pub use raw::{RawDealer, RawSub};
pub use reactor::{
    spawn, spawn_with_handle, Closed, Context, Handler, Io, ReactorHandle, ReactorThread, SocketId,
    SocketKind, SocketSpec, TrySendError, WeakReactorHandle,
};
pub use socket_options::{Curve, SocketOptions};
pub use task::{spawn_task, ReactorTask};

/// True when the linked libzmq supports CURVE (it must: the build links the system library).
pub fn curve_available() -> bool {
    zmq::has("curve").unwrap_or(false)
}

/// The linked libzmq's version, as `(major, minor, patch)`.
pub fn libzmq_version() -> (i32, i32, i32) {
    zmq::version()
}
