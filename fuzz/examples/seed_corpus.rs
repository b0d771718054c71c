//! Writes the seed inputs of every target to `fuzz/seeds/<target>/`: the golden fixtures of
//! `protocol/fixtures/` framed as the broker receives them, a worker-and-plan conversation,
//! hand-made plans (cycles, duplicates, dotted names, field paths) and topic patterns.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus`, then fuzz with
//! `cargo +nightly fuzz run <target> fuzz/corpus/<target> fuzz/seeds/<target>`.

use std::fs;
use std::path::{Path, PathBuf};

use mpreg_protocol::{
    encode_body, PlanRequest, Register, Step, TaskFailure, TaskResult, Value, VERSION,
};

/// Header byte of a message to the client ROUTER with `frames` frames.
fn client(frames: u8) -> u8 {
    frames << 2
}

/// Header byte of a message to the worker ROUTER with `frames` frames.
fn worker(frames: u8) -> u8 {
    1 | frames << 2
}

/// Header byte of a clock tick of `tenths` tenths of a second.
fn tick(tenths: u8) -> u8 {
    3 | tenths << 2
}

/// One message of an `envelope` input: the header, then each frame with its u16 length.
fn message(header: u8, frames: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![header];
    for f in frames {
        let len = u16::try_from(f.len()).expect("seed frames are under 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

fn plan(id: u64, steps: Vec<Step>) -> PlanRequest {
    PlanRequest {
        id,
        steps,
        deadline_ms: None,
        all_results: false,
        progress: false,
        progress_topic: None,
        plan: None,
        trace: false,
    }
}

fn s(text: &str) -> Value {
    Value::from(text)
}

fn step(name: &str, args: Vec<Value>) -> Step {
    Step::new(name, "echo", args)
}

/// Hand-made plans for both targets.
fn plans() -> Vec<(&'static str, PlanRequest)> {
    let mut kw = step("kw", vec![]);
    kw.kwargs.insert("rows".into(), s("first.rows.0"));
    kw.kwargs.insert("first".into(), s("literal"));
    kw.locs = vec!["gpu".into()];
    let mut everything = plan(
        9,
        vec![
            step("first", vec![s("hi")]),
            step(
                "second",
                vec![Value::Map(vec![(s("first"), s("first.x.1"))]), s("first.")],
            ),
            kw,
        ],
    );
    everything.all_results = true;
    everything.progress = true;
    everything.progress_topic = Some("plans.progress".into());
    vec![
        (
            "chain",
            plan(1, vec![step("a", vec![]), step("b", vec![s("a.x")])]),
        ),
        (
            "cycle",
            plan(
                2,
                vec![
                    step("a", vec![s("c")]),
                    step("b", vec![s("a.k")]),
                    step("c", vec![s("b")]),
                ],
            ),
        ),
        ("self_reference", plan(3, vec![step("me", vec![s("me.x")])])),
        (
            "duplicate",
            plan(4, vec![step("a", vec![]), step("a", vec![])]),
        ),
        ("dotted_name", plan(5, vec![step("a.b", vec![])])),
        ("empty_name", plan(6, vec![step("", vec![])])),
        ("empty", plan(7, vec![])),
        (
            "deep_reference",
            plan(
                8,
                vec![
                    step("a", vec![]),
                    step(
                        "b",
                        vec![Value::Array(vec![Value::Array(vec![Value::Map(vec![(
                            s("k"),
                            s("a.0.k"),
                        )])])])],
                    ),
                ],
            ),
        ),
        ("everything", everything),
    ]
}

/// `(message type, body)` of every fixture named `<prefix><type>.msgpack`.
fn fixtures(prefix: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/fixtures");
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).expect("protocol/fixtures exists") {
        let path = entry.expect("readable directory entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("fixture names are UTF-8")
            .to_string();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let Some(kind) = rest.strip_suffix(".msgpack") else {
            continue;
        };
        let body = fs::read(&path).expect("readable fixture");
        out.push((kind.to_string(), body));
    }
    out.sort();
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).expect("seed directory is writable");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let dirs: Vec<PathBuf> = ["envelope", "plan_validation", "topic_pattern"]
        .iter()
        .map(|t| root.join(t))
        .collect();
    for d in &dirs {
        fs::create_dir_all(d).expect("seed directory");
    }
    let (envelope, plan_dir, topic) = (&dirs[0], &dirs[1], &dirs[2]);

    // envelope: every fixture a peer sends the broker, as DEALER and as REQ frames.
    for (kind, body) in fixtures("client_to_broker.") {
        let name = &kind;
        let dealer = message(client(4), &[b"c1", VERSION, kind.as_bytes(), &body]);
        write(envelope, &format!("client_{name}"), &dealer);
        let req = message(client(5), &[b"c1", b"", VERSION, kind.as_bytes(), &body]);
        write(envelope, &format!("client_req_{name}"), &req);
    }
    for (kind, body) in fixtures("worker_to_broker.") {
        let name = &kind;
        let frames = message(worker(4), &[b"w1", VERSION, kind.as_bytes(), &body]);
        write(envelope, &format!("worker_{name}"), &frames);
    }
    // envelope: a conversation: a worker registers, a client sends plans, the worker answers.
    let register = encode_body(&Register {
        node: "n1".into(),
        functions: vec!["echo".into()],
        resources: vec!["gpu".into()],
        capacity: 2,
        versions: Default::default(),
        cacheable: Default::default(),
    });
    let mut conversation = message(worker(4), &[b"w1", VERSION, b"register", &register]);
    for (i, (_, p)) in plans().into_iter().enumerate() {
        let body = encode_body(&p);
        conversation.extend(message(client(4), &[b"c1", VERSION, b"plan", &body]));
        let result = encode_body(&TaskResult {
            task: i as u64 + 1,
            value: Value::Map(vec![(s("x"), Value::Array(vec![s("r0"), s("r1")]))]),
            timing: None,
        });
        conversation.extend(message(worker(4), &[b"w1", VERSION, b"result", &result]));
        if i == 3 {
            break;
        }
    }
    let failure = encode_body(&TaskFailure {
        task: 5,
        kind: "function_error".into(),
        message: "boom".into(),
    });
    conversation.extend(message(worker(4), &[b"w1", VERSION, b"failure", &failure]));
    conversation.push(tick(40));
    write(envelope, "conversation", &conversation);
    // envelope: broken frames.
    write(
        envelope,
        "two_frames",
        &message(client(2), &[b"c1", VERSION]),
    );
    write(
        envelope,
        "old_version",
        &message(client(4), &[b"c1", b"MPREG/0", b"ping", b"\x81\xa2id\x01"]),
    );
    write(
        envelope,
        "array32_lie",
        &message(
            client(4),
            &[
                b"c1",
                VERSION,
                b"plan",
                b"\x82\xa2id\x01\xa5steps\xdd\xff\xff\xff\xff",
            ],
        ),
    );
    let mut deep = vec![
        0x82, 0xa2, b'i', b'd', 0x07, 0xa5, b's', b't', b'e', b'p', b's',
    ];
    deep.extend(std::iter::repeat_n(0x91u8, 100));
    deep.push(0xc0);
    write(
        envelope,
        "too_deep",
        &message(client(4), &[b"c1", VERSION, b"plan", &deep]),
    );

    // plan_validation: raw bodies (mode 0, and mode 2 with small limits) and generator runs.
    for (name, p) in plans() {
        let body = encode_body(&p);
        for mode in [0u8, 2] {
            let mut seed = vec![mode];
            seed.extend_from_slice(&body);
            write(plan_dir, &format!("{name}_{mode}"), &seed);
        }
    }
    for (_, body) in fixtures("client_to_broker.")
        .into_iter()
        .filter(|(k, _)| k == "plan")
    {
        let mut seed = vec![0u8];
        seed.extend_from_slice(&body);
        write(plan_dir, "fixture_plan", &seed);
    }
    for (i, bytes) in [
        &b"\x01\x05\x00\x01\x02\x00\x01\x00\x01\x01\x01\x00\x00\x01\x02\x01\x00\x00"[..],
        b"\x03\x08\x01\x01\x03\x01\x04\x02\x01\x01\x02\x00\x00\x00\x02\x02\x01\x05\x01",
        b"\x01\x09abcdefghijklmnopqrstuvwxyz0123456789",
    ]
    .iter()
    .enumerate()
    {
        write(plan_dir, &format!("generated_{i}"), bytes);
    }

    // topic_pattern: flags, then patterns, then topics, one a line.
    for (i, text) in [
        "\x03a.*.b\n#\na.#\n*.b\na.x.b\na.b\nb\n",
        "\x02#.#.#.x\na.#.#\n*\nx\na\na.b.c.d.e.x\n",
        "\x13a..b\na*\n#a\na.*\na..b\na*\n#a\na.b\n",
        "\x0cwords.*\nwords.#\n#.words\nwords.one\n\nwords\n.\n",
        "\x21*.*.*\nlorem.ipsum.dolor\nlorem.ipsum\n*.*.*\n",
    ]
    .iter()
    .enumerate()
    {
        write(topic, &format!("patterns_{i}"), text.as_bytes());
    }
    let long_topic = vec!["w"; 70].join(".");
    write(
        topic,
        "past_64_words",
        format!("\x01#.w\n*.#.w\n{long_topic}\n").as_bytes(),
    );
    println!("seeds written to {}", root.display());
}
