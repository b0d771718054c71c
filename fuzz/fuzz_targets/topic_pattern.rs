//! Topic and pattern checks and the trie matcher: see `targets::topic_pattern`.
#![no_main]

// Each binary runs one of the shared targets; the others are dead code here.
#[allow(dead_code)]
#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::topic_pattern(data));
