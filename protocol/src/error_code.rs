//! Stable numeric error codes and their snake_case names.
//!
//! A code is never renumbered and a retired code stays reserved. Codes 100-599 travel on the
//! wire in `error` replies; codes 900-999 are raised by clients themselves (the SDK and CLI use
//! them so every failure a script sees has the same shape).

use std::fmt;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $name:literal; )*) => {
        /// Every error a broker, worker or client can report.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            /// The stable number.
            pub const fn code(self) -> u16 {
                match self { $( ErrorCode::$variant => $code, )* }
            }

            /// The stable snake_case name (the `kind` field on the wire).
            pub const fn name(self) -> &'static str {
                match self { $( ErrorCode::$variant => $name, )* }
            }

            /// The code with this number, if it is known.
            pub fn from_code(code: u16) -> Option<ErrorCode> {
                match code { $( $code => Some(ErrorCode::$variant), )* _ => None }
            }

            /// The code with this name, if it is known.
            pub fn from_name(name: &str) -> Option<ErrorCode> {
                match name { $( $name => Some(ErrorCode::$variant), )* _ => None }
            }
        }
    };
}

error_codes! {
    /// The frames do not form a message: missing frames, extra frames, empty body.
    MalformedMessage = 100, "malformed_message";
    /// The version tag frame is not one this broker speaks.
    UnsupportedVersion = 101, "unsupported_version";
    /// The message type frame names no message of this protocol (or of this socket).
    UnknownMessageType = 102, "unknown_message_type";
    /// The body is not valid msgpack, or a field is missing or has the wrong type.
    InvalidBody = 103, "invalid_body";
    /// A frame is larger than `max_message_bytes`.
    MessageTooLarge = 104, "message_too_large";
    /// Values are nested deeper than `max_depth`.
    NestingTooDeep = 105, "nesting_too_deep";
    /// The plan breaks a rule not covered by a more specific code (name too long, too many locs).
    InvalidPlan = 200, "invalid_plan";
    /// A step has an empty name.
    EmptyStepName = 201, "empty_step_name";
    /// Two steps share a name.
    DuplicateStepName = 202, "duplicate_step_name";
    /// A step name contains `.`, which is reserved for field paths.
    InvalidStepName = 203, "invalid_step_name";
    /// The steps' references form a cycle; `cycle` names its steps.
    PlanCycle = 204, "plan_cycle";
    /// The plan has more steps than `max_steps`.
    TooManySteps = 205, "too_many_steps";
    /// A reference's field path does not resolve in the referenced step's result.
    UnresolvedReference = 206, "unresolved_reference";
    /// No registered worker serves `fun` with every resource in `locs`.
    NoRoute = 300, "no_route";
    /// A step's function failed on its worker.
    StepFailed = 301, "step_failed";
    /// The workers running a step died or went silent more often than the step's retries allow.
    WorkerLost = 302, "worker_lost";
    /// The plan's deadline passed; outstanding tasks were cancelled.
    PlanTimeout = 303, "plan_timeout";
    /// One step ran longer than its own `timeout_ms`.
    StepTimeout = 304, "step_timeout";
    /// The client cancelled the plan.
    Cancelled = 305, "cancelled";
    /// The connection already has `max_plans_per_client` plans in flight.
    TooManyPlans = 400, "too_many_plans";
    /// The connection already has a plan in flight with this request id.
    DuplicateRequestId = 401, "duplicate_request_id";
    /// The broker's queue of tasks waiting for worker capacity is full.
    Overloaded = 402, "overloaded";
    /// The broker is shutting down and takes no new work.
    ShuttingDown = 403, "shutting_down";
    /// The caller's key may not do this.
    AccessDenied = 404, "access_denied";
    /// A worker message came from a connection that has not registered.
    NotRegistered = 405, "not_registered";
    /// The client has as many subscriptions as the broker allows.
    TooManySubscriptions = 406, "too_many_subscriptions";
    /// A bug: the broker could not handle a request it accepted.
    Internal = 500, "internal_error";
    /// A topic is empty, too long, has too many words or is not UTF-8.
    InvalidTopic = 600, "invalid_topic";
    /// A subscription pattern is invalid (same rules as topics), or there are none or too many.
    InvalidPattern = 601, "invalid_pattern";
    /// No subscription has this token (on this connection).
    UnknownSubscription = 602, "unknown_subscription";
    /// Client side: the broker could not be reached.
    ConnectionFailed = 900, "connection_failed";
    /// Client side: no reply arrived in time (the broker may be unreachable or overloaded).
    RequestTimeout = 901, "request_timeout";
    /// Client side: the caller's input (arguments, plan file) is not valid.
    InvalidInput = 902, "invalid_input";
    /// Client side: the client was closed while the request was in flight.
    ConnectionClosed = 903, "connection_closed";
    /// Client side: the connection to the broker broke while the request was in flight (the
    /// broker died, restarted or went silent); whether it ran is unknown.
    ConnectionLost = 904, "connection_lost";
    /// Client side: the program was interrupted (SIGINT, SIGTERM) and cancelled its requests.
    Interrupted = 905, "interrupted";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The table is part of the wire contract: this pins every number and name.
    #[test]
    fn codes_are_stable() {
        let pinned: Vec<(u16, &str)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.code(), c.name()))
            .collect();
        assert_eq!(
            pinned,
            vec![
                (100, "malformed_message"),
                (101, "unsupported_version"),
                (102, "unknown_message_type"),
                (103, "invalid_body"),
                (104, "message_too_large"),
                (105, "nesting_too_deep"),
                (200, "invalid_plan"),
                (201, "empty_step_name"),
                (202, "duplicate_step_name"),
                (203, "invalid_step_name"),
                (204, "plan_cycle"),
                (205, "too_many_steps"),
                (206, "unresolved_reference"),
                (300, "no_route"),
                (301, "step_failed"),
                (302, "worker_lost"),
                (303, "plan_timeout"),
                (304, "step_timeout"),
                (305, "cancelled"),
                (400, "too_many_plans"),
                (401, "duplicate_request_id"),
                (402, "overloaded"),
                (403, "shutting_down"),
                (404, "access_denied"),
                (405, "not_registered"),
                (406, "too_many_subscriptions"),
                (500, "internal_error"),
                (600, "invalid_topic"),
                (601, "invalid_pattern"),
                (602, "unknown_subscription"),
                (900, "connection_failed"),
                (901, "request_timeout"),
                (902, "invalid_input"),
                (903, "connection_closed"),
                (904, "connection_lost"),
                (905, "interrupted"),
            ]
        );
    }

    #[test]
    fn lookups_round_trip_and_are_unique() {
        let mut codes = HashSet::new();
        let mut names = HashSet::new();
        for &c in ErrorCode::ALL {
            assert!(codes.insert(c.code()));
            assert!(names.insert(c.name()));
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
            assert_eq!(ErrorCode::from_name(c.name()), Some(c));
        }
        assert_eq!(ErrorCode::from_code(999), None);
        assert_eq!(ErrorCode::from_name("nope"), None);
    }
}
