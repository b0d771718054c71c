//! Target `plan_validation`: plans through validation and reference resolution, against a
//! model written from the rules (a part of `fuzz/targets.rs`).

use super::*;

/// Step names the generator draws from: they collide often, and include the invalid ones.
const NAMES: &[&str] = &[
    "a",
    "b",
    "c",
    "ab",
    "d",
    "a.b",
    "",
    "é",
    "long_name",
    "0",
    "a.",
    ".",
];
/// Field path segments the generator appends to names.
const SEGMENTS: &[&str] = &["x", "0", "1", "k", "", "+1", "-1", "y"];
/// Function names: one empty, one too long for the small limits.
const FUNS: &[&str] = &["f", "echo", "", "function_name"];

/// Target `plan_validation`. The first byte chooses:
///
/// - bit 0 clear: the rest is a `plan` body, decoded as the broker does;
/// - bit 0 set: the rest drives a generator of steps whose names and references collide
///   (duplicates, dotted names, cycles, field paths), and the plan goes through the codec;
/// - bit 1 set: small limits (8 steps, 8-byte names, 2 resources), else the defaults;
/// - bit 2 set (overrides bit 0): a long shape, see [`long_shape`]: a loop or a chain of up
///   to 262,140 steps, the sizes where a recursive walk of the graph overflows the stack.
///
/// The plan goes through [`PlanGraph::build`] and, when valid, through reference resolution
/// in dependency order; both are compared with a model written from the rules.
pub fn plan_validation(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let limits = if mode & 2 == 0 {
        Limits::default()
    } else {
        Limits {
            max_steps: 8,
            max_name_bytes: 8,
            max_locs: 2,
            ..Limits::default()
        }
    };
    let steps = if mode & 4 != 0 {
        long_shape(&mut input)
    } else if mode & 1 == 0 {
        match decode_body::<PlanRequest>(input.rest(), &limits) {
            Ok(plan) => plan.steps,
            Err(_) => return,
        }
    } else {
        let steps = generate_steps(&mut input);
        let plan = PlanRequest {
            id: 1,
            steps,
            deadline_ms: None,
            all_results: false,
            progress: false,
            progress_topic: None,
            plan: None,
            trace: false,
        };
        let body = encode_body(&plan);
        let decoded = decode_body::<PlanRequest>(&body, &Limits::default())
            .unwrap_or_else(|e| panic!("a generated plan does not decode: {e}"));
        assert_eq!(encode_body(&decoded), body);
        decoded.steps
    };
    check_plan(&steps, &limits, &mut input);
}

/// Steps `s0 .. s{n-1}` where each references the next, read from the input as a
/// little-endian u16 `k` (n = 4k, so up to 262,140) and a shape byte: 0 a chain (valid), 1 a
/// loop through every step, 2 a chain whose last step references the middle one (a tail
/// leading into a loop), 3 a loop with a second reference to step 0 from every step.
fn long_shape(input: &mut Input<'_>) -> Vec<Step> {
    let k = usize::from(input.byte()) | usize::from(input.byte()) << 8;
    let n = 4 * k;
    let shape = input.below(4);
    (0..n)
        .map(|i| {
            let mut args = Vec::new();
            let next = i + 1;
            match (shape, next < n) {
                (_, true) => args.push(Value::from(format!("s{next}"))),
                (1 | 3, false) => args.push(Value::from("s0")),
                (2, false) => args.push(Value::from(format!("s{}", n / 2))),
                _ => {}
            }
            if shape == 3 && i > 0 {
                args.push(Value::from("s0.x"));
            }
            Step::new(format!("s{i}"), "f", args)
        })
        .collect()
}

fn generate_steps(input: &mut Input<'_>) -> Vec<Step> {
    let count = input.below(10);
    (0..count)
        .map(|_| {
            let mut step = Step::new(pick(input, NAMES), pick(input, FUNS), Vec::new());
            for _ in 0..input.below(4) {
                step.args.push(generate_value(input, 3));
            }
            for _ in 0..input.below(3) {
                step.kwargs
                    .insert(pick(input, NAMES).to_string(), generate_value(input, 3));
            }
            for _ in 0..input.below(4) {
                step.locs.push(pick(input, FUNS).to_string());
            }
            step
        })
        .collect()
}

