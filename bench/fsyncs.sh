#!/usr/bin/env bash
# What a SQLite latency row's slow 202s wait for: the disk's fsyncs. Three measurements, one run:
#
#   1. the disk alone: a loop writing 8 KB into a 4 MB file and fsyncing it (as SQLite's WAL
#      is written), for LOOP_SECONDS, with nothing else running;
#   2. the same loop beside raw confirmed publishing to RabbitMQ (`bench broker`, persistent
#      messages: RabbitMQ fsyncs its queue files on the same disk and takes both cores);
#   3. one postbox on a new SQLite outbox: WARM single-event POSTs, then RATE events/s for
#      RATE_SECONDS with every request traced, while the kernel's `ext4_sync_file_enter/exit`
#      events time every fsync of every process (needs root and tracefs). Prints the clumps of
#      slow 202s (100 ms windows with more than 5 requests over 10 ms), the fsyncs over 10 ms
#      (which file, which thread), and each thread's fsyncs of the outbox's WAL and database
#      file: how many, median, slowest, and the time they took in all.
#
#   bench/fsyncs.sh [DIR]          DIR holds `postbox` and `examples/bench` (default target/release)
#
# Environment: RATE (default 1350: half of the single-event peak of the machine this was written
# on; use half of yours), RATE_SECONDS (default 20), WARM (default 60000), LOOP_SECONDS (default
# 15), BROKER_N (messages of the raw publishing beside the second loop, default 100000), EXTRA
# (VAR=value settings for postbox). Needs RabbitMQ on 127.0.0.1:5672 and python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIR=${1:-target/release}
RATE=${RATE:-1350}
RATE_SECONDS=${RATE_SECONDS:-20}
WARM=${WARM:-60000}
LOOP_SECONDS=${LOOP_SECONDS:-15}
BROKER_N=${BROKER_N:-100000}
PORT=18194
URL="http://127.0.0.1:$PORT/v1/events"
NAME="postbox_fsyncs_$$"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/postbox-fsyncs.XXXXXX")
TRACING=/sys/kernel/tracing
EVENTS="ext4/ext4_sync_file_enter ext4/ext4_sync_file_exit"
PB=
TRACED=

cleanup() {
    if [[ -n "$TRACED" ]]; then
        echo 0 >"$TRACING/tracing_on"
        for e in $EVENTS; do echo 0 >"$TRACING/events/$e/enable"; done
        echo local >"$TRACING/trace_clock"
    fi
    [[ -n "$PB" ]] && kill "$PB" 2>/dev/null && wait "$PB" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
source bench/lib.sh

# loop SECONDS [PID]: the fsync loop in TMP for SECONDS, or for as long as PID runs.
loop() {
    python3 - "$TMP/loop.bin" "$@" <<'EOF'
import os, sys, time
path, secs = sys.argv[1], float(sys.argv[2])
pid = int(sys.argv[3]) if len(sys.argv) > 3 else None
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, 4 << 20)
block, off, lat = os.urandom(8192), 0, []
end = time.monotonic() + secs
def running():
    if pid is None:
        return time.monotonic() < end
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
while running():
    os.pwrite(fd, block, off)
    off = (off + len(block)) % (4 << 20)
    t = time.perf_counter()
    os.fsync(fd)
    lat.append(time.perf_counter() - t)
    time.sleep(0.001)
os.close(fd)
os.unlink(path)
lat.sort()
n = len(lat)
ms = lambda q: lat[min(n - 1, int(n * q))] * 1e3
print(f"{n} fsyncs: p50 {ms(0.5):.2f} ms, p99 {ms(0.99):.2f} ms, p99.9 {ms(0.999):.2f} ms, "
      f"max {lat[-1] * 1e3:.1f} ms; {sum(x > 0.01 for x in lat)} over 10 ms, "
      f"{sum(x > 0.05 for x in lat)} over 50 ms")
EOF
}

echo "1. the disk alone, ${LOOP_SECONDS}s: $(loop "$LOOP_SECONDS")"

"$DIR/examples/bench" broker --exchange "fsyncs-$NAME" --n "$BROKER_N" --window 1000 >"$TMP/broker" &
broker=$!
sleep 2
beside=$(loop 0 "$broker")
wait "$broker"
echo "2. beside raw RabbitMQ publishing ($(field "$(cat "$TMP/broker")" "['per_s']") msg/s): $beside"

