//! Every way a request or a plan can fail, as data; [`Failure::into_reply`] is the one place
//! where a failure becomes the `error` message a client (or worker) receives.

use mpreg_protocol::{ErrorCode, ErrorReply};

use crate::access::Denied;
use crate::placement::NoRoute;
use crate::plan_graph::PlanError;
use crate::resolve::Oversize;

/// Why a request was refused or a plan ended without a result.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The frames or the body could not be read (1xx).
    Decode {
        /// The code (100-105).
        code: ErrorCode,
        /// What was wrong.
        message: String,
        /// Where in the body, when known.
        path: Option<String>,
    },
    /// The access rules forbid it.
    AccessDenied(Denied),
    /// The plan breaks a validation rule (2xx).
    InvalidPlan(PlanError),
    /// A topic (or `progress_topic`) breaks the topic rules.
    InvalidTopic {
        /// Which field, e.g. `progress_topic` or `messages[3].topic`.
        field: String,
        /// The topic (truncated for the message).
        topic: String,
        /// Why.
        reason: String,
        /// Set for a batch: nothing in it was published.
        whole_batch: bool,
    },
    /// A subscription's patterns break the rules.
    InvalidPattern(String),
    /// The connection has as many subscriptions as allowed.
    TooManySubscriptions(usize),
    /// No subscription with this token on this connection.
    UnknownSubscription,
    /// The broker takes no new plans.
    ShuttingDown,
    /// A plan with this request id is already in flight on the connection.
    DuplicateRequestId(u64),
    /// Plan quota.
    TooManyPlans {
        /// This client's plans in flight.
        client: usize,
        /// Its limit.
        client_limit: usize,
        /// The broker's limit.
        broker_limit: usize,
    },
    /// The bytes held for plans in flight would exceed the limit.
    Overloaded {
        /// Bytes held now.
        held: usize,
        /// The limit.
        limit: usize,
    },
    /// Nobody can run a step (never run anywhere yet).
    NoRoute {
        /// The step.
        step: String,
        /// Its function.
        fun: String,
        /// Its version requirement, if any.
        version: Option<String>,
        /// Its resources.
        locs: Vec<String>,
        /// Which part of the request nobody satisfies.
        reason: NoRoute,
    },
    /// A step's worker was lost and no other worker can take the step over.
    WorkerLostNoOther {
        /// The step.
        step: String,
        /// Its function.
        fun: String,
        /// Its resources.
        locs: Vec<String>,
    },
    /// A step's workers were lost more often than its retries allow.
    WorkerLost {
        /// The step.
        step: String,
        /// Its function.
        fun: String,
        /// The last worker.
        worker: String,
        /// The retries allowed.
        retries: u32,
    },
    /// A step's function failed.
    StepFailed {
        /// The step.
        step: String,
        /// Its function.
        fun: String,
        /// Where it ran.
        worker: String,
        /// The failure kind the worker reported.
        kind: String,
        /// The worker's message.
        message: String,
    },
    /// The plan's deadline passed.
    PlanTimeout {
        /// Steps finished.
        finished: usize,
        /// Steps in the plan.
        total: usize,
        /// Up to five steps still running.
        running: Vec<String>,
    },
    /// A step ran past its own timeout.
    StepTimeout {
        /// The step.
        step: String,
        /// Its function.
        fun: String,
        /// Its timeout.
        timeout_ms: u64,
    },
    /// The client cancelled the plan.
    Cancelled,
    /// The client stopped sending heartbeats.
    ClientGone,
    /// The broker shut down before the plan finished.
    ShutDown,
    /// A step's arguments with references resolved would exceed the limits.
    TaskTooLarge {
        /// The step.
        step: String,
        /// Its function.
        fun: String,
        /// Which limit.
        over: Oversize,
    },
    /// A reference's field path does not resolve.
    Unresolved {
        /// The step.
        step: String,
        /// The reference as written.
        reference: String,
        /// Why the walk stopped.
        reason: String,
    },
    /// A reply would exceed `max_message_bytes`; this error is sent instead.
    ReplyTooLarge {
        /// The reply's type.
        kind: &'static str,
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
        /// The step of the original error, if any.
        step: Option<String>,
    },
    /// A step forwarded to a peer broker failed there.
    Remote(Box<RemoteFailure>),
    /// A worker's registration cannot be accepted.
    RegistrationRefused(String),
    /// A worker's key is not (or no longer) allowed.
    WorkerNotAllowed,
    /// A worker's key was removed from the access file.
    WorkerRevoked,
}

/// What a peer broker reported about a forwarded step that failed there.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteFailure {
    /// The step.
    pub step: String,
    /// Its function.
    pub fun: String,
    /// The code the peer reported.
    pub code: u16,
    /// The worker's failure kind, when its function failed.
    pub cause: Option<String>,
    /// The worker, if any.
    pub worker: Option<String>,
    /// The peer's message.
    pub message: String,
    /// The peer's name.
    pub peer: String,
}

