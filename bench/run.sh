#!/usr/bin/env bash
# The benchmark: in one run on one machine, the ceilings (raw confirmed publishing, a trivial
# axum handler, RabbitMQ's own HTTP publish) and postbox end to end on SQLite and PostgreSQL,
# single events and batches of 100, latency at 50% of peak, and postbox's peak memory. Every
# postbox figure counts only events that got a 202 AND arrived in a real queue (unique ids
# checked); a run that loses or misses an event fails.
#
#   bench/run.sh            full run (a few minutes)
#   bench/run.sh --smoke    tiny counts, one repetition: checks the machinery, figures mean little
#
# Environment: REPS (default 3; the median is printed), N (single-event POSTs per run, default
# 20000), C (concurrency, default 64), BATCHES (batch POSTs of 100 per run, default 300).
# Needs RabbitMQ on 127.0.0.1:5672 and PostgreSQL on 127.0.0.1:5432 (scripts/test.sh starts
# them); enables RabbitMQ's management plugin for the HTTP-publish row.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

REPS=${REPS:-3}
N=${N:-20000}
C=${C:-64}
BATCHES=${BATCHES:-300}
RATE_SECS=${RATE_SECS:-10}
BACKLOG=${BACKLOG:-100000}
if [[ "${1:-}" == "--smoke" ]]; then
    REPS=1 N=2000 BATCHES=20 RATE_SECS=2 BACKLOG=5000
fi
PORT=18180
TRIVIAL_PORT=18181
RUN="$(date +%s)-$$"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/postbox-bench.XXXXXX")
BENCH=target/release/examples/bench
PIDS=()
DBS=()
RESULTS="$TMP/results.jsonl"

cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    for db in "${DBS[@]}"; do dropdb -w -h 127.0.0.1 -U postgres --if-exists "$db" 2>/dev/null; done
    if [[ $rc -ne 0 ]]; then
        echo "bench failed (rc=$rc); logs kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit $rc
}
trap cleanup EXIT

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }
json() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d$2)" "$1"; }
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
record() { echo "$1" >> "$RESULTS"; }

# Check that a measurement delivered every event it got a 202 for.
check_delivery() {
    local out=$1 what=$2
    python3 - "$out" "$what" <<'EOF'
import json, sys
d = json.loads(sys.argv[1]); what = sys.argv[2]
events = d.get("requests", d.get("n")) * d.get("batch", 1)
ok = d.get("ok", d.get("acked")) * (d.get("batch", 1) if "ok" in d else 1)
if d.get("missing", 0) != 0 or d.get("delivered") != events or ok != events:
    sys.exit(f"{what}: LOSS OR REJECTIONS: {d}")
EOF
}

wait_http() {
    for _ in $(seq 1 100); do
        curl -fsS "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "nothing answers at $1"
}

say "building (release)"
cargo build --release --bin postbox --example bench >&2

say "RabbitMQ management plugin (for its HTTP publish endpoint)"
rabbitmq-plugins enable rabbitmq_management >&2 || die "cannot enable rabbitmq_management"
wait_http "http://guest:guest@127.0.0.1:15672/api/overview"

# --- ceilings -------------------------------------------------------------------------------
say "broker ceiling: raw lapin, 1 KB persistent + mandatory, confirms window 1000"
vals=()
for r in $(seq 1 "$REPS"); do
    out=$($BENCH broker --exchange "bench-raw-$RUN" --n "$N" --window 1000)
    check_delivery "$out" "broker ceiling"
    vals+=("$(json "$out" "['per_s']")")
done
BROKER=$(median "${vals[@]}")
record "{\"row\":\"broker ceiling\",\"per_s\":$BROKER}"

say "HTTP ceiling: trivial axum handler answering 202"
$BENCH trivial --listen "127.0.0.1:$TRIVIAL_PORT" & PIDS+=($!)
sleep 0.5
vals=()
for r in $(seq 1 "$REPS"); do
    out=$($BENCH http --url "http://127.0.0.1:$TRIVIAL_PORT/v1/events" --n "$((N * 2))" --concurrency "$C")
    vals+=("$(json "$out" "['requests_per_s']")")
done
HTTP=$(median "${vals[@]}")
record "{\"row\":\"HTTP ceiling\",\"per_s\":$HTTP}"

say "RabbitMQ's own HTTP publish (management API), 16 connections"
vals=()
for r in $(seq 1 "$REPS"); do
    x="bench-mgmt-$RUN"
    out=$($BENCH http --mgmt --url "http://127.0.0.1:15672/api/exchanges/%2F/$x/publish" \
        --n "$((N / 4))" --concurrency 16 --exchange "$x")
    check_delivery "$out" "management publish"
    vals+=("$(json "$out" "['requests_per_s']")")
done
MGMT=$(median "${vals[@]}")
record "{\"row\":\"RabbitMQ HTTP publish\",\"per_s\":$MGMT}"

# --- postbox --------------------------------------------------------------------------------
start_postbox() { # backend amqp_url -> sets PB_PID
    local backend=$1 amqp=$2 db
    if [[ $backend == sqlite ]]; then
        db="sqlite://$TMP/outbox-$RANDOM.db"
    else
        local name="postbox_bench_${RUN//-/_}_$RANDOM"
        createdb -w -h 127.0.0.1 -U postgres "$name" || die "createdb failed"
        DBS+=("$name")
        db="postgres://postgres@127.0.0.1:5432/$name"
    fi
    POSTBOX_LISTEN="127.0.0.1:$PORT" POSTBOX_DATABASE_URL="$db" POSTBOX_AMQP_URL="$amqp" \
        POSTBOX_SCHEMAS_DIR=bench/schemas POSTBOX_EXCHANGE="$EXCHANGE" POSTBOX_LOG_FORMAT=json \
        target/release/postbox >"$TMP/postbox-$backend.log" 2>&1 &
    PB_PID=$!
    PIDS+=("$PB_PID")
    wait_http "http://127.0.0.1:$PORT/readyz"
}

