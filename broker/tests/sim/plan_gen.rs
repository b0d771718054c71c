//! Random plans: DAGs of 1-20 steps whose arguments reference earlier steps by name and by
//! field paths into their (model-computed) results, inside containers and keyword arguments,
//! mixed with literals that look like references but are not; random resources, deadlines,
//! per-step timeouts and retries, `all_results` and `progress`. A few are invalid on purpose:
//! cycles, unknown functions, resources nobody holds, bad names, too many steps, paths that do
//! not resolve, arguments a function refuses.

use std::collections::{BTreeMap, BTreeSet};

use mpreg_protocol::{Limits, PlanRequest, Step, Value};

use super::functions::TAG;
use super::messages;
use super::model::{self, Expectation, ModelSabotage, Outcome};
use super::network::ConnId;
use super::rng::Rng;
use super::worker::WorkerSpec;

/// A function no worker serves.
pub const UNKNOWN_FUNCTION: &str = "nope";
/// A resource no worker holds.
pub const NOWHERE: &str = "nowhere";

/// What the world offers: the resources workers may hold.
pub const RESOURCES: &[&str] = &["gpu", "eu", "us", "ssd"];

/// Builds one random plan.
pub struct PlanGen<'a> {
    rng: &'a mut Rng,
    limits: &'a Limits,
    /// What the workers serve: most steps ask for what one of them offers.
    offers: &'a [WorkerSpec],
    names: Vec<String>,
    /// Each generated step's value as the model computes it (when it succeeds).
    values: Vec<Option<Value>>,
    /// Each generated step's direct references (generation order).
    deps: Vec<BTreeSet<usize>>,
    /// A plan meant to succeed: only offered functions, no `fail`, no bad arguments or paths
    /// (it may still fail: a worker dies, a deadline passes, a step is unroutable for now).
    clean: bool,
}

