#!/usr/bin/env bash
# A local MPREG cluster: N brokers (default 1) and three nodes with different resources, built
# in release mode.
#
#   scripts/local_cluster.sh [--brokers N]      up, run a short demo (plans, topics), stay until
#                                               Ctrl-C, clean up
#   scripts/local_cluster.sh up [--brokers N]   start in the background (logs and pids under
#                                               run/cluster/)
#   scripts/local_cluster.sh status             show what runs and ask each broker for its status
#   scripts/local_cluster.sh down               stop exactly the processes `up` started
#
# Brokers are named broker-1 .. broker-N and form one cluster ("local"): broker i listens on
# ports 7400+10*(i-1) (clients), +1 (workers), +2 (topic events), +3 (peers), +4 (gossip);
# brokers 2..N are given broker 1 as their seed and learn the others from it. The three nodes
# are attached to brokers 1, 2, 3 in turn (with 3 brokers, each node is on its own broker;
# with 1, all three are on broker-1), and every broker reaches every node's functions.
#
# Environment: MPREG_CLUSTER_DIR (default run/cluster), MPREG_BASE_PORT (7400: broker 1's
# client port). MPREG_CLIENT_PORT, MPREG_WORKER_PORT and MPREG_EVENT_PORT still move broker 1's
# first three ports. MPREG_NO_BUILD=1 uses the release binaries already built.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
RUN="${MPREG_CLUSTER_DIR:-$ROOT/run/cluster}"
BIN="$ROOT/target/release"
BASE="${MPREG_BASE_PORT:-7400}"
CLUSTER_NAME="local"
MAX_BROKERS=50
NODES=("node-eu:dataset-a,region-eu" "node-us:dataset-b,gpu,region-us" "node-gpu:dataset-a,gpu,model-x")

# port i k: port k (0 clients, 1 workers, 2 events, 3 peers, 4 gossip) of broker i (from 1).
port() {
    local i="$1" k="$2"
    if [ "$i" = 1 ]; then
        case "$k" in
            0) [ -n "${MPREG_CLIENT_PORT:-}" ] && { echo "$MPREG_CLIENT_PORT"; return; } ;;
            1) [ -n "${MPREG_WORKER_PORT:-}" ] && { echo "$MPREG_WORKER_PORT"; return; } ;;
            2) [ -n "${MPREG_EVENT_PORT:-}" ] && { echo "$MPREG_EVENT_PORT"; return; } ;;
        esac
    fi
    echo $((BASE + 10 * (i - 1) + k))
}
endpoint() { echo "tcp://127.0.0.1:$(port "$1" "$2")"; }

