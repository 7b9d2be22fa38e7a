//! Group commit: request handlers hand their events to one writer task over a bounded channel;
//! it commits everything waiting in one transaction (one fsync) and answers each request after
//! the commit that holds it. A full channel is backpressure (503), never unbounded memory.
//!
//! The writer also owns the set of keys (event ids, `Idempotency-Key`s) being committed: a
//! request holds its keys from before it is queued until its commit has ended (not merely until
//! it was answered), so a retry can never join the commit of the request it retries.

use std::{
    collections::HashSet,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::{OutboxStore, Store, StoreResult, WriteOutcome, WriteRequest};

/// Longest a request waits for the commit that holds it before it is answered 503 and the
/// writer moves on. The commit itself is not cancelled (cancelling a database call half-way is
/// what leaves connections inside transactions): it runs to its end, the request's keys stay
/// held until then, and a retry with the same id is answered 409 meanwhile and as a replay
/// afterwards if it landed.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// While commits fail, how often the writer tries a probe commit on its own, so that it (and
/// `/readyz`) recovers without waiting for a client to try again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Why a request was not committed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The writer queue is full.
    #[error("the outbox writer queue is full")]
    QueueFull,
    /// The database failed or did not answer in time.
    #[error("the outbox database is unavailable: {0}")]
    Store(String),
    /// The commit did not end in time; it may still land (a retry with the same id or key is
    /// then a replay).
    #[error("the outbox commit did not finish in time")]
    TimedOut,
    /// The writer has stopped (shutting down).
    #[error("postbox is shutting down")]
    Closed,
}

type Reply = oneshot::Sender<Result<WriteOutcome, WriteError>>;

struct Job {
    req: WriteRequest,
    reply: Reply,
    /// When its request stops waiting ([`COMMIT_TIMEOUT`] after it was queued).
    deadline: tokio::time::Instant,
    /// Released when the job is dropped: after its commit has ended.
    _keys: Keys,
}

/// What the writer commits with: the outbox store, or a stand-in in unit tests.
pub trait Committer: Clone + Send + Sync + 'static {
    /// Commit a group of requests in one transaction.
    fn commit(
        &self,
        reqs: Vec<WriteRequest>,
    ) -> impl Future<Output = StoreResult<Vec<WriteOutcome>>> + Send + 'static;
    /// One small durable write, as a commit would do it.
    fn probe(&self) -> impl Future<Output = StoreResult<()>> + Send + 'static;
}

impl Committer for Store {
    fn commit(
        &self,
        reqs: Vec<WriteRequest>,
    ) -> impl Future<Output = StoreResult<Vec<WriteOutcome>>> + Send + 'static {
        let store = self.clone();
        async move { OutboxStore::commit(&store, &reqs).await }
    }

    fn probe(&self) -> impl Future<Output = StoreResult<()>> + Send + 'static {
        let store = self.clone();
        async move { OutboxStore::probe(&store).await }
    }
}

/// Whether the writer can commit, for `/readyz` and metrics. Healthy until a commit fails;
/// failing until a commit (a request's or the writer's own probe) succeeds again.
#[derive(Clone, Default)]
pub struct WriterHealth(Arc<Mutex<Option<Failing>>>);

#[derive(Clone)]
struct Failing {
    since: Instant,
    error: String,
}

impl WriterHealth {
    /// `None` when commits succeed; else why the last one failed and for how long they have.
    pub fn failing(&self) -> Option<(String, Duration)> {
        self.0
            .lock()
            .map(|g| g.as_ref().map(|f| (f.error.clone(), f.since.elapsed())))
            .unwrap_or_else(|_| Some(("writer state unreadable".to_owned(), Duration::ZERO)))
    }

    fn is_failing(&self) -> bool {
        self.0.lock().map(|g| g.is_some()).unwrap_or(true)
    }

