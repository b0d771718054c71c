//! `mpreg-node`.

fn main() {}
