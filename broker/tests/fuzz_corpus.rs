//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same target
//! bodies the cargo-fuzz binaries run (`fuzz/targets.rs`), on the stable toolchain, so every
//! input that once reached new code stays a regression test. Inputs of crashes that were
//! fixed live in `fuzz/regressions/<target>/` and are replayed too.

#[path = "../../fuzz/targets.rs"]
mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Fewer inputs than this means the corpus is missing or was truncated, not minimized.
const MIN_INPUTS: usize = 50;
/// The whole replay of one target must stay a quick test (debug build).
const MAX_REPLAY: Duration = Duration::from_secs(30);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files directly under `dir`, sorted; none if `dir` does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every corpus and regression input of `target`.
fn replay(target: &str, run: impl Fn(&[u8])) {
    let corpus = inputs(&fuzz_dir().join("corpus").join(target));
    let regressions = inputs(&fuzz_dir().join("regressions").join(target));
    let started = Instant::now();
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).expect("readable corpus file");
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            panic!(
                "{target}: input {} fails (see the panic above)",
                path.display()
            );
        }
    }
    let elapsed = started.elapsed();
    assert!(
        corpus.len() >= MIN_INPUTS,
        "{target}: only {} corpus inputs under fuzz/corpus/{target}",
        corpus.len()
    );
    assert!(elapsed < MAX_REPLAY, "{target}: replay took {elapsed:?}");
    println!(
        "{target}: replayed {} corpus and {} regression inputs in {elapsed:?}",
        corpus.len(),
        regressions.len()
    );
}

#[test]
fn envelope_corpus_replays() {
    replay("envelope", |data| {
        targets::envelope(data, targets::unmeasured)
    });
}

#[test]
fn plan_validation_corpus_replays() {
    replay("plan_validation", targets::plan_validation);
}

#[test]
fn topic_pattern_corpus_replays() {
    replay("topic_pattern", targets::topic_pattern);
}

/// The input reader the targets share: zeros past the end, frames cut short at the end.
#[test]
fn input_reads_frames_and_runs_dry_as_zeros() {
    let mut input = targets::Input::new(&[7, 3, 0, b'a', b'b']);
    assert_eq!(input.byte(), 7);
    assert_eq!(input.frame(), b"ab");
    assert!(input.is_empty());
    assert_eq!(input.below(5), 0);
    assert_eq!(input.rest(), b"");
}
