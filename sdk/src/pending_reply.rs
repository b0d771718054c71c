//! [`PendingReply`]: the caller's side of one request in flight. Dropping it before the reply
//! arrives makes the connection forget the request and cancel it at the broker if it is a plan.

use std::fmt;
use std::sync::Arc;

use mpreg_protocol::{BrokerToClient, ErrorCode};
use mpreg_transport::ReactorHandle;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::link::Command;

/// A request in flight. Dropping it before the reply arrives tells the connection to forget
/// the request (and to cancel it at the broker if it is a plan).
pub(crate) struct PendingReply {
    rx: oneshot::Receiver<Result<BrokerToClient, Error>>,
    guard: AbandonGuard,
}

impl fmt::Debug for PendingReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingReply")
            .field("id", &self.guard.id)
            .finish_non_exhaustive()
    }
}

impl PendingReply {
    pub(crate) fn new(
        id: u64,
        rx: oneshot::Receiver<Result<BrokerToClient, Error>>,
        handle: Arc<ReactorHandle<Command>>,
    ) -> Self {
        PendingReply {
            rx,
            guard: AbandonGuard {
                id,
                handle: Some(handle),
            },
        }
    }

    /// Waits for the reply.
    pub(crate) async fn wait(mut self) -> Result<BrokerToClient, Error> {
        let reply = (&mut self.rx).await;
        // The connection has already forgotten this id, whatever the outcome.
        self.guard.handle = None;
        // A dropped sender means the reactor is gone.
        reply.unwrap_or(Err(Error::Closed))
    }
}

struct AbandonGuard {
    id: u64,
    /// Shared, not cloned: dropping a `ReactorHandle` clone wakes the reactor, which would cost
    /// a wake-up per reply.
    handle: Option<Arc<ReactorHandle<Command>>>,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // If the channel is full, the request's own timeout cleans it up instead.
            let _ = handle.try_send(Command::Abandon { id: self.id });
        }
    }
}

/// The reply kind a request expected did not come: a broker bug, reported as such.
pub(crate) fn unexpected(expected: &str, got: &BrokerToClient) -> Error {
    Error::Protocol {
        code: ErrorCode::UnknownMessageType,
        message: format!("expected a `{expected}` reply, got `{}`", got.kind()),
    }
}