impl<'a> PlanGen<'a> {
    /// A generator drawing from `rng`, for a world whose workers serve `offers`.
    pub fn new(rng: &'a mut Rng, limits: &'a Limits, offers: &'a [WorkerSpec]) -> PlanGen<'a> {
        PlanGen {
            rng,
            limits,
            offers,
            clean: false,
            names: Vec::new(),
            values: Vec::new(),
            deps: Vec::new(),
        }
    }

    /// A plan with request id `id`, sent on `conn` (its steps are tagged with both).
    pub fn plan(mut self, id: u64, conn: ConnId) -> PlanRequest {
        self.clean = self.rng.percent(70);
        let shape = self.rng.below(100);
        let n = match shape {
            0..=1 => 0,
            2 => self.limits.max_steps + 1,
            _ => self.rng.range(1, 20.min(self.limits.max_steps as u64)) as usize,
        };
        let style = self.rng.below(4);
        self.names = (0..n)
            .map(|i| match style {
                0 => format!("s{i}"),
                1 => format!("|step{i}"),
                2 => format!("x-{i}"),
                _ => format!("ζ{i}"),
            })
            .collect();
        let mut steps: Vec<Step> = Vec::with_capacity(n);
        for i in 0..n {
            let step = self.step(i);
            steps.push(step);
            self.values.push(self.value_of(&steps, i));
        }
        self.break_some(&mut steps);
        self.rng.shuffle(&mut steps);
        for (ix, step) in steps.iter_mut().enumerate() {
            let tag = Value::Array(vec![
                Value::from(conn.0),
                Value::from(id),
                Value::from(ix as u64),
            ]);
            step.kwargs.insert(TAG.into(), tag);
        }
        let deadline_ms = match self.rng.below(100) {
            0..=34 => Some(self.rng.range(50, 2500)),
            35..=37 => Some(600_000),
            _ => None,
        };
        let mut plan = messages::plan(id, steps);
        plan.deadline_ms = deadline_ms;
        plan.all_results = self.rng.percent(30);
        plan.progress = self.rng.percent(30);
        plan
    }

    /// The model's value of step `i` given the steps so far (`None` unless it succeeds).
    fn value_of(&self, steps: &[Step], i: usize) -> Option<Value> {
        let prefix = messages::plan(0, steps.to_vec());
        match model::evaluate(&prefix, self.limits, ModelSabotage::None) {
            Expectation::Runs(run) => match &run.steps[i].outcome {
                Outcome::Ok(v) => Some(v.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// A function and resources: what one worker offers, or now and then anything at all
    /// (perhaps what nobody serves).
    fn placement(&mut self) -> (&'static str, Vec<String>) {
        let weight = |f: &str| match f {
            "echo" => 30,
            "concat" => 25,
            "slow" => 15,
            "add" => 12,
            "fail" => 3,
            _ => 1,
        };
        let clean = self.clean;
        let offered = |offer: &WorkerSpec| offer.functions.iter().any(|f| !clean || f != "fail");
        let offers: Vec<&WorkerSpec> = self.offers.iter().filter(|o| offered(o)).collect();
        if !offers.is_empty() && (clean || self.rng.percent(93)) {
            let offer = *self.rng.pick(&offers);
            let funs: Vec<(u64, &'static str)> = super::functions::FUNCTIONS
                .iter()
                .filter(|f| offer.functions.iter().any(|o| o == *f) && (!clean || **f != "fail"))
                .map(|&f| (weight(f), f))
                .collect();
            let fun = *self.rng.weighted(&funs);
            let locs = offer
                .resources
                .iter()
                .filter(|_| self.rng.percent(25))
                .cloned()
                .collect();
            return (fun, locs);
        }
        let all: Vec<(u64, &'static str)> = super::functions::FUNCTIONS
            .iter()
            .chain(&[UNKNOWN_FUNCTION])
            .map(|&f| (weight(f), f))
            .collect();
        let fun = *self.rng.weighted(&all);
        let locs = match self.rng.below(100) {
            0..=14 => vec![NOWHERE.to_string()],
            15..=49 => vec![],
            _ => {
                let mut locs: Vec<String> = (0..self.rng.range(1, 2))
                    .map(|_| self.rng.pick(RESOURCES).to_string())
                    .collect();
                locs.sort();
                locs.dedup();
                locs
            }
        };
        (fun, locs)
    }

    fn step(&mut self, i: usize) -> Step {
        let (fun, locs) = self.placement();
        self.deps.push(BTreeSet::new());
        let mut kwargs = BTreeMap::new();
        let args = match fun {
            "echo" if !self.clean && self.rng.percent(3) => vec![],
            "echo" | "nope" => vec![self.arg(i, 0)],
            "add" => vec![self.int_arg(i), self.int_arg(i)],
            "concat" => {
                for k in 0..self.rng.below(3) {
                    let v = self.arg(i, 0);
                    kwargs.insert(format!("k{k}"), v);
                }
                (0..self.rng.below(4)).map(|_| self.arg(i, 0)).collect()
            }
            "slow" => vec![Value::from(self.rng.range(0, 250)), self.arg(i, 0)],
            _ => vec![Value::from(format!("boom {i}"))],
        };
        if i > 0 && self.rng.percent(10) {
            // A dependency through a keyword argument the function ignores.
            let r = self.reference(i);
            kwargs.insert("after".into(), r);
        }
        let mut step = Step::new(self.names[i].clone(), fun, args);
        step.kwargs = kwargs;
        step.locs = locs;
        step.timeout_ms = self.rng.percent(8).then(|| self.rng.range(20, 400));
        step.retries = self.rng.percent(25).then(|| self.rng.range(0, 2) as u32);
        step
    }

    /// An argument of step `i`: a reference (maybe inside a container) or a literal.
    fn arg(&mut self, i: usize, depth: u32) -> Value {
        let r = self.rng.below(100);
        if i > 0 && r < 40 {
            return self.reference(i);
        }
        if i > 0 && r < 50 && depth < 2 {
            let inner = self.arg(i, depth + 1);
            return if self.rng.percent(50) {
                let lit = self.literal(depth + 1);
                Value::Array(vec![inner, lit])
            } else {
                Value::Map(vec![(Value::from("k"), inner)])
            };
        }
        self.literal(depth)
    }

    /// An integer, or a reference to one (now and then something else, which `add` refuses).
    fn int_arg(&mut self, i: usize) -> Value {
        if !self.clean && self.rng.percent(4) {
            return Value::from("seven");
        }
        if i > 0 && self.rng.percent(40) {
            let j = self.rng.index(i);
            let name = self.names[j].clone();
            match &self.values[j] {
                Some(Value::Integer(_)) => {
                    self.deps[i].insert(j);
                    return Value::from(name);
                }
                Some(Value::Map(m))
                    if m.iter()
                        .any(|(k, v)| k.as_str() == Some("count") && v.is_i64()) =>
                {
                    // concat's count.
                    self.deps[i].insert(j);
                    return Value::from(format!("{name}.count"));
                }
                _ => {}
            }
        }
        Value::from(self.rng.range(0, 2000) as i64 - 1000)
    }

    /// A reference to an earlier step: its name, a field path into its value, or (rarely) a
    /// path that does not resolve.
    fn reference(&mut self, i: usize) -> Value {
        let j = self.rng.index(i);
        self.deps[i].insert(j);
        let name = self.names[j].clone();
        if !self.clean && self.rng.percent(4) {
            let bad = *self
                .rng
                .pick(&["nosuch", "items.99", "count.x", "kw.missing"]);
            return Value::from(format!("{name}.{bad}"));
        }
        if self.rng.percent(60) {
            if let Some(path) = self.values[j].clone().and_then(|v| self.path_into(&v)) {
                return Value::from(format!("{name}.{path}"));
            }
        }
        Value::from(name)
    }

    /// A random path that resolves in `value`, if it has any structure.
    fn path_into(&mut self, value: &Value) -> Option<String> {
        let mut segments = Vec::new();
        let mut at = value;
        loop {
            let go_on = segments.is_empty() || self.rng.percent(60);
            match at {
                Value::Map(entries) if go_on && !entries.is_empty() => {
                    let (k, v) = &entries[self.rng.index(entries.len())];
                    let segment = match k {
                        Value::String(s) => match s.as_str() {
                            Some(s) if !s.is_empty() && !s.contains('.') => s.to_string(),
                            _ => break,
                        },
                        Value::Integer(n) => n.to_string(),
                        _ => break,
                    };
                    segments.push(segment);
                    at = v;
                }
                Value::Array(items) if go_on && !items.is_empty() => {
                    let k = self.rng.index(items.len());
                    segments.push(k.to_string());
                    at = &items[k];
                }
                _ => break,
            }
        }
        (!segments.is_empty()).then(|| segments.join("."))
    }

    /// A literal: scalars, containers, maps whose keys are step names (keys are never
    /// references), integer keys, strings that merely contain a step name.
    fn literal(&mut self, depth: u32) -> Value {
        let some_name = if self.names.is_empty() {
            "s0".to_string()
        } else {
            self.rng.pick(&self.names).clone()
        };
        match self.rng.below(12) {
            0..=2 => Value::from(self.rng.range(0, 2000) as i64 - 1000),
            3 | 4 => Value::from(format!("w{}", self.rng.below(50))),
            5 => match self.rng.below(4) {
                0 => Value::from(format!("say {some_name}")),
                1 => Value::from(format!("{some_name}x")),
                2 => Value::from("nosuch.path"),
                _ => Value::from(""),
            },
            6 => Value::Nil,
            7 if depth < 2 => Value::Array(
                (0..self.rng.below(4))
                    .map(|_| self.literal(depth + 1))
                    .collect(),
            ),
            8 if depth < 2 => Value::Map(vec![
                (Value::from(some_name), self.literal(depth + 1)),
                (Value::from("b"), self.literal(depth + 1)),
            ]),
            9 if depth < 2 => Value::Map(vec![
                (Value::from(1), self.literal(depth + 1)),
                (Value::from(-2), self.literal(depth + 1)),
            ]),
            10 => Value::from(self.rng.percent(50)),
            _ => Value::from(self.rng.below(1 << 40)),
        }
    }

    /// Makes a few plans invalid: a cycle, a bad name, a duplicate, an empty function.
    fn break_some(&mut self, steps: &mut [Step]) {
        let n = steps.len();
        if n == 0 {
            return;
        }
        match self.rng.below(100) {
            0..=3 => {
                // A cycle: a step referencing itself or one of the steps that reference it.
                let a = self.rng.index(n);
                let back: Vec<usize> = (0..n).filter(|&b| self.deps[b].contains(&a)).collect();
                let b = if back.is_empty() {
                    a
                } else {
                    *self.rng.pick(&back)
                };
                let name = self.names[b].clone();
                steps[a].args.push(Value::from(name));
            }
            4 if n > 1 => {
                let (a, b) = (self.rng.index(n), self.rng.index(n));
                if a != b {
                    steps[a].name = steps[b].name.clone();
                }
            }
            5 => steps[self.rng.index(n)].name = String::new(),
            6 => steps[self.rng.index(n)].name = "bad.name".into(),
            7 => steps[self.rng.index(n)].fun = String::new(),
            _ => {}
        }
    }
}
