//! The one load generator: `tasks` concurrent tasks POST single events with ids `{prefix}-{i}`
//! to one postbox or round-robin over several, paced or flat out, until all are sent or the
//! stop token is cancelled; every answer is recorded and tallied (202 with the accepted id set,
//! other statuses, connection errors, latency of the 202s), optionally checked per request.
//!
//! Keyed loads run one task per key, each posting its key's events one after the other, so the
//! order of a key's 202s is the order its events must arrive in.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Arrivals, Event, Http, ms, quantile};

/// How a POST was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 202, body read in full.
    Accepted,
    /// Any other status.
    Status(u16),
    /// No (complete) answer.
    ConnError(String),
}

/// One request and its answer.
#[derive(Debug, Clone)]
pub struct Shot {
    pub id: String,
    /// The key's index, in a keyed load.
    pub key: Option<usize>,
    /// Which target it went to.
    pub target: usize,
    pub answer: Answer,
    pub answered_at: Instant,
    /// From sending to the whole answer.
    pub took: Duration,
    /// The problem `type` of a non-202 answer.
    pub problem: Option<String>,
    /// Its `Retry-After` header.
    pub retry_after: Option<String>,
}

type MakeEvent = Arc<dyn Fn(&str, usize) -> Event + Send + Sync>;
type Check = Arc<dyn Fn(&Shot) -> Result<(), String> + Send + Sync>;

/// A load, described; [`Load::spawn`] or [`Load::run`] it.
pub struct Load {
    targets: Vec<String>,
    prefix: String,
    source: String,
    /// Events in all (unkeyed) or per key (keyed).
    max: usize,
    tasks: usize,
    keys: Option<usize>,
    pace: Duration,
    failover: bool,
    timeout: Duration,
    event: MakeEvent,
    check: Option<Check>,
    stop_after_wrong: Option<usize>,
}

impl Load {
    /// A load on the postbox at `base` (`http://host:port`).
    pub fn new(base: &str, prefix: &str) -> Load {
        Load::across(vec![base.to_owned()], prefix)
    }

    /// A load spread round-robin over several instances.
    pub fn across(targets: Vec<String>, prefix: &str) -> Load {
        Load {
            targets,
            prefix: prefix.to_owned(),
            source: "/test/load".to_owned(),
            max: usize::MAX,
            tasks: 4,
            keys: None,
            pace: Duration::ZERO,
            failover: false,
            timeout: Duration::from_secs(20),
            event: Arc::new(|id, _| Event::order_paid(id)),
            check: None,
            stop_after_wrong: None,
        }
    }

    /// At most `n` events (unbounded by default: until stopped).
    pub fn events(mut self, n: usize) -> Load {
        self.max = n;
        self
    }

    /// Concurrent tasks (unkeyed loads).
    pub fn tasks(mut self, n: usize) -> Load {
        self.tasks = n;
        self
    }

    /// Keyed: `keys` tasks, one per key `{prefix}-key-{k}`, each posting up to `per_key` events
    /// in sequence.
    pub fn keyed(mut self, keys: usize, per_key: usize) -> Load {
        self.keys = Some(keys);
        self.tasks = keys;
        self.max = per_key;
        self
    }

    /// A pause after each answer, per task.
    pub fn pace(mut self, pace: Duration) -> Load {
        self.pace = pace;
        self
    }

    /// The events' `source`.
    pub fn source(mut self, source: &str) -> Load {
        self.source = source.to_owned();
        self
    }

    /// A target that fails to answer is marked dead and skipped from then on.
    pub fn failover(mut self) -> Load {
        self.failover = true;
        self
    }

    /// Per-request client timeout (20 s by default).
    pub fn timeout(mut self, timeout: Duration) -> Load {
        self.timeout = timeout;
        self
    }

    /// The event for id `{prefix}-{i}` (its id, source and key are set by the load).
    pub fn event(mut self, make: impl Fn(&str, usize) -> Event + Send + Sync + 'static) -> Load {
        self.event = Arc::new(make);
        self
    }

    /// Check every answer; failures are collected in [`Tally::wrong`].
    pub fn check(
        mut self,
        check: impl Fn(&Shot) -> Result<(), String> + Send + Sync + 'static,
    ) -> Load {
        self.check = Some(Arc::new(check));
        self
    }

    /// Stop once more than `n` answers failed the check.
    pub fn stop_after_wrong(mut self, n: usize) -> Load {
        self.stop_after_wrong = Some(n);
        self
    }

    /// Run to the end.
    pub async fn run(self) -> Tally {
        self.spawn().finish().await
    }

