//! postbox: the durable HTTP front door to a message broker (RabbitMQ; NATS JetStream).
//!
//! HTTP → envelope parsing → JSON Schema validation → group commit into the outbox → 202; a
//! relay publishes the outbox through a sink with the broker's confirms. [`start`] wires it all and is
//! what the binary and the tests run.

pub mod auth;
pub mod config;
pub mod envelope;
pub mod http;
pub mod ingest;
pub mod outbox;
pub mod pointer;
pub mod relay;
pub mod schema;
pub mod secret;
pub mod sink;
pub mod stats;
pub mod supervise;
pub mod telemetry;
pub mod trace;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicI64},
};

use anyhow::Context;
use tokio::{net::TcpListener, sync::Notify, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::{Config, SinkConfig},
    http::AppState,
    outbox::{OutboxStore, Store, writer::Writer},
    relay::{PublishGate, Relay, partitions::Partitions},
    schema::Catalog,
    sink::{Health, Sink, amqp::AmqpSink, nats::NatsSink},
    supervise::Supervisor,
};

/// A running postbox.
pub struct Running {
    /// Where the HTTP API listens.
    pub addr: SocketAddr,
    /// The outbox (tests inspect it).
    pub store: Store,
    /// Resolves after shutdown has finished (cancel the token to start it).
    pub done: JoinHandle<anyhow::Result<()>>,
}

/// Load schemas, open and migrate the outbox, start the writer, relay, upkeep and HTTP server
/// on `listener`. Returns once everything is up. Cancelling `token` shuts down gracefully:
/// stop accepting, answer in-flight requests after their commit, finish the relay's batch and
/// its confirms, close the AMQP connection.
pub async fn start(
    config: Config,
    listener: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<Running> {
    // The recorder first: figures recorded before it is installed (the partitions an
    // embedded outbox owns, set once below) would be lost.
    let metrics = telemetry::metrics_handle();
    let store = Store::open(&config.store).await?;
    if config.migrate_on_start {
        store.migrate().await?;
    }
    let catalog = Catalog::start(
        &config.schemas_dir,
        store.clone(),
        config.schema_compatibility,
    )
    .await?;
    let registry = catalog.registry().clone();
    store.take_over().await?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        outbox = %config.store.describe(),
        schemas = registry.len(),
        sink = %config.sink.describe(),
        "postbox listening; API docs at http://{addr}/docs"
    );
    if config.keys.is_enabled() {
        tracing::info!(
            keys = config.keys.len(),
            "API keys required on /v1/events (Authorization: Bearer)"
        );
    } else if addr.ip().is_loopback() {
        tracing::info!("no API keys configured: authentication is off (loopback address only)");
    } else {
        tracing::warn!(
            "no API keys configured and --insecure-no-auth given: anyone who reaches {addr} may send events"
        );
    }

    let tracker = TaskTracker::new();
    let supervisor = Supervisor::new(tracker.clone(), token.clone());
    let committed = Arc::new(Notify::new());
    let pending = Arc::new(AtomicI64::new(0));
    let broker = Health::new(config.sink.name());
    // One instance owns all of an embedded SQLite outbox; PostgreSQL instances split it, and
    // wake each other's relays after their commits.
    let mut commit_signals = vec![committed.clone()];
    let partitions = match &store {
        Store::Sqlite(_) => Partitions::all(),
        Store::Postgres(pg) => {
            // This process's id as a lease owner (UUIDv7: instances rank by start time).
            let instance = uuid::Uuid::now_v7().to_string();
            let partitions = Partitions::none(&instance);
            supervisor.spawn("partitions", {
                let (pg, partitions, broker) = (pg.clone(), partitions.clone(), broker.clone());
                let (committed, token) = (committed.clone(), token.clone());
                move || {
                    relay::partitions::own(
                        pg.clone(),
                        partitions.clone(),
                        instance.clone(),
                        PublishGate::new(broker.clone()),
                        committed.clone(),
                        token.clone(),
                    )
                }
            });
            let tag = outbox::wake::instance_tag();
            let announce = Arc::new(Notify::new());
            commit_signals.push(announce.clone());
            supervisor.spawn("announce", {
                let (pg, tag, announce, token) =
                    (pg.clone(), tag.clone(), announce.clone(), token.clone());
                move || {
                    outbox::wake::announce(pg.clone(), tag.clone(), announce.clone(), token.clone())
                }
            });
            supervisor.spawn("listen", {
                let (pg, committed, token) = (pg.clone(), committed.clone(), token.clone());
                move || {
                    outbox::wake::listen(pg.clone(), tag.clone(), committed.clone(), token.clone())
                }
            });
            partitions
        }
    };
    // SQLite has one writer at a time; PostgreSQL takes concurrent commits, and a second
    // group in flight keeps a slow round trip to the database from capping throughput. Not
    // more: each group is a transaction with its own overhead, and more groups in flight make
    // them smaller. Measured co-located (docs/benchmark.md): 2 groups gave 15-20% more single
    // events per second and half the 202's p99 of 4.
    let concurrency = match &store {
        Store::Sqlite(_) => 1,
        Store::Postgres(_) => 2,
    };
    let writer = Writer::spawn(
        store.clone(),
        config.writer_queue,
        config.writer_batch,
        concurrency,
        commit_signals,
        &tracker,
    );
    let spans = config
        .otlp_traces_url
        .clone()
        .map(|url| trace::otlp::spawn(url, &tracker));
    let relay = RelayParts {
        cfg: config.relay.clone(),
        store: store.clone(),
        health: broker.clone(),
        wake: committed,
        partitions,
        spans,
    };
    match &config.sink {
        SinkConfig::Amqp(c) => relay.spawn(AmqpSink::new(c.clone()), &supervisor, &token),
        SinkConfig::Nats(c) => {
            let sink = NatsSink::new(c.clone(), config.relay.confirm_timeout);
            relay.spawn(sink, &supervisor, &token)
        }
    }
    supervisor.spawn("housekeeping", {
        let (store, retention) = (store.clone(), config.retention);
        let (pending, token) = (pending.clone(), token.clone());
        move || outbox::housekeeping::run(store.clone(), retention, pending.clone(), token.clone())
    });
    supervisor.spawn("schemas", {
        let (catalog, token) = (catalog.clone(), token.clone());
        move || catalog.clone().run(token.clone())
    });
    let grace = config.shutdown_grace;
    let state = AppState::new(
        config,
        store.clone(),
        catalog,
        writer,
        broker,
        metrics,
        pending,
    );
    supervisor.spawn("stats", {
        let (series, store) = (state.stats().clone(), store.clone());
        let (metrics, token) = (state.metrics().clone(), token.clone());
        move || {
            stats::run(
                series.clone(),
                store.clone(),
                metrics.clone(),
                token.clone(),
            )
        }
    });
    let server_token = token.clone();
    let done = tokio::spawn(async move {
        let served = http::serve(listener, state, server_token.clone()).await;
        if let Err(e) = &served {
            tracing::error!(error = %e, "HTTP server failed; shutting down");
        }
        // The server has answered every request it took; the state (and so the writer's
        // sender) is gone, so the writer drains and stops. Stop the relay and upkeep too.
        server_token.cancel();
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("background tasks did not stop within the grace period");
        }
        tracing::info!("postbox stopped");
        if let Some(why) = supervisor.gave_up() {
            anyhow::bail!("{why}");
        }
        served.context("HTTP server")
    });
    Ok(Running { addr, store, done })
}