fn pick<'n>(input: &mut Input<'_>, from: &[&'n str]) -> &'n str {
    from[input.below(from.len())]
}

/// A value whose strings are mostly references: a name, or a name and a field path.
fn generate_value(input: &mut Input<'_>, depth: u32) -> Value {
    let choice = if depth == 0 {
        input.below(4)
    } else {
        input.below(7)
    };
    match choice {
        0 => Value::from(pick(input, NAMES)),
        1 => {
            let mut s = pick(input, NAMES).to_string();
            for _ in 0..=input.below(3) {
                s.push('.');
                s.push_str(pick(input, SEGMENTS));
            }
            Value::from(s)
        }
        2 => Value::from(i64::from(input.byte() as i8)),
        3 => Value::Nil,
        4 => Value::Array(
            (0..input.below(4))
                .map(|_| generate_value(input, depth - 1))
                .collect(),
        ),
        5 => Value::Map(
            (0..input.below(4))
                .map(|_| {
                    let key = match input.below(3) {
                        0 => Value::from(input.below(3) as i64 - 1),
                        _ => Value::from(pick(input, SEGMENTS)),
                    };
                    (key, generate_value(input, depth - 1))
                })
                .collect(),
        ),
        _ => Value::from(pick(input, SEGMENTS)),
    }
}

/// Checks [`PlanGraph::build`] against the model and, for a valid plan, resolution.
fn check_plan(steps: &[Step], limits: &Limits, input: &mut Input<'_>) {
    let model = model_validate(steps, limits);
    let built = PlanGraph::build(steps, limits);
    match (built, model) {
        (Ok(graph), Ok(deps)) => {
            assert_eq!(graph.deps, deps, "dependencies");
            for (i, d) in graph.deps.iter().enumerate() {
                assert_eq!(graph.has_refs[i], !d.is_empty(), "has_refs of step {i}");
                assert_eq!(graph.index.get(&steps[i].name), Some(&(i as u32)));
                for &target in d {
                    assert!(graph.dependents[target as usize].contains(&(i as u32)));
                }
            }
            let edges: usize = graph.deps.iter().map(Vec::len).sum();
            let back: usize = graph.dependents.iter().map(Vec::len).sum();
            assert_eq!(edges, back, "dependents mirror dependencies");
            for (i, step) in steps.iter().enumerate() {
                let mut walked = Vec::new();
                for_each_string(step, |s| walked.push(s.to_string()));
                walked.sort_unstable();
                let mut modelled = Vec::new();
                for v in step.args.iter().chain(step.kwargs.values()) {
                    collect_strings(v, &mut modelled);
                }
                modelled.sort_unstable();
                assert_eq!(walked, modelled, "strings of step {i}");
                assert_eq!(graph.is_sink(i), graph.dependents[i].is_empty());
            }
            check_resolution(steps, &graph, input);
        }
        (Err(e), Err(code)) => {
            assert_eq!(e.code, code, "{}", e.message);
            if code == ErrorCode::PlanCycle {
                let cycle = e.cycle.expect("a plan_cycle error names its cycle");
                check_cycle(steps, limits, &cycle);
                assert_eq!(e.step.as_ref(), cycle.first());
            } else {
                assert!(e.cycle.is_none());
            }
        }
        (built, model) => panic!(
            "build says {:?}, the model says {:?}",
            built.map(|g| g.deps).map_err(|e| (e.code, e.message)),
            model
        ),
    }
}

/// The rules, read plainly: the step count, then each step's name, function and resources
/// and uniqueness in order; then references by the text before the first `.`; then no cycle.
/// Returns each step's sorted distinct dependencies, or the error code.
fn model_validate(steps: &[Step], limits: &Limits) -> Result<Vec<Vec<u32>>, ErrorCode> {
    if steps.len() > limits.max_steps {
        return Err(ErrorCode::TooManySteps);
    }
    let mut index = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        let name = step.name.as_str();
        if name.is_empty() {
            return Err(ErrorCode::EmptyStepName);
        }
        if name.contains('.') || name.len() > limits.max_name_bytes {
            return Err(ErrorCode::InvalidStepName);
        }
        if step.fun.is_empty()
            || step.fun.len() > limits.max_name_bytes
            || step.locs.len() > limits.max_locs
        {
            return Err(ErrorCode::InvalidPlan);
        }
        if index.insert(name, i as u32).is_some() {
            return Err(ErrorCode::DuplicateStepName);
        }
    }
    let deps = model_deps(steps, &index);
    // Peel steps nobody left depends on; whatever remains lies on or before a cycle.
    let mut dependents = vec![0usize; steps.len()];
    for d in &deps {
        for &t in d {
            dependents[t as usize] += 1;
        }
    }
    let mut peel: Vec<usize> = (0..steps.len()).filter(|&i| dependents[i] == 0).collect();
    let mut peeled = 0;
    while let Some(i) = peel.pop() {
        peeled += 1;
        for &t in &deps[i] {
            dependents[t as usize] -= 1;
            if dependents[t as usize] == 0 {
                peel.push(t as usize);
            }
        }
    }
    if peeled < steps.len() {
        return Err(ErrorCode::PlanCycle);
    }
    Ok(deps)
}