    /// Start the tasks.
    pub fn spawn(self) -> LoadRun {
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .expect("client");
        let shared = Arc::new(Shared {
            client,
            dead: self
                .targets
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            targets: self.targets,
            prefix: self.prefix,
            source: self.source,
            max: self.max,
            keys: self.keys,
            pace: self.pace,
            failover: self.failover,
            event: self.event,
            check: self.check,
            stop_after_wrong: self.stop_after_wrong,
            next: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            stop: CancellationToken::new(),
            wrong: Mutex::new(Vec::new()),
        });
        let handles = (0..self.tasks)
            .map(|t| tokio::spawn(post_loop(t, shared.clone())))
            .collect();
        LoadRun { shared, handles }
    }
}

struct Shared {
    client: reqwest::Client,
    targets: Vec<String>,
    dead: Vec<AtomicBool>,
    prefix: String,
    source: String,
    max: usize,
    keys: Option<usize>,
    pace: Duration,
    failover: bool,
    event: MakeEvent,
    check: Option<Check>,
    stop_after_wrong: Option<usize>,
    next: AtomicUsize,
    answered: AtomicUsize,
    stop: CancellationToken,
    wrong: Mutex<Vec<String>>,
}

/// A load under way.
pub struct LoadRun {
    shared: Arc<Shared>,
    handles: Vec<tokio::task::JoinHandle<Vec<Shot>>>,
}

impl LoadRun {
    /// Answers so far.
    pub fn answered(&self) -> usize {
        self.shared.answered.load(Ordering::SeqCst)
    }

    /// Send no further requests (those under way are answered).
    pub fn stop(&self) {
        self.shared.stop.cancel();
    }

    /// The token that stops the load (cancel it from another task).
    pub fn stop_token(&self) -> CancellationToken {
        self.shared.stop.clone()
    }

    /// Send nothing more to target `i`.
    pub fn mark_dead(&self, i: usize) {
        self.shared.dead[i].store(true, Ordering::SeqCst);
    }

    /// Wait until `n` requests are answered; panics after `within` with `app`'s log.
    pub async fn until_answered(&self, n: usize, within: Duration, app: &Http) {
        let deadline = Instant::now() + within;
        while self.answered() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} requests answered within {within:?}\n{}",
                self.answered(),
                app.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Wait for every task and count what happened.
    pub async fn finish(self) -> Tally {
        let mut shots = Vec::new();
        for h in self.handles {
            shots.extend(h.await.expect("load task"));
        }
        let wrong = std::mem::take(&mut *self.shared.wrong.lock().expect("wrong"));
        Tally::of(shots, wrong)
    }
}

async fn post_loop(task: usize, s: Arc<Shared>) -> Vec<Shot> {
    let mut shots = Vec::new();
    let n = s.targets.len();
    for j in 0.. {
        if s.stop.is_cancelled() {
            break;
        }
        let (i, key) = match s.keys {
            Some(_) if j >= s.max => break,
            Some(_) => (task * s.max + j, Some(task)),
            None => {
                let i = s.next.fetch_add(1, Ordering::SeqCst);
                if i >= s.max {
                    break;
                }
                (i, None)
            }
        };
        let id = format!("{}-{i}", s.prefix);
        let mut event = (s.event)(&id, i).id(&id).source(&s.source);
        if let Some(k) = key {
            event = event.key(&format!("{}-key-{k}", s.prefix));
        }
        let first = key.map_or(i, |k| k + j);
        let target = (0..n)
            .map(|d| (first + d) % n)
            .find(|t| !s.dead[*t].load(Ordering::SeqCst))
            .expect("a target is alive");
        let shot = post_one(&s, id, key, target, event.body()).await;
        if s.failover && matches!(shot.answer, Answer::ConnError(_)) {
            // Only a stopped instance stops answering; it may have committed this event.
            s.dead[target].store(true, Ordering::SeqCst);
        }
        s.answered.fetch_add(1, Ordering::SeqCst);
        if let Some(check) = &s.check
            && let Err(why) = check(&shot)
        {
            let mut wrong = s.wrong.lock().expect("wrong");
            wrong.push(format!("{}: {why}", shot.id));
            if s.stop_after_wrong.is_some_and(|max| wrong.len() > max) {
                s.stop.cancel();
            }
        }
        shots.push(shot);
        if !s.pace.is_zero() {
            tokio::time::sleep(s.pace).await;
        }
    }
    shots
}

async fn post_one(s: &Shared, id: String, key: Option<usize>, target: usize, body: String) -> Shot {
    let started = Instant::now();
    let sent = s
        .client
        .post(format!("{}/v1/events", s.targets[target]))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let (mut problem, mut retry_after) = (None, None);
    let answer = match sent {
        Ok(r) if r.status().as_u16() == 202 => {
            // Read the body too: a 202 whose body was cut off is not an answer.
            match r.bytes().await {
                Ok(_) => Answer::Accepted,
                Err(e) => Answer::ConnError(format!("reading the 202 body: {e}")),
            }
        }
        Ok(r) => {
            let status = r.status().as_u16();
            retry_after = super::header(&r, "retry-after");
            let body: Value = r.json().await.unwrap_or(Value::Null);
            problem = body["type"].as_str().map(str::to_owned);
            Answer::Status(status)
        }
        Err(e) => Answer::ConnError(format!("{e:?}")),
    };
    Shot {
        id,
        key,
        target,
        answer,
        answered_at: Instant::now(),
        took: started.elapsed(),
        problem,
        retry_after,
    }
}

