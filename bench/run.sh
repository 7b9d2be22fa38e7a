#!/usr/bin/env bash
# The benchmark: in one run on one machine, the ceilings (raw confirmed publishing to RabbitMQ
# in three message shapes, raw JetStream publishing, a trivial axum handler, RabbitMQ's own HTTP
# publish) and postbox end to end on SQLite and PostgreSQL (single events, batches of 100, both
# AMQP message shapes, NATS), the relay draining a backlog, latency at 50% of peak, CPU per event
# (postbox's and the broker's, from /proc/<pid>/stat), memory, and a big outbox (BIG published
# rows awaiting retention) against an empty one. Every postbox figure counts only events that got
# a 202 AND arrived in a real queue or stream (unique ids checked); a run that loses or misses an
# event fails.
#
#   bench/run.sh            full run (a few minutes)
#   bench/run.sh --smoke    tiny counts, one repetition: checks the machinery, figures mean little
#   PROFILE=debug bench/run.sh --smoke    the same on the debug build (what CI runs)
#
# Environment: REPS (default 3; the median is printed), N (single-event POSTs per run, default
# 20000), C (concurrency, default 64), BATCHES (batch POSTs of 100 per run, default 300),
# BACKLOG (events each drain row stores first, default 100000), BIG (published rows of the
# big-outbox rows, default 10000000; 0 skips them), BACKENDS (default "sqlite postgres").
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
BIG=${BIG:-10000000}
BACKENDS=${BACKENDS:-sqlite postgres}
if [[ "${1:-}" == "--smoke" ]]; then
    REPS=1 N=2000 BATCHES=20 RATE_SECS=2 BACKLOG=5000 BIG=20000
fi
PORT=18180
TRIVIAL_PORT=18181
RUN="$(date +%s)-$$"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/postbox-bench.XXXXXX")
# One build profile: release for real figures; PROFILE=debug reuses the test build (CI's smoke).
PROFILE=${PROFILE:-release}
BENCH=target/$PROFILE/examples/bench
POSTBOX=target/$PROFILE/postbox
PIDS=()
RESULTS="$TMP/results.jsonl"
: >"$TMP/dbs"

cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    while read -r db; do dropdb -w -h 127.0.0.1 -U postgres --if-exists "$db" 2>/dev/null; done <"$TMP/dbs"
    if [[ $rc -ne 0 ]]; then
        echo "bench failed (rc=$rc); logs kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit $rc
}
trap cleanup EXIT

say() { printf '\033[1m==> %s %s\033[0m\n' "$(date +%T)" "$*" >&2; }
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

say "building ($PROFILE)"
if [[ $PROFILE == release ]]; then
    cargo build --release --bin postbox --example bench >&2
else
    cargo build --bin postbox --example bench >&2
fi

say "RabbitMQ management plugin (for its HTTP publish endpoint)"
rabbitmq-plugins enable rabbitmq_management >&2 || die "cannot enable rabbitmq_management"
wait_http "http://guest:guest@127.0.0.1:15672/api/overview"

# --- CPU accounting -------------------------------------------------------------------------
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rabbit_pid() { rabbitmqctl eval 'list_to_integer(os:getpid()).' 2>/dev/null | tr -dc 0-9; }
nats_pid() { ss -ltnpH 'sport = :4222' 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2; }
RABBIT_PID=$(rabbit_pid)
NATS_PID=$(nats_pid)
[[ -n "$RABBIT_PID" ]] || die "cannot find RabbitMQ's pid (rabbitmqctl eval needs root or the Erlang cookie)"
# us_per TICKS_BEFORE PID EVENTS: CPU µs per event that PID spent since the sample.
us_per() { python3 -c "print(round(($(cpu_ticks "$2") - $1) / $TICK * 1e6 / max(1, $3), 1))"; }
# PostgreSQL's CPU (every server process) and the machine's busy share: whether a row was bound
# by the two cores or by waiting.
pg_ticks() {
    local t=0 p
    for p in $(pgrep -x postgres || true); do t=$((t + $(cpu_ticks "$p"))); done
    echo "$t"
}
pg_us_per() { python3 -c "print(round(($(pg_ticks) - $1) / $TICK * 1e6 / max(1, $2), 1))"; }
CPUS=$(nproc)
idle_mark() { echo "$(awk '/^cpu / {print $5 + $6}' /proc/stat) $(date +%s.%N)"; }
busy_since() { # "idle wall" from idle_mark -> % of all cores busy since then
    local now
    now=$(idle_mark)
    python3 -c "
i0, w0 = map(float, '$1'.split()); i1, w1 = map(float, '$now'.split())
print(round(100 * (1 - (i1 - i0) / $TICK / max(1e-9, (w1 - w0) * $CPUS))))"
}