stop_postbox() {
    kill -TERM "$PB_PID" 2>/dev/null || true
    wait "$PB_PID" 2>/dev/null || true
}

rss_kb() { awk "/^$2:/ {print \$2}" "/proc/$1/status"; }

for backend in sqlite postgres; do
    EXCHANGE="bench-pb-$backend-$RUN"
    start_postbox "$backend" "amqp://guest:guest@127.0.0.1:5672/%2f"
    URL="http://127.0.0.1:$PORT/v1/events"

    say "postbox ($backend): single-event POSTs, $N per run, concurrency $C"
    vals=()
    for r in $(seq 1 "$REPS"); do
        out=$($BENCH http --url "$URL" --n "$N" --concurrency "$C" --exchange "$EXCHANGE")
        check_delivery "$out" "postbox $backend single"
        vals+=("$(json "$out" "['events_per_s']")")
    done
    SINGLE=$(median "${vals[@]}")
    record "{\"row\":\"postbox $backend, single-event POSTs\",\"per_s\":$SINGLE,\"ratio\":$(python3 -c "print($SINGLE/$BROKER)")}"

    say "postbox ($backend): batch POSTs of 100, $BATCHES per run, concurrency 8"
    vals=()
    for r in $(seq 1 "$REPS"); do
        out=$($BENCH http --url "$URL" --n "$BATCHES" --batch 100 --concurrency 8 --exchange "$EXCHANGE")
        check_delivery "$out" "postbox $backend batch"
        vals+=("$(json "$out" "['events_per_s']")")
    done
    BATCH=$(median "${vals[@]}")
    record "{\"row\":\"postbox $backend, batch POSTs (100)\",\"per_s\":$BATCH,\"ratio\":$(python3 -c "print($BATCH/$BROKER)")}"

    RATE=$(python3 -c "print(max(1, int($SINGLE / 2)))")
    say "postbox ($backend): latency at 50% of peak ($RATE events/s for ${RATE_SECS}s)"
    out=$($BENCH rate --url "$URL" --rate "$RATE" --seconds "$RATE_SECS" --exchange "$EXCHANGE")
    record "$(python3 -c "
import json,sys; d=json.loads(sys.argv[1])
if d['missing'] or d['ok'] != d['requests']: sys.exit('rate run lost or rejected events: %s' % d)
print(json.dumps({'row': 'postbox $backend, latency at %d/s' % d['rate'], 'p50_ms': d['p50_ms'], 'p99_ms': d['p99_ms'], 'lag_p50_ms': d['lag_p50_ms'], 'lag_p99_ms': d['lag_p99_ms']}))" "$out")"
    record "{\"row\":\"postbox $backend, peak RSS\",\"rss_mb\":$(python3 -c "print($(rss_kb "$PB_PID" VmHWM)/1024)")}"
    stop_postbox
done

# --- memory while RabbitMQ is unreachable ---------------------------------------------------
say "postbox (sqlite) with RabbitMQ unreachable: RSS while $BACKLOG events pile up"
EXCHANGE="bench-pb-backlog-$RUN"
start_postbox sqlite "amqp://guest:guest@127.0.0.1:1/%2f"
RSS0=$(rss_kb "$PB_PID" VmRSS)
samples=()
for step in 1 2 3 4 5; do
    $BENCH http --url "http://127.0.0.1:$PORT/v1/events" --n "$((BACKLOG / 500))" --batch 100 --concurrency 8 >/dev/null
    samples+=("$(( $(rss_kb "$PB_PID" VmRSS) / 1024 ))")
done
sleep 3 # the backlog gauge is refreshed every 2 s
PENDING=$(curl -fsS "http://127.0.0.1:$PORT/readyz" | python3 -c "import json,sys; print(json.load(sys.stdin)['outbox']['pending'])")
record "{\"row\":\"postbox sqlite, RSS with broker down\",\"rss_mb_start\":$((RSS0 / 1024)),\"rss_mb_samples\":\"${samples[*]}\",\"pending\":$PENDING}"
stop_postbox

# --- table ----------------------------------------------------------------------------------
python3 - "$RESULTS" "$BROKER" "$MGMT" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
broker, mgmt = float(sys.argv[2]), float(sys.argv[3])
print("\n| row | figure | vs broker ceiling | vs RabbitMQ HTTP publish |")
print("| --- | --- | --- | --- |")
for r in rows:
    name = r["row"]
    if "per_s" in r:
        ratio = f"{r['per_s'] / broker:.0%}"
        vs_mgmt = f"{r['per_s'] / mgmt:.1f}x" if name.startswith("postbox") else ""
        print(f"| {name} | {r['per_s']:,.0f} /s | {ratio} | {vs_mgmt} |")
    elif "p50_ms" in r:
        print(f"| {name} | 202 p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; relay lag p50 {r['lag_p50_ms']:.1f} ms, p99 {r['lag_p99_ms']:.1f} ms | | |")
    elif "rss_mb" in r:
        print(f"| {name} | {r['rss_mb']:.0f} MB | | |")
    else:
        print(f"| {name} | start {r['rss_mb_start']} MB, then {r['rss_mb_samples']} MB; {r['pending']} pending | | |")
EOF
