//! Samples of plan traces: a plan asking for its trace, the `result` and `error` carrying it
//! (a step run on a peer's worker, a cache answer, a failed step), the timing a worker sends
//! with its `result`, and the timing a peer sends back with a forwarded step's `fwd_result`.

use mpreg_protocol::peer::FwdResult;
use mpreg_protocol::*;

use super::cluster::sample;
use super::Sample;

fn plan_id() -> PlanId {
    "01JQ4Y5VJ7T0D8S3R5Y2M6W8XD".parse().expect("a ULID")
}

fn step(name: &str, fun: &str, broker: &str, worker: &str, outcome: StepOutcome) -> StepTrace {
    StepTrace {
        step: name.into(),
        fun: fun.into(),
        broker: broker.into(),
        worker: worker.into(),
        outcome,
        ready_us: 0,
        dispatched_us: None,
        started_us: None,
        finished_us: 0,
        queued_us: None,
        retries: 0,
    }
}

pub fn samples() -> Vec<Sample> {
    let mut out = Vec::new();
    let mut plan = PlanRequest {
        id: 9,
        steps: vec![
            Step::new("fetch", "load", vec![Value::from("2024-01")]),
            Step::new("fit", "train", vec![Value::from("fetch")]),
        ],
        deadline_ms: None,
        all_results: false,
        progress: false,
        progress_topic: None,
        plan: None,
        trace: true,
    };
    plan.steps[1].locs = vec!["gpu".into()];
    let plan = ClientToBroker::Plan(plan);
    out.push(sample(
        "client_to_broker.plan_traced",
        plan.kind(),
        plan.encode_body(),
        plan,
        ClientToBroker::decode,
    ));

    let fetch = StepTrace {
        ready_us: 12,
        dispatched_us: Some(40),
        started_us: Some(310),
        finished_us: 1_510,
        queued_us: Some(25),
        ..step("fetch", "load", "broker-1", "node-1", StepOutcome::Ok)
    };
    let fit = StepTrace {
        ready_us: 1_510,
        dispatched_us: Some(1_530),
        started_us: Some(2_400),
        finished_us: 90_400,
        queued_us: Some(600),
        retries: 1,
        ..step("fit", "train", "broker-2", "gpu-node-4", StepOutcome::Ok)
    };
    let cached = StepTrace {
        ready_us: 1_510,
        finished_us: 1_512,
        ..step(
            "norm",
            "normalise",
            "broker-1",
            "cache",
            StepOutcome::Cached,
        )
    };
    let result = BrokerToClient::Result(PlanResult {
        id: 9,
        plan: Some(plan_id()),
        results: [("fit".to_string(), Value::from(0.93))].into(),
        trace: Some(Box::new(PlanTrace {
            plan: plan_id(),
            broker: "broker-1".into(),
            accepted_unix_us: 1_767_225_600_000_000,
            total_us: 90_450,
            steps: vec![fetch.clone(), cached, fit],
        })),
    });
    out.push(sample(
        "broker_to_client.result_traced",
        result.kind(),
        result.encode_body(),
        result,
        BrokerToClient::decode,
    ));

    let failed = StepTrace {
        ready_us: 1_510,
        dispatched_us: Some(1_530),
        finished_us: 2_000,
        ..step("fit", "train", "broker-1", "node-1", StepOutcome::Failed)
    };
    let mut error = ErrorReply::new(Some(9), ErrorCode::StepFailed, "boom")
        .with_step("fit")
        .with_fun("train");
    error.worker = Some("node-1".into());
    error.cause = Some(failure_kind::FUNCTION_ERROR.into());
    error.plan = Some(plan_id());
    error.partial = [("fetch".to_string(), Value::from("rows"))].into();
    error.trace = Some(Box::new(PlanTrace {
        plan: plan_id(),
        broker: "broker-1".into(),
        accepted_unix_us: 1_767_225_600_000_000,
        total_us: 2_010,
        steps: vec![fetch, failed],
    }));
    let error = BrokerToClient::Error(error);
    out.push(sample(
        "broker_to_client.error_traced",
        error.kind(),
        error.encode_body(),
        error,
        BrokerToClient::decode,
    ));

    let timed = WorkerToBroker::Result(TaskResult {
        task: TaskId(17),
        value: Value::from("rows"),
        timing: Some(TaskTiming {
            queued_us: 25,
            ran_us: 1_200,
        }),
    });
    out.push(sample(
        "worker_to_broker.result_timed",
        timed.kind(),
        timed.encode_body(),
        timed,
        WorkerToBroker::decode,
    ));

    let forwarded = PeerMessage::FwdResult(FwdResult {
        fid: 78,
        value: Value::from(0.93),
        worker: "gpu-node-4".into(),
        timing: Some(TaskTiming {
            queued_us: 600,
            ran_us: 88_000,
        }),
    });
    out.push(sample(
        "peer.fwd_result_timed",
        forwarded.kind(),
        forwarded.encode_body(),
        forwarded,
        PeerMessage::decode,
    ));
    out
}
