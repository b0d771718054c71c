//! Test harness: starts real broker and node processes on ephemeral ports.
