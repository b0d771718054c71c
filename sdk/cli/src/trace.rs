//! `mpreg plan FILE --trace`: one JSON line per traced step, printed after the result line.
//!
//! A line: `{"plan","accepted_unix_us","step","fun","broker","worker","outcome","ready_us",
//! "dispatched_us","started_us","finished_us","queued_us","retries"}`. Every `*_us` but
//! `accepted_unix_us` counts microseconds since the broker accepted the plan (its monotonic
//! clock); `accepted_unix_us` is that instant on the broker's wall clock (microseconds since
//! the Unix epoch), repeated on every line so each line stands alone. A time that is not known
//! is `null` (`dispatched_us` of a cache answer, `started_us` when the worker reported no
//! timing). Lines come in the order the steps finished.
//!
//! A traced plan that fails after it started has no result line: its error line on stderr
//! carries the steps that finished, the failed one included, as `error.trace` (an array of
//! the same objects).

use mpreg::PlanTrace;
use serde_json::{json, Value as Json};

/// The lines of a plan's trace.
pub fn trace_lines(trace: &PlanTrace) -> Vec<String> {
    trace_values(trace).iter().map(Json::to_string).collect()
}

/// A plan's trace, one JSON object per step (what [`trace_lines`] prints).
pub fn trace_values(trace: &PlanTrace) -> Vec<Json> {
    trace
        .steps
        .iter()
        .map(|s| {
            json!({
                "plan": trace.plan.to_string(),
                "accepted_unix_us": trace.accepted_unix_us,
                "step": s.step,
                "fun": s.fun,
                "broker": s.broker,
                "worker": s.worker,
                "outcome": s.outcome,
                "ready_us": s.ready_us,
                "dispatched_us": s.dispatched_us,
                "started_us": s.started_us,
                "finished_us": s.finished_us,
                "queued_us": s.queued_us,
                "retries": s.retries,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use mpreg::{StepOutcome, StepTrace};

    #[test]
    fn one_line_per_step_with_every_field() {
        let trace = PlanTrace {
            plan: "01JQ4Y5VJ7T0D8S3R5Y2M6W8XB".parse().unwrap(),
            broker: "b1".into(),
            accepted_unix_us: 1_700_000_000_000_000,
            total_us: 900,
            steps: vec![StepTrace {
                step: "a".into(),
                fun: "echo".into(),
                broker: "b2".into(),
                worker: "n1".into(),
                outcome: StepOutcome::Ok,
                ready_us: 3,
                dispatched_us: Some(10),
                started_us: None,
                finished_us: 800,
                queued_us: None,
                retries: 0,
            }],
        };
        let lines = trace_lines(&trace);
        assert_eq!(
            lines,
            [
                r#"{"plan":"01JQ4Y5VJ7T0D8S3R5Y2M6W8XB","accepted_unix_us":1700000000000000,"step":"a","fun":"echo","broker":"b2","worker":"n1","outcome":"ok","ready_us":3,"dispatched_us":10,"started_us":null,"finished_us":800,"queued_us":null,"retries":0}"#
            ]
        );
    }
}
