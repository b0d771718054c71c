#!/usr/bin/env bash
# A local MPREG cluster: one broker on the default ports and three nodes with different
# resources, built in release mode.
#
#   scripts/local_cluster.sh          up, run a short demo (plans, topics), stay until Ctrl-C, clean up
#   scripts/local_cluster.sh up       start in the background (logs and pids under run/cluster/)
#   scripts/local_cluster.sh status   show what runs and ask the broker for its status
#   scripts/local_cluster.sh down     stop exactly the processes `up` started
#
# Environment: MPREG_CLUSTER_DIR (default run/cluster), MPREG_CLIENT_PORT (7400),
# MPREG_WORKER_PORT (7401), MPREG_EVENT_PORT (7402).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
RUN="${MPREG_CLUSTER_DIR:-$ROOT/run/cluster}"
BIN="$ROOT/target/release"
CLIENT="tcp://127.0.0.1:${MPREG_CLIENT_PORT:-7400}"
WORKER="tcp://127.0.0.1:${MPREG_WORKER_PORT:-7401}"
EVENTS="tcp://127.0.0.1:${MPREG_EVENT_PORT:-7402}"
NODES=("node-eu:dataset-a,region-eu" "node-us:dataset-b,gpu,region-us" "node-gpu:dataset-a,gpu,model-x")

