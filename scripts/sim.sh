#!/usr/bin/env bash
# The seeded simulation of the broker (broker/tests/simulation.rs, broker/tests/sim/): one
# engine, simulated clients and workers, a faulty network and a simulated clock per seed.
#   scripts/sim.sh                  10,000 seeds in release; prints every failing seed
#   scripts/sim.sh 100000           that many seeds
#   scripts/sim.sh 1000 50000       1,000 seeds starting at seed 50,000
#   scripts/sim.sh --seed 1234      replays one seed, printing every event (its trace)
# A plain `cargo test -p mpreg-broker --test simulation` runs 200 seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
mpreg_install_system_deps
if [ "${1:-}" = "--seed" ]; then
    [ -n "${2:-}" ] || { echo "usage: scripts/sim.sh --seed <seed>" >&2; exit 2; }
    SIM_SEED="$2" exec cargo test --release -p mpreg-broker --test simulation seeds -- --nocapture
fi
SIM_SEEDS="${1:-10000}" SIM_FIRST_SEED="${2:-0}" \
    exec cargo test --release -p mpreg-broker --test simulation seeds -- --nocapture
