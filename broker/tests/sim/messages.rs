//! Protocol messages built the way a peer builds them: the fields the protocol requires, every
//! optional field absent (decoded from a msgpack map through the protocol's own codec). The
//! simulator so keeps compiling, and keeps speaking the protocol it tests, as optional fields
//! are added to the message structs.

use mpreg_protocol::{
    decode_body, Limits, PlanRequest, Register, Step, TaskFailure, TaskId, TaskResult, Value,
    WorkerToBroker,
};

fn decode<T: serde::de::DeserializeOwned>(fields: Vec<(&str, Value)>) -> T {
    let map = Value::Map(
        fields
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    );
    let mut body = Vec::new();
    rmpv::encode::write_value(&mut body, &map).expect("encoding into a Vec cannot fail");
    decode_body(&body, &Limits::default()).expect("a message with its required fields decodes")
}

fn strings(items: &[String]) -> Value {
    Value::Array(items.iter().map(|s| Value::from(s.as_str())).collect())
}

/// A `plan` with these steps and every option absent.
pub fn plan(id: u64, steps: Vec<Step>) -> PlanRequest {
    let mut plan: PlanRequest = decode(vec![
        ("id", Value::from(id)),
        ("steps", Value::Array(vec![])),
    ]);
    plan.steps = steps;
    plan
}

/// A `register` with these functions, resources and capacity.
pub fn register(node: &str, functions: &[String], resources: &[String], capacity: u32) -> Register {
    decode(vec![
        ("node", Value::from(node)),
        ("functions", strings(functions)),
        ("resources", strings(resources)),
        ("capacity", Value::from(capacity)),
    ])
}

/// A `result` answering `task`.
pub fn result(task: TaskId, value: Value) -> WorkerToBroker {
    WorkerToBroker::Result(decode::<TaskResult>(vec![
        ("task", Value::from(task.0)),
        ("value", value),
    ]))
}

/// A `failure` answering `task`.
pub fn failure(task: TaskId, kind: &str, message: &str) -> WorkerToBroker {
    WorkerToBroker::Failure(decode::<TaskFailure>(vec![
        ("task", Value::from(task.0)),
        ("kind", Value::from(kind)),
        ("message", Value::from(message)),
    ]))
}
