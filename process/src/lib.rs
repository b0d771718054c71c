//! What every MPREG process (broker, node, later the bridge) shares.
//!
//! - [`layers`]: configuration in layers, each setting declared once. A binary declares its
//!   flags as one struct: clap reads the flag and its environment variable, serde names the
//!   configuration key it sets; [`layers::load`] stacks the embedded defaults, a file, the
//!   `MPREG_<PROCESS>_*` variables and the flags, refusing unknown keys by name.
//! - [`logging`]: the stderr logger with a guard that flushes it at exit, and the log levels.
//! - [`http`]: a small HTTP/1.1 `GET` server on threads of its own (`/metrics`, health,
//!   the broker's dashboard), bounded against slow and hostile clients.
//!
//! The one rule: no process-wide state; the logger and the configuration are values the
//! binary passes on.

pub mod http;
pub mod layers;
pub mod logging;
