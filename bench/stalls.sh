#!/usr/bin/env bash
# Where a PostgreSQL latency row's slow 202s come from: one postbox on a new database, WARM
# single-event POSTs (as bench/run.sh sends before its latency row), then open-loop load at
# RATE for RATE_SECONDS with every request's latency traced, while the page cache's unwritten
# pages (/proc/meminfo's `Dirty:` plus `Writeback:`: a page leaves `Dirty:` when its write is
# queued, not when the disk has it) and the disk's writes are sampled every 20 ms. Prints the clumps of slow requests (100 ms windows
# with more than 20 requests over 20 ms) and the page-cache bursts (more than 20 MB written to
# the disk within one sample), each at its offset from the start of the load, so that a stall
# can be matched with a burst (docs/benchmark.md, *The PostgreSQL p99's stalls are the kernel's
# writeback*).
#
#   bench/stalls.sh [DIR]          DIR holds `postbox` and `examples/bench` (default target/release)
#
# Environment: RATE (default 1500), RATE_SECONDS (default 20), WARM (default 60000), DISK (the
# block device under PostgreSQL's data, default: the one holding /var/lib/postgresql), SLOWLOG
# (log_min_duration_statement for the run's database, ms; PostgreSQL's log then names the slow
# statements), EXTRA (VAR=value settings for postbox). Needs RabbitMQ on 127.0.0.1:5672 and
# PostgreSQL on 127.0.0.1:5432.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIR=${1:-target/release}
RATE=${RATE:-1500}
RATE_SECONDS=${RATE_SECONDS:-20}
WARM=${WARM:-60000}
DISK=${DISK:-$(basename "$(df --output=source /var/lib/postgresql 2>/dev/null | tail -n 1)")}
PORT=18192
URL="http://127.0.0.1:$PORT/v1/events"
NAME="postbox_stalls_$$"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/postbox-stalls.XXXXXX")
PB=
SAMPLER=

cleanup() {
    [[ -n "$SAMPLER" ]] && kill "$SAMPLER" 2>/dev/null
    [[ -n "$PB" ]] && kill "$PB" 2>/dev/null && wait "$PB" 2>/dev/null
    dropdb -w -h 127.0.0.1 -U postgres --if-exists "$NAME" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
source bench/lib.sh
[[ -r /sys/block/$DISK/stat ]] || { echo "no /sys/block/$DISK/stat: set DISK"; exit 1; }

createdb -w -h 127.0.0.1 -U postgres "$NAME"
if [[ -n ${SLOWLOG:-} ]]; then
    psql -w -h 127.0.0.1 -U postgres -Atc "alter database $NAME set log_min_duration_statement = $SLOWLOG" >/dev/null
fi
start_postbox "$DIR" "$PORT" "postgres://postgres@127.0.0.1:5432/$NAME" "stalls-$NAME" "$TMP/postbox.log"
"$DIR/examples/bench" http --url "$URL" --n "$WARM" --concurrency 64 --exchange "stalls-$NAME" >/dev/null

# Each sample: time (s since the epoch), Dirty + Writeback (kB), requests in flight, sectors
# written so far.
(while :; do
    printf '%s %s %s\n' "$(date +%s.%N)" "$(awk '/^(Dirty|Writeback):/ {kb += $2} END {print kb}' /proc/meminfo)" \
        "$(awk '{print $9, $7}' "/sys/block/$DISK/stat")"
    sleep 0.02
done) >"$TMP/samples" &
SAMPLER=$!
out=$("$DIR/examples/bench" rate --url "$URL" --rate "$RATE" --seconds "$RATE_SECONDS" \
    --exchange "stalls-$NAME" --trace "$TMP/trace")
kill "$SAMPLER"
SAMPLER=
[[ $(field "$out" "['missing']") == 0 ]] || { echo "events missing: $out"; exit 1; }
started=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['started_at'])" "$out")
echo "$RATE/s for ${RATE_SECONDS}s after $WARM single-event POSTs, started $(date -u -d "@$started" +%T): 202 p50 $(field "$out" "['p50_ms']") ms, p99 $(field "$out" "['p99_ms']") ms, max $(field "$out" "['max_ms']") ms; relay lag p99 $(field "$out" "['lag_p99_ms']") ms"
python3 - "$started" "$TMP/trace" "$TMP/samples" <<'EOF'
import collections, sys
start = float(sys.argv[1])
windows = collections.defaultdict(list)
for line in open(sys.argv[2]):
    at, ms = map(float, line.split())
    windows[int(at * 10)].append(ms)
print("clumps (100 ms windows with more than 20 requests over 20 ms): offset s, slow requests, slowest ms")
for w, lat in sorted(windows.items()):
    slow = [m for m in lat if m > 20]
    if len(slow) > 20:
        print(f"  {w / 10:5.1f}  {len(slow):4d}  {max(lat):6.1f}")
samples = [line.split() for line in open(sys.argv[3])]
print("page-cache bursts (more than 20 MB written within one sample): offset s, unwritten before -> after MB, in flight")
peak = 0
for a, b in zip(samples, samples[1:]):
    peak = max(peak, int(b[1]))
    if (int(b[3]) - int(a[3])) * 512 > 20 * 2**20:
        print(f"  {float(b[0]) - start:5.1f}  {int(a[1]) / 1024:6.0f} -> {int(b[1]) / 1024:4.0f}  {b[2]}")
print(f"page cache held up to {peak / 1024:.0f} MB unwritten")
EOF
