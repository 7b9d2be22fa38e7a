#!/usr/bin/env bash
# The whole test suite: make sure PostgreSQL (127.0.0.1:5432), RabbitMQ (127.0.0.1:5672) and
# NATS with JetStream (127.0.0.1:4222) answer (starting or installing them if needed), then fmt,
# clippy and every test. The client
# and consumer scripts check (and start) what they need themselves (NATS, Redis, Chromium).
#
#   scripts/test.sh               everything (what CI runs, via .ci/run)
#   SKIP_LINT=1 scripts/test.sh   skip cargo fmt / clippy for a fast local loop
#   scripts/test.sh -- NAME       extra arguments go to `cargo test` (e.g. a test name filter)
#
# Starting or installing the services needs root (or sudo); on a machine where they already
# run, nothing is started.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "${1:-}" == "--" ]]; then
    shift
fi

section() {
    printf '\n\033[1m==> %s\033[0m\n' "$*"
}

die() {
    printf '\n\033[31merror:\033[0m %s\n' "$*" >&2
    exit 1
}

# Run as root, through sudo when we are not root.
as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "$1 is not installed and apt-get is not available; install it yourself"
    if [[ "$APT_UPDATED" -eq 0 ]]; then
        as_root apt-get update
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

# wait_for SECONDS COMMAND...: run COMMAND every second until it succeeds; false on timeout.
wait_for() {
    local secs=$1
    shift
    local i
    for ((i = 0; i < secs; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    return 1
}

tcp_open() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# --- PostgreSQL -----------------------------------------------------------------------------

pg_up() {
    if command -v pg_isready >/dev/null; then
        pg_isready -q -h 127.0.0.1 -p 5432
    else
        tcp_open 127.0.0.1 5432
    fi
}

pg_connects() {
    psql -w -h 127.0.0.1 -U postgres -d postgres -qAt -c 'select 1' >/dev/null
}

ensure_postgres() {
    section "PostgreSQL on 127.0.0.1:5432"
    if pg_up; then
        echo "PostgreSQL is answering."
    else
        if ! command -v pg_ctlcluster >/dev/null || [[ -z "$(ls /etc/postgresql 2>/dev/null)" ]]; then
            echo "PostgreSQL is not installed; installing it with apt-get."
            apt_install postgresql
        fi
        local version
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        echo "Starting PostgreSQL $version (cluster main)."
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        if ! wait_for 60 pg_up; then
            die "PostgreSQL does not answer on 127.0.0.1:5432 after 60 s.
Start it yourself (e.g. pg_ctlcluster --skip-systemctl-redirect $version main start) and check
/var/log/postgresql/ for the reason."
        fi
        echo "PostgreSQL is answering."
    fi
    command -v psql >/dev/null || apt_install postgresql-client
    # The tests connect as postgres://postgres@127.0.0.1:5432 without a password and create a
    # fresh database per test. -w: never prompt (a prompt would hang CI).
    if ! pg_connects && [[ "${CI:-}" == "true" ]]; then
        # A throw-away CI machine (e.g. a fresh apt install, which asks for passwords on TCP):
        # let postgres in from 127.0.0.1 without one.
        local version hba
        version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
        hba="/etc/postgresql/$version/main/pg_hba.conf"
        if [[ -n "$version" && -f "$hba" ]]; then
            echo "CI=true: allowing postgres@127.0.0.1 without a password in $hba"
            as_root sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
            sleep 1
        fi
    fi
    if ! pg_connects; then
        die "PostgreSQL answers, but the role \`postgres\` cannot connect over TCP to 127.0.0.1:5432
without a password. The tests need that: on a throw-away test machine add
\`host all postgres 127.0.0.1/32 trust\` at the top of pg_hba.conf and reload PostgreSQL."
    fi
    echo "Role postgres connects over TCP (server $(psql -w -h 127.0.0.1 -U postgres -d postgres -qAt -c 'show server_version'))."
}

# --- RabbitMQ -------------------------------------------------------------------------------

# The AMQP listener is the last thing RabbitMQ starts, so an open port means it is booted.
# As root, also ask the node itself (rabbitmq-diagnostics needs the Erlang cookie).
rabbit_up() {
    tcp_open 127.0.0.1 5672 || return 1
    if [[ "$(id -u)" -eq 0 ]] && command -v rabbitmq-diagnostics >/dev/null; then
        rabbitmq-diagnostics -q ping >/dev/null 2>&1 || return 1
    fi
}

ensure_rabbitmq() {
    section "RabbitMQ on 127.0.0.1:5672"
    if rabbit_up; then
        echo "RabbitMQ is answering."
        return
    fi
    if ! command -v rabbitmq-server >/dev/null; then
        echo "RabbitMQ is not installed; installing it with apt-get."
        apt_install rabbitmq-server
    fi
    echo "Starting RabbitMQ (rabbitmq-server -detached)."
    as_root rabbitmq-server -detached || true
    if ! wait_for 90 rabbit_up; then
        die "RabbitMQ does not answer on 127.0.0.1:5672 after 90 s.
Start it yourself (rabbitmq-server -detached) and check /var/log/rabbitmq/ for the reason.
The tests use the default guest/guest user on vhost /."
    fi
    echo "RabbitMQ is answering."
}

# --- NATS (JetStream) -----------------------------------------------------------------------

ensure_nats() {
    section "NATS with JetStream on 127.0.0.1:4222"
    if tcp_open 127.0.0.1 4222; then
        echo "NATS is answering."
        return
    fi
    command -v nats-server >/dev/null || apt_install nats-server
    echo "Starting nats-server -js (store in /var/lib/nats-server)."
    as_root mkdir -p /var/lib/nats-server
    as_root start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log || true
    if ! wait_for 30 tcp_open 127.0.0.1 4222; then
        die "NATS does not answer on 127.0.0.1:4222 after 30 s.
Start it yourself (nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server) and check
/var/log/nats-server.log for the reason. The tests need JetStream."
    fi
    echo "NATS is answering."
}

# --- Rust -----------------------------------------------------------------------------------

command -v cargo >/dev/null || die "cargo is not on PATH (install Rust with rustup, or source ~/.cargo/env)"

ensure_postgres
ensure_rabbitmq
ensure_nats

if [[ "${SKIP_LINT:-0}" == "1" ]]; then
    section "cargo fmt / clippy skipped (SKIP_LINT=1)"
else
    section "cargo fmt --all -- --check"
    cargo fmt --all -- --check || die "formatting differs; run \`cargo fmt --all\`"

    section "cargo clippy --all-targets -- -D warnings"
    cargo clippy --all-targets -- -D warnings
fi

# One build profile (dev; Cargo.toml optimises dependencies) for clippy and the tests.
section "cargo test --all-targets (unit tests and tests/api against PostgreSQL and RabbitMQ)"
cargo test --all-targets "$@"

if [[ $# -eq 0 ]]; then
    section "real clients: CloudEvents SDKs (Python, Node), examples, Swagger UI in Chromium"
    bash scripts/client-tests.sh

    section "example consumers: exactly-once processing on NATS JetStream and RabbitMQ (Redis dedupe)"
    bash scripts/consumer-tests.sh

    section "Schemathesis against openapi/openapi.json and a live postbox (bounded)"
    MAX_EXAMPLES="${SCHEMATHESIS_EXAMPLES:-20}" TIME_LIMIT="${SCHEMATHESIS_SECONDS:-600}" \
        bash scripts/schemathesis.sh

    section "benchmark smoke (bench/run.sh --smoke on the debug build: the machinery, not the figures)"
    PROFILE=debug bash bench/run.sh --smoke

    # The fuzzer needs its own sanitizer build of every dependency (~7 min here, more than the
    # rest of the suite's build), so it runs when asked: FUZZ_SECONDS=60 scripts/test.sh.
    if [[ -n "${FUZZ_SECONDS:-}" ]]; then
        section "cargo fuzz on envelope parsing (bounded: FUZZ_SECONDS=$FUZZ_SECONDS)"
        bash scripts/fuzz.sh
    else
        section "cargo fuzz skipped (set FUZZ_SECONDS to run scripts/fuzz.sh for that long)"
    fi
fi

section "all checks passed"
