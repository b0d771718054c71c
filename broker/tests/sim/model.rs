//! The model: what a plan must produce, written from ARCHITECTURE.md section 3 (and PROTOCOL.md
//! section 6) alone, sharing no code with the broker: which strings are references (rule 1),
//! how they resolve (rule 2), validation and its order (rule 3), dataflow order (rule 4), sinks
//! (rule 6) and which step fails how (rule 7). The checker compares the broker's every reply
//! against it.

use std::collections::{BTreeMap, BTreeSet};

use mpreg_protocol::{ErrorCode, Limits, PlanRequest, Value};

use super::functions::{self, Failed};

/// The steps' names and who references whom.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Step names, in plan order.
    pub names: Vec<String>,
    /// For each step, the steps it references.
    pub deps: Vec<BTreeSet<usize>>,
}

impl Graph {
    /// The index of step `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// True when `cycle` names distinct steps each referencing the next, the last the first.
    pub fn is_cycle(&self, cycle: &[String]) -> bool {
        let Some(ix) = cycle
            .iter()
            .map(|n| self.index(n))
            .collect::<Option<Vec<usize>>>()
        else {
            return false;
        };
        let distinct: BTreeSet<usize> = ix.iter().copied().collect();
        !ix.is_empty()
            && distinct.len() == ix.len()
            && (0..ix.len()).all(|k| self.deps[ix[k]].contains(&ix[(k + 1) % ix.len()]))
    }

    /// Steps that no other step references.
    pub fn is_sink(&self, step: usize) -> bool {
        self.deps.iter().all(|d| !d.contains(&step))
    }
}

/// How one step of a valid plan ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It returns this value.
    Ok(Value),
    /// Its function fails.
    Fails(Failed),
    /// These references of its arguments do not resolve.
    Unresolved(Vec<String>),
    /// A step it references does not succeed: it never runs.
    Blocked,
}

/// One step of a valid plan.
#[derive(Debug, Clone)]
pub struct StepModel {
    /// How it ends.
    pub outcome: Outcome,
    /// Its arguments with references resolved, when it can run.
    pub args: Option<(Vec<Value>, BTreeMap<String, Value>)>,
}

/// A valid, non-empty plan.
#[derive(Debug, Clone)]
pub struct RunModel {
    /// Who references whom.
    pub graph: Graph,
    /// Each step's fate.
    pub steps: Vec<StepModel>,
    /// The `result` reply's map, when every step succeeds.
    pub result: Option<BTreeMap<String, Value>>,
}

/// What the broker must answer to a plan.
#[derive(Debug, Clone)]
pub enum Expectation {
    /// Refused before anything runs, with this code; `step` as the error names it (for a
    /// cycle, any cycle of `graph` may be named).
    Rejected {
        /// The error code.
        code: ErrorCode,
        /// The step named.
        step: Option<String>,
        /// The references, for checking a named cycle.
        graph: Option<Graph>,
    },
    /// No steps: `result` with an empty map at once.
    Empty,
    /// It runs.
    Runs(RunModel),
}

/// How the model may be sabotaged, to prove that the checker catches a wrong answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSabotage {
    /// The model is right.
    None,
    /// The model believes `echo` returns something else.
    WrongEcho,
}

/// The step a string refers to (rule 1): it equals a name, or starts with `name.`.
fn target(text: &str, names: &[String]) -> Option<usize> {
    names.iter().position(|n| {
        text == n || (text.starts_with(n.as_str()) && text.as_bytes().get(n.len()) == Some(&b'.'))
    })
}

/// Every step referenced from inside `value` (array items and map values, never map keys).
fn references(value: &Value, names: &[String], out: &mut BTreeSet<usize>) {
    match value {
        Value::String(s) => {
            if let Some(j) = s.as_str().and_then(|t| target(t, names)) {
                out.insert(j);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, names, out)),
        Value::Map(entries) => entries.iter().for_each(|(_, v)| references(v, names, out)),
        _ => {}
    }
}

/// A map key selected by a path segment: that string, or an integer written in decimal.
fn key_matches(key: &Value, segment: &str) -> bool {
    match key {
        Value::String(s) => s.as_str() == Some(segment),
        Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(n), _) => n.to_string() == segment,
            (None, Some(n)) => n.to_string() == segment,
            _ => false,
        },
        _ => false,
    }
}

