# Helpers shared by the bench scripts but run.sh (sourced, not run).
# TICK must be set (getconf CLK_TCK) before `us` is called.

# ticks PID: CPU time (user + system) PID has used, in clock ticks; 0 once it is gone.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# pg_ticks: the same summed over every PostgreSQL server process.
pg_ticks() {
    local t=0 p
    for p in $(pgrep -x postgres || true); do t=$((t + $(ticks "$p"))); done
    echo "$t"
}

# us TICKS_BEFORE TICKS_AFTER EVENTS: CPU µs per event.
us() { python3 -c "print(round(($2 - $1) / $TICK * 1e6 / $3))"; }

# field JSON PATH: one number of a bench tool's JSON line, e.g. field "$out" "['p99_ms']".
field() { python3 -c "import json,sys; print(round(json.loads(sys.argv[1])$2, 1))" "$1"; }

# start_postbox DIR PORT DATABASE_URL EXCHANGE LOG [VAR=value ...]: start DIR/postbox in the
# background (settings from EXTRA, a list of VAR=value words, and the arguments after LOG on top),
# set PB to its pid and wait until /readyz answers; return 1 with the log's tail if it does not
# within 30 s. The caller's EXIT trap stops PB.
start_postbox() {
    local dir=$1 port=$2 db=$3 exchange=$4 log=$5
    shift 5
    # shellcheck disable=SC2086 # EXTRA is a list of VAR=value words
    env POSTBOX_LISTEN="127.0.0.1:$port" POSTBOX_DATABASE_URL="$db" \
        POSTBOX_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f" POSTBOX_SCHEMAS_DIR=bench/schemas \
        POSTBOX_EXCHANGE="$exchange" POSTBOX_LOG_FORMAT=json ${EXTRA:-} "$@" "$dir/postbox" >>"$log" 2>&1 &
    PB=$!
    for _ in $(seq 300); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && return 0; sleep 0.1; done
    echo "postbox did not start:"
    tail "$log"
    return 1
}

# store_backlog N DIR PORT DATABASE_URL EXCHANGE LOG [VAR=value ...]: a backlog for a drain. N
# events (batches of 100) committed by DIR/postbox, started as start_postbox would with RabbitMQ
# and NATS out of reach, which is then stopped.
store_backlog() {
    local n=$1 dir=$2 port=$3
    shift
    start_postbox "$@" POSTBOX_AMQP_URL="amqp://guest:guest@127.0.0.1:1/%2f" \
        POSTBOX_NATS_URL="nats://127.0.0.1:1"
    "$dir/examples/bench" http --url "http://127.0.0.1:$port/v1/events" --n "$((n / 100))" \
        --batch 100 --concurrency 8 >/dev/null
    kill "$PB"
    wait "$PB" 2>/dev/null || true
    PB=
}

# The scaffolding of one run on one new outbox (profile.sh, instructions.sh): the caller sets
# BACKEND (sqlite | postgres), SINK (amqp | nats), TMP (a scratch directory), NAME (unique) and
# PB, and calls end_run on EXIT.

# new_outbox: print the URL of a new outbox (a PostgreSQL database NAME, created, or a SQLite
# file in TMP).
new_outbox() {
    if [[ $BACKEND == postgres ]]; then
        createdb -w -h 127.0.0.1 -U postgres "$NAME"
        echo "postgres://postgres@127.0.0.1:5432/$NAME"
    else
        echo "sqlite://$TMP/$NAME.db"
    fi
}

# sink_args EXCHANGE: set `sink` (postbox's settings) and `dest` (the bench tool's arguments)
# for SINK: EXCHANGE on RabbitMQ, or a JetStream stream and subject prefix of this run's own.
sink_args() {
    sink=()
    dest=(--exchange "$1")
    if [[ ${SINK:-amqp} == nats ]]; then
        local stream=${NAME^^}
        sink=(POSTBOX_SINK=nats POSTBOX_NATS_STREAM="$stream" POSTBOX_ROUTING_PREFIX="$NAME")
        dest=(--stream "$stream" --prefix "$NAME")
    fi
}

# end_run: stop PB, drop the run's PostgreSQL database, remove TMP.
end_run() {
    [[ -n "$PB" ]] && kill "$PB" 2>/dev/null && wait "$PB" 2>/dev/null
    [[ $BACKEND == postgres ]] && dropdb -w -h 127.0.0.1 -U postgres --if-exists "$NAME" 2>/dev/null
    rm -rf "$TMP"
}