# --- ceilings -------------------------------------------------------------------------------
declare -A CEIL CEIL_CPU
for shape in plain full lean; do
    say "broker ceiling, $shape shape: raw lapin, 1 KB persistent + mandatory, confirms window 1000"
    vals=() cpus=() busy=()
    for r in $(seq 1 "$REPS"); do
        t0=$(cpu_ticks "$RABBIT_PID")
        m0=$(idle_mark)
        out=$($BENCH broker --exchange "bench-raw-$RUN" --n "$N" --window 1000 --shape "$shape")
        busy+=("$(busy_since "$m0")")
        check_delivery "$out" "broker ceiling ($shape)"
        cpus+=("$(us_per "$t0" "$RABBIT_PID" "$N")")
        vals+=("$(json "$out" "['per_s']")")
    done
    CEIL[$shape]=$(median "${vals[@]}")
    CEIL_CPU[$shape]=$(median "${cpus[@]}")
    record "{\"row\":\"broker ceiling, $shape shape (raw lapin)\",\"per_s\":${CEIL[$shape]},\"broker_us\":${CEIL_CPU[$shape]},\"busy\":$(median "${busy[@]}")}"
done

NATS_CEIL=""
if [[ -n "$NATS_PID" ]]; then
    say "NATS ceiling: raw async-nats JetStream publish, the same 1 KB CloudEvent and headers, window 1000, consumed by the same consumer"
    vals=() cpus=() busy=()
    for r in $(seq 1 "$REPS"); do
        t0=$(cpu_ticks "$NATS_PID")
        m0=$(idle_mark)
        out=$($BENCH nats --stream "BENCHRAW$r$RANDOM" --prefix "benchraw$r$RANDOM" --n "$N" --window 1000)
        busy+=("$(busy_since "$m0")")
        check_delivery "$out" "NATS ceiling"
        cpus+=("$(us_per "$t0" "$NATS_PID" "$N")")
        vals+=("$(json "$out" "['per_s']")")
    done
    NATS_CEIL=$(median "${vals[@]}")
    record "{\"row\":\"NATS JetStream ceiling (raw async-nats)\",\"per_s\":$NATS_CEIL,\"broker_us\":$(median "${cpus[@]}"),\"busy\":$(median "${busy[@]}"),\"vs\":\"nats\"}"
else
    say "no NATS server on 127.0.0.1:4222: NATS rows skipped"
fi

say "HTTP ceiling: trivial axum handler answering 202"
$BENCH trivial --listen "127.0.0.1:$TRIVIAL_PORT" & PIDS+=($!)
sleep 0.5
vals=()
for r in $(seq 1 "$REPS"); do
    out=$($BENCH http --url "http://127.0.0.1:$TRIVIAL_PORT/v1/events" --n "$((N * 2))" --concurrency "$C")
    vals+=("$(json "$out" "['requests_per_s']")")
done
HTTP=$(median "${vals[@]}")
record "{\"row\":\"HTTP ceiling (trivial axum 202)\",\"per_s\":$HTTP,\"vs\":\"http\"}"

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
record "{\"row\":\"RabbitMQ HTTP publish (16 connections)\",\"per_s\":$MGMT,\"vs\":\"http\"}"

# --- postbox --------------------------------------------------------------------------------
new_db() { # backend -> database URL (PostgreSQL databases are dropped at the end)
    if [[ $1 == sqlite ]]; then
        echo "sqlite://$TMP/outbox-$RANDOM$RANDOM.db"
    else
        local name="postbox_bench_${RUN//-/_}_$RANDOM"
        createdb -w -h 127.0.0.1 -U postgres "$name" || die "createdb failed"
        echo "$name" >>"$TMP/dbs"
        echo "postgres://postgres@127.0.0.1:5432/$name"
    fi
}

