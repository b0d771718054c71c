//! The SDK's error type: a broker's `error` reply, or a failure the client saw by itself.
//!
//! Every variant has a stable numeric code and snake_case kind from
//! [`ErrorCode`]: wire codes (100-599) for [`Error::Remote`], [`Error::Protocol`] and
//! [`Error::TooLarge`], client-side codes (900-905) for the rest. That is what lets the CLI print
//! every failure in one shape.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use mpreg_protocol::{ErrorCode, ErrorReply, Value};
use thiserror::Error;

/// Everything a request can fail with.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker answered with an `error` reply (a failed step, no route, a bad plan, ...).
    #[error("{0}")]
    Remote(Box<RemoteError>),
    /// No reply arrived in time; a plan in flight was cancelled at the broker. Code 901
    /// `request_timeout`.
    #[error("no reply from the broker within {}", seconds(*after))]
    Timeout {
        /// How long the client waited.
        after: Duration,
    },
    /// Fewer messages than expected arrived on a subscription in time (the CLI's
    /// `sub --count N --timeout SECONDS`). Code 901 `request_timeout`, like [`Error::Timeout`].
    #[error("{received} of {expected} messages arrived within {}", seconds(*after))]
    MessagesTimeout {
        /// Messages expected.
        expected: u64,
        /// Messages that arrived.
        received: u64,
        /// How long the client waited.
        after: Duration,
    },
    /// The broker could not be reached (or could not be asked: its queue is full). Code 900
    /// `connection_failed`.
    #[error("cannot reach the broker at {endpoint}: {reason}")]
    Connect {
        /// The broker endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The client was closed while the request was in flight, or before it was sent. Code 903
    /// `connection_closed`.
    #[error("the client connection is closed")]
    Closed,
    /// The connection to the broker broke while the request was in flight: the broker died,
    /// restarted, or went silent past the ZMTP heartbeat timeout. Whether the request ran is
    /// unknown (a plan still queued on this side is cancelled if it reaches a broker). The
    /// client reconnects by itself; later requests go through once it is back. Code 904
    /// `connection_lost`.
    #[error(
        "the connection to the broker at {endpoint} was lost while the request was in flight \
         (the broker died, restarted or went silent); whether it ran is unknown"
    )]
    ConnectionLost {
        /// The broker endpoint.
        endpoint: String,
    },
    /// The program was interrupted by a signal and cancelled its requests in flight (the CLI
    /// on SIGINT or SIGTERM). Code 905 `interrupted`.
    #[error("interrupted by {signal}: the requests in flight were cancelled")]
    Interrupted {
        /// The signal's name (`SIGINT`, `SIGTERM`).
        signal: &'static str,
    },
    /// The encoded request is larger than the broker accepts (the `max_message_bytes` its
    /// `pong` announced, or [`ClientOptions::limits`](crate::ClientOptions::limits) before the
    /// first one): refused without sending it. Code 104 `message_too_large`, as the broker
    /// would have answered.
    #[error(
        "the `{kind}` request is {size} bytes, over the broker's limit of {limit} bytes \
         (max_message_bytes); it was not sent"
    )]
    TooLarge {
        /// The request's message type (`plan`, `publish`, ...).
        kind: &'static str,
        /// Its encoded body, in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The caller's input is not valid (a builder misused, an unreadable plan file, a bad
    /// endpoint). Code 902 `invalid_input`.
    #[error("{0}")]
    Invalid(String),
    /// The broker's reply could not be read, or did not fit the request. The code is the wire
    /// code for the defect (`invalid_body`, `unknown_message_type`, ...).
    #[error("unreadable reply from the broker: {message}")]
    Protocol {
        /// What is wrong with the reply.
        code: ErrorCode,
        /// Details.
        message: String,
    },
}

