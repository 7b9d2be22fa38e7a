#!/usr/bin/env bash
# Client tests: postbox driven by real clients, end to end against RabbitMQ.
#
#   scripts/client-tests.sh
#
#   - clients/python : the official Python CloudEvents SDK (HTTP structured, binary, batch) ->
#                      postbox -> RabbitMQ -> pika, decoded with the SDK's RabbitMQ binding;
#                      also runs examples/producer.py + examples/consumer.py
#   - clients/node   : the official JavaScript CloudEvents SDK + amqplib, same checks;
#                      also runs examples/producer.mjs + examples/consumer.mjs
#   - examples/curl.sh
#   - clients/browser: Swagger UI at /docs in headless Chromium: POST /v1/events -> 202
#                      (screenshot in clients/browser/artifacts/swagger-202.png); and the
#                      operator console (/console) against two more postboxes of its own, one on
#                      SQLite with API keys and one on PostgreSQL without (max_attempts = 1,
#                      1 s stats sampling, exchanges of their own; screenshots in
#                      clients/browser/artifacts/console-*.png)
#   (the example consumers' tests, clients/python/consumers, need NATS and Redis too: they run in
#   scripts/consumer-tests.sh)
#
# Installs what is missing (apt: chromium, python3-venv, nodejs/npm, rabbitmq-server; a venv in
# clients/python/.venv; `npm ci` in clients/node and clients/browser), builds
# target/debug/postbox if it is missing or older than the sources, runs it on a free port with
# a temporary SQLite outbox and a unique exchange, runs every suite (each one even if an earlier
# one failed), stops postbox and deletes the exchange. Exits non-zero if any suite failed.
#
# The console's PostgreSQL run makes a database of its own on 127.0.0.1:5432 (user postgres) and
# drops it at the end.
#
# Environment: POSTBOX_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f),
# POSTBOX_BIN (use this binary instead of target/debug/postbox), CHROMIUM (default
# /usr/bin/chromium).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export POSTBOX_AMQP_URL="${POSTBOX_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
SUITE_TIMEOUT="${CLIENT_TESTS_TIMEOUT:-600}"

