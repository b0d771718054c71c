//! `mpreg`.

fn main() {}
