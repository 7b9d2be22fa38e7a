#!/usr/bin/env bash
# The anti-pattern, measured: the same load and the same two faults against
#   - a naive gateway (examples/naive_gateway.rs): the handler publishes straight to RabbitMQ,
#     no outbox, no publisher confirms, and answers 202 once the frames are on the socket;
#   - the same with the publish in a background task (202 at once: "a goroutine + a call");
#   - postbox (SQLite outbox, confirms).
# Scenarios: (a) kill -9 of the gateway mid-load, restarted 2 s later as a supervisor would;
# (b) RabbitMQ unavailable for a few seconds mid-load (`rabbitmqctl stop_app` / `start_app`).
# For each: requests answered 2xx, events that arrived in the queue, events lost (answered 2xx,
# never arrived), duplicates, and events that arrived without a 2xx.
#
#   bench/anti-pattern.sh
#
# Environment: RATE (requests/s, open loop; default 1000), SECS (load duration; default 12),
# OUTAGE_SECS (broker down in (b); default 5). The broker is a private RabbitMQ node
# (scripts/rabbit-cluster.sh; name pbanti1, port 5695); the system node on 5672 is not touched.
# Needs root (the private node runs as the rabbitmq user).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RATE=${RATE:-1000}
SECS=${SECS:-12}
OUTAGE_SECS=${OUTAGE_SECS:-5}
PORT=${ANTI_PORT:-18290}
export RABBIT_BASE=${RABBIT_BASE:-/tmp/postbox-anti-rabbit} RABBIT_PREFIX=pbanti RABBIT_PORT=5695
# shellcheck source=../scripts/rabbit-cluster.sh
source scripts/rabbit-cluster.sh

TMP=$(mktemp -d "${TMPDIR:-/tmp}/postbox-anti.XXXXXX")
BIN=${CARGO_TARGET_DIR:-target}/release
FB=$BIN/examples/faultbench
RESULTS="$TMP/results.jsonl"
GW_PID=

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
cleanup() {
    local rc=$?
    set +e
    [[ -n "$GW_PID" ]] && kill -9 "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null
    rabbit_down
    if [[ $rc -ne 0 ]]; then echo "failed (rc=$rc); logs kept in $TMP" >&2; else rm -rf "$TMP"; fi
    exit $rc
}
trap cleanup EXIT

say "building (release)"
cargo build --release -j 1 --bin postbox --example faultbench --example naive_gateway >&2

say "private RabbitMQ node $(rabbit_node 1) on port $(rabbit_port 1)"
rabbit_up 1
AMQP=$(rabbit_url 1)

# start_gateway KIND EXCHANGE DIR: start it (again, on the same outbox) and wait until it answers.
start_gateway() {
    local kind=$1 x=$2 dir=$3
    # Simple commands in the background, so that $! is the gateway itself (kill -9 reaches it).
    if [[ $kind == postbox ]]; then
        POSTBOX_LISTEN="127.0.0.1:$PORT" POSTBOX_DATABASE_URL="sqlite://$dir/outbox.db" \
            POSTBOX_AMQP_URL="$AMQP" POSTBOX_SCHEMAS_DIR=bench/schemas POSTBOX_EXCHANGE="$x" \
            POSTBOX_RETRY_BASE_MS=200 POSTBOX_RETRY_MAX_MS=2000 POSTBOX_LOG_FORMAT=json \
            "$BIN/postbox" >>"$dir/$kind.log" 2>&1 &
    else
        local flags=()
        [[ $kind == naive-background ]] && flags=(--background)
        "$BIN/examples/naive_gateway" --listen "127.0.0.1:$PORT" --amqp "$AMQP" \
            --exchange "$x" "${flags[@]}" >>"$dir/$kind.log" 2>&1 &
    fi
    GW_PID=$!
    for _ in $(seq 1 200); do
        curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "$kind did not start; its log:" >&2
    tail -20 "$dir/$kind.log" >&2
    return 1
}

