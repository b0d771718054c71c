//! Inbound frames on the client and worker ROUTERs: see `targets::envelope`.
#![no_main]

// Each binary runs one of the shared targets; the others are dead code here.
#[allow(dead_code)]
#[path = "../targets.rs"]
mod targets;

mod alloc_probe;

#[global_allocator]
static ALLOCATOR: alloc_probe::Counting = alloc_probe::Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::envelope(data, alloc_probe::peak));
