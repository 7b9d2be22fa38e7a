//! postbox: the durable HTTP front door to RabbitMQ.
//!
//! HTTP → envelope parsing → JSON Schema validation → group commit into the outbox → 202; a
//! relay publishes the outbox to RabbitMQ with publisher confirms. [`start`] wires it all and is
//! what the binary and the tests run.

pub mod auth;
pub mod config;
pub mod envelope;
pub mod error;
pub mod http;
pub mod outbox;
pub mod relay;
pub mod schema;
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
    config::Config,
    http::AppState,
    outbox::{OutboxStore, Store, partitions::Partitions, writer::Writer},
    relay::{BrokerStatus, Relay},
    schema::Registry,
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
    let registry = Registry::load(&config.schemas_dir)?;
    let store = Store::open(&config.store).await?;
    if config.migrate_on_start {
        store.migrate().await?;
    }
    store.release_stale_leases().await?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        outbox = %config.store.describe(),
        schemas = registry.len(),
        amqp = %config::redact_url(&config.amqp_url),
        exchange = %config.exchange,
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
    let committed = Arc::new(Notify::new());
    let pending = Arc::new(AtomicI64::new(0));
    let broker = BrokerStatus::default();
    // One instance owns all of an embedded SQLite outbox; PostgreSQL instances split it, and
    // wake each other's relays after their commits.
    let mut commit_signals = vec![committed.clone()];
    let partitions = match &store {
        Store::Sqlite(_) => Partitions::all(),
        Store::Postgres(pg) => {
            let partitions = Partitions::none();
            tracker.spawn(outbox::partitions::own(
                pg.clone(),
                partitions.clone(),
                broker.clone(),
                committed.clone(),
                token.clone(),
            ));
            let tag = outbox::wake::instance_tag();
            let announce = Arc::new(Notify::new());
            commit_signals.push(announce.clone());
            tracker.spawn(outbox::wake::announce(
                pg.clone(),
                tag.clone(),
                announce,
                token.clone(),
            ));
            tracker.spawn(outbox::wake::listen(
                pg.clone(),
                tag,
                committed.clone(),
                token.clone(),
            ));
            partitions
        }
    };
    let writer = Writer::spawn(
        store.clone(),
        config.writer_queue,
        config.writer_batch,
        commit_signals,
        &tracker,
    );
    let spans = config
        .otlp_traces_url
        .clone()
        .map(|url| trace::otlp::spawn(url, &tracker));
    let relay = Relay::new(
        &config,
        store.clone(),
        broker.clone(),
        committed,
        partitions,
    )
    .with_spans(spans);
    tracker.spawn(relay.run(token.clone()));
    tracker.spawn(outbox::housekeeping::run(
        store.clone(),
        config.retention,
        pending.clone(),
        token.clone(),
    ));
    let grace = config.shutdown_grace;
    let state = AppState::new(
        config,
        store.clone(),
        registry,
        writer,
        broker,
        telemetry::metrics_handle(),
        pending,
    );
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
        served.context("HTTP server")
    });
    Ok(Running { addr, store, done })
}

/// Run until SIGINT/SIGTERM (what `postbox serve` does).
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let token = CancellationToken::new();
    let running = start(config, listener, token.clone()).await?;
    tokio::spawn(shutdown_signal(token));
    running.done.await.context("postbox task")?
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
