//! Several postbox processes on one PostgreSQL outbox and one RabbitMQ: they split the
//! partitions evenly, each publishes its share, and when one is killed (`kill -9`) in the middle
//! of a keyed load the others take its partitions over within seconds. Every id answered 202
//! arrives, each key's events arrive in the order their 202s were received, and duplicates are
//! counted (at most one per key: a key has one event in flight at a time).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;

use crate::helpers::{
    AMQP_URL, ProcApp, SwitchableProxy, TestQueue, fresh_pg_database, message_id, metric_value,
    proc_env, unique,
};

const INSTANCES: usize = 3;
const KEYS: usize = 30;
const PER_KEY: usize = 80;
/// Answers before the kill.
const KILL_AFTER: usize = 900;
/// The instance that is killed.
const VICTIM: usize = 1;

async fn metric(app: &ProcApp, series: &str) -> f64 {
    metric_value(&app.metrics().await, series).unwrap_or(0.0)
}

/// Partitions owned by each app (`None` for a dead one).
async fn owned(apps: &[ProcApp], alive: &[bool]) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for (app, alive) in apps.iter().zip(alive) {
        out.push(if *alive {
            Some(metric(app, "postbox_partitions_owned").await)
        } else {
            None
        });
    }
    out
}

/// Wait until the live apps own all 64 partitions, each within one of a fair share; returns how
/// long it took.
async fn until_balanced(apps: &[ProcApp], alive: &[bool], within: Duration) -> Duration {
    let started = Instant::now();
    let live = alive.iter().filter(|a| **a).count() as f64;
    let share = (64.0 / live).ceil();
    loop {
        let o = owned(apps, alive).await;
        let live_owned: Vec<f64> = o.iter().flatten().copied().collect();
        let sum: f64 = live_owned.iter().sum();
        if sum == 64.0 && live_owned.iter().all(|n| *n >= share - 1.0 && *n <= share) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "partitions not balanced within {within:?}: owned {o:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct KeyRun {
    /// Ids answered 202, in the order the answers were received.
    accepted: Vec<String>,
    conn_errors: usize,
    other: Vec<(String, u16)>,
}

/// How a keyed load runs: `bases` to post to (those marked `dead` are skipped), at most
/// `per_key` events per key, `pace` between a key's events, until `stop` is set.
#[derive(Clone)]
struct KeyLoad {
    prefix: String,
    bases: Arc<Vec<String>>,
    dead: Arc<Vec<AtomicBool>>,
    answered: Arc<AtomicUsize>,
    per_key: usize,
    pace: Duration,
    stop: Arc<AtomicBool>,
}

impl KeyLoad {
    fn new(prefix: &str, bases: Vec<String>, per_key: usize) -> KeyLoad {
        KeyLoad {
            prefix: prefix.to_owned(),
            dead: Arc::new(bases.iter().map(|_| AtomicBool::new(false)).collect()),
            bases: Arc::new(bases),
            answered: Arc::new(AtomicUsize::new(0)),
            per_key,
            pace: Duration::ZERO,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// One task per key.
    fn start(&self, keys: usize) -> Vec<tokio::task::JoinHandle<KeyRun>> {
        (0..keys)
            .map(|k| tokio::spawn(post_key(k, self.clone())))
            .collect()
    }
}

/// Post the events of key `k` one after the other, round-robin over the live instances.
async fn post_key(k: usize, load: KeyLoad) -> KeyRun {
    let KeyLoad {
        prefix,
        bases,
        dead,
        answered,
        per_key,
        pace,
        stop,
    } = load;
    let n = bases.len();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let mut run = KeyRun {
        accepted: Vec::new(),
        conn_errors: 0,
        other: Vec::new(),
    };
    for j in 0..per_key {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let id = format!("{prefix}-k{k:02}-{j:03}");
        let target = (0..n)
            .map(|d| (k + j + d) % n)
            .find(|i| !dead[*i].load(Ordering::SeqCst))
            .expect("an instance is alive");
        let body = json!({
            "type": "order.paid", "version": "v1", "id": id, "source": "/test/instances",
            "key": format!("{prefix}-key-{k:02}"),
            "data": {"order_id": id, "amount": 1, "currency": "EUR"},
        });
        let sent = client
            .post(format!("{}/v1/events", bases[target]))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().as_u16() == 202 => {
                // A 202 whose body was cut off is not an answer.
                if r.bytes().await.is_ok() {
                    run.accepted.push(id);
                } else {
                    dead[target].store(true, Ordering::SeqCst);
                    run.conn_errors += 1;
                }
            }
            Ok(r) => run.other.push((id, r.status().as_u16())),
            Err(_) => {
                // Only the killed instance stops answering; it may have committed this event.
                dead[target].store(true, Ordering::SeqCst);
                run.conn_errors += 1;
            }
        }
        answered.fetch_add(1, Ordering::SeqCst);
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
    run
}

/// What a keyed load delivered: per key the ids in order of first arrival, and per id how many
/// times it arrived.
struct Collected {
    first_seen: HashMap<usize, Vec<String>>,
    count: HashMap<String, usize>,
    /// Accepted ids that never arrived.
    missing: usize,
    /// When the last accepted id arrived.
    all_at: Option<Instant>,
}

/// Consume until every accepted id has arrived (or `until`), then whatever else comes within a
/// second.
async fn collect_keyed(
    q: &mut TestQueue,
    prefix: &str,
    accepted: &HashSet<String>,
    until: Instant,
) -> Collected {
    let mut c = Collected {
        first_seen: HashMap::new(),
        count: HashMap::new(),
        missing: accepted.len(),
        all_at: None,
    };
    loop {
        let wait = if c.missing == 0 {
            Duration::from_secs(1)
        } else {
            until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1))
        };
        let Some(d) = q.next(wait).await else {
            if c.missing == 0 || Instant::now() >= until {
                return c;
            }
            continue;
        };
        let id = message_id(&d);
        let n = c.count.entry(id.clone()).or_default();
        *n += 1;
        if *n == 1 {
            let k: usize = id
                .strip_prefix(&format!("{prefix}-k"))
                .and_then(|rest| rest.get(..2))
                .and_then(|k| k.parse().ok())
                .unwrap_or_else(|| panic!("a message that was never sent: {id}"));
            c.first_seen.entry(k).or_default().push(id.clone());
            if accepted.contains(&id) {
                c.missing -= 1;
                if c.missing == 0 {
                    c.all_at = Some(Instant::now());
                }
            }
        }
    }
}

/// Per key, the first arrivals of the accepted ids are in the order of their 202s.
#[track_caller]
fn assert_key_order(runs: &[KeyRun], c: &Collected, accepted: &HashSet<String>) {
    for (k, run) in runs.iter().enumerate() {
        let arrived: Vec<&String> = c
            .first_seen
            .get(&k)
            .map(|ids| ids.iter().filter(|id| accepted.contains(*id)).collect())
            .unwrap_or_default();
        let want: Vec<&String> = run.accepted.iter().collect();
        assert_eq!(arrived, want, "key {k} arrived out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_partitions_and_take_over_a_killed_one() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = fresh_pg_database().await;
    let exchange = unique("instances");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let vars = proc_env(&database_url, AMQP_URL, &exchange);
    let mut apps = Vec::new();
    for i in 0..INSTANCES {
        apps.push(ProcApp::spawn(&vars, &dir.path().join(format!("postbox-{i}.log"))).await);
    }
    let mut alive = vec![true; INSTANCES];
    let balanced_in = until_balanced(&apps, &alive, Duration::from_secs(15)).await;
    for app in &apps {
        assert_eq!(metric(app, "postbox_instances").await, 3.0);
    }

    let prefix = unique("inst");
    let spec = KeyLoad::new(
        &prefix,
        apps.iter().map(|a| a.base.clone()).collect(),
        PER_KEY,
    );
    let answered = spec.answered.clone();
    let load = spec.start(KEYS);
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(Instant::now() < deadline, "load too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every instance has published its share of the events before the kill.
    let mut published_before = Vec::new();
    for app in &apps {
        published_before.push(metric(app, "postbox_published_total").await);
    }
    apps[VICTIM].kill9();
    let killed_at = Instant::now();
    alive[VICTIM] = false;
    let takeover = until_balanced(&apps, &alive, Duration::from_secs(10)).await;

    let mut runs = Vec::new();
    for h in load {
        runs.push(h.await.expect("load task"));
    }
    let load_done_after = killed_at.elapsed();
    let accepted: HashSet<String> = runs.iter().flat_map(|r| r.accepted.clone()).collect();
    let accepted_n: usize = runs.iter().map(|r| r.accepted.len()).sum();
    let conn_errors: usize = runs.iter().map(|r| r.conn_errors).sum();
    let other: Vec<&(String, u16)> = runs.iter().flat_map(|r| &r.other).collect();
    assert!(
        other.is_empty(),
        "only 202s and connection errors: {other:?}"
    );
    assert_eq!(accepted.len(), accepted_n, "an id was answered twice");
    assert_eq!(accepted_n + conn_errors, KEYS * PER_KEY);
    assert!(
        conn_errors > 0,
        "the kill came too late: every request was answered"
    );

    let c = collect_keyed(
        &mut q,
        &prefix,
        &accepted,
        killed_at + Duration::from_secs(30),
    )
    .await;
    let (count, missing) = (&c.count, c.missing);
    let delivered_all_after = c.all_at.map(|t| t.duration_since(killed_at));
    let distinct = count.len();
    let messages: usize = count.values().sum();
    let duplicates = messages - distinct;
    let without_202 = count.keys().filter(|id| !accepted.contains(*id)).count();
    let mut published_after = Vec::new();
    for (app, alive) in apps.iter().zip(&alive) {
        published_after.push(if *alive {
            Some(metric(app, "postbox_published_total").await)
        } else {
            None
        });
    }
    let mut takeover_rows = Vec::new();
    for (app, alive) in apps.iter().zip(&alive) {
        if *alive {
            takeover_rows.push(metric(app, "postbox_partition_takeover_rows_total").await);
        }
    }
    eprintln!(
        "[instances] {INSTANCES} instances, {KEYS} keys x {PER_KEY}: balanced in {:.2} s; \
         published before the kill {published_before:?}; kill -9 of instance {VICTIM} after \
         {KILL_AFTER} answers; survivors own all partitions {:.2} s after the kill (leases \
         released on takeover {takeover_rows:?}); load done {:.1} s after the kill; 202 \
         {accepted_n}, connection errors {conn_errors}; delivered {distinct} distinct ids in \
         {messages} messages, duplicates {duplicates}, delivered without a 202 {without_202}, \
         missing {missing}; all delivered {:?} after the kill; published after {published_after:?}; \
         {:.1} s",
        balanced_in.as_secs_f64(),
        takeover.as_secs_f64(),
        load_done_after.as_secs_f64(),
        delivered_all_after.map(|d| format!("{:.2} s", d.as_secs_f64())),
        started.elapsed().as_secs_f64()
    );

    let missing_ids: Vec<&String> = accepted
        .iter()
        .filter(|id| !count.contains_key(*id))
        .take(10)
        .collect();
    assert!(
        missing_ids.is_empty(),
        "{missing} ids answered 202 never arrived, e.g. {missing_ids:?}\n{}\n{}",
        apps[0].log_tail(30),
        apps[2].log_tail(30)
    );
    assert_eq!(distinct, accepted_n + without_202);
    assert!(
        without_202 <= conn_errors,
        "{without_202} delivered without a 202, but only {conn_errors} requests went unanswered"
    );
    assert!(
        duplicates <= KEYS,
        "{duplicates} duplicates: more than one per key in flight at the kill"
    );
    // A duplicate is an event the killed instance had sent but not settled; its lease was
    // released on takeover. Balancing at start hands partitions over only once settled.
    let released: f64 = takeover_rows.iter().sum();
    assert!(
        duplicates as f64 <= released,
        "{duplicates} duplicates, but only {released} leases were taken over"
    );
    assert_key_order(&runs, &c, &accepted);
    for (i, n) in published_before.iter().enumerate() {
        assert!(*n > 0.0, "instance {i} published nothing before the kill");
    }
    assert!(
        takeover < Duration::from_secs(5),
        "takeover took {takeover:?}"
    );
    // Without the takeover, the killed instance's claimed events would wait for their lease
    // (2 x 5 s + 10 s here).
    let all_after = delivered_all_after.expect("everything was delivered");
    assert!(
        all_after < Duration::from_secs(15),
        "the last accepted event arrived {all_after:?} after the kill (the load ended \
         {load_done_after:?} after it)"
    );
}

/// The connection holding the partition locks is cut (its PostgreSQL backend terminated): the
/// instance stops claiming at once, reconnects, takes its partitions again, and nothing is lost
/// or published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_reacquire_partitions_after_losing_the_ownership_connection() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = fresh_pg_database().await;
    let db = database_url
        .rsplit('/')
        .next()
        .expect("database name")
        .to_owned();
    let exchange = unique("owner-lost");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let app = ProcApp::spawn(
        &proc_env(&database_url, AMQP_URL, &exchange),
        &dir.path().join("postbox.log"),
    )
    .await;
    let alive = [true];
    until_balanced(std::slice::from_ref(&app), &alive, Duration::from_secs(10)).await;

    let admin = sqlx::PgPool::connect(crate::helpers::PG_ADMIN_URL)
        .await
        .expect("PostgreSQL");
    let terminated: Vec<bool> = sqlx::query_scalar(
        "select pg_terminate_backend(pid) from pg_stat_activity \
         where datname = $1 and application_name = 'postbox-partition-owner'",
    )
    .bind(&db)
    .fetch_all(&admin)
    .await
    .expect("terminate");
    admin.close().await;
    assert_eq!(
        terminated,
        vec![true],
        "one ownership connection per instance"
    );
    let cut_at = Instant::now();
    let post = |i: usize| {
        let app = &app;
        async move {
            let id = format!("lost-{i:03}");
            let r = app
                .client
                .post(app.url("/v1/events"))
                .header("content-type", "application/json")
                .body(
                    json!({
                        "type": "order.paid", "version": "v1", "id": id, "source": "/test/lost",
                        "key": format!("k{}", i % 7),
                        "data": {"order_id": id, "amount": 1, "currency": "EUR"},
                    })
                    .to_string(),
                )
                .send()
                .await
                .expect("POST");
            assert_eq!(r.status().as_u16(), 202);
            id
        }
    };
    let mut ids = HashSet::new();
    for i in 0..50 {
        ids.insert(post(i).await);
    }
    // Lost, and taken back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = app.metrics().await;
        let lost = metric_value(&m, "postbox_partition_ownership_lost_total");
        let owned = metric_value(&m, "postbox_partitions_owned");
        if lost == Some(1.0) && owned == Some(64.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ownership not back: lost {lost:?}, owned {owned:?}\n{}",
            app.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back_after = cut_at.elapsed();
    for i in 50..100 {
        ids.insert(post(i).await);
    }
    let got: Vec<String> = q
        .take(100, Duration::from_secs(10))
        .await
        .iter()
        .map(message_id)
        .collect();
    let extra = q.drain(Duration::from_millis(500)).await.len();
    let distinct: HashSet<String> = got.iter().cloned().collect();
    eprintln!(
        "[instances] ownership connection terminated: partitions owned again after {:.2} s; \
         202 100, delivered {} distinct in {} messages; {:.1} s",
        back_after.as_secs_f64(),
        distinct.len(),
        got.len() + extra,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(distinct, ids);
    assert_eq!(extra, 0, "nothing published twice");
    let m = app.metrics().await;
    assert_eq!(
        metric_value(&m, "postbox_partition_ownership_lost_total"),
        Some(1.0)
    );
    assert_eq!(metric_value(&m, "postbox_published_total"), Some(100.0));
}

/// Partitions change hands under a keyed load without publishing anything twice: a third
/// instance joins (the other two hand partitions over once their batches in flight are
/// settled), then one leaves with SIGTERM (it settles everything before it lets go).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_hand_partitions_over_under_load_without_duplicates() {
    const KEYS: usize = 20;
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = fresh_pg_database().await;
    let exchange = unique("handover");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let vars = proc_env(&database_url, AMQP_URL, &exchange);
    let log = |i: usize| dir.path().join(format!("postbox-{i}.log"));
    let mut apps = vec![
        ProcApp::spawn(&vars, &log(0)).await,
        ProcApp::spawn(&vars, &log(1)).await,
    ];
    until_balanced(&apps, &[true, true], Duration::from_secs(15)).await;

    // The load goes to the first two; the third only publishes.
    let prefix = unique("hand");
    let mut spec = KeyLoad::new(&prefix, apps.iter().map(|a| a.base.clone()).collect(), 999);
    spec.pace = Duration::from_millis(10);
    let (answered, stop, dead) = (spec.answered.clone(), spec.stop.clone(), spec.dead.clone());
    let load = spec.start(KEYS);
    tokio::time::sleep(Duration::from_millis(700)).await;
    apps.push(ProcApp::spawn(&vars, &log(2)).await);
    let joined = until_balanced(&apps, &[true, true, true], Duration::from_secs(15)).await;
    let at_join = answered.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;

    // Instance 0 leaves: no new requests to it, then SIGTERM.
    dead[0].store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    apps[0].term();
    let status = apps[0].wait_exit(Duration::from_secs(15)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        apps[0].log_tail(20)
    );
    let left = until_balanced(&apps, &[false, true, true], Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    let mut runs = Vec::new();
    for h in load {
        runs.push(h.await.expect("load task"));
    }
    let accepted: HashSet<String> = runs.iter().flat_map(|r| r.accepted.clone()).collect();
    let accepted_n: usize = runs.iter().map(|r| r.accepted.len()).sum();
    let conn_errors: usize = runs.iter().map(|r| r.conn_errors).sum();
    let other: Vec<&(String, u16)> = runs.iter().flat_map(|r| &r.other).collect();
    assert!(
        other.is_empty() && conn_errors == 0,
        "every POST answered 202: {other:?}, {conn_errors} connection errors"
    );
    assert_eq!(accepted.len(), accepted_n);

    let c = collect_keyed(
        &mut q,
        &prefix,
        &accepted,
        Instant::now() + Duration::from_secs(20),
    )
    .await;
    let messages: usize = c.count.values().sum();
    let mut released = 0.0;
    let mut taken_over = 0.0;
    let mut published = Vec::new();
    for app in &apps[1..] {
        let m = app.metrics().await;
        released += metric_value(&m, "postbox_partitions_released_total").unwrap_or(0.0);
        taken_over += metric_value(&m, "postbox_partition_takeover_rows_total").unwrap_or(0.0);
        published.push(metric_value(&m, "postbox_published_total").unwrap_or(0.0));
    }
    eprintln!(
        "[instances] handover: third instance joined and balanced in {:.2} s (after {at_join} \
         answers), SIGTERM of the first, others own everything {:.2} s later; partitions handed \
         over by the survivors {released}, leases taken over {taken_over}; 202 {accepted_n}; \
         delivered {} distinct ids in {messages} messages, missing {}; published by the \
         survivors {published:?}; {:.1} s",
        joined.as_secs_f64(),
        left.as_secs_f64(),
        c.count.len(),
        c.missing,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(c.missing, 0, "every 202 arrived");
    assert_eq!(c.count.len(), accepted_n, "nothing that was not accepted");
    assert_eq!(messages, accepted_n, "nothing published twice");
    assert_key_order(&runs, &c, &accepted);
    assert!(
        released > 0.0,
        "instance 1 handed partitions to the newcomer"
    );
    assert_eq!(
        taken_over, 0.0,
        "a graceful handover leaves no lease behind"
    );
    assert!(published[1] > 0.0, "the newcomer published");
}

/// With polling slowed to 10 s, events committed by one instance and owned by the other are
/// still published at once: the committing instance notifies the others (`LISTEN/NOTIFY`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_wake_each_other_after_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = fresh_pg_database().await;
    let exchange = unique("wake");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let mut vars = proc_env(&database_url, AMQP_URL, &exchange);
    vars.retain(|(k, _)| k != "POSTBOX_POLL_MS");
    vars.push(("POSTBOX_POLL_MS".into(), "10000".into()));
    let apps = vec![
        ProcApp::spawn(&vars, &dir.path().join("postbox-0.log")).await,
        ProcApp::spawn(&vars, &dir.path().join("postbox-1.log")).await,
    ];
    until_balanced(&apps, &[true, true], Duration::from_secs(15)).await;
    // Let both relays go back to sleep on their 10 s poll.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let prefix = unique("wake");
    let posted = Instant::now();
    let mut ids = HashSet::new();
    for i in 0..40 {
        let id = format!("{prefix}-{i:02}");
        let r = apps[0]
            .client
            .post(apps[0].url("/v1/events"))
            .header("content-type", "application/json")
            .body(
                json!({
                    "type": "order.paid", "version": "v1", "id": id, "source": "/test/wake",
                    "data": {"order_id": id, "amount": 1, "currency": "EUR"},
                })
                .to_string(),
            )
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status().as_u16(), 202);
        ids.insert(id);
    }
    let got: HashSet<String> = q
        .take(40, Duration::from_secs(3))
        .await
        .iter()
        .map(message_id)
        .collect();
    let took = posted.elapsed();
    let by_other = metric(&apps[1], "postbox_published_total").await;
    eprintln!(
        "[instances] wake: 40 events posted to one instance, delivered in {:.2} s with 10 s \
         polling; published by the other instance {by_other}",
        took.as_secs_f64()
    );
    assert_eq!(got, ids);
    assert!(by_other > 0.0, "the other instance owns some of them");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// An instance that cannot reach RabbitMQ (its own connection cut through a proxy) hands its
/// partitions to the instance that can, so the events it accepts are still published; once it
/// reaches RabbitMQ again it takes its share back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_without_the_broker_hand_their_partitions_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = fresh_pg_database().await;
    let exchange = unique("nobroker");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let proxy = SwitchableProxy::reserve();
    proxy.start().await;
    let apps = vec![
        ProcApp::spawn(
            &proc_env(&database_url, &proxy.amqp_url(), &exchange),
            &dir.path().join("postbox-0.log"),
        )
        .await,
        ProcApp::spawn(
            &proc_env(&database_url, AMQP_URL, &exchange),
            &dir.path().join("postbox-1.log"),
        )
        .await,
    ];
    until_balanced(&apps, &[true, true], Duration::from_secs(15)).await;

    let prefix = unique("nobroker");
    let post = |i: usize| {
        let app = &apps[0];
        let id = format!("{prefix}-{i:02}");
        async move {
            let r = app
                .client
                .post(app.url("/v1/events"))
                .header("content-type", "application/json")
                .body(
                    json!({
                        "type": "order.paid", "version": "v1", "id": id, "source": "/test/nobroker",
                        "data": {"order_id": id, "amount": 1, "currency": "EUR"},
                    })
                    .to_string(),
                )
                .send()
                .await
                .expect("POST");
            assert_eq!(r.status().as_u16(), 202);
            id
        }
    };
    proxy.cut().await;
    let cut_at = Instant::now();
    let mut ids = HashSet::new();
    for i in 0..30 {
        ids.insert(post(i).await);
    }
    // After 5 s without RabbitMQ, instance 0 lets go; instance 1 owns everything.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = owned(&apps, &[true, true]).await;
        if o == [Some(0.0), Some(64.0)] {
            break;
        }
        assert!(Instant::now() < deadline, "not handed over: {o:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let handed_after = cut_at.elapsed();
    assert_eq!(metric(&apps[1], "postbox_instances").await, 1.0);
    let first: HashSet<String> = q
        .take(30, Duration::from_secs(5))
        .await
        .iter()
        .map(message_id)
        .collect();
    let delivered_after = cut_at.elapsed();
    assert_eq!(first, ids);
    assert_eq!(metric(&apps[0], "postbox_published_total").await, 0.0);

    // RabbitMQ is back for instance 0: it takes its share again and publishes.
    proxy.start().await;
    let rebalanced = until_balanced(&apps, &[true, true], Duration::from_secs(20)).await;
    let mut more = HashSet::new();
    for i in 30..60 {
        more.insert(post(i).await);
    }
    let second: HashSet<String> = q
        .take(30, Duration::from_secs(5))
        .await
        .iter()
        .map(message_id)
        .collect();
    let extra = q.drain(Duration::from_millis(500)).await.len();
    let by_first = metric(&apps[0], "postbox_published_total").await;
    eprintln!(
        "[instances] broker cut for one instance: it handed its partitions over after {:.1} s, \
         its 30 events delivered {:.1} s after the cut; back in balance {:.1} s after the broker \
         returned; 30 more delivered ({by_first} by the instance that was cut off); duplicates \
         {extra}",
        handed_after.as_secs_f64(),
        delivered_after.as_secs_f64(),
        rebalanced.as_secs_f64()
    );
    assert_eq!(second, more);
    assert_eq!(extra, 0, "nothing published twice");
    assert!(by_first > 0.0, "instance 0 publishes again");
}
