#!/usr/bin/env bash
# Consumer tests: the example consumers in examples/consumers/ (NATS JetStream and RabbitMQ,
# Python and Node) against the real NATS, RabbitMQ and Redis on this machine.
#
#   scripts/consumer-tests.sh [pytest args, e.g. -k nats-node]
#
# Proves the consumer contract (clients/python/consumers/test_consumers.py): a handler that
# fails twice then succeeds runs once; one that always fails is dead-lettered after exactly the
# broker's limit of deliveries and can be replayed; duplicates are processed once per
# (source, id); a crashed worker's claim delays an event but does not lose it; counters are
# read from each consumer's /metrics. Until postbox's NATS sink lands, the tests publish
# postbox's message shape themselves (clients/python/consumers/harness.py).
#
# Installs what is missing (apt: python3-venv, nodejs/npm, redis-server, nats-server,
# rabbitmq-server; a venv in clients/python/.venv; `npm ci` in clients/node), starts Redis,
# NATS (JetStream) and RabbitMQ if they do not answer, runs the suite under a time limit, and
# deletes every stream, queue, exchange and Redis key the run created, also on failure.
# Exits non-zero if a service cannot be had or a test failed.
#
# Environment: NATS_URL (default nats://127.0.0.1:4222), REDIS_URL (redis://127.0.0.1:6379/0),
# POSTBOX_AMQP_URL (amqp://guest:guest@127.0.0.1:5672/%2f), CONSUMER_TESTS_TIMEOUT (seconds
# for the suite, default 300). Starting services needs root (or sudo); only the default
# local addresses are started.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export POSTBOX_AMQP_URL="${POSTBOX_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
SUITE_TIMEOUT="${CONSUMER_TESTS_TIMEOUT:-300}"
export CONSUMER_TESTS_RUN="$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')"

