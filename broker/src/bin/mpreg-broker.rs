//! `mpreg-broker`.

fn main() {}