fn model_deps(steps: &[Step], index: &HashMap<&str, u32>) -> Vec<Vec<u32>> {
    steps
        .iter()
        .map(|step| {
            let mut strings = Vec::new();
            for v in step.args.iter().chain(step.kwargs.values()) {
                collect_strings(v, &mut strings);
            }
            let mut targets: Vec<u32> = strings
                .iter()
                .filter_map(|s| index.get(s.split('.').next().unwrap_or_default()).copied())
                .collect();
            targets.sort_unstable();
            targets.dedup();
            targets
        })
        .collect()
}

/// Every UTF-8 string value inside `v`, map values included, map keys not.
fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.extend(s.as_str().map(str::to_string)),
        Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        Value::Map(entries) => entries.iter().for_each(|(_, v)| collect_strings(v, out)),
        _ => {}
    }
}

/// A reported cycle: distinct steps of the plan, each referencing the next, the last the first.
fn check_cycle(steps: &[Step], limits: &Limits, cycle: &[String]) {
    assert!(!cycle.is_empty(), "an empty cycle");
    let index: HashMap<&str, u32> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i as u32))
        .collect();
    let deps = model_deps(steps, &index);
    let distinct: HashSet<&String> = cycle.iter().collect();
    assert_eq!(
        distinct.len(),
        cycle.len(),
        "cycle {cycle:?} repeats a step"
    );
    // A cycle longer than the broker lists is cut after `MAX_CYCLE_NAMES` steps: every listed
    // step references the next, and the last one the first only when the list is whole.
    let whole = cycle.len() < MAX_CYCLE_NAMES;
    for (i, name) in cycle.iter().enumerate() {
        if i + 1 == cycle.len() && !whole {
            break;
        }
        let next = &cycle[(i + 1) % cycle.len()];
        let (Some(&at), Some(&to)) = (index.get(name.as_str()), index.get(next.as_str())) else {
            panic!("cycle {cycle:?} names a step the plan does not have");
        };
        assert!(
            deps[at as usize].contains(&to),
            "in cycle {cycle:?}, `{name}` does not reference `{next}` (limits {limits:?})"
        );
    }
}