/// A check that passes 202s and 503 `outbox-unavailable` with `Retry-After` (what postbox
/// answers when it cannot commit), and fails everything else.
pub fn accepted_or_outbox_unavailable(shot: &Shot) -> Result<(), String> {
    match &shot.answer {
        Answer::Accepted => Ok(()),
        Answer::Status(503)
            if shot.retry_after.is_some()
                && shot.problem.as_deref() == Some("/problems/outbox-unavailable") =>
        {
            Ok(())
        }
        other => Err(format!(
            "{other:?} problem {:?} retry-after {:?} after {:?}",
            shot.problem, shot.retry_after, shot.took
        )),
    }
}

/// The answers of a load, counted.
pub struct Tally {
    pub shots: Vec<Shot>,
    pub sent: usize,
    /// Ids answered 202.
    pub accepted: HashSet<String>,
    /// Per key, the ids answered 202 in the order of their answers (keyed loads).
    pub by_key: BTreeMap<usize, Vec<String>>,
    pub conn_errors: usize,
    /// Answers other than 202, by status.
    pub statuses: HashMap<u16, usize>,
    /// Answers that failed the load's check.
    pub wrong: Vec<String>,
}

impl Tally {
    fn of(shots: Vec<Shot>, wrong: Vec<String>) -> Tally {
        let mut t = Tally {
            sent: shots.len(),
            accepted: HashSet::new(),
            by_key: BTreeMap::new(),
            conn_errors: 0,
            statuses: HashMap::new(),
            wrong,
            shots: Vec::new(),
        };
        for s in &shots {
            match &s.answer {
                Answer::Accepted => {
                    assert!(t.accepted.insert(s.id.clone()), "{} answered twice", s.id);
                    if let Some(k) = s.key {
                        t.by_key.entry(k).or_default().push(s.id.clone());
                    }
                }
                Answer::Status(code) => *t.statuses.entry(*code).or_default() += 1,
                Answer::ConnError(_) => t.conn_errors += 1,
            }
        }
        t.shots = shots;
        t
    }

    /// Requests answered with `status`.
    pub fn status(&self, status: u16) -> usize {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    /// Requests not answered 202 (id and answer), at most `n`.
    pub fn not_accepted(&self, n: usize) -> Vec<(&str, &Answer)> {
        self.shots
            .iter()
            .filter(|s| s.answer != Answer::Accepted)
            .map(|s| (s.id.as_str(), &s.answer))
            .take(n)
            .collect()
    }

    /// How long the 202s took.
    pub fn accepted_latencies(&self) -> Vec<Duration> {
        self.shots
            .iter()
            .filter(|s| s.answer == Answer::Accepted)
            .map(|s| s.took)
            .collect()
    }

    /// The `q` quantile of the 202s' latency.
    pub fn p(&self, q: f64) -> Duration {
        quantile(&self.accepted_latencies(), q)
    }

    /// Longest any request took, whatever its answer.
    pub fn slowest(&self) -> Duration {
        self.shots.iter().map(|s| s.took).max().unwrap_or_default()
    }

    /// Per key, the accepted ids arrived (first arrivals) in the order of their 202s.
    #[track_caller]
    pub fn assert_key_order(&self, arrived: &Arrivals) {
        let key_of: HashMap<&str, usize> = self
            .by_key
            .iter()
            .flat_map(|(k, ids)| ids.iter().map(move |id| (id.as_str(), *k)))
            .collect();
        let mut seen: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for id in &arrived.order {
            if let Some(k) = key_of.get(id.as_str()) {
                seen.entry(*k).or_default().push(id);
            }
        }
        for (k, want) in &self.by_key {
            let got = seen.get(k).cloned().unwrap_or_default();
            assert_eq!(got, *want, "key {k} arrived out of order");
        }
    }

    /// One line with what was sent, answered and delivered.
    pub fn report(&self, tag: &str, name: &str, got: &Arrivals, started: Instant) {
        eprintln!(
            "[{tag}] {name}: sent {}, 202 {}, connection errors {}, other statuses {:?}; \
             202 p50 {:.1} ms p99 {:.1} ms; delivered {} distinct ids in {} messages, \
             duplicates {}, missing {}, delivered without a 202 {}; {:.1} s",
            self.sent,
            self.accepted.len(),
            self.conn_errors,
            self.statuses,
            ms(self.p(0.5)),
            ms(self.p(0.99)),
            got.distinct(),
            got.messages(),
            got.duplicates(),
            got.missing.len(),
            got.not_in(&self.accepted),
            started.elapsed().as_secs_f64()
        );
    }
}