/// What the relay runs on, whichever its sink.
struct RelayParts {
    cfg: relay::RelayConfig,
    store: Store,
    health: Health,
    wake: Arc<Notify>,
    partitions: Partitions,
    spans: Option<trace::otlp::SpanSink>,
}

impl RelayParts {
    /// Start the relay over `sink`, supervised.
    fn spawn<S: Sink>(self, sink: S, supervisor: &Supervisor, token: &CancellationToken) {
        let relay = Arc::new(
            Relay::new(
                self.cfg,
                self.store,
                sink,
                self.health,
                self.wake,
                self.partitions,
            )
            .with_spans(self.spans),
        );
        let token = token.clone();
        supervisor.spawn("relay", move || relay.clone().run(token.clone()));
    }
}

/// Run until SIGINT/SIGTERM (what `postbox serve` does).
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let token = CancellationToken::new();
    survive_file_size_limit();
    let running = start(config, listener, token.clone()).await?;
    tokio::spawn(shutdown_signal(token));
    running.done.await.context("postbox task")?
}

/// SIGXFSZ's default action ends the process when a write goes past `RLIMIT_FSIZE` (`ulimit
/// -f`). With a handler installed the write fails with `EFBIG` instead, which the outbox treats
/// like a full disk: the commit fails, its requests get 503, and postbox carries on.
fn survive_file_size_limit() {
    #[cfg(target_os = "linux")]
    {
        /// SIGXFSZ on Linux.
        const SIGXFSZ: i32 = 25;
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::from_raw(SIGXFSZ)) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        tracing::warn!(
                            "a write went past the file size limit (ulimit -f); it failed"
                        );
                    }
                });
            }
            Err(e) => tracing::debug!(error = %e, "cannot handle SIGXFSZ"),
        }
    }
}

async fn shutdown_signal(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested: finishing in-flight requests and confirms");
    token.cancel();
}
