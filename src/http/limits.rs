//! Limits against slow or greedy clients, so that no client can hold a task, a connection or
//! memory for long:
//!
//! - a header read timeout (hyper's, which needs a timer: `axum::serve` sets none, so postbox
//!   runs its own accept loop here) that also closes idle keep-alive connections;
//! - a body read timeout, applied where the body is read (`events::post_events`): 408;
//! - a request timeout over the whole handler: 503 `request-timeout` with `Retry-After`;
//! - a cap on requests in flight: beyond it, 503 `overloaded` with `Retry-After` at once
//!   (load shedding, not queueing: a queue would only move the wait into postbox's memory).
//!
//! The body size limit is applied while reading (`events::read_body`), after decompression.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use crate::config::Limits;

/// Routes that probes and scrapers must always reach, even under overload.
const UNLIMITED: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Serve `app` on `listener` until `token` is cancelled, then stop accepting and let every open
/// connection finish its in-flight request (graceful shutdown).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    token: CancellationToken,
) -> std::io::Result<()> {
    // HTTP/1.1 only: auto-detecting HTTP/2 (prior knowledge) first waits for 24 bytes of
    // preface with no timeout at all, so a client that connects and sends nothing would hold
    // the connection forever. The header read timeout covers idle keep-alive connections too.
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Requests in flight, shared by every route the limit applies to.
#[derive(Clone)]
pub struct InFlightLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

impl InFlightLimit {
    /// At most `max` requests at once.
    pub fn new(max: usize) -> InFlightLimit {
        InFlightLimit {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

/// Middleware: answer 503 `overloaded` when `max_in_flight` requests are already being handled.
pub async fn limit_in_flight(
    State(limit): State<InFlightLimit>,
    req: Request,
    next: Next,
) -> Response {
    if UNLIMITED.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let Ok(_permit) = limit.permits.clone().try_acquire_owned() else {
        return ApiError::Overloaded(format!(
            "postbox is handling {} requests already; nothing was done, retry shortly",
            limit.max
        ))
        .into_response();
    };
    next.run(req).await
}

/// Middleware: answer 503 `request-timeout` when the handler takes longer than `timeout`.
///
/// Dropping the handler does not undo a commit: once events are handed to the outbox writer,
/// the writer commits them atomically (all of a request or none) whether or not anyone still
/// waits. So a timed-out request may have been stored; a retry with the same event id or
/// `Idempotency-Key` then answers 202 with `Idempotent-Replayed: true`.
pub async fn request_timeout(
    State(timeout): State<Duration>,
    req: Request,
    next: Next,
) -> Result<Response, Infallible> {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => Ok(resp),
        Err(_) => Ok(ApiError::Timeout(format!(
            "the request took longer than {} ms; its events may or may not have been stored: retry with the same event id or Idempotency-Key (a stored event answers as a replay)",
            timeout.as_millis()
        ))
        .into_response()),
    }
}
