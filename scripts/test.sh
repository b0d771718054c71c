#!/usr/bin/env bash
# Runs the whole MPREG test suite: formatting, lints, unit, property, golden, integration
# (real broker and node processes) and Python conformance tests.
#   scripts/test.sh            everything
#   scripts/test.sh --no-lint  skip rustfmt/clippy
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
mpreg_install_system_deps
mpreg_install_python_deps

lint=1
[ "${1:-}" = "--no-lint" ] && lint=0

if [ "$lint" = 1 ]; then
    echo "== cargo fmt --check"
    cargo fmt --all -- --check
    echo "== cargo clippy"
    cargo clippy --workspace --all-targets -- -D warnings
fi
echo "== build binaries (integration tests start them as processes)"
cargo build --workspace --bins
echo "== cargo test"
# Integration tests start several processes each; two test threads suit a 2-core machine.
cargo test --workspace -- --test-threads="${MPREG_TEST_THREADS:-2}"
echo "== all tests passed"
