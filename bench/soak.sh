#!/usr/bin/env bash
# Soak: postbox (release build, SQLite outbox) takes single-event POSTs at half of its peak rate
# for SOAK_MINUTES, with its RabbitMQ restarted twice, while a consumer counts every event. Every
# 10 s it samples postbox's RSS, open file descriptors, the outbox database size (with its WAL),
# the p99 of the 202s of those 10 s, and the relay lag (p99 of the postbox_relay_lag_seconds
# histogram's increase, a bucket bound; and end to end from the consumer), prints them as a
# table, draws them into a PNG, and says at the end whether any of them keeps growing: the
# slope of the last 5 minutes against the first 5.
#
#   bench/soak.sh                    30 minutes (peak measured first)
#   SOAK_MINUTES=3 bench/soak.sh     a short run to check the machinery
#
# Environment: SOAK_MINUTES (30), SOAK_RATE (events/s; default half of the end-to-end peak
# measured first: 20000 POSTs from 64 connections, first POST to last event consumed), SOAK_RESTARTS (2), SOAK_OUTAGE_SECS (10, broker down per restart),
# SOAK_OUT (docs/soak: writes $SOAK_OUT.csv and $SOAK_OUT.png).
#
# The broker is a private RabbitMQ node (scripts/rabbit-cluster.sh; name pbsoak1, port 5691),
# restarted with `rabbitmqctl stop_app` / `start_app`; the system node on 5672 is not touched.
# Published rows are pruned after 0 h (POSTBOX_RETENTION_HOURS=0, pruning runs every minute) so
# that the database reaches its steady size within the run; with the default 168 h it grows by
# rate x 168 h before it levels off. The chart needs matplotlib: a venv in bench/.venv gets it
# from PyPI on the first run. Needs root (the private node runs as the rabbitmq user).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SOAK_MINUTES=${SOAK_MINUTES:-30}
SOAK_RATE=${SOAK_RATE:-}
SOAK_RESTARTS=${SOAK_RESTARTS:-2}
SOAK_OUTAGE_SECS=${SOAK_OUTAGE_SECS:-10}
SOAK_OUT=${SOAK_OUT:-docs/soak}
PORT=${SOAK_PORT:-18280}
export RABBIT_BASE=${RABBIT_BASE:-/tmp/postbox-soak-rabbit} RABBIT_PREFIX=pbsoak RABBIT_PORT=5691
# shellcheck source=../scripts/rabbit-cluster.sh
source scripts/rabbit-cluster.sh

TMP=$(mktemp -d "${TMPDIR:-/tmp}/postbox-soak.XXXXXX")
FB=${CARGO_TARGET_DIR:-target}/release/examples/faultbench
PB=${CARGO_TARGET_DIR:-target}/release/postbox
PB_PID=

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }
cleanup() {
    local rc=$?
    set +e
    [[ -n "$PB_PID" ]] && kill "$PB_PID" 2>/dev/null && wait "$PB_PID" 2>/dev/null
    rabbit_down
    if [[ $rc -ne 0 ]]; then echo "soak failed (rc=$rc); logs kept in $TMP" >&2; else rm -rf "$TMP"; fi
    exit $rc
}
trap cleanup EXIT

say "building (release)"
cargo build --release -j 1 --bin postbox --example faultbench >&2

say "private RabbitMQ node $(rabbit_node 1) on port $(rabbit_port 1)"
rabbit_up 1
AMQP=$(rabbit_url 1)

say "postbox on 127.0.0.1:$PORT (SQLite outbox in $TMP)"
DB="$TMP/outbox.db"
POSTBOX_LISTEN="127.0.0.1:$PORT" POSTBOX_DATABASE_URL="sqlite://$DB" POSTBOX_AMQP_URL="$AMQP" \
    POSTBOX_SCHEMAS_DIR=bench/schemas POSTBOX_EXCHANGE=soak POSTBOX_RETENTION_HOURS=0 \
    POSTBOX_LOG_FORMAT=json "$PB" >"$TMP/postbox.log" 2>&1 &
PB_PID=$!
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
URL="http://127.0.0.1:$PORT/v1/events"

