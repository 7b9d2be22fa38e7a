//! Supervision of the long-running background tasks (relay, upkeep, partition ownership,
//! cross-instance wake-ups): a task that panics is logged, counted and started again with
//! backoff; one that keeps panicking shuts postbox down with an error, so that the process
//! exits non-zero and its supervisor (systemd, Kubernetes) restarts it, instead of running on
//! with a part silently missing.

use std::{
    collections::VecDeque,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// More panics than this within [`WINDOW`] and postbox gives up.
const MAX_PANICS: usize = 5;
/// See [`MAX_PANICS`].
const WINDOW: Duration = Duration::from_secs(600);
/// First restart delay; doubles per panic in the window, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(500);
/// See [`FIRST_DELAY`].
const MAX_DELAY: Duration = Duration::from_secs(30);

/// Starts supervised tasks and remembers whether one made postbox give up. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    tracker: TaskTracker,
    token: CancellationToken,
    gave_up: Arc<Mutex<Option<String>>>,
}

impl Supervisor {
    /// Tasks go on `tracker`; giving up cancels `token` (a graceful shutdown).
    pub fn new(tracker: TaskTracker, token: CancellationToken) -> Supervisor {
        Supervisor {
            tracker,
            token,
            gave_up: Arc::default(),
        }
    }

    /// Run `make()` until it returns or the token is cancelled; start it again whenever it
    /// panics (see the module docs). `make` builds a fresh future for each start.
    pub fn spawn<F, Fut>(&self, name: &'static str, make: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        self.tracker
            .spawn(async move { this.run(name, make).await });
    }

    /// Why postbox gave up, if a task kept panicking.
    pub fn gave_up(&self) -> Option<String> {
        self.gave_up.lock().ok().and_then(|g| g.clone())
    }

    async fn run<F, Fut>(&self, name: &'static str, make: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut panics: VecDeque<Instant> = VecDeque::new();
        loop {
            let joined = tokio::spawn(make()).await;
            let Err(e) = joined else { return };
            if !e.is_panic() || self.token.is_cancelled() {
                return;
            }
            metrics::counter!("postbox_task_panics_total", "task" => name).increment(1);
            let now = Instant::now();
            panics.push_back(now);
            while panics
                .front()
                .is_some_and(|t| now.duration_since(*t) > WINDOW)
            {
                panics.pop_front();
            }
            if panics.len() > MAX_PANICS {
                let why = format!(
                    "background task `{name}` panicked {} times within {} s",
                    panics.len(),
                    WINDOW.as_secs()
                );
                tracing::error!("{why}; shutting down");
                if let Ok(mut g) = self.gave_up.lock() {
                    g.get_or_insert(why);
                }
                self.token.cancel();
                return;
            }
            let exp = u32::try_from(panics.len().saturating_sub(1)).unwrap_or(u32::MAX);
            let delay = FIRST_DELAY
                .saturating_mul(2u32.saturating_pow(exp))
                .min(MAX_DELAY);
            tracing::error!(task = name, error = %e, restart_in_ms = delay.as_millis() as u64, "background task panicked; restarting it");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.token.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted() {
        let tracker = TaskTracker::new();
        let token = CancellationToken::new();
        let sup = Supervisor::new(tracker.clone(), token.clone());
        let starts = Arc::new(AtomicUsize::new(0));
        let s = starts.clone();
        sup.spawn("flaky", move || {
            let n = s.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    panic!("boom {n}");
                }
            }
        });
        tracker.close();
        tracker.wait().await;
        assert_eq!(
            starts.load(Ordering::SeqCst),
            3,
            "two panics, then a clean run"
        );
        assert!(!token.is_cancelled());
        assert_eq!(sup.gave_up(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_keeps_panicking_shuts_postbox_down() {
        let tracker = TaskTracker::new();
        let token = CancellationToken::new();
        let sup = Supervisor::new(tracker.clone(), token.clone());
        let starts = Arc::new(AtomicUsize::new(0));
        let s = starts.clone();
        sup.spawn("broken", move || {
            s.fetch_add(1, Ordering::SeqCst);
            async { panic!("always") }
        });
        tracker.close();
        tracker.wait().await;
        assert_eq!(starts.load(Ordering::SeqCst), MAX_PANICS + 1);
        assert!(token.is_cancelled());
        assert!(sup.gave_up().is_some_and(|w| w.contains("`broken`")));
    }
}
