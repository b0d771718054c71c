//! `mpreg-bench`.

fn main() {}
