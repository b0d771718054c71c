#!/usr/bin/env bash
# Benchmarks, each next to a baseline measured in the same run.
#   scripts/bench.sh rpc [--quick]      RPC latency/throughput vs a raw libzmq relay floor
#   scripts/bench.sh pubsub [--quick]   topic matching, subscribe rate, messages/s vs raw PUB->SUB
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
    pubsub)
        cargo build --release --workspace --bins
        ./target/release/mpreg-bench pubsub --json bench-results/pubsub.json "$@"
        ;;
    *)
        echo "usage: scripts/bench.sh rpc|pubsub [--quick]" >&2
        exit 2
        ;;
esac
