#!/usr/bin/env bash
# Private RabbitMQ nodes beside the system one (which is never touched): a 3-node cluster for
# the failover test, or a single node that the soak and the anti-pattern bench may stop and
# start. Each node has its own name, ports and data directory under $RABBIT_BASE, runs as the
# `rabbitmq` user (Debian's wrapper; the Erlang cookie is in /var/lib/rabbitmq), and is stopped
# and removed again by `down`, also when a run fails.
#
#   scripts/rabbit-cluster.sh            start 3 nodes, run the cluster failover test against
#                                        them (POSTBOX_CLUSTER_TEST=1), stop and remove them
#   scripts/rabbit-cluster.sh up [N]     start N nodes (default 3) clustered on node 1; prints
#                                        the comma-separated AMQP URLs
#   scripts/rabbit-cluster.sh down       stop the nodes and remove their directories
#
# Sourced (`source scripts/rabbit-cluster.sh`), it only defines the rabbit_* functions.
#
# Environment: RABBIT_BASE (data directories; default /tmp/postbox-rabbit), RABBIT_PREFIX (node
# names `{prefix}{i}@localhost`; default pbc), RABBIT_PORT (AMQP port of node 1, the next nodes
# follow; default 5681; the distribution port of each is its AMQP port + 20000).
# Needs root (to hand the directories to the rabbitmq user) and rabbitmq-server installed.

RABBIT_BASE=${RABBIT_BASE:-/tmp/postbox-rabbit}
RABBIT_PREFIX=${RABBIT_PREFIX:-pbc}
RABBIT_PORT=${RABBIT_PORT:-5681}

rabbit_node() { echo "${RABBIT_PREFIX}$1@localhost"; }
rabbit_port() { echo $((RABBIT_PORT + $1 - 1)); }
rabbit_url() { echo "amqp://guest:guest@127.0.0.1:$(rabbit_port "$1")/%2f"; }
rabbit_ctl() { # i args...
    local i=$1
    shift
    rabbitmqctl -q -n "$(rabbit_node "$i")" "$@"
}

# Start node i (not clustered yet) and wait until it has booted.
rabbit_start() {
    local i=$1 d="$RABBIT_BASE/n$1" port
    port=$(rabbit_port "$i")
    mkdir -p "$d/mnesia" "$d/log"
    echo '[].' >"$d/plugins"
    chown -R rabbitmq:rabbitmq "$RABBIT_BASE"
    # -detached does nothing under Debian's wrapper; a backgrounded foreground node works.
    RABBITMQ_NODENAME=$(rabbit_node "$i") RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT=$port RABBITMQ_DIST_PORT=$((port + 20000)) \
        RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_FEATURE_FLAGS_FILE="$d/ff" \
        RABBITMQ_LOG_BASE="$d/log" RABBITMQ_ENABLED_PLUGINS_FILE="$d/plugins" \
        RABBITMQ_CONFIG_FILE="$d/none" RABBITMQ_PID_FILE="$d/pid" \
        setsid rabbitmq-server >"$d/out.log" 2>&1 </dev/null &
    echo $! >"$d/launcher.pid"
    # await_startup fails at once while the node has not registered with epmd yet.
    local t
    for ((t = 0; t < 120; t++)); do
        rabbit_ctl "$i" await_startup --timeout 120 >/dev/null 2>&1 && return 0
        sleep 1
    done
    echo "node $(rabbit_node "$i") did not start within 120 s; its log:" >&2
    tail -30 "$d/out.log" >&2
    return 1
}

# Start n nodes; nodes 2..n join node 1's cluster.
rabbit_up() {
    local n=${1:-3} i
    rabbit_down >/dev/null 2>&1 || true
    mkdir -p "$RABBIT_BASE"
    for ((i = 1; i <= n; i++)); do
        rabbit_start "$i" || return 1
    done
    for ((i = 2; i <= n; i++)); do
        rabbit_ctl "$i" stop_app >/dev/null &&
            rabbit_ctl "$i" join_cluster "$(rabbit_node 1)" >/dev/null &&
            rabbit_ctl "$i" start_app >/dev/null || return 1
    done
    RABBIT_NODES=$n
}

# Every node's URL, comma-separated (what `amqp_url` takes).
rabbit_urls() {
    local n=${1:-${RABBIT_NODES:-3}} i urls=()
    for ((i = 1; i <= n; i++)); do urls+=("$(rabbit_url "$i")"); done
    (IFS=,; echo "${urls[*]}")
}

# Stop every node under $RABBIT_BASE (gracefully, then by its own pid file) and remove the
# directories. Only processes these nodes wrote into their pid files are signalled.
rabbit_down() {
    local d i pid
    [[ -d "$RABBIT_BASE" ]] || return 0
    for d in "$RABBIT_BASE"/n*; do
        [[ -d "$d" ]] || continue
        i=${d##*/n}
        timeout 60 rabbitmqctl -q -n "$(rabbit_node "$i")" stop >/dev/null 2>&1 || true
        for f in "$d/pid" "$d/launcher.pid"; do
            pid=$(cat "$f" 2>/dev/null) || continue
            [[ -n "$pid" ]] || continue
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
        done
    done
    rm -rf "$RABBIT_BASE"
}

rabbit_main() {
    set -euo pipefail
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    case "${1:-test}" in
    up)
        rabbit_up "${2:-3}"
        rabbit_urls "${2:-3}"
        ;;
    down)
        rabbit_down
        ;;
    test)
        trap 'rc=$?; echo "==> stopping and removing the cluster" >&2; rabbit_down; exit $rc' EXIT
        echo "==> starting a 3-node RabbitMQ cluster under $RABBIT_BASE" >&2
        local t0=$SECONDS
        rabbit_up 3
        echo "    up in $((SECONDS - t0)) s: $(rabbit_ctl 1 cluster_status --formatter json |
            python3 -c 'import json,sys; print(", ".join(json.load(sys.stdin)["running_nodes"]))')" >&2
        echo "==> cluster failover test" >&2
        POSTBOX_CLUSTER_TEST=1 POSTBOX_CLUSTER_URLS=$(rabbit_urls 3) \
            POSTBOX_CLUSTER_NODES="$(rabbit_node 1),$(rabbit_node 2),$(rabbit_node 3)" \
            cargo test -j 1 --test api cluster -- --nocapture --test-threads 1
        ;;
    *)
        sed -n '2,20p' "$0" >&2
        exit 2
        ;;
    esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    rabbit_main "$@"
fi
