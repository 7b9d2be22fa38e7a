//! Group commit: request handlers hand their events to one writer task over a bounded channel;
//! it commits everything waiting in one transaction (one fsync) and answers each request after
//! the commit that holds it. A full channel is backpressure (503), never unbounded memory.

use std::{sync::Arc, time::Duration};

use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::{OutboxStore, Store, WriteOutcome, WriteRequest};

/// Longest a commit may take before its requests are answered 503 (the commit may still land;
/// a 503 promises nothing, and a retry with the same id is an idempotent replay).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request was not committed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The writer queue is full.
    #[error("the outbox writer queue is full")]
    QueueFull,
    /// The database failed or did not answer.
    #[error("the outbox database is unavailable: {0}")]
    Store(String),
    /// The writer has stopped (shutting down).
    #[error("postbox is shutting down")]
    Closed,
}

type Reply = oneshot::Sender<Result<WriteOutcome, WriteError>>;

struct Job {
    req: WriteRequest,
    reply: Reply,
}

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Start the writer task. It stops once every `Writer` handle is dropped and the queue is
    /// drained, so in-flight requests are always answered. Each of `committed` is notified
    /// after every commit (the relay; the cross-instance announcer).
    pub fn spawn(
        store: Store,
        queue: usize,
        max_events: usize,
        committed: Vec<Arc<Notify>>,
        tracker: &TaskTracker,
    ) -> Writer {
        let (tx, rx) = mpsc::channel(queue);
        tracker.spawn(run(store, rx, max_events, committed));
        Writer { tx }
    }

    /// Queue a request and wait for the commit that holds it.
    pub async fn submit(&self, req: WriteRequest) -> Result<WriteOutcome, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Job { req, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => WriteError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => WriteError::Closed,
        })?;
        rx.await.map_err(|_| WriteError::Closed)?
    }
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Job>,
    max_events: usize,
    committed: Vec<Arc<Notify>>,
) {
    let mut reqs: Vec<WriteRequest> = Vec::new();
    let mut replies: Vec<Reply> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut events = 0;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            events += job.req.rows.len();
            reqs.push(job.req);
            replies.push(job.reply);
            if events < max_events {
                next = rx.try_recv().ok();
            }
        }
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(COMMIT_TIMEOUT, store.commit(&reqs)).await;
        metrics::histogram!("postbox_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("postbox_commit_events").record(events as f64);
        reqs.clear();
        match result {
            Ok(Ok(outcomes)) => {
                for c in &committed {
                    c.notify_one();
                }
                for (reply, outcome) in replies.drain(..).zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Ok(Err(e)) => fail_all(&mut replies, format!("{e}")),
            Err(_) => fail_all(&mut replies, "commit timed out".to_owned()),
        }
    }
}

fn fail_all(replies: &mut Vec<Reply>, why: String) {
    tracing::warn!(error = %why, requests = replies.len(), "outbox commit failed; answering 503");
    metrics::counter!("postbox_commit_failures_total").increment(1);
    for reply in replies.drain(..) {
        let _ = reply.send(Err(WriteError::Store(why.clone())));
    }
}