    fn ok(&self) {
        if let Ok(mut g) = self.0.lock()
            && let Some(f) = g.take()
        {
            tracing::info!(
                after_secs = f.since.elapsed().as_secs(),
                "the outbox accepts commits again"
            );
        }
        metrics::gauge!("postbox_outbox_writable").set(1.0);
    }

    fn failed(&self, error: &str) {
        if let Ok(mut g) = self.0.lock() {
            match g.as_mut() {
                Some(f) => f.error = error.to_owned(),
                None => {
                    *g = Some(Failing {
                        since: Instant::now(),
                        error: error.to_owned(),
                    })
                }
            }
        }
        metrics::gauge!("postbox_outbox_writable").set(0.0);
    }
}

/// The keys of one request while it is being committed; released on drop.
pub struct Keys {
    set: Arc<Mutex<HashSet<String>>>,
    keys: Vec<String>,
}

impl Drop for Keys {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        if let Ok(mut set) = self.set.lock() {
            for k in &self.keys {
                set.remove(k);
            }
        }
    }
}

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    in_flight: Arc<Mutex<HashSet<String>>>,
    health: WriterHealth,
}

impl Writer {
    /// Start the writer task. It stops once every `Writer` handle is dropped and the queue is
    /// drained, so in-flight requests are always answered. Each of `committed` is notified
    /// after every commit (the relay; the cross-instance announcer).
    /// Up to `concurrency` groups commit at once (1 for SQLite, which has one writer anyway;
    /// more for PostgreSQL, where a slow round trip would otherwise cap throughput).
    pub fn spawn<C: Committer>(
        committer: C,
        queue: usize,
        max_events: usize,
        concurrency: usize,
        committed: Vec<Arc<Notify>>,
        tracker: &TaskTracker,
    ) -> Writer {
        let (tx, rx) = mpsc::channel(queue);
        let health = WriterHealth::default();
        metrics::gauge!("postbox_outbox_writable").set(1.0);
        let group = Arc::new(Group {
            committer,
            max_events,
            committed,
            health: health.clone(),
            slots: Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
            concurrency: u32::try_from(concurrency.max(1)).unwrap_or(1),
        });
        tracker.spawn(supervise(group, rx));
        Writer {
            tx,
            in_flight: Arc::default(),
            health,
        }
    }

    /// Whether commits succeed.
    pub fn health(&self) -> &WriterHealth {
        &self.health
    }

    /// Mark keys as being committed; `None` if one of them already is (→ 409).
    pub fn claim_keys(&self, keys: Vec<String>) -> Option<Keys> {
        if !keys.is_empty() {
            let mut set = self.in_flight.lock().ok()?;
            if keys.iter().any(|k| set.contains(k)) {
                return None;
            }
            set.extend(keys.iter().cloned());
        }
        Some(Keys {
            set: self.in_flight.clone(),
            keys,
        })
    }

    /// Queue a request and wait for the commit that holds it, at most [`COMMIT_TIMEOUT`] from
    /// now (however long the queue ahead of it). `keys` stay held until that commit has ended,
    /// even if this future is dropped or answered early; a request that is no longer waited for
    /// when its turn comes is dropped unstored.
    pub async fn submit(&self, req: WriteRequest, keys: Keys) -> Result<WriteOutcome, WriteError> {
        let (reply, rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + COMMIT_TIMEOUT;
        self.tx
            .try_send(Job {
                req,
                reply,
                deadline,
                _keys: keys,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => WriteError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => WriteError::Closed,
            })?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(answer) => answer.map_err(|_| {
                WriteError::Store("the writer stopped before answering this request".to_owned())
            })?,
            Err(_) => Err(WriteError::TimedOut),
        }
    }
}

/// Everything one group commit needs.
struct Group<C> {
    committer: C,
    max_events: usize,
    committed: Vec<Arc<Notify>>,
    health: WriterHealth,
    /// Groups that may commit at once.
    slots: Arc<tokio::sync::Semaphore>,
    /// How many.
    concurrency: u32,
}

