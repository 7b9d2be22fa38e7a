#!/usr/bin/env bash
# Where the machine's CPU goes under one kind of load: one postbox on a new outbox, the load, and
# `perf record -a -g` over WINDOW_SECONDS from its middle. Prints each process's share of all
# samples (what share of the machine's cores it used while sampled) and how much of it was in the
# kernel, then the hottest functions (self time) of postbox and of the database or broker
# processes. Every event that got a 202 must arrive in a real queue or stream (the bench tool
# checks).
#
#   bench/profile.sh single|batch|drain [DIR]     DIR holds `postbox` and `examples/bench`
#                                                  (default target/release)
#
#   single  single-event POSTs, 64 connections, closed loop
#   batch   batch POSTs of 100, 8 connections
#   drain   a backlog stored while the broker was out of reach, then published
#
# Environment: BACKEND (sqlite | postgres, default sqlite), SINK (amqp | nats, default amqp), N
# (events, default 60000 for single, 300000 for batch and drain: enough to outlast the window),
# SECONDS_AT (seconds into the load the window starts, default 2), WINDOW_SECONDS (the window,
# default 6), TOP (functions per process, default 12), KEEP (a path to keep perf.data at), EXTRA
# (VAR=value settings for postbox). Needs perf, RabbitMQ on 127.0.0.1:5672 (NATS on 4222 for
# SINK=nats, PostgreSQL on 5432 for BACKEND=postgres).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODE=${1:?usage: bench/profile.sh single|batch|drain [DIR]}
DIR=${2:-target/release}
BACKEND=${BACKEND:-sqlite}
SINK=${SINK:-amqp}
case $MODE in
    single) N=${N:-60000} ;;
    batch | drain) N=${N:-300000} ;;
    *) echo "unknown mode $MODE (single, batch or drain)"; exit 2 ;;
esac
AT=${SECONDS_AT:-2}
WINDOW=${WINDOW_SECONDS:-6}
TOP=${TOP:-12}
PORT=18193
URL="http://127.0.0.1:$PORT/v1/events"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/postbox-profile.XXXXXX")
NAME="postbox_profile_$$"
PB=

trap end_run EXIT

# shellcheck source=bench/lib.sh
source bench/lib.sh
command -v perf >/dev/null || { echo "perf is not installed (Debian: linux-perf)"; exit 1; }

db=$(new_outbox)
ex="profile-$NAME"
sink_args "$ex"

# record LABEL: sample the whole machine for the window, then note which process each pid was.
record() {
    sleep "$AT"
    perf record -a -g -F 499 -o "$TMP/perf.data" -- sleep "$WINDOW" 2>"$TMP/perf.log" >/dev/null
    ps -eo pid=,comm= >"$TMP/ps"
    echo "$1, $BACKEND, $SINK: ${WINDOW}s sampled from ${AT}s into the load"
}

case $MODE in
    single | batch)
        start_postbox "$DIR" "$PORT" "$db" "$ex" "$TMP/postbox.log" "${sink[@]}"
        load=(--n "$N" --concurrency 64)
        [[ $MODE == batch ]] && load=(--n "$((N / 100))" --batch 100 --concurrency 8)
        "$DIR/examples/bench" http --url "$URL" "${load[@]}" "${dest[@]}" >"$TMP/load.out" &
        l=$!
        record "$MODE POSTs"
        wait "$l"
        ;;
    drain)
        store_backlog "$N" "$DIR" "$PORT" "$db" "$ex" "$TMP/postbox.log" "${sink[@]}"
        "$DIR/examples/bench" drain "${dest[@]}" --n "$N" >"$TMP/load.out" &
        l=$!
        until grep -q ready "$TMP/load.out"; do sleep 0.1; done
        start_postbox "$DIR" "$PORT" "$db" "$ex" "$TMP/postbox.log" "${sink[@]}"
        record "drain of $N"
        wait "$l"
        ;;
esac
out=$(tail -n 1 "$TMP/load.out")
[[ $(field "$out" "['missing']") == 0 ]] || { echo "events missing: $out"; exit 1; }
echo "load: $out"

# Samples per process (a process is its pid's name as `ps` saw it after the window), and the
# share of each process's own samples that were in the kernel (system calls, wake-ups, I/O).
perf script -i "$TMP/perf.data" -F pid,ip -G 2>/dev/null | python3 -c '
import collections, sys
names = dict(l.split(None, 1) for l in open(sys.argv[1]) if l.strip())
count, kernel = collections.Counter(), collections.Counter()
for line in sys.stdin:
    f = line.split()
    if len(f) < 2:
        continue
    name = "(idle)" if f[0] == "0" else names.get(f[0], "(gone)").strip()
    count[name] += 1
    kernel[name] += f[1].startswith("ffffffff")
total = sum(count.values())
print("share of all samples (both cores) by process, and of its own samples in the kernel:")
for name, n in count.most_common(10):
    print(f"  {100 * n / total:5.1f}%  {name:<28} kernel {100 * kernel[name] / n:3.0f}%")
' "$TMP/ps"

# The hottest functions, self time, of each process that matters here.
top() { # LABEL PIDS...
    local label=$1
    shift
    [[ $# -gt 0 ]] || return 0
    echo "top functions of $label (self, % of its samples):"
    perf report -i "$TMP/perf.data" --pid "$(IFS=,; echo "$*")" --no-children -g none \
        --sort dso,sym --stdio --percentage relative 2>/dev/null |
        grep -v -e '^#' -e '^$' | head -n "$TOP" || true
}
top postbox "$PB"
# shellcheck disable=SC2046 # one pid per word
[[ $BACKEND == postgres ]] && top PostgreSQL $(awk '$2 == "postgres" {print $1}' "$TMP/ps")
if [[ $SINK == nats ]]; then
    # shellcheck disable=SC2046
    top nats-server $(awk '$2 == "nats-server" {print $1}' "$TMP/ps")
else
    # shellcheck disable=SC2046
    top RabbitMQ $(awk '$2 == "beam.smp" {print $1}' "$TMP/ps")
fi
[[ -n ${KEEP:-} ]] && cp "$TMP/perf.data" "$KEEP"
exit 0
