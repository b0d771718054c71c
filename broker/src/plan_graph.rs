//! Plan validation and the dependency graph (ARCHITECTURE section 3, rules 1, 3 and 6).
//!
//! A step depends on every step it references. A reference is a string value, anywhere inside
//! the step's `args` or `kwargs` values (never map keys), that equals a step name or starts
//! with `<name>.`. Names cannot contain `.`, so the text before the first `.` is the only
//! candidate name in a string.

use crate::fast_hash::FastMap;

use mpreg_protocol::{ErrorCode, Limits, Step, Value};

/// Most step names a `plan_cycle` error lists in its `cycle` field: a reply naming every step
/// of a 100,000-step loop could exceed the message limit (names are up to 256 bytes).
pub const MAX_CYCLE_NAMES: usize = 1_000;
/// Step names quoted in a `plan_cycle` error's message.
const CYCLE_NAMES_IN_MESSAGE: usize = 10;

/// Why a plan was rejected before anything ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    /// The error code sent to the client.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// The step concerned, when there is one.
    pub step: Option<String>,
    /// The steps of a cycle, in dependency order (`plan_cycle`).
    pub cycle: Option<Vec<String>>,
}

impl PlanError {
    fn new(code: ErrorCode, message: impl Into<String>, step: Option<&str>) -> Self {
        PlanError {
            code,
            message: message.into(),
            step: step.map(str::to_string),
            cycle: None,
        }
    }
}

/// The validated shape of a plan: who depends on whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanGraph {
    /// For each step, the distinct steps it references.
    pub deps: Vec<Vec<u32>>,
    /// For each step, the distinct steps that reference it.
    pub dependents: Vec<Vec<u32>>,
    /// For each step, whether its arguments contain any reference (else they are sent as-is).
    pub has_refs: Vec<bool>,
    /// Step name to index.
    pub index: FastMap<String, u32>,
}

impl PlanGraph {
    /// Validates `steps` against `limits` and builds the graph.
    pub fn build(steps: &[Step], limits: &Limits) -> Result<PlanGraph, PlanError> {
        if steps.len() > limits.max_steps {
            return Err(PlanError::new(
                ErrorCode::TooManySteps,
                format!(
                    "plan has {} steps; the limit is {}",
                    steps.len(),
                    limits.max_steps
                ),
                None,
            ));
        }
        let mut index = FastMap::with_capacity_and_hasher(steps.len(), Default::default());
        for (i, step) in steps.iter().enumerate() {
            check_step(step, limits)?;
            if index.insert(step.name.clone(), i as u32).is_some() {
                return Err(PlanError::new(
                    ErrorCode::DuplicateStepName,
                    format!("step name `{}` appears more than once", step.name),
                    Some(&step.name),
                ));
            }
        }
        let mut deps = Vec::with_capacity(steps.len());
        let mut has_refs = Vec::with_capacity(steps.len());
        for step in steps {
            let mut found = Vec::new();
            let mut any = false;
            for_each_string(step, |s| {
                if let Some(target) = reference_target(s, &index) {
                    any = true;
                    found.push(target);
                }
            });
            found.sort_unstable();
            found.dedup();
            deps.push(found);
            has_refs.push(any);
        }
        let mut dependents = vec![Vec::new(); steps.len()];
        for (i, d) in deps.iter().enumerate() {
            for &target in d {
                dependents[target as usize].push(i as u32);
            }
        }
        let graph = PlanGraph {
            deps,
            dependents,
            has_refs,
            index,
        };
        // A plan without references (a single call, a fan of independent steps) has no cycle.
        let acyclic = graph.deps.iter().all(Vec::is_empty);
        if let Some(cycle) = (!acyclic).then(|| graph.find_cycle()).flatten() {
            let names: Vec<String> = cycle
                .iter()
                .take(MAX_CYCLE_NAMES)
                .map(|&i| steps[i as usize].name.clone())
                .collect();
            let shown = names.len().min(CYCLE_NAMES_IN_MESSAGE);
            let mut message = format!(
                "the plan has a cycle of {} steps: {}",
                cycle.len(),
                names[..shown].join(" -> ")
            );
            if cycle.len() > shown {
                message.push_str(" -> ...");
            }
            return Err(PlanError {
                code: ErrorCode::PlanCycle,
                message,
                step: names.first().cloned(),
                cycle: Some(names),
            });
        }
        Ok(graph)
    }