section() { printf '\n=== %s\n' "$*"; }
die() { echo "consumer-tests: $*" >&2; exit 1; }
as_root() { if [[ "$(id -u)" -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "$* missing and apt-get is not available; install it yourself"
    if [[ "$APT_UPDATED" -eq 0 ]]; then as_root apt-get update -qq; APT_UPDATED=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}
tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_for() { local n="$1"; shift; for _ in $(seq "$n"); do "$@" && return 0; sleep 1; done; return 1; }
# host and port of a URL like nats://127.0.0.1:4222 or amqp://u:p@host:5672/%2f
hostport() { local hp="${1#*://}"; hp="${hp##*@}"; hp="${hp%%/*}"; echo "${hp%:*} ${hp##*:}"; }
is_default() { [[ "$1" == "$2" ]]; }

# --- tools -----------------------------------------------------------------------------------
section "tools"
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv

# --- services --------------------------------------------------------------------------------
read -r REDIS_HOST REDIS_PORT <<<"$(hostport "$REDIS_URL")"
section "Redis on $REDIS_HOST:$REDIS_PORT"
if ! tcp_open "$REDIS_HOST" "$REDIS_PORT"; then
    is_default "$REDIS_URL" "redis://127.0.0.1:6379/0" || die "Redis does not answer at $REDIS_URL"
    command -v redis-server >/dev/null || apt_install redis-server
    echo "starting Redis"
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no >/dev/null
    wait_for 30 tcp_open 127.0.0.1 6379 || die "Redis does not answer on 127.0.0.1:6379"
fi

read -r NATS_HOST NATS_PORT <<<"$(hostport "$NATS_URL")"
section "NATS (JetStream) on $NATS_HOST:$NATS_PORT"
if ! tcp_open "$NATS_HOST" "$NATS_PORT"; then
    is_default "$NATS_URL" "nats://127.0.0.1:4222" || die "NATS does not answer at $NATS_URL"
    [[ -x /usr/sbin/nats-server ]] || apt_install nats-server
    echo "starting nats-server with JetStream"
    as_root mkdir -p /var/lib/nats-server
    as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    wait_for 30 tcp_open 127.0.0.1 4222 || die "NATS does not answer on 127.0.0.1:4222 (see /var/log/nats-server.log)"
fi

read -r AMQP_HOST AMQP_PORT <<<"$(hostport "$POSTBOX_AMQP_URL")"
section "RabbitMQ on $AMQP_HOST:$AMQP_PORT"
if ! tcp_open "$AMQP_HOST" "$AMQP_PORT"; then
    is_default "$POSTBOX_AMQP_URL" "amqp://guest:guest@127.0.0.1:5672/%2f" || die "RabbitMQ does not answer at $POSTBOX_AMQP_URL"
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    echo "starting RabbitMQ (rabbitmq-server -detached)"
    as_root rabbitmq-server -detached || true
    wait_for 90 tcp_open 127.0.0.1 5672 || die "RabbitMQ does not answer on 127.0.0.1:5672"
fi

# --- dependencies ----------------------------------------------------------------------------
section "client dependencies"
PY="$ROOT/clients/python/.venv/bin/python"
[[ -x "$PY" ]] || python3 -m venv "$ROOT/clients/python/.venv"
"$PY" -m pip install -q --disable-pip-version-check -r clients/python/requirements.txt
(cd clients/node && npm ci --no-audit --no-fund --loglevel=error)

# --- what the services are, and that they can do what the consumers need ---------------------
section "versions"
timeout 60 "$PY" - <<'EOF' || die "a service is up but not usable (see above)"
import asyncio, json, os, sys
from importlib.metadata import version

import nats, pika, redis

problems = []
try:
    v = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5).info("server")["redis_version"]
    print(f"Redis {v}")
    if tuple(int(x) for x in v.split(".")[:2]) < (7, 0):
        problems.append(f"Redis {v} is too old: the consumers claim with SET NX GET (Redis >= 7.0)")
except Exception as e:
    problems.append(f"Redis at {os.environ['REDIS_URL']}: {e!r}")

async def nats_info():
    nc = await nats.connect(os.environ["NATS_URL"], connect_timeout=5, max_reconnect_attempts=0)
    try:
        v = nc.connected_server_version
        print(f"nats-server {v.major}.{v.minor}.{v.patch}")
        r = json.loads((await nc.request("$JS.API.INFO", b"", timeout=5)).data)
        if "error" in r:
            problems.append(f"NATS at {os.environ['NATS_URL']} has no JetStream: {r['error']} (start it with -js)")
    finally:
        await nc.close()
try:
    asyncio.run(nats_info())
except Exception as e:
    problems.append(f"NATS at {os.environ['NATS_URL']}: {e!r}")

try:
    c = pika.BlockingConnection(pika.URLParameters(os.environ["POSTBOX_AMQP_URL"]))
    v = (c._impl.server_properties or {}).get("version", "?")
    print(f"RabbitMQ {v.decode() if isinstance(v, bytes) else v}")
    c.close()
except Exception as e:
    problems.append(f"RabbitMQ at {os.environ['POSTBOX_AMQP_URL']}: {e!r}")

print(f"python {sys.version.split()[0]}: nats-py {version('nats-py')}, redis {version('redis')}, "
      f"pika {version('pika')}, prometheus-client {version('prometheus-client')}, pytest {version('pytest')}")
for p in problems:
    print(f"consumer-tests: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
node -e '
const v = (p) => require(require("path").join(process.cwd(), "clients/node/node_modules", p, "package.json")).version;
console.log(`node ${process.versions.node}: nats ${v("nats")}, amqplib ${v("amqplib")}, ioredis ${v("ioredis")}, prom-client ${v("prom-client")}`);
'

# --- the suite -------------------------------------------------------------------------------
cleanup() {
    local rc=$?
    section "cleanup (run ct$CONSUMER_TESTS_RUN)"
    # Each test deletes what it made; this catches what a killed test left behind.
    (cd clients/python/consumers && timeout 90 "$PY" harness.py sweep "ct$CONSUMER_TESTS_RUN") || true
    rm -rf clients/node/.run-ct"$CONSUMER_TESTS_RUN"-*
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

section "consumer tests (run ct$CONSUMER_TESTS_RUN, at most ${SUITE_TIMEOUT}s)"
START=$SECONDS
set +e
timeout --kill-after=10 "$SUITE_TIMEOUT" "$PY" -m pytest -p no:cacheprovider -q -rfEs clients/python/consumers "$@"
RC=$?
set -e
echo "consumer tests took $((SECONDS - START))s"
[[ "$RC" -eq 124 || "$RC" -eq 137 ]] && die "the suite did not finish within ${SUITE_TIMEOUT}s"
exit "$RC"
