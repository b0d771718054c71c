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
use mpreg_broker::fast_hash::FastMap;
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

#[path = "targets/plan.rs"]
mod plan;
pub use plan::plan_validation;

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