    /// The graph of one step whose arguments are plain data: a step forwarded by a peer, its
    /// references already resolved by the plan's owner (a result that happens to equal the
    /// step's name is a value here, not a reference).
    pub fn single_resolved(name: &str) -> PlanGraph {
        PlanGraph {
            deps: vec![Vec::new()],
            dependents: vec![Vec::new()],
            has_refs: vec![false],
            index: FastMap::from_iter([(name.to_string(), 0)]),
        }
    }

    /// Steps no other step references: their results form the reply by default.
    pub fn is_sink(&self, step: usize) -> bool {
        self.dependents[step].is_empty()
    }

    /// A cycle, as step indices where each references the next (and the last the first).
    fn find_cycle(&self) -> Option<Vec<u32>> {
        // Kahn's algorithm: whatever cannot be ordered lies on or behind a cycle.
        let n = self.deps.len();
        let mut pending: Vec<usize> = self.deps.iter().map(Vec::len).collect();
        let mut ready: Vec<usize> = (0..n).filter(|&i| pending[i] == 0).collect();
        let mut ordered = 0;
        while let Some(i) = ready.pop() {
            ordered += 1;
            for &d in &self.dependents[i] {
                pending[d as usize] -= 1;
                if pending[d as usize] == 0 {
                    ready.push(d as usize);
                }
            }
        }
        if ordered == n {
            return None;
        }
        // Name one cycle. Every step left unordered has an unordered dependency (that is why
        // it stayed), so following the first one from any of them must come back to a step
        // already on the path: the steps from there on form a cycle. Iterative, O(steps): a
        // client-controlled loop of any length cannot exhaust the stack.
        let next = |i: usize| {
            self.deps[i]
                .iter()
                .map(|&d| d as usize)
                .find(|&d| pending[d] > 0)
        };
        let first = (0..n).find(|&i| pending[i] > 0)?;
        let mut position = vec![usize::MAX; n];
        let mut path = Vec::new();
        let mut at = first;
        while position[at] == usize::MAX {
            position[at] = path.len();
            path.push(at);
            at = next(at)?;
        }
        let cycle = path.split_off(position[at]);
        // Start at the cycle's smallest step: the same plan always names the same cycle.
        let (low, _) = cycle.iter().enumerate().min_by_key(|&(_, &i)| i)?;
        Some(
            cycle[low..]
                .iter()
                .chain(&cycle[..low])
                .map(|&i| i as u32)
                .collect(),
        )
    }
}