start_postbox() { # database_url [VAR=value ...] -> sets PB_PID
    local db=$1
    shift
    env POSTBOX_LISTEN="127.0.0.1:$PORT" POSTBOX_DATABASE_URL="$db" \
        POSTBOX_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f" POSTBOX_SCHEMAS_DIR=bench/schemas \
        POSTBOX_EXCHANGE="$EXCHANGE" POSTBOX_LOG_FORMAT=json "$@" \
        "$POSTBOX" >>"$TMP/postbox.log" 2>&1 &
    PB_PID=$!
    PIDS+=("$PB_PID")
    wait_http "http://127.0.0.1:$PORT/readyz"
}

stop_postbox() {
    kill -TERM "$PB_PID" 2>/dev/null || true
    wait "$PB_PID" 2>/dev/null || true
}

rss_kb() { awk "/^$2:/ {print \$2}" "/proc/$1/status"; }

# single LABEL CEILING VS [sink args...]: closed-loop single-event POSTs to the running postbox,
# median of REPS, with postbox's and the broker's CPU per event; sets SINGLE.
single() {
    local label=$1 ceil=$2 vs=$3
    shift 3
    local bpid=$RABBIT_PID
    [[ $vs == nats ]] && bpid=$NATS_PID
    say "postbox ($label): single-event POSTs, $N per run, concurrency $C"
    local vals=() pcpu=() bcpu=() dcpu=() busy=() p0 b0 d0 m0 out
    for r in $(seq 1 "$REPS"); do
        p0=$(cpu_ticks "$PB_PID")
        b0=$(cpu_ticks "$bpid")
        d0=$(pg_ticks)
        m0=$(idle_mark)
        out=$($BENCH http --url "$URL" --n "$N" --concurrency "$C" "$@")
        busy+=("$(busy_since "$m0")")
        dcpu+=("$(pg_us_per "$d0" "$N")")
        check_delivery "$out" "postbox $label single"
        pcpu+=("$(us_per "$p0" "$PB_PID" "$N")")
        bcpu+=("$(us_per "$b0" "$bpid" "$N")")
        vals+=("$(json "$out" "['events_per_s']")")
    done
    SINGLE=$(median "${vals[@]}")
    record "{\"row\":\"postbox $label, single-event POSTs\",\"per_s\":$SINGLE,\"ceiling\":$ceil,\"postbox_us\":$(median "${pcpu[@]}"),\"broker_us\":$(median "${bcpu[@]}"),$(db_field "$(median "${dcpu[@]}")")\"busy\":$(median "${busy[@]}"),\"vs\":\"$vs\"}"
}

# db_field US: a JSON field with PostgreSQL's CPU per event, on PostgreSQL rows only.
db_field() { [[ ${CURRENT_BACKEND:-} == postgres ]] && printf '"db_us":%s,' "$1" || true; }