section() { printf '\n=== %s\n' "$*"; }
die() { echo "client-tests: $*" >&2; exit 1; }
as_root() { if [[ "$(id -u)" -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "$* missing and apt-get is not available; install it yourself"
    if [[ "$APT_UPDATED" -eq 0 ]]; then as_root apt-get update -qq; APT_UPDATED=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}
tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_for() { local n="$1"; shift; for _ in $(seq "$n"); do "$@" && return 0; sleep 1; done; return 1; }

# --- tools -----------------------------------------------------------------------------------
section "tools"
command -v curl >/dev/null || apt_install curl ca-certificates
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
[[ -x "$CHROMIUM" ]] || apt_install chromium
export CHROMIUM

# --- RabbitMQ --------------------------------------------------------------------------------
section "RabbitMQ on 127.0.0.1:5672"
if ! tcp_open 127.0.0.1 5672; then
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    echo "starting RabbitMQ (rabbitmq-server -detached)"
    as_root rabbitmq-server -detached || true
    wait_for 90 tcp_open 127.0.0.1 5672 || die "RabbitMQ does not answer on 127.0.0.1:5672"
fi
echo "RabbitMQ is answering."

# --- client dependencies ---------------------------------------------------------------------
section "client dependencies"
PY="$ROOT/clients/python/.venv/bin/python"
[[ -x "$PY" ]] || python3 -m venv "$ROOT/clients/python/.venv"
"$PY" -m pip install -q --disable-pip-version-check -r clients/python/requirements.txt
(cd clients/node && npm ci --no-audit --no-fund --loglevel=error)
(cd clients/browser && npm ci --no-audit --no-fund --loglevel=error)

# --- postbox ---------------------------------------------------------------------------------
section "postbox"
BIN="${POSTBOX_BIN:-$ROOT/target/debug/postbox}"
if [[ -z "${POSTBOX_BIN:-}" ]]; then
    if [[ ! -x "$BIN" ]] || [[ -n "$(find src migrations openapi Cargo.toml Cargo.lock -newer "$BIN" -print -quit 2>/dev/null)" ]]; then
        echo "building target/debug/postbox"
        cargo build --bin postbox
    fi
fi
[[ -x "$BIN" ]] || die "no postbox binary at $BIN"

WORK="$(mktemp -d -t postbox-client-tests.XXXXXX)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
export POSTBOX_URL="http://127.0.0.1:$PORT"
export POSTBOX_EXCHANGE="clients-$(date +%s)-$$"
PB_PID=""
# The console's own postboxes: their pids, exchanges and the PostgreSQL database it makes.
CONSOLE_PIDS=()
export CONSOLE_EXCHANGES=""
CONSOLE_DB=""

stop_pid() {
    local pid="$1"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

cleanup() {
    local rc=$?
    stop_pid "$PB_PID"
    for pid in "${CONSOLE_PIDS[@]}"; do stop_pid "$pid"; done
    if [[ -n "$CONSOLE_DB" ]]; then
        psql -w -h 127.0.0.1 -U postgres -d postgres -qAt \
            -c "drop database if exists $CONSOLE_DB with (force)" >/dev/null 2>&1 || true
    fi
    "$PY" - <<'EOF' 2>/dev/null || true
import os, pika
c = pika.BlockingConnection(pika.URLParameters(os.environ["POSTBOX_AMQP_URL"]))
ch = c.channel()
for name in [os.environ["POSTBOX_EXCHANGE"], *os.environ.get("CONSOLE_EXCHANGES", "").split()]:
    ch.exchange_delete(name)
c.close()
EOF
    if [[ "$rc" -ne 0 && -f "$WORK/postbox.log" ]]; then
        echo "--- last lines of the postbox log ($WORK/postbox.log)"
        tail -n 40 "$WORK/postbox.log"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

POSTBOX_LISTEN="127.0.0.1:$PORT" \
POSTBOX_DATABASE_URL="sqlite://$WORK/postbox.db" \
POSTBOX_PUBLIC_URL="$POSTBOX_URL" \
POSTBOX_SCHEMAS_DIR="$ROOT/schemas" \
    "$BIN" >"$WORK/postbox.log" 2>&1 &
PB_PID=$!
ready() { curl -fsS "$POSTBOX_URL/readyz" 2>/dev/null | grep -q '"state":"connected"'; }
if ! wait_for 60 ready; then
    kill -0 "$PB_PID" 2>/dev/null || echo "postbox exited"
    die "postbox did not become ready with a broker connection at $POSTBOX_URL"
fi
echo "$("$BIN" --version 2>/dev/null || echo postbox) at $POSTBOX_URL, exchange $POSTBOX_EXCHANGE, outbox $WORK/postbox.db"

# --- versions --------------------------------------------------------------------------------
section "client versions"
"$PY" - <<'EOF'
import sys
from importlib.metadata import version
print(f"python {sys.version.split()[0]}: cloudevents {version('cloudevents')}, pika {version('pika')}, "
      f"requests {version('requests')}, pytest {version('pytest')}")
EOF
node -e '
const v = (d, p) => require(require("path").join(process.cwd(), d, "node_modules", p, "package.json")).version;
console.log(`node ${process.versions.node}: cloudevents ${v("clients/node", "cloudevents")}, amqplib ${v("clients/node", "amqplib")}, playwright-core ${v("clients/browser", "playwright-core")}`);
'
echo "chromium: $("$CHROMIUM" --version 2>/dev/null | head -n1)"

# --- suites ----------------------------------------------------------------------------------
FAILED=()
run() {
    local name="$1"; shift
    section "$name"
    if timeout --kill-after=10 "$SUITE_TIMEOUT" "$@"; then
        printf '\n--- %s: passed\n' "$name"
    else
        printf '\n--- %s: FAILED\n' "$name"
        FAILED+=("$name")
    fi
}

run "Python: cloudevents SDK + pika, examples/producer.py + consumer.py" \
    "$PY" -m pytest -p no:cacheprovider -q -rxXs clients/python --ignore=clients/python/consumers
run "Node: cloudevents SDK + amqplib, examples/producer.mjs + consumer.mjs" \
    bash -c 'cd clients/node && npm test --silent'
run "examples/curl.sh" bash examples/curl.sh
run "browser: Swagger UI /docs -> POST /v1/events -> 202" \
    node clients/browser/swagger.test.mjs

# --- the console, on SQLite (API keys) and on PostgreSQL (no keys) ----------------------------
section "console postboxes"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start_console NAME DATABASE_URL [VAR=VALUE...]: a postbox for the console test; sets CONSOLE_URL
# and CONSOLE_EXCHANGE.
start_console() {
    local name="$1" db="$2"; shift 2
    local port; port="$(free_port)"
    CONSOLE_URL="http://127.0.0.1:$port"
    CONSOLE_EXCHANGE="$POSTBOX_EXCHANGE-console-$name"
    CONSOLE_EXCHANGES="$CONSOLE_EXCHANGES $CONSOLE_EXCHANGE"
    env "$@" POSTBOX_LISTEN="127.0.0.1:$port" POSTBOX_DATABASE_URL="$db" \
        POSTBOX_PUBLIC_URL="$CONSOLE_URL" POSTBOX_SCHEMAS_DIR="$ROOT/schemas" \
        POSTBOX_EXCHANGE="$CONSOLE_EXCHANGE" POSTBOX_MAX_ATTEMPTS=1 POSTBOX_STATS_INTERVAL_MS=1000 \
        "$BIN" >"$WORK/console-$name.log" 2>&1 &
    CONSOLE_PIDS+=($!)
    local ready_url="$CONSOLE_URL/readyz"
    if ! wait_for 60 bash -c "curl -fsS '$ready_url' 2>/dev/null | grep -q '\"state\":\"connected\"'"; then
        tail -n 20 "$WORK/console-$name.log"
        return 1
    fi
    echo "console postbox ($name) at $CONSOLE_URL, exchange $CONSOLE_EXCHANGE"
}
hash_key() { printf 'sha256:%s' "$(printf '%s' "$1" | sha256sum | cut -d' ' -f1)"; }
ADMIN_KEY="pbk_console_ops_$(date +%s)_$$"
SHOP_KEY="pbk_console_shop_$(date +%s)_$$"
KEYS="[{\"name\":\"ops\",\"hash\":\"$(hash_key "$ADMIN_KEY")\",\"types\":[\"*\"],\"admin\":true},{\"name\":\"shop\",\"hash\":\"$(hash_key "$SHOP_KEY")\",\"types\":[\"order.*\"]}]"
if start_console sqlite "sqlite://$WORK/console.db" POSTBOX_API_KEYS="$KEYS"; then
    run "browser: console on SQLite, with API keys" \
        env POSTBOX_URL="$CONSOLE_URL" POSTBOX_EXCHANGE="$CONSOLE_EXCHANGE" CONSOLE_LABEL=sqlite \
        CONSOLE_ADMIN_KEY="$ADMIN_KEY" CONSOLE_SHOP_KEY="$SHOP_KEY" node clients/browser/console.test.mjs
else
    echo "the console's SQLite postbox did not become ready"; FAILED+=("browser: console on SQLite")
fi
command -v psql >/dev/null || apt_install postgresql-client
CONSOLE_DB="postbox_console_$(date +%s)_$$"
if psql -w -h 127.0.0.1 -U postgres -d postgres -qAt -c "create database $CONSOLE_DB" >/dev/null \
    && start_console postgres "postgres://postgres@127.0.0.1:5432/$CONSOLE_DB"; then
    run "browser: console on PostgreSQL" \
        env POSTBOX_URL="$CONSOLE_URL" POSTBOX_EXCHANGE="$CONSOLE_EXCHANGE" CONSOLE_LABEL=postgres \
        node clients/browser/console.test.mjs
else
    echo "the console's PostgreSQL postbox did not start (PostgreSQL on 127.0.0.1:5432?)"
    FAILED+=("browser: console on PostgreSQL")
fi

section "summary"
if [[ "${#FAILED[@]}" -gt 0 ]]; then
    printf 'FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi
echo "all client tests passed"
