#!/usr/bin/env bash
# A/B of two postbox builds on this machine, run alternately so that drift hits both alike: each
# round starts each build on a fresh outbox, measures single-event POSTs end to end twice, then
# the 202's and the relay lag's percentiles at a fixed rate, with postbox's (and PostgreSQL's)
# CPU per event. Every event that got a 202 must arrive in a real queue (the bench tool checks).
#
#   bench/ab.sh DIR_A DIR_B        DIR_x holds `postbox` and `examples/bench` (e.g. copies of
#                                  target/release after building each commit)
#
# Environment: BACKEND (postgres | sqlite, default postgres), ROUNDS (default 3), N (POSTs per
# single run, default 20000), RATE (events/s of the latency run, default 1800), DRAIN (a relay
# drain of that many events after the rest, default 0: none), EXTRA_A / EXTRA_B (VAR=value
# settings for one side only). Needs RabbitMQ on 127.0.0.1:5672 and
# PostgreSQL on 127.0.0.1:5432.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[[ $# -eq 2 ]] || { sed -n '2,14p' "$0"; exit 2; }
BACKEND=${BACKEND:-postgres}
ROUNDS=${ROUNDS:-3}
N=${N:-20000}
RATE=${RATE:-1800}
DRAIN=${DRAIN:-0}
DRAIN_SINK=${DRAIN_SINK:-amqp}
PORT=18190
URL="http://127.0.0.1:$PORT/v1/events"
TICK=$(getconf CLK_TCK)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/postbox-ab.XXXXXX")
PB=

cleanup() {
    [[ -n "$PB" ]] && kill "$PB" 2>/dev/null && wait "$PB" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
source bench/lib.sh
nats_pid() { ss -ltnpH 'sport = :4222' 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2; }

start() { # DIR DATABASE_URL EXCHANGE LABEL EXTRA [VAR=value ...]: start postbox, set PB
    local dir=$1 url=$2 ex=$3 label=$4 extra=$5
    shift 5
    EXTRA=$extra start_postbox "$dir" "$PORT" "$url" "$ex" "$TMP/$label.log" "$@"
}

one() { # LABEL DIR EXTRA: one round of one build
    local label=$1 dir=$2 extra=$3 db url name ex out p0 g0 r
    name="postbox_ab_$$_$RANDOM"
    ex="ab-$name"
    if [[ $BACKEND == sqlite ]]; then
        url="sqlite://$TMP/$name.db"
    else
        createdb -w -h 127.0.0.1 -U postgres "$name"
        url="postgres://postgres@127.0.0.1:5432/$name"
    fi
    start "$dir" "$url" "$ex" "$label" "$extra"
    for r in 1 2; do
        p0=$(ticks "$PB")
        g0=$(pg_ticks)
        out=$("$dir/examples/bench" http --url "$URL" --n "$N" --concurrency 64 --exchange "$ex")
        [[ $(field "$out" "['missing']") == 0 ]] || { echo "$label: events missing: $out"; exit 1; }
        echo "$label single: $(field "$out" "['events_per_s']")/s, postbox $(us "$p0" "$(ticks "$PB")" "$N") us/event$(
            [[ $BACKEND == sqlite ]] || echo ", postgres $(us "$g0" "$(pg_ticks)" "$N") us/event")"
    done
    out=$("$dir/examples/bench" rate --url "$URL" --rate "$RATE" --seconds 10 --exchange "$ex")
    [[ $(field "$out" "['missing']") == 0 ]] || { echo "$label: events missing: $out"; exit 1; }
    echo "$label at $RATE/s: 202 p50 $(field "$out" "['p50_ms']") ms, p99 $(field "$out" "['p99_ms']") ms; relay lag p99 $(field "$out" "['lag_p99_ms']") ms"
    kill "$PB"
    wait "$PB" 2>/dev/null || true
    PB=
    if ((DRAIN > 0)); then
        # A backlog stored while the broker is out of reach, then published: events/s from the
        # first message consumed to the last, and CPU per event meanwhile.
        local sink=() dest=(--exchange "$ex") bpid b0 broker=RabbitMQ
        bpid=$(pgrep -f 'beam.*rabbit' | head -n 1)
        if [[ $DRAIN_SINK == nats ]]; then
            local stream="ABDR$RANDOM$RANDOM" prefix="abdr$RANDOM$RANDOM"
            sink=(POSTBOX_SINK=nats POSTBOX_NATS_STREAM="$stream" POSTBOX_ROUTING_PREFIX="$prefix")
            dest=(--stream "$stream" --prefix "$prefix")
            bpid=$(nats_pid)
            broker=nats-server
        fi
        EXTRA=$extra store_backlog "$DRAIN" "$dir" "$PORT" "$url" "$ex" "$TMP/$label.log" "${sink[@]}"
        : >"$TMP/drain.out"
        "$dir/examples/bench" drain "${dest[@]}" --n "$DRAIN" >"$TMP/drain.out" &
        r=$!
        until grep -q ready "$TMP/drain.out"; do sleep 0.1; done
        start "$dir" "$url" "$ex" "$label" "$extra" "${sink[@]}"
        p0=$(ticks "$PB")
        g0=$(pg_ticks)
        b0=$(ticks "$bpid")
        wait "$r"
        out=$(tail -n 1 "$TMP/drain.out")
        [[ $(field "$out" "['missing']") == 0 ]] || { echo "$label: drain events missing: $out"; exit 1; }
        echo "$label drain of $DRAIN to $DRAIN_SINK: $(field "$out" "['per_s']")/s, postbox $(us "$p0" "$(ticks "$PB")" "$DRAIN") us/event$(
            [[ $BACKEND == sqlite ]] || echo ", postgres $(us "$g0" "$(pg_ticks)" "$DRAIN") us/event"), $broker $(us "$b0" "$(ticks "$bpid")" "$DRAIN") us/event"
        kill "$PB"
        wait "$PB" 2>/dev/null || true
        PB=
    fi
    [[ $BACKEND == sqlite ]] || dropdb -w -h 127.0.0.1 -U postgres "$name"
}

echo "A = $1, B = $2, $BACKEND, $ROUNDS rounds"
for round in $(seq "$ROUNDS"); do
    one "A$round" "$1" "${EXTRA_A:-}"
    one "B$round" "$2" "${EXTRA_B:-}"
done