/// Run the writer loop; should it ever panic, answer what it held (the dropped replies read as
/// failures) and run it again on the same queue, so one bug never turns into a writer that is
/// gone for good while `/readyz` says ready.
async fn supervise<C: Committer>(group: Arc<Group<C>>, mut rx: mpsc::Receiver<Job>) {
    loop {
        match std::panic::AssertUnwindSafe(run(&group, &mut rx))
            .catch_unwind()
            .await
        {
            Ok(()) => return,
            Err(_) => {
                tracing::error!("the outbox writer panicked; restarting it");
                metrics::counter!("postbox_task_panics_total", "task" => "writer").increment(1);
                group
                    .health
                    .failed("the outbox writer panicked and was restarted");
            }
        }
    }
}

async fn run<C: Committer>(group: &Arc<Group<C>>, rx: &mut mpsc::Receiver<Job>) {
    loop {
        // While commits fail, a probe every second (the check runs at each tick: a failing
        // commit is noticed from its own task).
        let first = tokio::select! {
            job = rx.recv() => job,
            () = tokio::time::sleep(PROBE_EVERY) => {
                if group.health.is_failing() {
                    probe(group).await;
                }
                continue;
            }
        };
        let Some(first) = first else { break };
        // A slot first, then everything waiting joins the group.
        let Ok(slot) = group.slots.clone().acquire_owned().await else {
            break;
        };
        let mut events = 0;
        let mut jobs = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            if job.reply.is_closed() || job.deadline <= tokio::time::Instant::now() {
                // Its request stopped waiting (answered 503 "may be stored"): nothing of it is
                // stored, and dropping it frees its keys.
                metrics::counter!("postbox_commit_expired_total").increment(1);
            } else {
                events += job.req.rows.len();
                jobs.push(job);
            }
            if events < group.max_events {
                next = rx.try_recv().ok();
            }
        }
        if jobs.is_empty() {
            continue;
        }
        let group = group.clone();
        tokio::spawn(async move {
            commit(&group, jobs, events).await;
            drop(slot);
        });
    }
    // Every group in flight ends before the writer does (shutdown waits for their answers).
    let _ = group.slots.acquire_many(group.concurrency).await;
}