build() {
    if [ "${MPREG_NO_BUILD:-}" = 1 ] && [ -x "$BIN/mpreg-broker" ] && [ -x "$BIN/mpreg-node" ] && [ -x "$BIN/mpreg" ]; then
        return 0
    fi
    . scripts/deps.sh
    mpreg_install_system_deps
    if ! command -v cargo >/dev/null; then echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; fi
    echo "building release binaries (first time: a few minutes) ..."
    cargo build --release --workspace --bins -q
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# The brokers `up` started (from the count it wrote), or 0.
brokers_started() { if [ -f "$RUN/brokers" ]; then cat "$RUN/brokers"; else echo 0; fi; }

any_broker_alive() {
    local f
    for f in "$RUN"/broker-*.pid; do [ -e "$f" ] && alive "$f" && return 0; done
    return 1
}

wait_line() { # file pattern seconds
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# wait_until seconds command...: runs the command every 0.2 s until it succeeds.
wait_until() {
    local seconds="$1" i
    shift
    for ((i = 0; i < seconds * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

# Broker 1 sees N members alive.
cluster_formed() {
    local n="$1" alive
    alive=$("$BIN/mpreg" cluster --broker "$(endpoint 1 0)" --timeout 2 | grep -o '"state":"alive"' | wc -l)
    [ "$alive" -eq "$n" ]
}

# Every broker's catalogue lists a function of every node (the nodes' brokers are known).
catalogue_complete() {
    local n="$1" i
    for ((i = 1; i <= n; i++)); do
        local functions
        functions=$("$BIN/mpreg" functions --broker "$(endpoint "$i" 0)" --timeout 2)
        local b
        for ((b = 1; b <= n && b <= ${#NODES[@]}; b++)); do
            grep -q "\"broker-$b\"" <<<"$functions" || return 1
        done
    done
}

up() {
    local n="$1"
    if any_broker_alive; then echo "already running (scripts/local_cluster.sh down first)"; return 0; fi
    build
    mkdir -p "$RUN"
    rm -f "$RUN"/*.pid "$RUN"/*.out "$RUN"/brokers
    echo "$n" >"$RUN/brokers"
    local i
    for ((i = 1; i <= n; i++)); do
        local name="broker-$i" seed=()
        [ "$i" -gt 1 ] && seed=(--peer "$(endpoint 1 3)")
        "$BIN/mpreg-broker" --name "$name" \
            --client-endpoint "$(endpoint "$i" 0)" --worker-endpoint "$(endpoint "$i" 1)" \
            --event-endpoint "$(endpoint "$i" 2)" --peer-endpoint "$(endpoint "$i" 3)" \
            --gossip-endpoint "$(endpoint "$i" 4)" --cluster "$CLUSTER_NAME" "${seed[@]}" \
            >"$RUN/$name.out" 2>"$RUN/$name.log" &
        echo $! >"$RUN/$name.pid"
        if ! wait_line "$RUN/$name.out" '"listening"' 20; then
            echo "$name did not start; its log ($RUN/$name.log):" >&2
            cat "$RUN/$name.log" >&2
            down
            exit 1
        fi
    done
    local k=0
    for spec in "${NODES[@]}"; do
        local name="${spec%%:*}" resources="${spec#*:}" b=$((k % n + 1))
        "$BIN/mpreg-node" --broker "$(endpoint "$b" 1)" --name "$name" --resources "$resources" \
            >"$RUN/$name.out" 2>"$RUN/$name.log" &
        echo $! >"$RUN/$name.pid"
        echo "broker-$b" >"$RUN/$name.broker"
        k=$((k + 1))
    done
    for spec in "${NODES[@]}"; do
        local name="${spec%%:*}"
        wait_line "$RUN/$name.out" '"registered"' 20 || { echo "$name did not register; see $RUN/$name.log" >&2; down; exit 1; }
    done
    if [ "$n" -gt 1 ]; then
        wait_until 20 cluster_formed "$n" || { echo "the brokers did not form a cluster within 20 s; see $RUN/broker-*.log" >&2; down; exit 1; }
        wait_until 10 catalogue_complete "$n" || { echo "the catalogues did not converge within 10 s; see $RUN/broker-*.log" >&2; down; exit 1; }
    fi
    echo "MPREG cluster up"
    for ((i = 1; i <= n; i++)); do
        echo "  broker  broker-$i  clients: $(endpoint "$i" 0)  workers: $(endpoint "$i" 1)  topic events: $(endpoint "$i" 2)  peers: $(endpoint "$i" 3)"
    done
    for spec in "${NODES[@]}"; do
        local name="${spec%%:*}"
        echo "  node    $name  resources: ${spec#*:}  broker: $(cat "$RUN/$name.broker")"
    done
    echo "  logs and pids: $RUN"
    echo "  try:    export PATH=\"$BIN:\$PATH\" MPREG_BROKER=$(endpoint 1 0); mpreg call echo '\"hi\"'"
    [ "$n" -gt 1 ] && echo "          mpreg cluster; mpreg functions; mpreg call echo '\"hi\"' --broker $(endpoint "$n" 0)"
    return 0
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
    rm -f "$RUN"/*.broker "$RUN/brokers"
    echo "stopped $stopped processes"
}

status() {
    local f n i any=0
    n=$(brokers_started)
    for f in "$RUN"/*.pid; do
        [ -e "$f" ] || continue
        any=1
        local name; name="$(basename "$f" .pid)"
        if alive "$f"; then echo "$name: running (pid $(cat "$f"))"; else echo "$name: dead"; fi
    done
    [ "$any" = 1 ] || { echo "not running"; return 0; }
    for ((i = 1; i <= n; i++)); do
        alive "$RUN/broker-$i.pid" || continue
        echo "broker-$i status:"
        "$BIN/mpreg" status --broker "$(endpoint "$i" 0)" --timeout 5 || true
    done
    for ((i = 1; i <= n; i++)); do
        if alive "$RUN/broker-$i.pid"; then
            echo "the cluster as broker-$i sees it:"
            "$BIN/mpreg" cluster --broker "$(endpoint "$i" 0)" --timeout 5 || true
            break
        fi
    done
}

show() { # title, then the command
    local title="$1"; shift
    echo
    echo "== $title"
    echo "\$ $*"
    "$@" || true
}

demo() {
    local n="$1"
    local M="$BIN/mpreg"
    export MPREG_BROKER="$(endpoint 1 0)" # the CLI's default is 7400; follow MPREG_BASE_PORT
    show "one call" "$M" call echo '"hello from MPREG"'
    show "a call routed by resource (only a node with a gpu and model-x)" "$M" call echos '"routed"' --locs gpu,model-x
    if [ "$n" -gt 1 ]; then
        show "the cluster as broker-1 sees it" "$M" cluster
        show "the cluster's functions" "$M" functions
        show "a call through broker-$n (forwarded to the broker of a matching node)" \
            "$M" call echos '"forwarded"' --locs region-eu --broker "$(endpoint "$n" 0)"
    fi
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

usage() { echo "usage: $0 [up|down|status] [--brokers N]" >&2; exit 2; }

command=""
brokers=1
while [ $# -gt 0 ]; do
    case "$1" in
        up | down | status) [ -z "$command" ] || usage; command="$1" ;;
        --brokers)
            [ $# -ge 2 ] || usage
            brokers="$2"
            shift
            ;;
        --brokers=*) brokers="${1#--brokers=}" ;;
        *) usage ;;
    esac
    shift
done
if ! [[ "$brokers" =~ ^[0-9]+$ ]] || [ "$brokers" -lt 1 ] || [ "$brokers" -gt "$MAX_BROKERS" ]; then
    echo "--brokers must be a number from 1 to $MAX_BROKERS" >&2
    exit 2
fi

case "$command" in
    up) up "$brokers" ;;
    down) down ;;
    status) status ;;
    "")
        up "$brokers"
        trap 'echo; down; exit 0' INT TERM
        demo "$brokers"
        echo
        echo "cluster running; Ctrl-C to stop it."
        while any_broker_alive; do sleep 1; done
        echo "brokers exited; cleaning up"
        down
        ;;
esac
