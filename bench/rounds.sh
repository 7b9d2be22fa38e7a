#!/usr/bin/env bash
# Latency over time on one PostgreSQL outbox: one postbox on a fresh database, ROUNDS rounds of
# open-loop load at RATE events/s for ROUND_SECONDS each, back to back, printing per round the 202's
# p50/p99, the relay lag's p50/p99 and `outbox`'s dead tuples (pg_stat_user_tables) before it.
# It shows what a bench of fresh outboxes hides: how the relay behaves as settled rows pile up
# between vacuums (this machine's PostgreSQL runs with autovacuum off).
#
#   bench/rounds.sh [DIR]          DIR holds `postbox` and `examples/bench` (default target/release)
#
# Environment: ROUNDS (default 5), RATE (default 1250), ROUND_SECONDS (default 10), VACUUM=1 (run
# `VACUUM outbox` before each round), EXTRA (VAR=value settings for postbox). Needs RabbitMQ on
# 127.0.0.1:5672 and PostgreSQL on 127.0.0.1:5432.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIR=${1:-target/release}
ROUNDS=${ROUNDS:-5}
RATE=${RATE:-1250}
SECONDS_EACH=${ROUND_SECONDS:-10}
VACUUM=${VACUUM:-0}
PORT=18191
URL="http://127.0.0.1:$PORT/v1/events"
NAME="postbox_rounds_$$"
LOG=$(mktemp "${TMPDIR:-/tmp}/postbox-rounds.XXXXXX")
PB=

cleanup() {
    [[ -n "$PB" ]] && kill "$PB" 2>/dev/null && wait "$PB" 2>/dev/null
    dropdb -w -h 127.0.0.1 -U postgres --if-exists "$NAME" 2>/dev/null || true
    rm -f "$LOG"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
source bench/lib.sh
sql() { psql -w -h 127.0.0.1 -U postgres -d "$NAME" -Atc "$1"; }

createdb -w -h 127.0.0.1 -U postgres "$NAME"
start_postbox "$DIR" "$PORT" "postgres://postgres@127.0.0.1:5432/$NAME" "rounds-$NAME" "$LOG"

echo "autovacuum: $(sql 'show autovacuum'); $ROUNDS rounds of ${SECONDS_EACH}s at $RATE/s$([[ $VACUUM == 1 ]] && echo ', VACUUM outbox before each')"
for r in $(seq "$ROUNDS"); do
    [[ $VACUUM == 1 ]] && sql 'vacuum outbox' >/dev/null
    dead=$(sql "select coalesce(n_dead_tup, 0) from pg_stat_user_tables where relname = 'outbox'")
    out=$("$DIR/examples/bench" rate --url "$URL" --rate "$RATE" --seconds "$SECONDS_EACH" --exchange "rounds-$NAME")
    [[ $(field "$out" "['missing']") == 0 ]] || { echo "round $r: events missing: $out"; exit 1; }
    echo "round $r ($(date -u +%H:%M:%S), outbox dead tuples before: $dead): 202 p50 $(field "$out" "['p50_ms']") ms, p99 $(field "$out" "['p99_ms']") ms; relay lag p50 $(field "$out" "['lag_p50_ms']") ms, p99 $(field "$out" "['lag_p99_ms']") ms"
done