# After the load: postbox still has its outbox to publish; wait until it says nothing is pending
# (the gauge is refreshed every 2 s), at most 60 s.
settle() {
    local kind=$1
    if [[ $kind == postbox ]]; then
        for _ in $(seq 1 120); do
            sleep 0.5
            pending=$(curl -fsS "http://127.0.0.1:$PORT/readyz" |
                python3 -c "import json,sys; print(json.load(sys.stdin)['outbox']['pending'])" 2>/dev/null) || continue
            [[ "$pending" == 0 ]] && { sleep 2.5; return 0; }
        done
    else
        sleep 2
    fi
}

# scenario KIND SCENARIO: one row.
scenario() {
    local kind=$1 what=$2 x dir load counted
    x="anti-$kind-$what-$(date +%s%N)"
    dir="$TMP/$kind-$what"
    mkdir -p "$dir"
    "$FB" setup --amqp "$AMQP" --exchange "$x" --queue "$x" >/dev/null
    start_gateway "$kind" "$x" "$dir"
    "$FB" load --url "http://127.0.0.1:$PORT/v1/events" --rate "$RATE" --seconds "$SECS" \
        --timeout-secs 5 --ids "$dir/ids" >"$dir/load.json" &
    local load_pid=$!
    sleep $((SECS / 3))
    case $what in
    kill9)
        kill -9 "$GW_PID"
        wait "$GW_PID" 2>/dev/null || true
        sleep 2
        start_gateway "$kind" "$x" "$dir"
        ;;
    outage)
        rabbit_ctl 1 stop_app
        sleep "$OUTAGE_SECS"
        rabbit_ctl 1 start_app
        ;;
    esac
    wait "$load_pid"
    settle "$kind"
    counted=$("$FB" count --amqp "$AMQP" --queue "$x" --ids "$dir/ids" --delete-exchange "$x")
    kill "$GW_PID" 2>/dev/null
    wait "$GW_PID" 2>/dev/null || true
    GW_PID=
    load=$(cat "$dir/load.json")
    echo "    $kind $what: $load $counted" >&2
    python3 - "$kind" "$what" "$load" "$counted" >>"$RESULTS" <<'EOF'
import json, sys
kind, what, load, count = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
def label(k):
    code, _, kind = k.partition(" ")
    return code + (" " + kind.rsplit("/", 1)[-1] if kind else "")
other = [f"{n} × {label(k)}" for k, n in sorted(load["statuses"].items())]
if load["conn_errors"]:
    other.append(f"{load['conn_errors']} × no answer")
print(json.dumps({"kind": kind, "what": what, "sent": load["sent"], "ok": load["ok"],
                  "other": ", ".join(other) or "–",
                  "not_ok": load["sent"] - load["ok"], "arrived": count["arrived"],
                  "lost": count["lost"], "duplicates": count["duplicates"],
                  "without_2xx": count["arrived_without_2xx"]}))
EOF
}

for what in kill9 outage; do
    for kind in naive naive-background postbox; do
        say "$kind: $( [[ $what == kill9 ]] && echo "kill -9 mid-load" || echo "RabbitMQ down for $OUTAGE_SECS s mid-load")"
        scenario "$kind" "$what"
    done
done

python3 - "$RESULTS" "$RATE" "$SECS" "$OUTAGE_SECS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rate, secs, outage = sys.argv[2], sys.argv[3], sys.argv[4]
names = {"naive": "naive gateway (publish in the handler, no confirms)",
         "naive-background": "naive gateway, publish in a background task",
         "postbox": "postbox (outbox + confirms)"}
scen = {"kill9": "kill -9 mid-load, restarted 2 s later", "outage": f"RabbitMQ down {outage} s mid-load"}
print(f"\n{rate} requests/s for {secs} s, one event each\n")
print("| scenario | gateway | sent | answered 2xx | answered otherwise | arrived | **lost** (2xx, never arrived) | duplicates | arrived without a 2xx |")
print("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
for r in rows:
    print(f"| {scen[r['what']]} | {names[r['kind']]} | {r['sent']} | {r['ok']} | {r['other']} | {r['arrived']} | **{r['lost']}** | {r['duplicates']} | {r['without_2xx']} |")
bad = [r for r in rows if r["kind"] == "postbox" and r["lost"]]
if bad:
    sys.exit(f"FAIL: postbox lost events: {bad}")
EOF