# latency LABEL: open loop at half of SINGLE; 202 and relay-lag percentiles, the slowest 202,
# and the most the kernel's page cache held unwritten (`Dirty:` plus `Writeback:` in /proc/meminfo,
# every 0.1 s: a page leaves `Dirty:` when its write is queued, not when the disk has it)
# meanwhile: PostgreSQL's relation files pile up there and the kernel writes each one out in a
# burst once it is 30 s old, which stalls the WAL's fsync behind it (docs/benchmark.md).
latency() {
    local label=$1 rate out sampler row
    shift
    rate=$(python3 -c "print(max(1, int($SINGLE / 2)))")
    say "postbox ($label): latency at 50% of peak ($rate events/s for ${RATE_SECS}s)"
    while :; do awk '/^(Dirty|Writeback):/ {kb += $2} END {print kb}' /proc/meminfo; sleep 0.1; done >"$TMP/dirty" &
    sampler=$!
    PIDS+=("$sampler")
    out=$($BENCH rate --url "$URL" --rate "$rate" --seconds "$RATE_SECS" "$@")
    kill "$sampler"
    wait "$sampler" 2>/dev/null || true
    # An assignment, not an argument: a row that lost or rejected events ends the run here.
    row=$(python3 -c "
import json,sys; d=json.loads(sys.argv[1])
if d['missing'] or d['ok'] != d['requests']: sys.exit('rate run lost or rejected events: %s' % d)
dirty = max((int(l) for l in open(sys.argv[2]) if l.strip()), default=0) / 1024
print(json.dumps({'row': 'postbox $label at %d events/s (50%% of peak)' % d['rate'], 'p50_ms': d['p50_ms'], 'p99_ms': d['p99_ms'], 'max_ms': d['max_ms'], 'lag_p50_ms': d['lag_p50_ms'], 'lag_p99_ms': d['lag_p99_ms'], 'dirty_mb': round(dirty)}))" "$out" "$TMP/dirty")
    record "$row"
}

# drain BACKEND LABEL CEILING VS [postbox env for the broker]: store BACKLOG events while the
# broker is unreachable, then let the relay publish them: events/s from the first message
# consumed to the last, and postbox's CPU per event meanwhile (the relay's work only).
drain() {
    local backend=$1 label=$2 ceil=$3 vs=$4 db out us p0 dpid bpid=$RABBIT_PID b0 d0 m0
    shift 4
    db=$(new_db "$backend")
    say "postbox ($label): relay drain of a $BACKLOG-event backlog"
    # The same settings (routing prefix, sink), with the broker out of reach.
    start_postbox "$db" "$@" POSTBOX_AMQP_URL="amqp://guest:guest@127.0.0.1:1/%2f" \
        POSTBOX_NATS_URL="nats://127.0.0.1:1"
    $BENCH http --url "$URL" --n "$((BACKLOG / 100))" --batch 100 --concurrency 8 >/dev/null
    stop_postbox
    local sink_args=(--exchange "$EXCHANGE")
    [[ $vs == nats ]] && sink_args=(--stream "$NATS_STREAM" --prefix "$NATS_PREFIX")
    : >"$TMP/drain.out"
    $BENCH drain "${sink_args[@]}" --n "$BACKLOG" >"$TMP/drain.out" &
    dpid=$!
    until grep -q ready "$TMP/drain.out"; do sleep 0.1; done
    [[ $vs == nats ]] && bpid=$NATS_PID
    start_postbox "$db" "$@"
    p0=$(cpu_ticks "$PB_PID")
    b0=$(cpu_ticks "$bpid")
    d0=$(pg_ticks)
    m0=$(idle_mark)
    wait "$dpid"
    local busy
    busy=$(busy_since "$m0")
    us=$(us_per "$p0" "$PB_PID" "$BACKLOG")
    b0=$(us_per "$b0" "$bpid" "$BACKLOG")
    d0=$(pg_us_per "$d0" "$BACKLOG")
    stop_postbox
    out=$(tail -n 1 "$TMP/drain.out")
    check_delivery "$out" "postbox $label drain"
    record "{\"row\":\"postbox $label, relay drain of $BACKLOG\",\"per_s\":$(json "$out" "['per_s']"),\"ceiling\":$ceil,\"postbox_us\":$us,\"broker_us\":$b0,$(db_field "$d0")\"busy\":$busy,\"vs\":\"$vs\"}"
}

URL="http://127.0.0.1:$PORT/v1/events"
for backend in $BACKENDS; do
    CURRENT_BACKEND=$backend
    EXCHANGE="bench-pb-$backend-$RUN"
    start_postbox "$(new_db "$backend")"
    single "$backend" "${CEIL[full]}" amqp --exchange "$EXCHANGE"

    say "postbox ($backend): batch POSTs of 100, $BATCHES per run, concurrency 8"
    vals=() pcpu=() bcpu=() dcpu=() busy=()
    for r in $(seq 1 "$REPS"); do
        p0=$(cpu_ticks "$PB_PID")
        b0=$(cpu_ticks "$RABBIT_PID")
        d0=$(pg_ticks)
        m0=$(idle_mark)
        out=$($BENCH http --url "$URL" --n "$BATCHES" --batch 100 --concurrency 8 --exchange "$EXCHANGE")
        busy+=("$(busy_since "$m0")")
        dcpu+=("$(pg_us_per "$d0" "$((BATCHES * 100))")")
        check_delivery "$out" "postbox $backend batch"
        pcpu+=("$(us_per "$p0" "$PB_PID" "$((BATCHES * 100))")")
        bcpu+=("$(us_per "$b0" "$RABBIT_PID" "$((BATCHES * 100))")")
        vals+=("$(json "$out" "['events_per_s']")")
    done
    record "{\"row\":\"postbox $backend, batch POSTs (100)\",\"per_s\":$(median "${vals[@]}"),\"ceiling\":${CEIL[full]},\"postbox_us\":$(median "${pcpu[@]}"),\"broker_us\":$(median "${bcpu[@]}"),$(db_field "$(median "${dcpu[@]}")")\"busy\":$(median "${busy[@]}"),\"vs\":\"amqp\"}"

    latency "$backend" --exchange "$EXCHANGE"
    record "{\"row\":\"postbox $backend, peak RSS\",\"rss_mb\":$(python3 -c "print($(rss_kb "$PB_PID" VmHWM)/1024)")}"
    stop_postbox

    start_postbox "$(new_db "$backend")" POSTBOX_AMQP_CE_HEADERS=none
    single "$backend, lean shape (amqp_ce_headers = none)" "${CEIL[lean]}" amqp --exchange "$EXCHANGE"
    latency "$backend, lean shape" --exchange "$EXCHANGE"
    stop_postbox

    # The schema set swapped while events flow (issue 13): the bench type's file gets a new
    # description every 200 ms, so the instance rebuilds and swaps its schema set every second
    # (an annotation edit: accepted, recompiled). Validation takes no lock, so this row should
    # match the plain single-event row above.
    rm -rf "$TMP/schemas-reload"
    cp -r bench/schemas "$TMP/schemas-reload"
    start_postbox "$(new_db "$backend")" POSTBOX_SCHEMAS_DIR="$TMP/schemas-reload"
    (
        i=0
        while :; do
            i=$((i + 1))
            sed -i "s/\"description\": \"[^\"]*\"/\"description\": \"revision $i\"/" \
                "$TMP/schemas-reload/bench.event/v1.json"
            sleep 0.2
        done
    ) &
    TOUCHER=$!
    PIDS+=("$TOUCHER")
    single "$backend, schema set reloaded every second" "${CEIL[full]}" amqp --exchange "$EXCHANGE"
    kill "$TOUCHER" 2>/dev/null || true
    RELOADS=$(curl -fsS "http://127.0.0.1:$PORT/metrics" | awk '/^postbox_schema_reloads_total / {print $2}')
    record "{\"row\":\"postbox $backend, schema sets swapped during that row\",\"count\":${RELOADS:-0}}"
    stop_postbox

    drain "$backend" "$backend" "${CEIL[full]}" amqp
    drain "$backend" "$backend, lean shape" "${CEIL[lean]}" amqp POSTBOX_AMQP_CE_HEADERS=none

    if [[ -n "$NATS_CEIL" ]]; then
        NATS_STREAM="BENCHPB$RANDOM$RANDOM"
        NATS_PREFIX="benchpb$RANDOM$RANDOM"
        start_postbox "$(new_db "$backend")" POSTBOX_SINK=nats POSTBOX_NATS_STREAM="$NATS_STREAM" \
            POSTBOX_ROUTING_PREFIX="$NATS_PREFIX"
        single "$backend, NATS JetStream" "$NATS_CEIL" nats --stream "$NATS_STREAM" --prefix "$NATS_PREFIX"
        stop_postbox
        NATS_STREAM="BENCHDR$RANDOM$RANDOM"
        NATS_PREFIX="benchdr$RANDOM$RANDOM"
        drain "$backend" "$backend, NATS JetStream" "$NATS_CEIL" nats POSTBOX_SINK=nats \
            POSTBOX_NATS_STREAM="$NATS_STREAM" POSTBOX_ROUTING_PREFIX="$NATS_PREFIX"
    fi
done

# --- a big outbox ---------------------------------------------------------------------------
# BIG published rows awaiting retention, inserted straight into a fresh outbox; then the same
# single-event and latency measurements as on the empty outboxes above, and the bytes on disk
# each retained event costs. With the defaults (retention_hours 168, payload_retention_hours 24)
# a steady flow keeps the body of one retained row in seven: so does the fill.
db_bytes() { # database_url -> bytes on disk
    if [[ $1 == sqlite://* ]]; then
        python3 -c "import os,sys; print(sum(os.path.getsize(p) for p in sys.argv[1:] if os.path.exists(p)))" \
            "${1#sqlite://}" "${1#sqlite://}-wal"
    else
        psql -w -h 127.0.0.1 -U postgres -d "${1##*/}" -Atc "select pg_database_size(current_database())"
    fi
}

fill_big() { # database_url rows
    local db=$1 rows=$2
    if [[ $db == sqlite://* ]]; then
        python3 - "${db#sqlite://}" "$rows" <<'PY'
import sqlite3, sys, time
path, rows = sys.argv[1], int(sys.argv[2])
body = ('{"data":{"customer":"c-1","payload":"' + "x" * 900 + '","seq":0},"id":"x","source":"bench","specversion":"1.0","type":"bench.event"}').encode()
c = sqlite3.connect(path, isolation_level=None)
now = int(time.time() * 1e6)
step = 200000
for start in range(0, rows, step):
    n = min(step, rows - start)
    c.execute("begin")
    first = c.execute("select coalesce(max(seq), 0) from outbox").fetchone()[0]
    c.execute("""insert into outbox (event_id, source, event_type, version, ce_type, routing_key,
        content_hash, event_time, next_attempt_at, created_at, updated_at, status, published_at,
        partition_id, attempts)
        with recursive s(i) as (select ? union all select i + 1 from s where i < ?)
        select 'big-' || i, 'bench-big', 'bench.event', 'v1', 'bench.event', 'events.bench.event.v1',
            randomblob(32), ?, ?, ?, ?, 'published', ?, i % 64, 1 from s""",
        (start, start + n - 1, now, now, now, now, now))
    c.execute("insert into outbox_payload (seq, body, attributes) select seq, ?, '{}' from outbox where seq > ? and seq % 7 = 0", (body, first))
    c.execute("commit")
c.close()
PY
    else
        psql -w -h 127.0.0.1 -U postgres -d "${db##*/}" -q -v ON_ERROR_STOP=1 -v rows="$rows" <<'SQL'
insert into outbox (event_id, source, event_type, version, ce_type, routing_key, content_hash,
    event_time, next_attempt_at, created_at, updated_at, status, published_at, partition_id, attempts)
select 'big-' || i, 'bench-big', 'bench.event', 'v1', 'bench.event', 'events.bench.event.v1',
    sha256(i::text::bytea), 0, 0, 0, 0, 'published', (extract(epoch from now()) * 1000000)::bigint,
    i % 64, 1
from generate_series(1, :rows) as i;
insert into outbox_payload (seq, body, attributes)
select seq, convert_to('{"data":{"customer":"c-1","payload":"' || repeat('x', 900) || '","seq":0},"id":"x","source":"bench","specversion":"1.0","type":"bench.event"}', 'UTF8'), '{}'
from outbox where event_id like 'big-%' and seq % 7 = 0;
vacuum analyze outbox;
vacuum analyze outbox_payload;
checkpoint;
SQL
    fi
    # The fill's gigabytes are written out before anything is measured: a big outbox that
    # built up over days is on disk, and the kernel writing the fill out meanwhile stalled
    # commits for seconds (2 s on 2026-12-02, 2 GB unwritten in PostgreSQL's latency row).
    sync
}

if [[ "$BIG" -gt 0 ]]; then
    for backend in $BACKENDS; do
        CURRENT_BACKEND=$backend
        EXCHANGE="bench-pb-big-$backend-$RUN"
        db=$(new_db "$backend")
        start_postbox "$db" # migrates
        stop_postbox
        before=$(db_bytes "$db")
        say "postbox ($backend): filling the outbox with $BIG published rows"
        fill_big "$db" "$BIG"
        after=$(db_bytes "$db")
        record "{\"row\":\"$backend: bytes on disk per retained event\",\"bytes\":$(python3 -c "print(round(($after - $before) / $BIG))")}"
        start_postbox "$db"
        single "$backend, $BIG published rows in the outbox" "${CEIL[full]}" amqp --exchange "$EXCHANGE"
        latency "$backend, $BIG published rows in the outbox" --exchange "$EXCHANGE"
        stop_postbox
    done
fi

# --- memory while RabbitMQ is unreachable ---------------------------------------------------
say "postbox (sqlite) with RabbitMQ unreachable: RSS while $BACKLOG events pile up"
EXCHANGE="bench-pb-backlog-$RUN"
start_postbox "$(new_db sqlite)" POSTBOX_AMQP_URL="amqp://guest:guest@127.0.0.1:1/%2f"
RSS0=$(rss_kb "$PB_PID" VmRSS)
samples=()
for step in 1 2 3 4 5; do
    $BENCH http --url "$URL" --n "$((BACKLOG / 500))" --batch 100 --concurrency 8 >/dev/null
    samples+=("$(($(rss_kb "$PB_PID" VmRSS) / 1024))")
done
sleep 3 # the backlog gauge is refreshed every 2 s
PENDING=$(curl -fsS "http://127.0.0.1:$PORT/readyz" | python3 -c "import json,sys; print(json.load(sys.stdin)['outbox']['pending'])")
record "{\"row\":\"postbox sqlite, RSS with broker down\",\"rss_mb_start\":$((RSS0 / 1024)),\"rss_mb_samples\":\"${samples[*]}\",\"pending\":$PENDING}"
stop_postbox

# --- table ----------------------------------------------------------------------------------
python3 - "$RESULTS" "${CEIL[plain]}" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
plain = float(sys.argv[2])
print("\n| row | figure | vs its ceiling | vs plain ceiling | CPU µs per event: postbox / broker (/ PostgreSQL) | machine busy |")
print("| --- | --- | --- | --- | --- | --- |")
for r in rows:
    name = r["row"]
    cpu = ""
    if "postbox_us" in r or "broker_us" in r:
        cpu = f"{r.get('postbox_us', '–')} / {r.get('broker_us', '–')}"
        if "db_us" in r:
            cpu += f" / {r['db_us']}"
    busy = f"{float(r['busy']):.0f}%" if "busy" in r else ""
    if "per_s" in r:
        ceil = r.get("ceiling")
        vs_ceil = f"{r['per_s'] / ceil:.0%}" if ceil else ""
        vs_plain = f"{r['per_s'] / plain:.0%}" if r.get("vs", "amqp") == "amqp" else ""
        print(f"| {name} | {r['per_s']:,.0f} /s | {vs_ceil} | {vs_plain} | {cpu} | {busy} |")
    elif "p50_ms" in r:
        print(f"| {name} | 202 p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.0f} ms; relay lag p50 {r['lag_p50_ms']:.1f} ms, p99 {r['lag_p99_ms']:.1f} ms; page cache unwritten up to {r['dirty_mb']} MB | | | | |")
    elif "rss_mb" in r:
        print(f"| {name} | {r['rss_mb']:.0f} MB | | | | |")
    elif "count" in r:
        print(f"| {name} | {r['count']:.0f} | | | | |")
    elif "bytes" in r:
        print(f"| {name} | {r['bytes']:,} bytes | | | | |")
    else:
        print(f"| {name} | start {r['rss_mb_start']} MB, then {r['rss_mb_samples']} MB; {r['pending']} pending | | | | |")
print("\n'vs its ceiling': RabbitMQ rows against the raw lapin ceiling of the same message shape (full for")
print("postbox's default, lean for amqp_ce_headers = none), NATS rows against raw JetStream publishing.")
print("'machine busy': the share of both cores in use during the row (/proc/stat); near 100%, the row was")
print("bound by CPU, and the CPU per event of each process says where it went.")
PY
