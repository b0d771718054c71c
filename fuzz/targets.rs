//! The bodies of the fuzz targets, one `pub fn` per target.
//!
//! Two builds include this file with `#[path]`: the cargo-fuzz binaries in
//! `fuzz/fuzz_targets/`, and the corpus replay test `broker/tests/fuzz_corpus.rs`, which runs
//! every committed input on the stable toolchain. So it uses only crates the broker already
//! depends on (`mpreg-protocol`, `mpreg-broker`) and no unsafe code.
//!
//! A panic is a finding: every assertion states a property of the broker, never of the input.
//!
//! - [`envelope`]: frames as the client and worker ROUTERs deliver them, through the decode
//!   path the engine runs (envelope, size and depth limits, body decoding, request-id peek),
//!   then through the real [`Engine`]; every message the engine sends must decode again.
//! - [`plan_validation`]: plans, as raw msgpack or generated with colliding names and
//!   references, through [`PlanGraph::build`] and reference resolution, against a model.
//! - [`topic_pattern`]: patterns and topics through `check_topic` and the [`Matcher`],
//!   against a reference matcher.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use mpreg_broker::engine::{Engine, EngineConfig};
use mpreg_broker::frontend::{feed_client, feed_worker, Frontend};
use mpreg_broker::ids::IdSource;
use mpreg_broker::matcher::Matcher;
use mpreg_broker::outbox::{ClientAddr, Delivery, EventSink, Outbox, WorkerAddr};
use mpreg_broker::plan_graph::{for_each_string, reference_target, PlanGraph, MAX_CYCLE_NAMES};
use mpreg_broker::resolve::{resolve_args, Results};
use mpreg_protocol::codec::{decode_body, encode_body, peek_request_id, DecodeError};
use mpreg_protocol::msgpack_scan::{scan, ScanError};
use mpreg_protocol::topic::check_topic;
use mpreg_protocol::{
    parse_envelope, router_prefix_len, BrokerToClient, BrokerToWorker, ClientToBroker, ErrorCode,
    Event, EventRef, Limits, PlanRequest, Step, Task, Value, WorkerToBroker,
};

// ----- input ---------------------------------------------------------------------------------