fn seconds(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

impl Error {
    /// The stable numeric code.
    ///
    /// ```
    /// assert_eq!(mpreg::Error::Closed.code(), 903);
    /// ```
    pub fn code(&self) -> u16 {
        match self {
            Error::Remote(remote) => remote.code,
            other => other.local_code().code(),
        }
    }

    /// The stable snake_case kind (for [`Error::Remote`], the kind the broker sent).
    pub fn kind(&self) -> &str {
        match self {
            Error::Remote(remote) => &remote.kind,
            other => other.local_code().name(),
        }
    }

    /// The code as an enum, when it is one this client knows.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Remote(remote) => ErrorCode::from_code(remote.code),
            other => Some(other.local_code()),
        }
    }

    /// The human-readable message, without the code or kind.
    pub fn message(&self) -> String {
        match self {
            Error::Remote(remote) => remote.message.clone(),
            Error::Invalid(message) => message.clone(),
            other => other.to_string(),
        }
    }

    /// The plan step the error is about, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            Error::Remote(remote) => remote.step.as_deref(),
            _ => None,
        }
    }

    /// The broker's error, if this is one.
    pub fn as_remote(&self) -> Option<&RemoteError> {
        match self {
            Error::Remote(remote) => Some(remote),
            _ => None,
        }
    }

    fn local_code(&self) -> ErrorCode {
        match self {
            // Not reached through `code()`/`kind()`; a sensible answer all the same.
            Error::Remote(remote) => {
                ErrorCode::from_code(remote.code).unwrap_or(ErrorCode::Internal)
            }
            Error::Timeout { .. } | Error::MessagesTimeout { .. } => ErrorCode::RequestTimeout,
            Error::Connect { .. } => ErrorCode::ConnectionFailed,
            Error::Closed => ErrorCode::ConnectionClosed,
            Error::ConnectionLost { .. } => ErrorCode::ConnectionLost,
            Error::Interrupted { .. } => ErrorCode::Interrupted,
            Error::TooLarge { .. } => ErrorCode::MessageTooLarge,
            Error::Invalid(_) => ErrorCode::InvalidInput,
            Error::Protocol { code, .. } => *code,
        }
    }
}

impl From<ErrorReply> for Error {
    fn from(reply: ErrorReply) -> Self {
        Error::Remote(Box::new(RemoteError::from(reply)))
    }
}

impl From<RemoteError> for Error {
    fn from(remote: RemoteError) -> Self {
        Error::Remote(Box::new(remote))
    }
}

/// A broker's `error` reply: every field of [`ErrorReply`].
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteError {
    /// The request id (`None` when the broker could not read it).
    pub id: Option<u64>,
    /// Stable numeric code.
    pub code: u16,
    /// Stable snake_case name of the code.
    pub kind: String,
    /// Human-readable explanation.
    pub message: String,
    /// The step the error is about.
    pub step: Option<String>,
    /// The function the error is about.
    pub fun: Option<String>,
    /// The resources that were asked for (`no_route`).
    pub locs: Option<Vec<String>>,
    /// The worker involved (`step_failed`, `worker_lost`).
    pub worker: Option<String>,
    /// The error kind the worker reported (`step_failed`), e.g. `function_error`.
    pub cause: Option<String>,
    /// The field path that did not resolve (`unresolved_reference`).
    pub path: Option<String>,
    /// The steps forming a cycle, in order (`plan_cycle`).
    pub cycle: Option<Vec<String>>,
    /// Results of the steps that finished before the failure.
    pub partial: BTreeMap<String, Value>,
    /// The trace of the steps that finished, when the plan asked for it
    /// ([`PlanBuilder::trace`](crate::PlanBuilder::trace)).
    pub trace: Option<mpreg_protocol::PlanTrace>,
}

impl RemoteError {
    /// The stable numeric code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The stable snake_case kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The code as an enum, when it is one this client knows.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }
}