start_postbox "$DIR" "$PORT" "sqlite://$TMP/outbox.db" "fsyncs-$NAME" "$TMP/postbox.log"
"$DIR/examples/bench" http --url "$URL" --n "$WARM" --concurrency 64 --exchange "fsyncs-$NAME" >"$TMP/warm"
if [[ -w $TRACING/trace ]] || { mount -t tracefs nodev "$TRACING" 2>/dev/null && [[ -w $TRACING/trace ]]; }; then
    echo 0 >"$TRACING/tracing_on"
    echo mono >"$TRACING/trace_clock"
    : >"$TRACING/trace"
    echo 16384 >"$TRACING/buffer_size_kb"
    for e in $EVENTS; do echo 1 >"$TRACING/events/$e/enable"; done
    TRACED=1
    echo 1 >"$TRACING/tracing_on"
else
    echo "(no writable tracefs at $TRACING: the fsyncs are not traced; run as root)"
fi
# The trace's clock is CLOCK_MONOTONIC; this lines it up with the bench tool's wall clock.
offset=$(python3 -c "import time; print(time.time() - time.monotonic())")
out=$("$DIR/examples/bench" rate --url "$URL" --rate "$RATE" --seconds "$RATE_SECONDS" \
    --exchange "fsyncs-$NAME" --trace "$TMP/trace")
if [[ -n "$TRACED" ]]; then
    echo 0 >"$TRACING/tracing_on"
    cat "$TRACING/trace" >"$TMP/ftrace"
else
    : >"$TMP/ftrace"
fi
[[ $(field "$out" "['missing']") == 0 ]] || { echo "events missing: $out"; exit 1; }
started=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['started_at'])" "$out")
echo "3. postbox, SQLite, $RATE/s for ${RATE_SECONDS}s after $WARM single-event POSTs ($(field "$(cat "$TMP/warm")" "['events_per_s']")/s): 202 p50 $(field "$out" "['p50_ms']") ms, p99 $(field "$out" "['p99_ms']") ms, max $(field "$out" "['max_ms']") ms; relay lag p99 $(field "$out" "['lag_p99_ms']") ms"
python3 - "$started" "$offset" "$TMP/trace" "$TMP/ftrace" \
    "$(stat -c %i "$TMP/outbox.db")" "$(stat -c %i "$TMP/outbox.db-wal")" <<'EOF'
import collections, re, sys
start, offset = float(sys.argv[1]), float(sys.argv[2])
files = {sys.argv[5]: "outbox.db", sys.argv[6]: "outbox.db-wal"}
windows = collections.defaultdict(list)
for line in open(sys.argv[3]):
    at, ms = map(float, line.split())
    windows[int(at * 10)].append(ms)
print("   clumps (100 ms windows with more than 5 requests over 10 ms): offset s, slow requests, slowest ms")
for w, lat in sorted(windows.items()):
    slow = [m for m in lat if m > 10]
    if len(slow) > 5:
        print(f"     {w / 10:5.1f}  {len(slow):4d}  {max(lat):6.1f}")
entered, by_thread, slow = {}, collections.defaultdict(list), []
pattern = re.compile(r"^\s*(.+)-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+): ext4_sync_file_(enter|exit): dev \S+ ino (\d+)")
for line in open(sys.argv[4]):
    m = pattern.match(line)
    if not m:
        continue
    comm, tid, at, kind, ino = m.group(1), m.group(2), float(m.group(3)) + offset, m.group(4), m.group(5)
    if kind == "enter":
        entered[(tid, ino)] = at
        continue
    if (tid, ino) not in entered:
        continue
    began = entered.pop((tid, ino))
    took = at - began
    name = files.get(ino, f"inode {ino}")
    if ino in files:
        by_thread[(comm, name)].append(took)
    if took > 0.01 and began >= start:
        slow.append((began - start, name, comm, took))
if slow:
    print("   fsyncs over 10 ms: offset s, file, thread, ms")
    for at, name, comm, took in slow:
        print(f"     {at:6.2f}  {name:14s} {comm:16s} {took * 1e3:6.1f}")
for (comm, name), took in sorted(by_thread.items()):
    took.sort()
    print(f"   {comm} fsynced {name} {len(took)} times: median {took[len(took) // 2] * 1e3:.2f} ms, "
          f"max {took[-1] * 1e3:.1f} ms, {sum(took):.2f} s in all")
EOF
