//! Plan validation and reference resolution: see `targets::plan_validation`.
#![no_main]

// Each binary runs one of the shared targets; the others are dead code here.
#[allow(dead_code)]
#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::plan_validation(data));
