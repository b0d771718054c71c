//! The MPREG Rust SDK.
