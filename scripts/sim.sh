#!/usr/bin/env bash
# The seeded simulation of brokers (broker/tests/simulation.rs, broker/tests/sim/): real
# engines, simulated clients and workers, a faulty network and a simulated clock per seed; one
# broker checked call by call, and clusters of brokers (crashes, restarts, partitions, loss)
# checked end to end. Everything runs in release.
#   scripts/sim.sh                      10,000 seeds of each kind; prints every failing seed
#   scripts/sim.sh 100000               that many seeds of each kind
#   scripts/sim.sh 1000 50000           1,000 seeds of each kind starting at seed 50,000
#   scripts/sim.sh --seed 1234          replays one seed of one broker, printing its trace
#   scripts/sim.sh --cluster --seed 1234   replays one cluster seed, printing its trace
#   scripts/sim.sh --scale [N]          N brokers (default 100) joining, one crashing, restarting
# SIM_BROKERS=3 or SIM_BROKERS=2-8 sets the cluster sizes (default 2-5; a replay needs the
# sizes of the run that failed). A plain `cargo test -p mpreg-broker --test simulation` runs
# 200 seeds of each kind and the 100-broker scenario in debug.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
mpreg_install_system_deps
run() { exec cargo test --release -p mpreg-broker --test simulation "$@"; }
case "${1:-}" in
    --cluster)
        [ "${2:-}" = "--seed" ] && [ -n "${3:-}" ] || {
            echo "usage: scripts/sim.sh --cluster --seed <seed>" >&2
            exit 2
        }
        SIM_SEED="$3" run cluster_seeds -- --nocapture
        ;;
    --seed)
        [ -n "${2:-}" ] || { echo "usage: scripts/sim.sh --seed <seed>" >&2; exit 2; }
        SIM_SEED="$2" run single_broker_seeds -- --nocapture
        ;;
    --scale)
        SIM_SCALE_BROKERS="${2:-100}" run hundred_brokers -- --nocapture
        ;;
    *)
        SIM_SEEDS="${1:-10000}" SIM_FIRST_SEED="${2:-0}" run seeds -- --nocapture
        ;;
esac
