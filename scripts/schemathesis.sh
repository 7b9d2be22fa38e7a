#!/usr/bin/env bash
# Property-based API testing with Schemathesis: generates requests (valid and invalid) from
# openapi/openapi.json, sends them to a live postbox and checks that no answer is a 5xx and that
# every answer matches the documented responses (status, content type, body schema), that
# documented-valid requests are accepted and documented-invalid ones refused (`--checks all`).
# 4xx answers to fuzzed bad input are expected and fine.
#
#   scripts/schemathesis.sh                      # 50 examples per operation, ≤ 10 minutes
#   MAX_EXAMPLES=200 TIME_LIMIT=1800 scripts/schemathesis.sh
#
# Needs python3 (installs Schemathesis from PyPI into .venv-schemathesis/) and a RabbitMQ at
# POSTBOX_AMQP_URL (default the local one; events stay pending if it is not there).
set -euo pipefail
cd "$(dirname "$0")/.."

max_examples="${MAX_EXAMPLES:-50}"
time_limit="${TIME_LIMIT:-600}"
seed="${SEED:-$RANDOM}"
# Every check and every phase (examples, coverage, fuzzing, stateful); `schemathesis.toml` names
# the three operations whose semantic refusals (422/409) the document cannot express.
checks="${CHECKS:-all}"
venv=.venv-schemathesis

if [ ! -x "$venv/bin/schemathesis" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet 'schemathesis>=4.32,<5'
fi

cargo build --quiet --bin postbox

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
work="$(mktemp -d)"
base="http://127.0.0.1:$port"

POSTBOX_LISTEN="127.0.0.1:$port" \
POSTBOX_DATABASE_URL="sqlite://$work/outbox.db" \
POSTBOX_EXCHANGE="schemathesis-$(date +%s)-$$" \
POSTBOX_LOG_FORMAT=json \
RUST_LOG="${RUST_LOG:-warn}" \
    target/debug/postbox >"$work/postbox.log" 2>&1 &
pid=$!

stop() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if grep -q '"level":"ERROR"' "$work/postbox.log"; then
        echo "postbox logged errors:" >&2
        grep '"level":"ERROR"' "$work/postbox.log" | tail -20 >&2
    fi
    rm -rf "$work"
}
trap stop EXIT

for _ in $(seq 1 100); do
    curl -fsS "$base/healthz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/postbox.log" >&2; exit 1; }
    sleep 0.1
done

echo "schemathesis: $base, $max_examples examples per operation, seed $seed, checks $checks"
status=0
timeout --signal=INT "$time_limit" "$venv/bin/schemathesis" run openapi/openapi.json \
    --url "$base" \
    --checks "$checks" \
    --max-examples "$max_examples" \
    --seed "$seed" \
    --workers 1 \
    --request-timeout 30 \
    --suppress-health-check too_slow,filter_too_much \
    --no-color \
    || status=$?

kill -0 "$pid" 2>/dev/null || { echo "postbox died during the run" >&2; status=1; }
exit "$status"