fn check_step(step: &Step, limits: &Limits) -> Result<(), PlanError> {
    let name = &step.name;
    if name.is_empty() {
        return Err(PlanError::new(
            ErrorCode::EmptyStepName,
            "a step has an empty name",
            None,
        ));
    }
    if name.contains('.') {
        return Err(PlanError::new(
            ErrorCode::InvalidStepName,
            format!("step name `{name}` contains `.`, which separates a reference's field path"),
            Some(name),
        ));
    }
    if name.len() > limits.max_name_bytes {
        return Err(PlanError::new(
            ErrorCode::InvalidStepName,
            format!(
                "step name of {} bytes exceeds the limit of {}",
                name.len(),
                limits.max_name_bytes
            ),
            Some(&truncate(name)),
        ));
    }
    if step.fun.is_empty() || step.fun.len() > limits.max_name_bytes {
        return Err(PlanError::new(
            ErrorCode::InvalidPlan,
            format!("step `{name}` has an empty or over-long function name"),
            Some(name),
        ));
    }
    if step.locs.len() > limits.max_locs {
        return Err(PlanError::new(
            ErrorCode::InvalidPlan,
            format!(
                "step `{name}` asks for {} resources; the limit is {}",
                step.locs.len(),
                limits.max_locs
            ),
            Some(name),
        ));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The step a string refers to, if any.
pub fn reference_target(s: &str, index: &FastMap<String, u32>) -> Option<u32> {
    let head = s.split_once('.').map_or(s, |(head, _)| head);
    index.get(head).copied()
}

/// Calls `f` on every string value in a step's args and kwargs values, at any depth.
pub fn for_each_string(step: &Step, mut f: impl FnMut(&str)) {
    let mut stack: Vec<&Value> = step.args.iter().chain(step.kwargs.values()).collect();
    while let Some(value) = stack.pop() {
        match value {
            Value::String(s) => {
                if let Some(s) = s.as_str() {
                    f(s);
                }
            }
            Value::Array(items) => stack.extend(items.iter()),
            Value::Map(entries) => stack.extend(entries.iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn step(name: &str, args: Vec<Value>) -> Step {
        Step::new(name, "echo", args)
    }

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    #[test]
    fn references_at_any_depth_but_not_in_keys() {
        let steps = vec![
            step("a", vec![]),
            step("b", vec![]),
            step(
                "c",
                vec![
                    Value::Array(vec![Value::Map(vec![(s("a"), s("b.rows.0"))])]),
                    s("bx"),
                    s("a."),
                ],
            ),
        ];
        let g = PlanGraph::build(&steps, &Limits::default()).unwrap();
        // `a` as a map key is not a reference; `b.rows.0` and `a.` are; `bx` is a literal.
        assert_eq!(g.deps[2], vec![0, 1]);
        assert!(g.is_sink(2) && !g.is_sink(0) && !g.is_sink(1));
        assert_eq!(g.has_refs, vec![false, false, true]);
    }

    #[test]
    fn kwargs_values_are_references() {
        let mut c = step("c", vec![]);
        c.kwargs.insert("a".into(), s("x"));
        c.kwargs.insert("y".into(), s("lit"));
        let g = PlanGraph::build(&[step("x", vec![]), c], &Limits::default()).unwrap();
        assert_eq!(g.deps[1], vec![0]);
    }

    #[test]
    fn rejects_bad_names() {
        let l = Limits::default();
        let code = |steps: Vec<Step>| PlanGraph::build(&steps, &l).unwrap_err().code;
        assert_eq!(code(vec![step("", vec![])]), ErrorCode::EmptyStepName);
        assert_eq!(
            code(vec![step("a", vec![]), step("a", vec![])]),
            ErrorCode::DuplicateStepName
        );
        assert_eq!(code(vec![step("a.b", vec![])]), ErrorCode::InvalidStepName);
        assert_eq!(
            code(vec![step(&"n".repeat(300), vec![])]),
            ErrorCode::InvalidStepName
        );
        let too_many = Limits { max_steps: 2, ..l };
        let err = PlanGraph::build(
            &[step("a", vec![]), step("b", vec![]), step("c", vec![])],
            &too_many,
        );
        assert_eq!(err.unwrap_err().code, ErrorCode::TooManySteps);
    }

    #[test]
    fn names_the_cycle() {
        let steps = vec![
            step("start", vec![]),
            step("a", vec![s("c"), s("start")]),
            step("b", vec![s("a.x")]),
            step("c", vec![s("b")]),
            step("after", vec![s("c")]),
        ];
        let err = PlanGraph::build(&steps, &Limits::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::PlanCycle);
        assert_eq!(err.cycle.unwrap(), vec!["a", "c", "b"]);
        let selfref =
            PlanGraph::build(&[step("me", vec![s("me.x")])], &Limits::default()).unwrap_err();
        assert_eq!(selfref.cycle.unwrap(), vec!["me"]);
    }

    /// Steps `s0..s{n-1}`, each referencing the next; the last references `s{close}` if given.
    fn ring(n: usize, close: Option<usize>) -> Vec<Step> {
        (0..n)
            .map(|i| {
                let next = if i + 1 < n { Some(i + 1) } else { close };
                step(
                    &format!("s{i}"),
                    next.map(|j| vec![s(&format!("s{j}"))]).unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn a_loop_of_max_steps_is_rejected_without_exhausting_the_stack() {
        // A recursive cycle search overflowed the stack from about 60,000 steps.
        let limits = Limits::default();
        let err = PlanGraph::build(&ring(limits.max_steps, Some(0)), &limits).unwrap_err();
        assert_eq!(err.code, ErrorCode::PlanCycle);
        let cycle = err.cycle.unwrap();
        assert_eq!(cycle.len(), MAX_CYCLE_NAMES);
        assert_eq!((cycle[0].as_str(), cycle[1].as_str()), ("s0", "s1"));
        assert!(err
            .message
            .starts_with("the plan has a cycle of 100000 steps: s0 -> s1"));
        assert!(err.message.len() < 200, "{}", err.message);
        // And as a chain it is valid: every walk over it is iterative too.
        let chain = PlanGraph::build(&ring(limits.max_steps, None), &limits).unwrap();
        assert!(chain.is_sink(0) && !chain.is_sink(limits.max_steps - 1));
    }

    #[test]
    fn empty_plan_is_valid() {
        let g = PlanGraph::build(&[], &Limits::default()).unwrap();
        assert!(g.deps.is_empty());
    }

    /// Random DAGs: edges only point to earlier steps, shuffled by a permutation.
    fn dag() -> impl Strategy<Value = (Vec<Step>, Vec<Vec<usize>>)> {
        (1usize..40).prop_flat_map(|n| {
            let edges = proptest::collection::vec(
                proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
                n,
            );
            (
                Just(n),
                edges,
                Just(()).prop_perturb(move |_, mut rng| {
                    let mut order: Vec<usize> = (0..n).collect();
                    for i in (1..n).rev() {
                        order.swap(i, rng.random_range(0..=i));
                    }
                    order
                }),
            )
                .prop_map(|(n, edges, order)| {
                    // Step `order[i]` may reference steps `order[j]` with j < i.
                    let mut deps = vec![Vec::new(); n];
                    for (i, picks) in edges.iter().enumerate() {
                        if i == 0 {
                            continue;
                        }
                        for p in picks {
                            deps[order[i]].push(order[p.index(i)]);
                        }
                        deps[order[i]].sort_unstable();
                        deps[order[i]].dedup();
                    }
                    let steps = (0..n)
                        .map(|i| {
                            let args = deps[i]
                                .iter()
                                .map(|d| Value::from(format!("s{d}.f")))
                                .collect();
                            step(&format!("s{i}"), args)
                        })
                        .collect();
                    (steps, deps)
                })
        })
    }

    proptest! {
        #[test]
        fn a_tail_into_a_loop_names_exactly_the_loop(len in 1usize..3_000, entry in any::<prop::sample::Index>()) {
            // s0 -> ... -> s{len-1} -> s{entry}: the loop is s{entry} .. s{len-1}.
            let entry = entry.index(len);
            let err = PlanGraph::build(&ring(len, Some(entry)), &Limits::default()).unwrap_err();
            prop_assert_eq!(err.code, ErrorCode::PlanCycle);
            let want: Vec<String> = (entry..len).take(MAX_CYCLE_NAMES).map(|i| format!("s{i}")).collect();
            prop_assert_eq!(err.cycle.unwrap(), want);
        }

        #[test]
        fn random_dags_are_accepted_with_exact_deps((steps, deps) in dag()) {
            let g = PlanGraph::build(&steps, &Limits::default()).unwrap();
            for (i, d) in deps.iter().enumerate() {
                let got: Vec<usize> = g.deps[i].iter().map(|&x| x as usize).collect();
                prop_assert_eq!(&got, d);
            }
        }

        #[test]
        fn adding_a_back_edge_is_a_cycle((mut steps, deps) in dag()) {
            // Find a dependency a -> b and make b reference a: the cycle must contain both.
            if let Some((a, b)) = deps.iter().enumerate().find_map(|(a, d)| d.first().map(|&b| (a, b))) {
                steps[b].args.push(Value::from(format!("s{a}")));
                let err = PlanGraph::build(&steps, &Limits::default()).unwrap_err();
                prop_assert_eq!(err.code, ErrorCode::PlanCycle);
                let cycle = err.cycle.unwrap();
                // Each named step references the next, and the last references the first.
                for (i, name) in cycle.iter().enumerate() {
                    let next = &cycle[(i + 1) % cycle.len()];
                    let at: usize = name[1..].parse().unwrap();
                    let refs: Vec<String> = steps[at].args.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
                    prop_assert!(refs.iter().any(|r| r == next || r.starts_with(&format!("{next}."))), "{name} does not reference {next}");
                }
            }
        }
    }
}
