#!/usr/bin/env bash
# Instructions postbox executes per event, counted by valgrind's callgrind: repeatable for the
# same build and load whatever else the machine is doing, where CPU time on these shared 2-core
# machines moves ±30% within minutes. It counts user space only (no kernel, no waiting) and runs
# postbox ~50x slower, so the load is paced low: every event is committed, claimed, published
# and settled on its own, the moderate-rate case where per-commit costs are not shared.
#
#   bench/instructions.sh [DIR]     DIR holds `postbox` and `examples/bench` (default
#                                   target/release)
#   MODE=drain bench/instructions.sh [DIR]    the relay draining a backlog of N events instead
#
# Environment: BACKEND (sqlite | postgres, default sqlite), RATE (events/s, default 40),
# DURATION (s, default 30), MODE (paced | drain), N (drain backlog, default 20000), SINK (amqp |
# nats, for the drain), TOP (functions listed, default 25), KEEP (copy the callgrind file there,
# for callgrind_annotate), EXTRA (VAR=value settings for postbox). Delivery is checked: every
# event that got a 202 must arrive in a real queue or stream. Prints the instructions per event
# in all, on the SQLite thread (`postbox-sqlite`), and the functions with the most instructions
# including what they call. A drain counts postbox's start too (the relay starts with it; the
# same for every build, a small share of a large N).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIR=${1:-target/release}
BACKEND=${BACKEND:-sqlite}
RATE=${RATE:-40}
DURATION=${DURATION:-30}
TOP=${TOP:-25}
PORT=18194
URL="http://127.0.0.1:$PORT/v1/events"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/postbox-instructions.XXXXXX")
NAME="postbox_instructions_$$"
PB=

trap end_run EXIT

source bench/lib.sh
command -v valgrind >/dev/null || { echo "valgrind is not installed (Debian: valgrind)"; exit 1; }

db=$(new_outbox)
ex="instructions-$NAME"
out="$TMP/callgrind.out"
MODE=${MODE:-paced}
N=${N:-20000}
sink_args "$ex"
if [[ $MODE == drain ]]; then
    store_backlog "$N" "$DIR" "$PORT" "$db" "$ex" "$TMP/postbox.log" "${sink[@]}"
    "$DIR/examples/bench" drain "${dest[@]}" --n "$N" >"$TMP/load.out" &
    drain=$!
    until grep -q ready "$TMP/load.out"; do sleep 0.1; done
fi

# As start_postbox, under callgrind (slower to start: up to 120 s).
# shellcheck disable=SC2086 # EXTRA is a list of VAR=value words
env POSTBOX_LISTEN="127.0.0.1:$PORT" POSTBOX_DATABASE_URL="$db" \
    POSTBOX_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f" POSTBOX_SCHEMAS_DIR=bench/schemas \
    POSTBOX_EXCHANGE="$ex" POSTBOX_LOG_FORMAT=json ${EXTRA:-} "${sink[@]}" \
    valgrind --tool=callgrind --callgrind-out-file="$out" "$DIR/postbox" >"$TMP/postbox.log" 2>&1 &
PB=$!
if [[ $MODE == drain ]]; then
    wait "$drain"
    load=$(tail -n 1 "$TMP/load.out")
    events=$N
else
    for _ in $(seq 600); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done
    curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null || { echo "postbox did not start:"; tail "$TMP/postbox.log"; exit 1; }
    # Warm up (first connections, statement caches) until the warm-up's events are delivered,
    # so that none of them lands in the measured run's queue, then count from zero.
    "$DIR/examples/bench" rate --url "$URL" --rate 20 --seconds 3 "${dest[@]}" >/dev/null
    callgrind_control -z "$PB" >/dev/null 2>&1
    load=$("$DIR/examples/bench" rate --url "$URL" --rate "$RATE" --seconds "$DURATION" "${dest[@]}")
    events=$(field "$load" "['ok']")
    sleep 2
fi
callgrind_control -d "$PB" >/dev/null 2>&1
kill "$PB"
wait "$PB" 2>/dev/null || true
PB=
echo "load: $load"
[[ $(field "$load" "['missing']") == 0 ]] || { echo "events missing"; exit 1; }

dump=$(ls "$out".* | tail -n 1)
[[ -n ${KEEP:-} ]] && cp "$dump" "$KEEP"
callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$dump" 2>/dev/null |
    python3 -c '
import re, sys
events, top = float(sys.argv[1]), int(sys.argv[2])
rows = []
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)", line)
    if m:
        rows.append((int(m.group(1).replace(",", "")), m.group(2)))
total = next(n for n, what in rows if what.startswith("PROGRAM TOTALS"))
lane = max((n for n, what in rows if "sqlite_lane.rs:std::sys::backtrace" in what), default=0)
print(f"{events:.0f} events: {total / events:,.0f} instructions per event; "
      f"on the SQLite thread {lane / events:,.0f}")
print(f"most instructions per event, including what each calls (of postbox, SQLite, lapin, serde_json):")
# A function inlined into several source files is listed once per file: keep its largest.
seen = set()
for n, what in rows:
    name = re.sub(r"^\S+?:", "", what.split(" [")[0])
    if re.search(r"postbox::|sqlite3_step|sqlite3VdbeHalt|lapin::|serde_json::(ser|de)::", name) \
            and "{{closure}}" not in name.split("::")[-1] and name not in seen and len(seen) < top:
        print(f"  {n / events:>9,.0f}  {name[:110]}")
        seen.add(name)
' "$events" "$TOP"