build() {
    . scripts/deps.sh
    mpreg_install_system_deps
    if ! command -v cargo >/dev/null; then echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; fi
    echo "building release binaries (first time: a few minutes) ..."
    cargo build --release --workspace --bins -q
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_line() { # file pattern seconds
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

up() {
    if alive "$RUN/broker.pid"; then echo "already running (scripts/local_cluster.sh down first)"; return 0; fi
    build
    mkdir -p "$RUN"
    rm -f "$RUN"/*.pid "$RUN"/*.out
    "$BIN/mpreg-broker" --client-endpoint "$CLIENT" --worker-endpoint "$WORKER" --event-endpoint "$EVENTS" \
        --name local-broker \
        >"$RUN/broker.out" 2>"$RUN/broker.log" &
    echo $! >"$RUN/broker.pid"
    if ! wait_line "$RUN/broker.out" '"listening"' 20; then
        echo "broker did not start; its log ($RUN/broker.log):" >&2
        cat "$RUN/broker.log" >&2
        down
        exit 1
    fi
    for spec in "${NODES[@]}"; do
        local name="${spec%%:*}" resources="${spec#*:}"
        "$BIN/mpreg-node" --broker "$WORKER" --name "$name" --resources "$resources" \
            >"$RUN/$name.out" 2>"$RUN/$name.log" &
        echo $! >"$RUN/$name.pid"
    done
    for spec in "${NODES[@]}"; do
        local name="${spec%%:*}"
        wait_line "$RUN/$name.out" '"registered"' 20 || { echo "$name did not register; see $RUN/$name.log" >&2; down; exit 1; }
    done
    echo "MPREG cluster up"
    echo "  broker  local-broker  clients: $CLIENT  workers: $WORKER  topic events: $EVENTS"
    for spec in "${NODES[@]}"; do echo "  node    ${spec%%:*}  resources: ${spec#*:}"; done
    echo "  logs and pids: $RUN"
    echo "  try:    export PATH=\"$BIN:\$PATH\"; mpreg call echo '\"hi\"'"
}

down() {
    local f stopped=0
    for f in "$RUN"/*.pid; do
        [ -e "$f" ] || continue
        if alive "$f"; then kill -TERM "$(cat "$f")" 2>/dev/null && stopped=$((stopped + 1)); fi
    done
    # Give them their graceful-shutdown time, then make sure.
    for _ in $(seq 50); do
        local any=0
        for f in "$RUN"/*.pid; do [ -e "$f" ] && alive "$f" && any=1; done
        [ "$any" = 0 ] && break
        sleep 0.1
    done
    for f in "$RUN"/*.pid; do
        [ -e "$f" ] || continue
        alive "$f" && kill -KILL "$(cat "$f")" 2>/dev/null
        rm -f "$f"
    done
    echo "stopped $stopped processes"
}

status() {
    local f
    for f in "$RUN"/*.pid; do
        [ -e "$f" ] || { echo "not running"; return 0; }
        local name; name="$(basename "$f" .pid)"
        if alive "$f"; then echo "$name: running (pid $(cat "$f"))"; else echo "$name: dead"; fi
    done
    if alive "$RUN/broker.pid"; then "$BIN/mpreg" status --broker "$CLIENT" --timeout 5; fi
}

show() { # title, then the command
    local title="$1"; shift
    echo
    echo "== $title"
    echo "\$ $*"
    "$@" || true
}

demo() {
    local M="$BIN/mpreg"
    export MPREG_BROKER="$CLIENT" # the CLI's default is 7400; follow MPREG_CLIENT_PORT
    show "one call" "$M" call echo '"hello from MPREG"'
    show "a call routed by resource (only a node with a gpu and model-x)" "$M" call echos '"routed"' --locs gpu,model-x
    local seed='[{"name":"|first","fun":"echo","args":["hi there!"]},
 {"name":"|second","fun":"echo","args":["|first"]},
 {"name":"|third","fun":"echos","args":["|first","|second","AND ME TOO"]}]'
    echo
    echo "== a plan: |third depends on |first and |second, which depends on |first"
    echo "$seed"
    echo "\$ mpreg plan -"
    echo "$seed" | "$M" plan - || true
    local fan='[{"name":"eu","fun":"echo","args":[{"region":"europe","rows":[1,2,3]}],"locs":["region-eu"]},
 {"name":"us","fun":"echo","args":[{"region":"america","rows":[4,5]}],"locs":["region-us"]},
 {"name":"join","fun":"echos","args":["eu.rows.2","us.rows.0","eu.region"]}]'
    echo
    echo "== fan-out to two regions, then a join using field paths (eu.rows.2), every step's progress"
    echo "$fan"
    echo "\$ mpreg plan - --progress"
    echo "$fan" | "$M" plan - --progress || true
    echo
    echo "== a plan that cannot run: no node has a tpu (typed error on stderr, exit 1)"
    echo '[{"name":"x","fun":"echo","args":[1],"locs":["tpu"]}]' | "$M" plan - || true
    echo
    echo "== topics: a subscriber with wildcards (orders.*.eu, alerts.#), then three publishes"
    echo "\$ mpreg sub 'orders.*.eu' 'alerts.#' --count 2 --timeout 10 &"
    "$M" sub 'orders.*.eu' 'alerts.#' --count 2 --timeout 10 &
    local sub=$!
    # Publishes before the subscription is live are not kept: wait until the broker has it.
    for _ in $(seq 50); do
        "$M" status 2>/dev/null | grep -q '"subscriptions":[1-9]' && break
        sleep 0.1
    done
    sleep 0.2
    echo "\$ mpreg pub orders.42.eu '{\"qty\": 3}' --header source=shop --confirm"
    "$M" pub orders.42.eu '{"qty": 3}' --header source=shop --confirm || true
    echo "\$ mpreg pub orders.42.us '{\"qty\": 1}' --confirm    # matches no pattern"
    "$M" pub orders.42.us '{"qty": 1}' --confirm || true
    echo "\$ mpreg pub alerts.disk.full '\"95%\"'"
    "$M" pub alerts.disk.full '"95%"' || true
    wait "$sub" || true
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    "")
        up
        trap 'echo; down; exit 0' INT TERM
        demo
        echo
        echo "cluster running; Ctrl-C to stop it."
        while alive "$RUN/broker.pid"; do sleep 1; done
        echo "broker exited; cleaning up"
        down
        ;;
    *) echo "usage: $0 [up|down|status]" >&2; exit 2 ;;
esac