impl From<ErrorReply> for RemoteError {
    fn from(r: ErrorReply) -> Self {
        RemoteError {
            id: r.id,
            code: r.code,
            kind: r.kind,
            message: r.message,
            step: r.step,
            fun: r.fun,
            locs: r.locs,
            worker: r.worker,
            cause: r.cause,
            path: r.path,
            cycle: r.cycle,
            partial: r.partial,
            trace: r.trace.map(|t| *t),
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.kind, self.code)?;
        if let Some(step) = &self.step {
            write!(f, " in step `{step}`")?;
        }
        if let Some(fun) = &self.fun {
            write!(f, " ({fun})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for RemoteError {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn every_variant_has_a_code_and_kind() {
        let cases: Vec<(Error, u16, &str)> = vec![
            (
                Error::Timeout {
                    after: Duration::from_millis(1500),
                },
                901,
                "request_timeout",
            ),
            (
                Error::Connect {
                    endpoint: "tcp://h:1".into(),
                    reason: "no".into(),
                },
                900,
                "connection_failed",
            ),
            (
                Error::MessagesTimeout {
                    expected: 2,
                    received: 1,
                    after: Duration::from_secs(1),
                },
                901,
                "request_timeout",
            ),
            (Error::Closed, 903, "connection_closed"),
            (
                Error::ConnectionLost {
                    endpoint: "tcp://h:1".into(),
                },
                904,
                "connection_lost",
            ),
            (Error::Interrupted { signal: "SIGINT" }, 905, "interrupted"),
            (
                Error::TooLarge {
                    kind: "plan",
                    size: 20,
                    limit: 10,
                },
                104,
                "message_too_large",
            ),
            (Error::Invalid("bad".into()), 902, "invalid_input"),
            (
                Error::Protocol {
                    code: ErrorCode::InvalidBody,
                    message: "x".into(),
                },
                103,
                "invalid_body",
            ),
        ];
        for (err, code, kind) in cases {
            assert_eq!(err.code(), code, "{err}");
            assert_eq!(err.kind(), kind, "{err}");
            assert_eq!(err.error_code().map(ErrorCode::code), Some(code));
            assert_eq!(err.step(), None);
        }
    }

    #[test]
    fn remote_errors_keep_the_wire_fields() {
        let reply = ErrorReply::new(Some(4), ErrorCode::StepFailed, "boom")
            .with_step("b")
            .with_fun("fail");
        let err = Error::from(reply);
        assert_eq!(err.code(), 301);
        assert_eq!(err.kind(), "step_failed");
        assert_eq!(err.step(), Some("b"));
        assert_eq!(err.message(), "boom");
        assert_eq!(
            err.to_string(),
            "step_failed (301) in step `b` (fail): boom"
        );
        let remote = err.as_remote().unwrap();
        assert_eq!((remote.code(), remote.kind()), (301, "step_failed"));
        assert_eq!(remote.error_code(), Some(ErrorCode::StepFailed));

        // A code this client does not know still reports what the broker sent.
        let mut future = ErrorReply::new(Some(1), ErrorCode::Internal, "new");
        future.code = 599;
        future.kind = "from_the_future".into();
        let err = Error::from(future);
        assert_eq!((err.code(), err.kind()), (599, "from_the_future"));
        assert_eq!(err.error_code(), None);
    }

    #[test]
    fn client_side_messages_name_what_happened() {
        let lost = Error::ConnectionLost {
            endpoint: "tcp://h:1".into(),
        };
        assert!(lost.message().contains("tcp://h:1"), "{lost}");
        assert!(
            lost.message().contains("whether it ran is unknown"),
            "{lost}"
        );
        let big = Error::TooLarge {
            kind: "plan",
            size: 52_428_900,
            limit: 16_777_216,
        };
        assert_eq!(
            big.message(),
            "the `plan` request is 52428900 bytes, over the broker's limit of 16777216 bytes \
             (max_message_bytes); it was not sent"
        );
        let interrupted = Error::Interrupted { signal: "SIGTERM" };
        assert_eq!(
            interrupted.message(),
            "interrupted by SIGTERM: the requests in flight were cancelled"
        );
    }

    #[test]
    fn timeout_message_names_the_wait() {
        let err = Error::Timeout {
            after: Duration::from_millis(1500),
        };
        assert_eq!(err.message(), "no reply from the broker within 1.500s");
        let err = Error::MessagesTimeout {
            expected: 3,
            received: 0,
            after: Duration::from_millis(250),
        };
        assert_eq!(err.message(), "0 of 3 messages arrived within 0.250s");
    }
}