impl Failure {
    /// The same failure told about another step (a cached call's failure handed to the steps
    /// that waited on it).
    pub fn for_step(&self, name: &str) -> Failure {
        let mut copy = self.clone();
        match &mut copy {
            Failure::StepFailed { step, .. } => *step = name.to_string(),
            Failure::Remote(remote) => remote.step = name.to_string(),
            _ => {}
        }
        copy
    }
}

fn in_brackets(locs: &[String]) -> String {
    if locs.is_empty() {
        String::new()
    } else {
        format!(" with resources [{}]", locs.join(", "))
    }
}

impl Failure {
    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        use Failure::*;
        match self {
            Decode { code, .. } => *code,
            AccessDenied(_) | WorkerNotAllowed | WorkerRevoked => ErrorCode::AccessDenied,
            InvalidPlan(e) => e.code,
            InvalidTopic { .. } => ErrorCode::InvalidTopic,
            InvalidPattern(_) => ErrorCode::InvalidPattern,
            TooManySubscriptions(_) => ErrorCode::TooManySubscriptions,
            UnknownSubscription => ErrorCode::UnknownSubscription,
            ShuttingDown | ShutDown => ErrorCode::ShuttingDown,
            DuplicateRequestId(_) => ErrorCode::DuplicateRequestId,
            TooManyPlans { .. } => ErrorCode::TooManyPlans,
            Overloaded { .. } => ErrorCode::Overloaded,
            NoRoute { .. } => ErrorCode::NoRoute,
            WorkerLostNoOther { .. } | WorkerLost { .. } => ErrorCode::WorkerLost,
            StepFailed { .. } => ErrorCode::StepFailed,
            PlanTimeout { .. } => ErrorCode::PlanTimeout,
            StepTimeout { .. } => ErrorCode::StepTimeout,
            Cancelled | ClientGone => ErrorCode::Cancelled,
            TaskTooLarge { over, .. } => match over {
                Oversize::Bytes(_) => ErrorCode::MessageTooLarge,
                Oversize::Depth(_) => ErrorCode::NestingTooDeep,
            },
            Unresolved { .. } => ErrorCode::UnresolvedReference,
            ReplyTooLarge { .. } => ErrorCode::MessageTooLarge,
            RegistrationRefused(_) => ErrorCode::InvalidBody,
            Remote(r) => ErrorCode::from_code(r.code).unwrap_or(ErrorCode::StepFailed),
        }
    }

    /// The `error` message for request `id`.
    pub fn into_reply(self, id: Option<u64>) -> ErrorReply {
        use Failure::*;
        let code = self.code();
        let reply = |message: String| ErrorReply::new(id, code, message);
        match self {
            Decode { message, path, .. } => ErrorReply {
                path,
                ..reply(message)
            },
            AccessDenied(d) => ErrorReply {
                step: d.step,
                fun: d.fun,
                path: d.path,
                ..reply(d.message)
            },
            InvalidPlan(e) => ErrorReply {
                step: e.step,
                cycle: e.cycle,
                ..reply(e.message)
            },
            InvalidTopic {
                field,
                topic,
                reason,
                whole_batch,
            } => {
                let tail = if whole_batch {
                    "; nothing in the batch was published"
                } else {
                    ""
                };
                let path = whole_batch.then(|| field.clone());
                let shown = if field == "topic" {
                    format!("topic {topic:?}: {reason}")
                } else {
                    format!("{field} {topic:?}: {reason}{tail}")
                };
                ErrorReply {
                    path,
                    ..reply(shown)
                }
            }
            InvalidPattern(message) => reply(message),
            TooManySubscriptions(n) => reply(format!(
                "this connection already has {n} subscriptions, the limit"
            )),
            UnknownSubscription => {
                reply("no subscription with this token on this connection".into())
            }
            ShuttingDown => reply("the broker is shutting down".into()),
            ShutDown => reply("the broker shut down before the plan finished".into()),
            DuplicateRequestId(plan) => reply(format!(
                "plan id {plan} is already in flight on this connection"
            )),
            TooManyPlans {
                client,
                client_limit,
                broker_limit,
            } => reply(format!(
                "too many plans in flight (this client: {client}, limit {client_limit}; broker limit {broker_limit})"
            )),
            Overloaded { held, limit } => reply(format!(
                "the broker holds {held} bytes for plans in flight and this plan would take it over its limit of {limit}; retry later"
            )),
            NoRoute {
                step,
                fun,
                version,
                locs,
                reason,
            } => {
                let why = match reason {
                    crate::placement::NoRoute::Draining => " (the workers that could are leaving)",
                    _ => "",
                };
                let version = version.map_or(String::new(), |v| format!(" in version {v}"));
                let message =
                    format!("no worker serves `{fun}`{version}{}{why}", in_brackets(&locs));
                ErrorReply {
                    step: Some(step),
                    fun: Some(fun),
                    locs: Some(locs),
                    ..reply(message)
                }
            }
            WorkerLostNoOther { step, fun, locs } => {
                let message = format!(
                    "the worker running step `{step}` was lost and no other worker serves `{fun}`{}",
                    in_brackets(&locs)
                );
                ErrorReply {
                    step: Some(step),
                    fun: Some(fun),
                    ..reply(message)
                }
            }
            WorkerLost {
                step,
                fun,
                worker,
                retries,
            } => {
                let message = format!(
                    "step `{step}`: worker {worker} was lost and the step was retried {retries} times"
                );
                ErrorReply {
                    step: Some(step),
                    fun: Some(fun),
                    worker: Some(worker),
                    ..reply(message)
                }
            }
            StepFailed {
                step,
                fun,
                worker,
                kind,
                message,
            } => {
                let text = format!("step `{step}` ({fun}) failed on {worker}: {message}");
                ErrorReply {
                    step: Some(step),
                    fun: Some(fun),
                    worker: Some(worker),
                    cause: Some(kind),
                    ..reply(text)
                }
            }
            PlanTimeout {
                finished,
                total,
                running,
            } => reply(format!(
                "the plan's deadline passed with {finished} of {total} steps finished (running: {})",
                running.join(", ")
            )),
            StepTimeout {
                step,
                fun,
                timeout_ms,
            } => {
                let message = format!("step `{step}` ran longer than its timeout of {timeout_ms} ms");
                ErrorReply {
                    step: Some(step),
                    fun: Some(fun),
                    ..reply(message)
                }
            }
            Cancelled => reply("the plan was cancelled by its client".into()),
            ClientGone => {
                reply("the client stopped sending heartbeats: its plans were cancelled".into())
            }
            TaskTooLarge { step, fun, over } => {
                let what = match over {
                    Oversize::Bytes(n) => format!("would exceed {n} bytes (max_message_bytes)"),
                    Oversize::Depth(n) => {
                        format!("would nest deeper than max_depth (arguments: {n} levels)")
                    }
                };
                let message = format!("step `{step}`: its arguments with references resolved {what}");
                ErrorReply {
                    step: Some(step),
                    fun: Some(fun),
                    ..reply(message)
                }
            }
            Unresolved {
                step,
                reference,
                reason,
            } => {
                let message =
                    format!("step `{step}`: reference `{reference}` does not resolve: {reason}");
                ErrorReply {
                    step: Some(step),
                    path: Some(reference),
                    ..reply(message)
                }
            }
            ReplyTooLarge {
                kind,
                bytes,
                limit,
                step,
            } => ErrorReply {
                step,
                ..reply(format!(
                    "the {kind} reply of {bytes} bytes exceeds the limit of {limit} bytes"
                ))
            },
            RegistrationRefused(problem) => reply(format!("register refused: {problem}")),
            Remote(r) => {
                let RemoteFailure {
                    step,
                    fun,
                    cause,
                    worker,
                    message,
                    peer,
                    ..
                } = *r;
                ErrorReply {
                    step: Some(step),
                fun: Some(fun),
                cause,
                worker,
                    ..reply(format!("on broker {peer}: {message}"))
                }
            }
            WorkerNotAllowed => {
                reply("this key is not (or no longer) allowed as a worker".into())
            }
            WorkerRevoked => reply("this worker's key was revoked".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_route_names_the_function_and_resources() {
        let reply = Failure::NoRoute {
            step: "s".into(),
            fun: "echo".into(),
            version: None,
            locs: vec!["tpu".into()],
            reason: NoRoute::MissingResources,
        }
        .into_reply(Some(3));
        assert_eq!(reply.error_code(), Some(ErrorCode::NoRoute));
        assert_eq!(
            reply.message,
            "no worker serves `echo` with resources [tpu]"
        );
        assert_eq!(
            (reply.id, reply.step.as_deref(), reply.locs.as_deref()),
            (Some(3), Some("s"), Some(&["tpu".to_string()][..]))
        );
    }

    #[test]
    fn batch_topics_carry_their_path() {
        let reply = Failure::InvalidTopic {
            field: "messages[2].topic".into(),
            topic: "".into(),
            reason: "empty topic".into(),
            whole_batch: true,
        }
        .into_reply(Some(1));
        assert_eq!(reply.path.as_deref(), Some("messages[2].topic"));
        assert!(reply
            .message
            .ends_with("nothing in the batch was published"));
    }
}