/// Commit one group in a task of its own (so a panic in it stays in it, and so answering
/// early on [`COMMIT_TIMEOUT`] never cancels the database work), then answer every request.
async fn commit<C: Committer>(group: &Group<C>, jobs: Vec<Job>, events: usize) {
    let mut reqs = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    let mut keys = Vec::with_capacity(jobs.len());
    for job in jobs {
        reqs.push(job.req);
        replies.push(Some(job.reply));
        keys.push(job._keys);
    }
    let started = Instant::now();
    let mut task = tokio::spawn(group.committer.commit(reqs));
    let joined = match tokio::time::timeout(COMMIT_TIMEOUT, &mut task).await {
        Ok(joined) => joined,
        Err(_) => {
            // Answer now (a 503 promises nothing) and go on with the next group, but keep the
            // keys until this commit has ended: it may still land.
            fail_all(&mut replies, "commit timed out", WriteError::TimedOut);
            group.health.failed("a commit took longer than 10 s");
            let committed = group.committed.clone();
            tokio::spawn(async move {
                if let Ok(Ok(_)) = task.await {
                    for c in &committed {
                        c.notify_one();
                    }
                }
                drop(keys);
            });
            return;
        }
    };
    metrics::histogram!("postbox_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("postbox_commit_events").record(events as f64);
    match joined {
        Ok(Ok(outcomes)) => {
            group.health.ok();
            for c in &group.committed {
                c.notify_one();
            }
            for (reply, outcome) in replies.iter_mut().zip(outcomes) {
                if let Some(reply) = reply.take() {
                    let _ = reply.send(Ok(outcome));
                }
            }
            // A reply left over (the store answered fewer outcomes) must not read as success.
            let why = "the outbox gave no outcome for this request";
            fail_all(&mut replies, why, WriteError::Store(why.to_owned()));
        }
        Ok(Err(e)) => {
            let why = format!("{e}");
            group.health.failed(&why);
            fail_all(&mut replies, &why, WriteError::Store(why.clone()));
        }
        Err(e) => {
            tracing::error!(error = %e, "an outbox commit panicked");
            metrics::counter!("postbox_task_panics_total", "task" => "commit").increment(1);
            group.health.failed("an outbox commit panicked");
            let why = "the commit panicked";
            fail_all(&mut replies, why, WriteError::Store(why.to_owned()));
        }
    }
    drop(keys);
}

/// While failing: one durable probe write; success makes the writer healthy again.
async fn probe<C: Committer>(group: &Group<C>) {
    let task = tokio::spawn(group.committer.probe());
    match tokio::time::timeout(COMMIT_TIMEOUT, task).await {
        Ok(Ok(Ok(()))) => group.health.ok(),
        Ok(Ok(Err(e))) => group.health.failed(&format!("{e}")),
        Ok(Err(_)) => group.health.failed("the probe commit panicked"),
        Err(_) => group.health.failed("the probe commit timed out"),
    }
}

fn fail_all(replies: &mut [Option<Reply>], why: &str, error: WriteError) {
    let mut n = 0;
    for reply in replies.iter_mut().filter_map(Option::take) {
        let e = match &error {
            WriteError::QueueFull => WriteError::QueueFull,
            WriteError::Store(s) => WriteError::Store(s.clone()),
            WriteError::TimedOut => WriteError::TimedOut,
            WriteError::Closed => WriteError::Closed,
        };
        let _ = reply.send(Err(e));
        n += 1;
    }
    if n > 0 {
        tracing::warn!(error = %why, requests = n, "outbox commit failed; answering 503");
        metrics::counter!("postbox_commit_failures_total").increment(1);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        sync::atomic::{AtomicBool, Ordering},
    };

    use super::*;

    /// What the stand-in committer does with the next group.
    enum Step {
        Commit,
        Fail,
        Panic,
        /// Commit once the gate opens.
        Wait,
    }

    #[derive(Clone)]
    struct Scripted {
        steps: Arc<Mutex<VecDeque<Step>>>,
        gate: Arc<Notify>,
        probe_fails: Arc<AtomicBool>,
    }

    impl Scripted {
        fn new(steps: impl IntoIterator<Item = Step>) -> Scripted {
            Scripted {
                steps: Arc::new(Mutex::new(steps.into_iter().collect())),
                gate: Arc::default(),
                probe_fails: Arc::new(AtomicBool::new(true)),
            }
        }
    }

    fn stored(n: usize) -> StoreResult<Vec<WriteOutcome>> {
        Ok((0..n)
            .map(|_| WriteOutcome::Stored {
                refs: Vec::new(),
                replayed: false,
            })
            .collect())
    }

    impl Committer for Scripted {
        fn commit(
            &self,
            reqs: Vec<WriteRequest>,
        ) -> impl Future<Output = StoreResult<Vec<WriteOutcome>>> + Send + 'static {
            let step = self
                .steps
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Step::Commit);
            let gate = self.gate.clone();
            async move {
                match step {
                    Step::Commit => stored(reqs.len()),
                    Step::Fail => Err(sqlx::Error::Protocol("database or disk is full".into())),
                    Step::Panic => panic!("a bug in the commit"),
                    Step::Wait => {
                        gate.notified().await;
                        stored(reqs.len())
                    }
                }
            }
        }

        fn probe(&self) -> impl Future<Output = StoreResult<()>> + Send + 'static {
            let fails = self.probe_fails.load(Ordering::SeqCst);
            async move {
                if fails {
                    Err(sqlx::Error::Protocol("database or disk is full".into()))
                } else {
                    Ok(())
                }
            }
        }
    }

    fn writer(c: &Scripted) -> Writer {
        Writer::spawn(c.clone(), 16, 100, 1, Vec::new(), &TaskTracker::new())
    }

    fn request() -> WriteRequest {
        WriteRequest {
            rows: Vec::new(),
            idempotency: None,
        }
    }

    async fn send(w: &Writer, key: &str) -> Result<WriteOutcome, WriteError> {
        let keys = w.claim_keys(vec![key.to_owned()]).expect("key is free");
        w.submit(request(), keys).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_commit_does_not_wedge_the_writer_and_it_recovers_by_itself() {
        let c = Scripted::new([Step::Fail]);
        let w = writer(&c);
        assert!(matches!(send(&w, "a").await, Err(WriteError::Store(_))));
        let (why, _) = w.health().failing().expect("failing after a failed commit");
        assert!(why.contains("disk is full"), "{why}");
        // Still no space: the writer's own probes keep it failing.
        tokio::time::sleep(PROBE_EVERY * 3).await;
        assert!(w.health().failing().is_some());
        // Space is back: healthy again without any client request.
        c.probe_fails.store(false, Ordering::SeqCst);
        tokio::time::sleep(PROBE_EVERY * 2).await;
        assert_eq!(w.health().failing(), None);
        assert!(matches!(
            send(&w, "a").await,
            Ok(WriteOutcome::Stored { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_commit_answers_its_requests_and_the_writer_goes_on() {
        let c = Scripted::new([Step::Panic]);
        let w = writer(&c);
        assert!(matches!(send(&w, "a").await, Err(WriteError::Store(_))));
        assert!(w.health().failing().is_some());
        assert!(matches!(
            send(&w, "b").await,
            Ok(WriteOutcome::Stored { .. })
        ));
        assert_eq!(w.health().failing(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_stay_held_until_the_commit_ends_not_until_the_answer() {
        let c = Scripted::new([Step::Wait]);
        let w = writer(&c);
        // The commit outlives the request: it is answered 503 "may be stored"...
        assert!(matches!(send(&w, "e/x").await, Err(WriteError::TimedOut)));
        // ...and a retry cannot join another commit while the first may still land.
        assert!(w.claim_keys(vec!["e/x".to_owned()]).is_none());
        // The writer is not stuck behind it.
        assert!(matches!(
            send(&w, "other").await,
            Ok(WriteOutcome::Stored { .. })
        ));
        c.gate.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(w.claim_keys(vec!["e/x".to_owned()]).is_some());
    }

    /// A request queued behind a stuck commit is answered within its own timeout, counted
    /// from when it was queued, not after the commit ahead plus its own.
    #[tokio::test(start_paused = true)]
    async fn a_request_behind_a_stuck_commit_is_answered_within_its_own_timeout() {
        let c = Scripted::new([Step::Wait, Step::Wait]);
        let w = writer(&c);
        let first = tokio::spawn({
            let w = w.clone();
            async move { send(&w, "stuck").await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        let queued = tokio::time::Instant::now();
        assert!(matches!(
            send(&w, "behind").await,
            Err(WriteError::TimedOut)
        ));
        assert_eq!(queued.elapsed(), COMMIT_TIMEOUT);
        assert!(matches!(first.await.unwrap(), Err(WriteError::TimedOut)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_request_keeps_its_keys_while_queued() {
        let c = Scripted::new([Step::Wait]);
        let w = writer(&c);
        let first = tokio::spawn({
            let w = w.clone();
            async move { send(&w, "blocker").await }
        });
        tokio::task::yield_now().await;
        // A request whose client went away (its future dropped) while it waits in the queue.
        let keys = w.claim_keys(vec!["e/y".to_owned()]).unwrap();
        let queued = w.submit(request(), keys);
        drop(tokio::time::timeout(Duration::from_millis(1), queued).await);
        assert!(w.claim_keys(vec!["e/y".to_owned()]).is_none());
        c.gate.notify_one();
        let _ = first.await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(w.claim_keys(vec!["e/y".to_owned()]).is_some());
    }
}