if [[ -z "$SOAK_RATE" ]]; then
    say "peak: 20000 single-event POSTs from 64 connections"
    "$FB" setup --amqp "$AMQP" --exchange soak --queue soak-peak >/dev/null
    peak=$("$FB" load --url "$URL" --n 20000 --concurrency 64 --ids "$TMP/peak-ids")
    counted=$("$FB" count --amqp "$AMQP" --queue soak-peak --ids "$TMP/peak-ids")
    echo "    $peak" >&2
    echo "    $counted" >&2
    # The peak is end to end, as bench/run.sh measures it: from the first POST until the last
    # event is consumed (202s alone run ahead of the relay for a short burst).
    SOAK_RATE=$(python3 -c "
import json,sys
p, c = json.loads(sys.argv[1]), json.loads(sys.argv[2])
peak = c['arrived'] / (c['last_unix'] - p['started_unix'])
print(f'    end-to-end peak {peak:.0f} events/s', file=sys.stderr)
print(max(1, int(peak / 2)))" "$peak" "$counted")
fi

say "soak: $SOAK_RATE events/s for $SOAK_MINUTES min, broker restarted $SOAK_RESTARTS times (${SOAK_OUTAGE_SECS} s down each)"
mkdir -p "$(dirname "$SOAK_OUT")"
"$FB" soak --url "$URL" --rate "$SOAK_RATE" --seconds "$((SOAK_MINUTES * 60))" --amqp "$AMQP" \
    --exchange soak --pid "$PB_PID" --db "$DB" --every 10 --csv "$SOAK_OUT.csv" \
    --restarts "$SOAK_RESTARTS" \
    --restart-cmd "source scripts/rabbit-cluster.sh; rabbit_ctl 1 stop_app; sleep $SOAK_OUTAGE_SECS; rabbit_ctl 1 start_app" \
    | tee "$TMP/soak.out"
SUMMARY=$(tail -1 "$TMP/soak.out")

say "chart"
if [[ ! -x bench/.venv/bin/python ]]; then
    python3 -m venv bench/.venv
    bench/.venv/bin/pip install --quiet matplotlib
fi
bench/.venv/bin/python - "$SOAK_OUT.csv" "$SOAK_OUT.png" "$SOAK_RATE" "$SOAK_MINUTES" <<'EOF'
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open(sys.argv[1])))
t = [float(r["t_s"]) / 60 for r in rows]
panels = [("rss_mb", "RSS (MB)"), ("fds", "open file descriptors"), ("db_mb", "outbox DB + WAL (MB)"),
          ("p99_202_ms", "p99 of the 202 (ms)"), ("relay_lag_p99_ms", "relay lag p99 (ms, bucket bound)"),
          ("e2e_lag_p99_ms", "end-to-end lag p99 (ms)")]
fig, axes = plt.subplots(len(panels), 1, figsize=(9, 13), sharex=True)
restarts = [float(r["t_s"]) / 60 for r in rows if r["event"]]
for ax, (col, label) in zip(axes, panels):
    ys = [float(r[col]) if r[col] not in ("", "NaN", "nan") else float("nan") for r in rows]
    ax.plot(t, ys, lw=1.2)
    if col.endswith("_ms"):
        ax.set_yscale("log")
    for x in restarts:
        ax.axvline(x, color="red", ls="--", lw=0.8)
    ax.set_ylabel(label, fontsize=8)
    ax.grid(alpha=0.3)
axes[-1].set_xlabel("minutes (red: RabbitMQ restarted)")
fig.suptitle(f"postbox soak: {sys.argv[3]} events/s for {sys.argv[4]} min, SQLite outbox, every 10 s")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=80)
EOF
echo "chart: $SOAK_OUT.png" >&2

say "verdict"
python3 - "$SOAK_OUT.csv" "$SUMMARY" <<'EOF'
import csv, json, sys, statistics
rows = list(csv.DictReader(open(sys.argv[1])))
summary = json.loads(sys.argv[2])
def num(v):
    try:
        x = float(v)
        return None if x != x else x
    except ValueError:
        return None
def slope(pts):  # least squares, units per minute
    pts = [(x, y) for x, y in pts if y is not None]
    if len(pts) < 3:
        return float("nan")
    mx = statistics.fmean(x for x, _ in pts); my = statistics.fmean(y for _, y in pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den if den else 0.0
end = float(rows[-1]["t_s"])
first = [r for r in rows if float(r["t_s"]) <= 300]
last = [r for r in rows if float(r["t_s"]) > end - 300]
print(f"{'series':<18} {'first 5 min':>12} {'last 5 min':>12} {'slope first':>12} {'slope last':>12}  verdict")
grows = []
for col, unit in [("rss_mb", "MB"), ("fds", ""), ("db_mb", "MB"), ("p99_202_ms", "ms"),
                  ("relay_lag_p99_ms", "ms"), ("e2e_lag_p99_ms", "ms")]:
    f = [num(r[col]) for r in first]; l = [num(r[col]) for r in last]
    mf = statistics.median([x for x in f if x is not None] or [0]); ml = statistics.median([x for x in l if x is not None] or [0])
    sf = slope([(float(r["t_s"]) / 60, num(r[col])) for r in first])
    sl = slope([(float(r["t_s"]) / 60, num(r[col])) for r in last])
    # Growing without bound: a resource (memory, descriptors, disk) that sits higher in the
    # last 5 minutes than in the first 5 and still climbs there by more than 10% of its level
    # per 10 minutes; a latency whose last 5 minutes sit at over twice the first 5 (plus 5 ms,
    # as the first minutes can be near zero). Broker restarts are spread over the middle of the
    # run, so neither window holds one. (Descriptors follow the HTTP connections the load has
    # open at the moment, so they move with the latency.)
    if unit == "ms":
        bad = ml > 2 * mf + 5.0
    else:
        bad = ml > mf and sl > 0 and sl * 10 > 0.10 * max(ml, 1e-9)
    if bad:
        grows.append(col)
    print(f"{col:<18} {mf:>10.1f}{unit:>2} {ml:>10.1f}{unit:>2} {sf:>9.2f}/min {sl:>9.2f}/min  {'GROWS' if bad else 'bounded'}")
print(f"\nevents: {summary['sent']} sent, {summary['ok']} answered 2xx, {summary['not_ok']} not, "
      f"{summary['lost']} of the 2xx never arrived, {summary['duplicates']} duplicates "
      f"({summary['consumer_redeliveries']} consumer redeliveries after the broker restarts)")
if summary["lost"]:
    sys.exit("FAIL: events answered 202 were lost")
if grows:
    sys.exit("FAIL: grows without bound: " + ", ".join(grows))
print("OK: nothing lost, and nothing grows without bound")
EOF
