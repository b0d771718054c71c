#!/usr/bin/env bash
# Benchmarks, each next to a baseline measured in the same run.
#   scripts/bench.sh rpc [--quick]   RPC latency/throughput vs a raw libzmq relay floor
# Figures are printed as a table and written to bench-results/<name>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
mpreg_install_system_deps
what="${1:-rpc}"
shift || true
case "$what" in
    rpc)
        cargo build --release --workspace --bins
        ./target/release/mpreg-bench rpc --json bench-results/rpc.json "$@"
        ;;
    *)
        echo "usage: scripts/bench.sh rpc [--quick]" >&2
        exit 2
        ;;
esac
