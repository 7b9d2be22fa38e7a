# syntax=docker/dockerfile:1
# postbox container image. Build: docker build -t postbox .
# Run:   docker run -p 8080:8080 -v postbox-data:/app/data \
#          -e POSTBOX_AMQP_URL=amqp://guest:guest@rabbitmq:5672/%2f postbox

# --- build -----------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Manifests first (with stub targets, which cargo needs to read them), so that the dependency
# download is cached while only sources change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo fetch --locked \
    && rm -rf src
COPY src ./src
COPY migrations ./migrations
COPY openapi ./openapi
RUN cargo build --release --locked \
    && cp target/release/postbox /usr/local/bin/postbox

# --- runtime ---------------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates for amqps:// and TLS to PostgreSQL; curl for the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --user-group --home-dir /app --shell /usr/sbin/nologin postbox \
    && mkdir -p /app/data \
    && chown postbox:postbox /app/data
COPY --from=builder /usr/local/bin/postbox /usr/local/bin/postbox
COPY schemas /app/schemas
WORKDIR /app
# The SQLite outbox (sqlite://data/postbox.db, relative to /app) lives on this volume: keep it,
# or every event accepted but not yet published is lost with the container.
VOLUME ["/app/data"]
USER postbox
ENV POSTBOX_LISTEN=0.0.0.0:8080 \
    POSTBOX_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
# SIGTERM starts a graceful shutdown (finish in-flight commits and confirms).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/postbox"]
CMD ["serve"]