/// Walks a field path (rule 2): map keys, array indices (decimal digits, 0-based).
fn walk<'v>(mut at: &'v Value, path: &str) -> Option<&'v Value> {
    for segment in path.split('.') {
        at = match at {
            Value::Map(entries) => &entries.iter().find(|(k, _)| key_matches(k, segment))?.1,
            Value::Array(items) => {
                if segment.is_empty() || !segment.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                items.get(segment.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(at)
}

struct Resolver<'a> {
    names: &'a [String],
    values: &'a [Option<Value>],
    unresolved: Vec<String>,
}

impl Resolver<'_> {
    fn value(&mut self, value: &Value) -> Value {
        match value {
            Value::String(s) => {
                let Some(text) = s.as_str() else {
                    return value.clone();
                };
                let Some(j) = target(text, self.names) else {
                    return value.clone();
                };
                let base = self.values[j]
                    .as_ref()
                    .expect("references resolve after success");
                let path = &text[self.names[j].len()..];
                if path.is_empty() {
                    return base.clone();
                }
                match walk(base, &path[1..]) {
                    Some(found) => found.clone(),
                    None => {
                        self.unresolved.push(text.to_string());
                        Value::Nil
                    }
                }
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| self.value(v)).collect()),
            Value::Map(entries) => Value::Map(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), self.value(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// Validation (rule 3), in the order PROTOCOL.md section 6 gives.
fn validate(plan: &PlanRequest, limits: &Limits) -> Option<(ErrorCode, Option<String>)> {
    if plan.steps.len() > limits.max_steps {
        return Some((ErrorCode::TooManySteps, None));
    }
    let mut seen = BTreeSet::new();
    for step in &plan.steps {
        let name = &step.name;
        if name.is_empty() {
            return Some((ErrorCode::EmptyStepName, None));
        }
        if name.contains('.') || name.len() > limits.max_name_bytes {
            return Some((ErrorCode::InvalidStepName, Some(name.clone())));
        }
        if step.fun.is_empty()
            || step.fun.len() > limits.max_name_bytes
            || step.locs.len() > limits.max_locs
        {
            return Some((ErrorCode::InvalidPlan, Some(name.clone())));
        }
        if !seen.insert(name.as_str()) {
            return Some((ErrorCode::DuplicateStepName, Some(name.clone())));
        }
    }
    None
}

fn has_cycle(deps: &[BTreeSet<usize>]) -> bool {
    // 0: unvisited, 1: on the current path, 2: done.
    fn visit(i: usize, deps: &[BTreeSet<usize>], state: &mut [u8]) -> bool {
        match state[i] {
            1 => return true,
            2 => return false,
            _ => {}
        }
        state[i] = 1;
        if deps[i].iter().any(|&d| visit(d, deps, state)) {
            return true;
        }
        state[i] = 2;
        false
    }
    let mut state = vec![0u8; deps.len()];
    (0..deps.len()).any(|i| visit(i, deps, &mut state))
}

/// What the broker must answer to `plan`.
pub fn evaluate(plan: &PlanRequest, limits: &Limits, sabotage: ModelSabotage) -> Expectation {
    if let Some((code, step)) = validate(plan, limits) {
        return Expectation::Rejected {
            code,
            step,
            graph: None,
        };
    }
    if plan.steps.is_empty() {
        return Expectation::Empty;
    }
    let names: Vec<String> = plan.steps.iter().map(|s| s.name.clone()).collect();
    let deps: Vec<BTreeSet<usize>> = plan
        .steps
        .iter()
        .map(|s| {
            let mut found = BTreeSet::new();
            for v in s.args.iter().chain(s.kwargs.values()) {
                references(v, &names, &mut found);
            }
            found
        })
        .collect();
    let graph = Graph { names, deps };
    if has_cycle(&graph.deps) {
        return Expectation::Rejected {
            code: ErrorCode::PlanCycle,
            step: None,
            graph: Some(graph),
        };
    }
    // Dataflow order (rule 4): a step is evaluated once every step it references is.
    let n = plan.steps.len();
    let mut steps: Vec<Option<StepModel>> = vec![None; n];
    let mut values: Vec<Option<Value>> = vec![None; n];
    while steps.iter().any(Option::is_none) {
        for i in 0..n {
            if steps[i].is_some() || graph.deps[i].iter().any(|&d| steps[d].is_none()) {
                continue;
            }
            let model = if graph.deps[i].iter().any(|&d| values[d].is_none()) {
                StepModel {
                    outcome: Outcome::Blocked,
                    args: None,
                }
            } else {
                let step = &plan.steps[i];
                let mut r = Resolver {
                    names: &graph.names,
                    values: &values,
                    unresolved: Vec::new(),
                };
                let args: Vec<Value> = step.args.iter().map(|v| r.value(v)).collect();
                let kwargs: BTreeMap<String, Value> = step
                    .kwargs
                    .iter()
                    .map(|(k, v)| (k.clone(), r.value(v)))
                    .collect();
                if r.unresolved.is_empty() {
                    let outcome = match functions::call(&step.fun, &args, &kwargs) {
                        Ok(_) if sabotage == ModelSabotage::WrongEcho && step.fun == "echo" => {
                            Outcome::Ok(Value::from("sabotaged"))
                        }
                        Ok(v) => Outcome::Ok(v),
                        Err(f) => Outcome::Fails(f),
                    };
                    StepModel {
                        outcome,
                        args: Some((args, kwargs)),
                    }
                } else {
                    StepModel {
                        outcome: Outcome::Unresolved(r.unresolved),
                        args: None,
                    }
                }
            };
            if let Outcome::Ok(v) = &model.outcome {
                values[i] = Some(v.clone());
            }
            steps[i] = Some(model);
        }
    }
    let steps: Vec<StepModel> = steps
        .into_iter()
        .map(|s| s.expect("all evaluated"))
        .collect();
    let result = values.iter().all(Option::is_some).then(|| {
        (0..n)
            .filter(|&i| plan.all_results || graph.is_sink(i))
            .map(|i| {
                (
                    graph.names[i].clone(),
                    values[i].clone().expect("all succeed"),
                )
            })
            .collect()
    });
    Expectation::Runs(RunModel {
        graph,
        steps,
        result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpreg_protocol::Step;

    fn plan(steps: Vec<Step>) -> PlanRequest {
        crate::sim::messages::plan(1, steps)
    }

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    #[test]
    fn the_seed_example_and_field_paths() {
        let p = plan(vec![
            Step::new("|first", "echo", vec![s("hi there!")]),
            Step::new("|second", "echo", vec![s("|first")]),
            Step::new(
                "|third",
                "concat",
                vec![s("|first"), s("|second"), s("say |first")],
            ),
        ]);
        let Expectation::Runs(run) = evaluate(&p, &Limits::default(), ModelSabotage::None) else {
            panic!()
        };
        let result = run.result.expect("succeeds");
        assert_eq!(result.len(), 1);
        let third = &result["|third"];
        assert_eq!(
            walk(third, "items.2"),
            Some(&s("say |first")),
            "a string merely containing a name is a literal"
        );
        let p = plan(vec![
            Step::new(
                "a",
                "echo",
                vec![Value::Map(vec![(
                    s("x"),
                    Value::Array(vec![Value::from(10), Value::from(20)]),
                )])],
            ),
            Step::new("b", "echo", vec![s("a.x.1")]),
            Step::new("c", "echo", vec![s("a.y")]),
        ]);
        let Expectation::Runs(run) = evaluate(&p, &Limits::default(), ModelSabotage::None) else {
            panic!()
        };
        assert_eq!(run.steps[1].outcome, Outcome::Ok(Value::from(20)));
        assert_eq!(
            run.steps[2].outcome,
            Outcome::Unresolved(vec!["a.y".into()])
        );
        assert!(run.result.is_none());
    }

    #[test]
    fn map_keys_are_never_references_and_cycles_are_found() {
        let p = plan(vec![
            Step::new(
                "a",
                "echo",
                vec![Value::Map(vec![(s("b"), Value::from(1))])],
            ),
            Step::new("b", "echo", vec![Value::from(2)]),
        ]);
        let Expectation::Runs(run) = evaluate(&p, &Limits::default(), ModelSabotage::None) else {
            panic!()
        };
        assert!(run.graph.deps[0].is_empty());
        let p = plan(vec![
            Step::new("a", "echo", vec![s("b")]),
            Step::new("b", "echo", vec![s("a.x")]),
        ]);
        let Expectation::Rejected {
            code,
            graph: Some(g),
            ..
        } = evaluate(&p, &Limits::default(), ModelSabotage::None)
        else {
            panic!()
        };
        assert_eq!(code, ErrorCode::PlanCycle);
        assert!(g.is_cycle(&["b".into(), "a".into()]));
        assert!(!g.is_cycle(&["a".into()]));
    }
}
