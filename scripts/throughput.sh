#!/usr/bin/env bash
# A rough end-to-end throughput figure: N single-event POSTs with C concurrent connections
# against a release build, timed from the first POST until RabbitMQ holds all N messages in a
# durable queue bound to postbox's exchange. Not a benchmark (load generator, postbox, the
# database and RabbitMQ all share one machine); not run in CI.
#
#   scripts/throughput.sh              SQLite outbox in a temp directory
#   scripts/throughput.sh --pg         PostgreSQL outbox in a fresh database (createdb)
#   scripts/throughput.sh -n 50000 -c 128
#   LOADGEN=python scripts/throughput.sh   use the Python client even when wrk is installed
#
# Needs RabbitMQ on 127.0.0.1:5672 (guest/guest), python3 (pika is installed into a venv under
# /tmp if missing), and wrk (installed with apt-get when possible; otherwise a slower Python
# client is used). --pg needs PostgreSQL on 127.0.0.1:5432 with the role postgres.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

N=${N:-20000}
C=${C:-64}
BACKEND=sqlite
PORT=${PORT:-18080}
while [[ $# -gt 0 ]]; do
    case $1 in
        --pg) BACKEND=postgres ;;
        -n) N=$2; shift ;;
        -c) C=$2; shift ;;
        -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

RUN_ID="$(date +%s)-$$"
EXCHANGE="postbox-bench-$RUN_ID"
QUEUE="postbox-bench-$RUN_ID"
DB_NAME="postbox_bench_${RUN_ID//-/_}"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/postbox-bench.XXXXXX")
VENV="${TMPDIR:-/tmp}/postbox-bench-venv"
POSTBOX_PID=""
WAITER_PID=""
WRK_PID=""
QUEUE_DECLARED=0
DB_CREATED=0