/// Finishes the steps in dependency order with results drawn from the input, and resolves
/// each step's arguments first, as the engine does when it dispatches the step.
fn check_resolution(steps: &[Step], graph: &PlanGraph, input: &mut Input<'_>) {
    let mut pending: Vec<usize> = graph.deps.iter().map(Vec::len).collect();
    let mut ready: Vec<usize> = (0..steps.len()).filter(|&i| pending[i] == 0).collect();
    let mut finished: HashMap<String, Value> = HashMap::new();
    while let Some(i) = ready.pop() {
        let step = &steps[i];
        let resolved = resolve_args(&step.args, &step.kwargs, &finished);
        let modelled = model_resolve_args(step, &graph.index, &finished);
        match (resolved, modelled) {
            (Ok(got), Ok(want)) => {
                assert_eq!(
                    encode_body(&got),
                    encode_body(&want),
                    "step `{}`",
                    step.name
                );
                if !graph.has_refs[i] {
                    assert_eq!(
                        encode_body(&got),
                        encode_body(&(&step.args, &step.kwargs)),
                        "a step without references resolved to something else"
                    );
                }
            }
            (Err(e), Err(reference)) => assert_eq!(e.reference, reference),
            (got, want) => panic!(
                "step `{}`: resolve says {:?}, the model says {:?}",
                step.name,
                got.map(|_| ()),
                want.map(|_| ())
            ),
        }
        finished.insert(step.name.clone(), generate_result(input, 3));
        for &d in &graph.dependents[i] {
            pending[d as usize] -= 1;
            if pending[d as usize] == 0 {
                ready.push(d as usize);
            }
        }
    }
    assert_eq!(finished.len(), steps.len(), "a valid plan runs every step");
}

/// A result with the shapes paths walk: maps keyed by strings and integers, arrays.
fn generate_result(input: &mut Input<'_>, depth: u32) -> Value {
    let choice = if depth == 0 {
        input.below(3)
    } else {
        input.below(5)
    };
    match choice {
        0 => Value::from(pick(input, NAMES)),
        1 => Value::from(input.byte()),
        2 => Value::Nil,
        3 => Value::Array(
            (0..input.below(3))
                .map(|_| generate_result(input, depth - 1))
                .collect(),
        ),
        _ => Value::Map(
            (0..input.below(4))
                .map(|_| {
                    let key = match input.below(3) {
                        0 => Value::from(input.below(3) as i64 - 1),
                        _ => Value::from(pick(input, SEGMENTS)),
                    };
                    (key, generate_result(input, depth - 1))
                })
                .collect(),
        ),
    }
}

type ResolvedArgs = (Vec<Value>, BTreeMap<String, Value>);

/// Rule 2, read plainly. A string whose text before the first `.` names a step of the plan
/// must find that step finished (it is a dependency) and is replaced by its result walked
/// along the path; any other string is a literal. Returns the failing reference on error.
fn model_resolve_args<R: Results>(
    step: &Step,
    index: &FastMap<String, u32>,
    finished: &R,
) -> Result<ResolvedArgs, String> {
    let args = step
        .args
        .iter()
        .map(|v| model_resolve(v, index, finished))
        .collect::<Result<_, _>>()?;
    let mut kwargs = BTreeMap::new();
    for (k, v) in &step.kwargs {
        kwargs.insert(k.clone(), model_resolve(v, index, finished)?);
    }
    Ok((args, kwargs))
}

fn model_resolve<R: Results>(
    v: &Value,
    index: &FastMap<String, u32>,
    finished: &R,
) -> Result<Value, String> {
    match v {
        Value::String(s) => {
            let Some(text) = s.as_str() else {
                return Ok(v.clone());
            };
            if reference_target(text, index).is_none() {
                return Ok(v.clone());
            }
            let mut segments = text.split('.');
            let head = segments.next().unwrap_or_default();
            let Some(mut at) = finished.result(head) else {
                panic!("`{text}` is resolved before step `{head}` finished");
            };
            for segment in segments {
                at = match at {
                    Value::Map(entries) => entries
                        .iter()
                        .find(|(k, _)| match k {
                            Value::String(key) => key.as_str() == Some(segment),
                            Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
                                (Some(n), _) => n.to_string() == segment,
                                (None, Some(n)) => n.to_string() == segment,
                                _ => false,
                            },
                            _ => false,
                        })
                        .map(|(_, v)| v),
                    Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                    _ => None,
                }
                .ok_or_else(|| text.to_string())?;
            }
            Ok(at.clone())
        }
        Value::Array(items) => Ok(Value::Array(
            items
                .iter()
                .map(|i| model_resolve(i, index, finished))
                .collect::<Result<_, _>>()?,
        )),
        Value::Map(entries) => Ok(Value::Map(
            entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), model_resolve(v, index, finished)?)))
                .collect::<Result<_, String>>()?,
        )),
        other => Ok(other.clone()),
    }
}