/// Reads structure out of fuzz input. Reads past the end yield zeros, so every input means
/// something and a shorter input is a simpler one.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads `data` from its first byte.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// True once every byte was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte (0 past the end).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// A number below `n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    /// A slice preceded by its length as a little-endian u16, cut short at the end.
    pub fn frame(&mut self) -> &'a [u8] {
        let len = usize::from(self.byte()) | usize::from(self.byte()) << 8;
        let (frame, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        frame
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

// ----- envelope ------------------------------------------------------------------------------

/// Runs a closure and returns the most heap it held at once, in bytes, if this build can
/// tell (the fuzz binaries install a counting allocator; the replay test cannot).
pub type PeakProbe = fn(&mut dyn FnMut()) -> Option<usize>;

/// A [`PeakProbe`] that measures nothing.
pub fn unmeasured(f: &mut dyn FnMut()) -> Option<usize> {
    f();
    None
}

/// Heap a decode may hold per body byte: a one-byte msgpack value becomes a 32-byte
/// `rmpv::Value`, a three-byte step a 144-byte `Step`, and vectors grow by doubling. A decoder
/// that trusted a declared length (an array32 header claiming 4 billion elements in five
/// bytes) would exceed this by orders of magnitude.
const DECODE_HEAP_PER_BODY_BYTE: usize = 256;
/// Heap a decode may hold whatever the body: serde caps a sequence's pre-allocation at 1 MiB.
const DECODE_HEAP_SLACK: usize = 2 << 20;

/// Most messages replayed from one input, so one input stays fast.
const MAX_MESSAGES: usize = 16;

/// Target `envelope`. The input is a sequence of at most [`MAX_MESSAGES`] messages, each a
/// header byte then its frames:
///
/// - `header & 3`: 0 client ROUTER, 1 worker ROUTER, 2 event XPUB, 3 a timer tick;
/// - for a socket, `(header >> 2) & 7` frames follow, each as [`Input::frame`], and
///   `header >> 5` picks what the outbox reports while handling it (6 `Full`, 7 `Gone`,
///   else `Sent`);
/// - for a tick, the clock advances by `(header >> 2) * 100` ms.
///
/// Each client or worker message first goes through the same calls the engine makes to
/// decode it (checked here), then through the engine itself.
pub fn envelope(data: &[u8], probe: PeakProbe) {
    let limits = EngineConfig::default().limits;
    let start = Instant::now();
    let mut now = start;
    let ids = IdSource::seeded(1, start, std::time::SystemTime::UNIX_EPOCH);
    let mut engine = Engine::new(EngineConfig::default(), start, ids);
    let frontend = Frontend {
        limits,
        ..Frontend::default()
    };
    let mut out = CheckedOutbox {
        delivery: Delivery::Sent,
        limits,
    };
    let mut input = Input::new(data);
    for _ in 0..MAX_MESSAGES {
        if input.is_empty() {
            break;
        }
        let header = input.byte();
        if header & 3 == 3 {
            now += Duration::from_millis(u64::from(header >> 2) * 100);
            engine.on_tick(&mut out, now);
            continue;
        }
        let count = usize::from((header >> 2) & 7);
        let frames: Vec<Vec<u8>> = (0..count).map(|_| input.frame().to_vec()).collect();
        out.delivery = match header >> 5 {
            6 => Delivery::Full,
            7 => Delivery::Gone,
            _ => Delivery::Sent,
        };
        match header & 3 {
            0 => {
                decode_client_frames(&frames, &limits, probe);
                feed_client(&frontend, &mut engine, &mut out, &frames, None, now);
            }
            1 => {
                decode_worker_frames(&frames, &limits, probe);
                feed_worker(&frontend, &mut engine, &mut out, &frames, None, now);
            }
            _ => {
                if let Some(frame) = frames.first() {
                    engine.on_event_frame(&mut out, frame, None, now);
                }
            }
        }
    }
}

/// What the engine does with a client ROUTER message before acting on it.
fn decode_client_frames(frames: &[Vec<u8>], limits: &Limits, probe: PeakProbe) {
    let prefix = router_prefix_len(frames);
    assert!(
        prefix <= frames.len(),
        "prefix {prefix} of {} frames",
        frames.len()
    );
    if frames.is_empty() {
        return;
    }
    match parse_envelope(&frames[prefix..]) {
        Ok(envelope) => check_decode(
            envelope.kind,
            envelope.body,
            limits,
            probe,
            ClientToBroker::decode,
            ClientToBroker::encode_body,
            |m| Some(m.request_id()),
            ClientToBroker::KINDS,
        ),
        Err(e) => {
            let _ = (e.code(), e.to_string());
            if let Some(last) = frames.last() {
                let _ = peek_request_id(last, limits);
            }
        }
    }
}

/// What the engine does with a worker ROUTER message before acting on it.
fn decode_worker_frames(frames: &[Vec<u8>], limits: &Limits, probe: PeakProbe) {
    if frames.is_empty() {
        return;
    }
    match parse_envelope(&frames[1..]) {
        Ok(envelope) => check_decode(
            envelope.kind,
            envelope.body,
            limits,
            probe,
            WorkerToBroker::decode,
            WorkerToBroker::encode_body,
            |_| None,
            WorkerToBroker::KINDS,
        ),
        Err(e) => {
            let _ = (e.code(), e.to_string());
        }
    }
}

type Decode<M> = fn(&[u8], &[u8], &Limits) -> Result<M, DecodeError>;

/// Decodes one body the way the engine does and checks what the decoder promises: bounded
/// heap, errors that agree with the structural scan, a request id that `peek_request_id`
/// finds too, and a message that survives its own encoding.
#[allow(clippy::too_many_arguments)] // one direction's codec, spelled out
fn check_decode<M>(
    kind: &[u8],
    body: &[u8],
    limits: &Limits,
    probe: PeakProbe,
    decode: Decode<M>,
    encode: fn(&M) -> Vec<u8>,
    request_id: fn(&M) -> Option<u64>,
    kinds: &[&str],
) {
    let mut decoded = None;
    let peak = probe(&mut || decoded = Some(decode(kind, body, limits)));
    let decoded = decoded.expect("the probe runs the closure it is given");
    if let Some(peak) = peak {
        let bound = DECODE_HEAP_PER_BODY_BYTE * body.len() + DECODE_HEAP_SLACK;
        assert!(
            peak <= bound,
            "decoding a {}-byte body held {peak} bytes of heap (bound {bound})",
            body.len()
        );
    }
    let peeked = peek_request_id(body, limits);
    match decoded {
        Ok(message) => {
            assert!(body.len() <= limits.max_message_bytes);
            assert_eq!(
                scan(body, limits.max_depth),
                Ok(()),
                "decoded past the scan"
            );
            if let (Some(peeked), Some(id)) = (peeked, request_id(&message)) {
                assert_eq!(peeked, id, "peek_request_id disagrees with the decoder");
            }
            // Re-encoding may grow the body (a struct sent as an array comes back as a named
            // map), never deepen it.
            let relaxed = Limits {
                max_message_bytes: usize::MAX,
                ..*limits
            };
            let bytes = encode(&message);
            let again = decode(kind, &bytes, &relaxed).unwrap_or_else(|e| {
                panic!(
                    "a decoded `{}` does not decode once re-encoded: {e}",
                    String::from_utf8_lossy(kind)
                )
            });
            assert_eq!(encode(&again), bytes, "encoding is not stable");
        }
        Err(e) => {
            let _ = (e.code(), e.to_string());
            match &e {
                DecodeError::TooLarge { size, max } => {
                    assert!(size > max && *size == body.len());
                }
                DecodeError::Structure(why) => {
                    assert_eq!(scan(body, limits.max_depth).as_ref(), Err(why));
                    let too_deep = matches!(why, ScanError::TooDeep { .. });
                    assert_eq!(e.code() == ErrorCode::NestingTooDeep, too_deep);
                }
                DecodeError::Field { .. } => {
                    assert_eq!(scan(body, limits.max_depth), Ok(()));
                }
                DecodeError::UnknownKind { .. } => {
                    assert!(!kinds.iter().any(|k| k.as_bytes() == kind));
                }
            }
        }
    }
}

/// An outbox that checks every message the engine sends decodes on the other side, within
/// the same limits.
struct CheckedOutbox {
    delivery: Delivery,
    limits: Limits,
}

impl EventSink for CheckedOutbox {
    fn event(&mut self, event: &EventRef<'_>) -> Delivery {
        assert!(
            !event.token().is_empty(),
            "event without a subscription token"
        );
        let kind = event.kind();
        if let Err(e) = Event::decode(kind.as_bytes(), &event.encode_body(), &self.limits) {
            panic!("the broker sent an event `{kind}` subscribers cannot decode: {e}");
        }
        self.delivery
    }
}

impl Outbox for CheckedOutbox {
    fn reply(&mut self, _client: &ClientAddr, message: &BrokerToClient) -> Delivery {
        let kind = message.kind();
        let body = message.encode_body();
        if body.len() > self.limits.max_message_bytes {
            return Delivery::TooLarge(body.len());
        }
        if let Err(e) = BrokerToClient::decode(kind.as_bytes(), &body, &self.limits) {
            panic!("the broker sent a `{kind}` reply clients cannot decode: {e}");
        }
        self.delivery
    }

    fn task(&mut self, to: &WorkerAddr, task: &Task<'_>) -> Delivery {
        let body = encode_body(task);
        if let Err(e) = BrokerToWorker::decode(b"task", &body, &self.limits) {
            panic!("the broker sent a task workers cannot decode: {e}");
        }
        let _ = to;
        self.delivery
    }

    fn to_worker(&mut self, _to: &WorkerAddr, message: &BrokerToWorker) -> Delivery {
        let kind = message.kind();
        if let Err(e) =
            BrokerToWorker::decode(kind.as_bytes(), &message.encode_body(), &self.limits)
        {
            panic!("the broker sent a `{kind}` message workers cannot decode: {e}");
        }
        self.delivery
    }
}

// ----- plan validation -----------------------------------------------------------------------

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
    index: &HashMap<String, u32>,
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
    index: &HashMap<String, u32>,
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

// ----- topic patterns ------------------------------------------------------------------------

/// Most words in a pattern or topic given to the matcher. The broker's limit is 32; this is
/// more, so positions past 64 (the matcher's wide visited set) are reached too, and small
/// enough that `#.#.#…` patterns (quadratic in the topic's words) stay fast.
const MAX_MATCHED_WORDS: usize = 96;

/// Target `topic_pattern`. After a flags byte, the rest is text (lossy UTF-8) split into
/// lines: the first `(flags & 7) + 1` lines are patterns, inserted with keys that collide
/// (`index % 3`; `index` itself when bit 3 is set), and up to 8 further lines are topics.
/// Bit 4 removes the first pattern before matching; bit 5 tries to remove a pair that was
/// never inserted. Every check against [`check_topic`] and every match is compared with the
/// reference, then every pattern is removed and the matcher must be empty.
pub fn topic_pattern(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let text = String::from_utf8_lossy(input.rest());
    let limits = Limits::default();
    let mut lines = text.split('\n');
    let mut matcher = Matcher::new();
    let mut live: Vec<(String, u64)> = Vec::new();
    for (i, pattern) in lines.by_ref().take(usize::from(flags & 7) + 1).enumerate() {
        check_limits(pattern, &limits);
        if pattern.split('.').count() > MAX_MATCHED_WORDS {
            continue;
        }
        let key = if flags & 8 == 0 {
            i as u64 % 3
        } else {
            i as u64
        };
        matcher.insert(pattern, key);
        if !live.iter().any(|(p, k)| p == pattern && *k == key) {
            live.push((pattern.to_string(), key));
        }
    }
    assert_eq!(matcher.len(), live.len());
    if flags & 16 != 0 && !live.is_empty() {
        let (pattern, key) = live.remove(0);
        assert!(matcher.remove(&pattern, key));
        assert!(!matcher.remove(&pattern, key), "removed twice");
    }
    if flags & 32 != 0 {
        assert!(!matcher.remove("never.inserted.#", 99));
    }
    let mut got = Vec::new();
    for topic in lines.take(8) {
        check_limits(topic, &limits);
        let topic_words: Vec<&str> = topic.split('.').collect();
        if topic_words.len() > MAX_MATCHED_WORDS {
            continue;
        }
        got.clear();
        matcher.matches(topic, &mut got);
        let reported = got.len();
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), reported, "a key reported twice for {topic:?}");
        let mut want: Vec<u64> = live
            .iter()
            .filter(|(p, _)| reference_match(&p.split('.').collect::<Vec<_>>(), &topic_words))
            .map(|(_, k)| *k)
            .collect();
        want.sort_unstable();
        want.dedup();
        assert_eq!(got, want, "topic {topic:?}, patterns {live:?}");
    }
    for (pattern, key) in &live {
        assert!(matcher.remove(pattern, *key), "{pattern:?} {key} was live");
    }
    assert!(matcher.is_empty());
}

/// `check_topic` accepts exactly the non-empty strings within the byte and word limits.
fn check_limits(topic: &str, limits: &Limits) {
    let want = !topic.is_empty()
        && topic.len() <= limits.max_topic_bytes
        && topic.matches('.').count() < limits.max_topic_words;
    assert_eq!(check_topic(topic, limits).is_ok(), want, "{topic:?}");
}

/// The rules, read plainly: words split on `.`; pattern word `*` is exactly one topic word,
/// `#` zero or more; any other pattern word (`a*` and `#a` included) equals the topic word.
/// `can[i][j]`: pattern words from `i` match topic words from `j`.
fn reference_match(pattern: &[&str], topic: &[&str]) -> bool {
    let (p, t) = (pattern.len(), topic.len());
    let mut can = vec![vec![false; t + 1]; p + 1];
    can[p][t] = true;
    for i in (0..p).rev() {
        for j in (0..=t).rev() {
            can[i][j] = match pattern[i] {
                "#" => can[i + 1][j] || (j < t && can[i][j + 1]),
                "*" => j < t && can[i + 1][j + 1],
                word => j < t && topic[j] == word && can[i + 1][j + 1],
            };
        }
    }
    can[0][0]
}
