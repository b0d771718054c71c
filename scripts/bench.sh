#!/usr/bin/env bash
# Benchmarks, each next to a baseline measured in the same run.
#   scripts/bench.sh rpc [--quick]      RPC latency/throughput vs a raw libzmq relay floor
#   scripts/bench.sh pubsub [--quick]   topic matching, subscribe rate, messages/s vs raw PUB->SUB
#   scripts/bench.sh cluster [--quick]  a step forwarded one hop vs a local step; 20-broker
#                                       convergence and idle gossip traffic
#   scripts/bench.sh peers [--quick] [--rounds N] [--spawned] [--runtime-task]
#                                       MPREG vs NATS (nats-server, async-nats)
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
    cluster)
        cargo build --release --workspace --bins
        ./target/release/mpreg-bench cluster --json bench-results/cluster.json "$@"
        ;;
    peers)
        # Debian's nats-server, installed when missing; the bench starts it on loopback with an
        # OS-chosen port and stops it by PID. async-nats is built only here (feature `peers`).
        command -v nats-server >/dev/null || { apt-get update -qq && apt-get install -y -qq nats-server; }
        cargo build --release --workspace --bins
        cargo build --release -p mpreg-tests --features peers --bin mpreg-bench
        ./target/release/mpreg-bench peers --json bench-results/peers.json --nats-server "$(command -v nats-server)" "$@"
        ;;
    *)
        echo "usage: scripts/bench.sh rpc|pubsub|cluster|peers [--quick]" >&2
        exit 2
        ;;
esac