cleanup() {
    local rc=$?
    set +e
    if [[ -n "$WRK_PID" ]] && kill -0 "$WRK_PID" 2>/dev/null; then
        kill "$WRK_PID"
        wait "$WRK_PID" 2>/dev/null
    fi
    if [[ -n "$WAITER_PID" ]] && kill -0 "$WAITER_PID" 2>/dev/null; then
        kill "$WAITER_PID"
        wait "$WAITER_PID" 2>/dev/null
    fi
    if [[ -n "$POSTBOX_PID" ]] && kill -0 "$POSTBOX_PID" 2>/dev/null; then
        kill -TERM "$POSTBOX_PID"
        for _ in $(seq 1 100); do
            kill -0 "$POSTBOX_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$POSTBOX_PID" 2>/dev/null
        wait "$POSTBOX_PID" 2>/dev/null
    fi
    if [[ "$QUEUE_DECLARED" -eq 1 ]]; then
        "$PY" "$TMP/amqp.py" cleanup "$EXCHANGE" "$QUEUE" || echo "could not delete queue $QUEUE / exchange $EXCHANGE" >&2
    fi
    if [[ "$DB_CREATED" -eq 1 ]]; then
        dropdb -w -h 127.0.0.1 -U postgres --if-exists "$DB_NAME" || echo "could not drop database $DB_NAME" >&2
    fi
    if [[ $rc -ne 0 && -f "$TMP/postbox.log" ]]; then
        echo "--- last lines of the postbox log ---" >&2
        tail -n 20 "$TMP/postbox.log" >&2
    fi
    rm -rf "$TMP"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools ----------------------------------------------------------------------------------

(exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null || die "RabbitMQ does not answer on 127.0.0.1:5672 (start it, e.g. with scripts/test.sh)"

PY=python3
if ! "$PY" -c 'import pika' 2>/dev/null; then
    if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import pika' 2>/dev/null; then
        say "installing pika into $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q pika
    fi
    PY="$VENV/bin/python"
fi

if ! command -v wrk >/dev/null && [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing wrk"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null; } ||
        echo "wrk could not be installed; using the Python client"
fi

# AMQP helper: declare/bind, wait for the queue to fill, clean up.
cat >"$TMP/amqp.py" <<'PY'
import sys, time
import pika

URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
cmd = sys.argv[1]
conn = pika.BlockingConnection(pika.URLParameters(URL))
ch = conn.channel()
if cmd == "setup":
    exchange, queue = sys.argv[2], sys.argv[3]
    # Same arguments as postbox's own declaration (durable topic), so both succeed.
    ch.exchange_declare(exchange, exchange_type="topic", durable=True)
    # Durable, like a real consumer's queue: persistent messages are written to disk before
    # RabbitMQ confirms them.
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, exchange, routing_key="events.#")
elif cmd == "wait":
    # Log "time depth" whenever the queue depth changes; stop once the depth reaches the number
    # written to TARGET_FILE (known only after the load, see below).
    queue, target_file, timeout = sys.argv[2], sys.argv[3], float(sys.argv[4])
    deadline = time.time() + timeout
    last = -1
    while time.time() < deadline:
        count = ch.queue_declare(queue, passive=True).method.message_count
        if count != last:
            print(f"{time.time():.6f} {count}", flush=True)
            last = count
        try:
            with open(target_file) as f:
                if count >= int(float(f.read())):
                    break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.02)
    else:
        print(f"timed out with {last} messages in the queue", file=sys.stderr)
        sys.exit(1)
elif cmd == "cleanup":
    exchange, queue = sys.argv[2], sys.argv[3]
    ch.queue_delete(queue)
    ch.exchange_delete(exchange)
conn.close()
PY

# --- postbox --------------------------------------------------------------------------------

say "cargo build --release"
cargo build --release

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port $PORT is in use (set PORT=...)"
fi

if [[ "$BACKEND" == postgres ]]; then
    say "creating PostgreSQL database $DB_NAME"
    createdb -w -h 127.0.0.1 -U postgres "$DB_NAME"
    DB_CREATED=1
    DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB_NAME"
else
    DATABASE_URL="sqlite://$TMP/pb.db"
fi

say "declaring queue $QUEUE bound to exchange $EXCHANGE with events.#"
QUEUE_DECLARED=1
"$PY" "$TMP/amqp.py" setup "$EXCHANGE" "$QUEUE"

say "starting target/release/postbox ($BACKEND outbox) on 127.0.0.1:$PORT"
POSTBOX_DATABASE_URL="$DATABASE_URL" \
    POSTBOX_EXCHANGE="$EXCHANGE" \
    POSTBOX_LISTEN="127.0.0.1:$PORT" \
    POSTBOX_SCHEMAS_DIR="$ROOT/schemas" \
    POSTBOX_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f" \
    POSTBOX_LOG_FORMAT=json \
    "$ROOT/target/release/postbox" serve >"$TMP/postbox.log" 2>&1 &
POSTBOX_PID=$!

ready=0
for _ in $(seq 1 150); do
    kill -0 "$POSTBOX_PID" 2>/dev/null || die "postbox exited during start-up"
    if curl -fsS "http://127.0.0.1:$PORT/readyz" 2>/dev/null | grep -q '"state":"connected"'; then
        ready=1
        break
    fi
    sleep 0.2
done
[[ $ready -eq 1 ]] || die "postbox did not become ready with RabbitMQ connected within 30 s"

# --- load -----------------------------------------------------------------------------------

BODY='{"type":"order.paid","version":"v1","data":{"order_id":"o-1001","amount":25.5,"currency":"EUR"}}'

cat >"$TMP/post.lua" <<'LUA'
-- Each thread POSTs until it has its share of PB_N 202s, then stops and drops a file in
-- PB_DONE_DIR; the script interrupts wrk once every thread has (wrk alone would run for the
-- whole -d duration). Requests still in flight on a stopping thread's other connections may be
-- accepted too, so the server can get up to C-1 events more; the script counts what was
-- committed rather than trusting PB_N.
local total = tonumber(os.getenv("PB_N"))
local nthreads = tonumber(os.getenv("PB_THREADS"))
local body = os.getenv("PB_BODY")
local done_dir = os.getenv("PB_DONE_DIR")
local threads = {}
local index = 0

function setup(thread)
    local share = math.floor(total / nthreads)
    if index < total % nthreads then share = share + 1 end
    thread:set("share", share)
    thread:set("id", index)
    index = index + 1
    table.insert(threads, thread)
end

function init(args)
    accepted, failed = 0, 0
    post = wrk.format("POST", "/v1/events", { ["Content-Type"] = "application/json" }, body)
end

function request()
    return post
end

function response(status, headers, body)
    if status == 202 then
        accepted = accepted + 1
        if accepted == share then
            local f = io.open(done_dir .. "/thread-" .. id, "w")
            f:close()
            wrk.thread:stop()
        end
    else
        failed = failed + 1
    end
end

function done(summary, latency, requests)
    local a, f = 0, 0
    for _, t in ipairs(threads) do
        a = a + t:get("accepted")
        f = f + t:get("failed")
    end
    io.write(string.format("RESULT accepted=%d failed=%d\n", a, f))
end
LUA

cat >"$TMP/post.py" <<'PY'
# Fallback load generator (stdlib only): C keep-alive connections share N POSTs.
import asyncio, os, sys

N, C, PORT, BODY = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
REQ = (b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
       b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
left, accepted, failed = N, 0, 0

async def worker():
    global left, accepted, failed
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    while left > 0:
        left -= 1
        writer.write(REQ)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        if status == 202:
            accepted += 1
        else:
            failed += 1
    writer.close()

async def main():
    await asyncio.gather(*(worker() for _ in range(C)))
    print(f"RESULT accepted={accepted} failed={failed}")

asyncio.run(main())
PY

# The waiter polls the queue depth from before the first POST, so the end time is when the
# last message arrived (to within its 20 ms poll), not when this script got round to looking.
"$PY" "$TMP/amqp.py" wait "$QUEUE" "$TMP/target" 900 >"$TMP/wait.out" &
WAITER_PID=$!
for _ in $(seq 1 100); do
    [[ -s "$TMP/wait.out" ]] && break
    sleep 0.1
done
[[ -s "$TMP/wait.out" ]] || die "cannot watch queue $QUEUE"

say "sending $N events with $C concurrent connections"
THREADS=$(( $(nproc) < C ? $(nproc) : C ))
T0=$(date +%s.%N)
if command -v wrk >/dev/null && [[ "${LOADGEN:-wrk}" != python ]]; then
    CLIENT="wrk -t$THREADS -c$C"
    mkdir "$TMP/done"
    PB_N=$N PB_THREADS=$THREADS PB_BODY=$BODY PB_DONE_DIR="$TMP/done" \
        wrk -t"$THREADS" -c"$C" -d600s --latency -s "$TMP/post.lua" "http://127.0.0.1:$PORT" >"$TMP/load.out" &
    WRK_PID=$!
    while kill -0 "$WRK_PID" 2>/dev/null; do
        if [[ $(find "$TMP/done" -type f | wc -l) -ge $THREADS ]]; then
            kill -INT "$WRK_PID"
            break
        fi
        sleep 0.01
    done
    wait "$WRK_PID" || die "wrk failed: $(cat "$TMP/load.out")"
    WRK_PID=""
    cat "$TMP/load.out"
else
    CLIENT="python asyncio, $C connections"
    "$PY" "$TMP/post.py" "$N" "$C" "$PORT" "$BODY" | tee "$TMP/load.out"
fi
T_ACCEPTED=$(date +%s.%N)
grep -q "RESULT accepted=[0-9]* failed=0" "$TMP/load.out" || die "some POSTs were not answered 202 (see above)"

# Everything the writer committed, including requests still in flight when the client stopped.
sleep 1
metric() { awk -v m="$1" '$1 == m { print $2 }' <<<"$METRICS"; }
METRICS=$(curl -fsS "http://127.0.0.1:$PORT/metrics")
[[ -z "$(metric postbox_commit_failures_total)" ]] || die "some group commits failed"
COMMITS=$(metric postbox_commit_events_count)
COMMITTED=$(metric postbox_commit_events_sum)
[[ -n "$COMMITTED" ]] || die "no commit metrics at /metrics"
COMMITTED=${COMMITTED%.*}
echo "$COMMITTED" >"$TMP/target"

say "waiting until queue $QUEUE holds all $COMMITTED committed events"
wait "$WAITER_PID" || die "the queue did not receive every event"
WAITER_PID=""
read -r T_LAST IN_QUEUE < <(awk -v m="$COMMITTED" '$2 >= m { print; exit }' "$TMP/wait.out")

awk -v n="$COMMITTED" -v t0="$T0" -v ta="$T_ACCEPTED" -v tl="$T_LAST" -v q="$IN_QUEUE" \
    -v backend="$BACKEND" -v client="$CLIENT" -v commits="$COMMITS" \
    -v cores="$(nproc)" 'BEGIN {
    printf "\n"
    printf "backend            %s outbox, %d cores, everything on this machine\n", backend, cores
    printf "load               %d single-event POSTs committed, %s\n", n, client
    printf "accepted (202)     %.2f s  -> %.0f events/s\n", ta - t0, n / (ta - t0)
    printf "in the queue       %.2f s  -> %.0f events/s end to end (%d messages)\n", tl - t0, n / (tl - t0), q
    printf "group commit       %d transactions, %.1f events each on average\n", commits, n / commits
}'
