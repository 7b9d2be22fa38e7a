//! Delivery guarantees under faults: SIGKILL mid-load, a broker outage during load, nacks, a
//! SIGTERM under load and a locked SQLite outbox. Every test counts each event id exactly:
//! every id answered 202 must reach RabbitMQ (duplicates are allowed by at-least-once and are
//! counted and printed; a missing id is a failure).
//!
//! The crash and shutdown tests run the real binary as a child process; the others do too where
//! they read `/metrics` (in-process apps share one global metrics recorder).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{
    Connection, ConnectionProperties,
    options::{QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    AMQP_URL, Backend, ProcApp, SwitchableProxy, TestApp, TestQueue, assert_problem,
    fresh_pg_database, header, message_id, metric_value, order_paid, proc_env, unique,
};

/// How a POST was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Accepted,
    Status(u16),
    ConnError(String),
}

struct Shot {
    id: String,
    answer: Answer,
    answered_at: Instant,
}

fn event(id: &str, source: &str) -> Value {
    json!({
        "type": "order.paid", "version": "v1", "id": id, "source": source,
        "data": {"order_id": id, "amount": 1, "currency": "EUR"},
    })
}

/// A load run: single-event POSTs with ids `{prefix}-{i}` (i < `max`) from `tasks`
/// concurrent tasks, each pausing `pace` between requests, until all are sent or `stop` is
/// cancelled. `answered` counts the answers as they arrive.
struct Load {
    client: reqwest::Client,
    base: String,
    source: String,
    prefix: String,
    max: usize,
    tasks: usize,
    pace: Duration,
    stop: CancellationToken,
    answered: Arc<AtomicUsize>,
}

impl Load {
    fn new(base: &str, source: &str, prefix: &str, max: usize, tasks: usize) -> Load {
        Load {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client"),
            base: base.to_owned(),
            source: source.to_owned(),
            prefix: prefix.to_owned(),
            max,
            tasks,
            pace: Duration::ZERO,
            stop: CancellationToken::new(),
            answered: Arc::new(AtomicUsize::new(0)),
        }
    }
}

async fn fire(load: Load) -> Vec<Shot> {
    let Load {
        client,
        base,
        source,
        prefix,
        max,
        tasks,
        pace,
        stop,
        answered,
    } = load;
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (client, base, source, prefix) =
            (client.clone(), base.clone(), source.clone(), prefix.clone());
        let (next, stop, answered) = (next.clone(), stop.clone(), answered.clone());
        handles.push(tokio::spawn(async move {
            let mut shots = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= max || stop.is_cancelled() {
                    return shots;
                }
                let id = format!("{prefix}-{i}");
                let sent = client
                    .post(format!("{base}/v1/events"))
                    .header("content-type", "application/json")
                    .body(event(&id, &source).to_string())
                    .send()
                    .await;
                let answer = match sent {
                    Ok(r) if r.status().as_u16() == 202 => {
                        // Read the body too: a 202 whose body was cut off is not an answer.
                        match r.bytes().await {
                            Ok(_) => Answer::Accepted,
                            Err(e) => Answer::ConnError(format!("reading the 202 body: {e}")),
                        }
                    }
                    Ok(r) => Answer::Status(r.status().as_u16()),
                    Err(e) => Answer::ConnError(format!("{e:?}")),
                };
                answered.fetch_add(1, Ordering::SeqCst);
                shots.push(Shot {
                    id,
                    answer,
                    answered_at: Instant::now(),
                });
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
            }
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("load task"));
    }
    all
}

/// Answers of a load run, counted.
struct Tally {
    sent: usize,
    accepted: HashSet<String>,
    conn_errors: usize,
    statuses: HashMap<u16, usize>,
}

fn tally(shots: &[Shot]) -> Tally {
    let mut t = Tally {
        sent: shots.len(),
        accepted: HashSet::new(),
        conn_errors: 0,
        statuses: HashMap::new(),
    };
    for s in shots {
        match &s.answer {
            Answer::Accepted => {
                assert!(t.accepted.insert(s.id.clone()), "{} answered twice", s.id);
            }
            Answer::Status(code) => *t.statuses.entry(*code).or_default() += 1,
            Answer::ConnError(_) => t.conn_errors += 1,
        }
    }
    t
}

/// Messages on `q` (by `message_id`) until every id in `want` has arrived or `within` has
/// passed, then every further message arriving within `quiet` of the previous one.
async fn collect(
    q: &mut TestQueue,
    want: &HashSet<String>,
    within: Duration,
    quiet: Duration,
) -> HashMap<String, usize> {
    let mut got: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut missing = want.len();
    while missing > 0 {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        if let Some(d) = q.next((deadline - now).min(Duration::from_secs(1))).await {
            let id = message_id(&d);
            let n = got.entry(id.clone()).or_default();
            *n += 1;
            if *n == 1 && want.contains(&id) {
                missing -= 1;
            }
        }
    }
    for d in q.drain(quiet).await {
        *got.entry(message_id(&d)).or_default() += 1;
    }
    got
}

/// What arrived, compared with what was accepted.
struct Delivery {
    distinct: usize,
    messages: usize,
    duplicates: usize,
    missing: Vec<String>,
    unacknowledged_but_delivered: usize,
}

fn compare(got: &HashMap<String, usize>, accepted: &HashSet<String>, prefix: &str) -> Delivery {
    let foreign: Vec<&String> = got
        .keys()
        .filter(|id| !id.starts_with(prefix))
        .take(5)
        .collect();
    assert!(
        foreign.is_empty(),
        "messages that were never sent: {foreign:?}"
    );
    let mut missing: Vec<String> = accepted
        .iter()
        .filter(|id| !got.contains_key(*id))
        .cloned()
        .collect();
    missing.sort();
    Delivery {
        distinct: got.len(),
        messages: got.values().sum(),
        duplicates: got.values().map(|n| n - 1).sum(),
        missing,
        unacknowledged_but_delivered: got.keys().filter(|id| !accepted.contains(*id)).count(),
    }
}

fn report(name: &str, t: &Tally, d: &Delivery, started: Instant) {
    eprintln!(
        "[faults] {name}: sent {}, 202 {}, connection errors {}, other statuses {:?}; \
         delivered {} distinct ids in {} messages, duplicates {}, missing {}, \
         delivered without a 202 {}; {:.1} s",
        t.sent,
        t.accepted.len(),
        t.conn_errors,
        t.statuses,
        d.distinct,
        d.messages,
        d.duplicates,
        d.missing.len(),
        d.unacknowledged_but_delivered,
        started.elapsed().as_secs_f64()
    );
}

fn set_var(vars: &mut Vec<(String, String)>, key: &str, value: &str) {
    vars.retain(|(k, _)| k != key);
    vars.push((key.to_owned(), value.to_owned()));
}

/// Wait until `answered` reaches `n` (panics after `within`).
async fn until_answered(answered: &AtomicUsize, n: usize, within: Duration, app: &ProcApp) {
    let deadline = tokio::time::Instant::now() + within;
    while answered.load(Ordering::SeqCst) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} requests answered within {within:?}\n{}",
            answered.load(Ordering::SeqCst),
            app.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9 mid-load

const KILL_EVENTS: usize = 2000;
const KILL_AFTER: usize = 800;

async fn kill9_mid_load(backend: Backend) {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("outbox.db").display()),
        Backend::Postgres => fresh_pg_database().await,
    };
    let exchange = unique("faults-kill");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    // The restarted process takes the killed one's partitions (PostgreSQL) or the whole file
    // (SQLite) over and releases its leases at once: nothing waits for a lease to run out
    // (2 x 5 s + 10 s here).
    let vars = proc_env(&database_url, AMQP_URL, &exchange);
    let log = dir.path().join("postbox.log");
    let mut app = ProcApp::spawn(&vars, &log).await;

    let prefix = unique("kill");
    let spec = Load::new(&app.base, "/faults/kill", &prefix, KILL_EVENTS, 8);
    let answered = spec.answered.clone();
    let load = tokio::spawn(fire(spec));
    until_answered(&answered, KILL_AFTER, Duration::from_secs(30), &app).await;
    app.kill9();
    let shots = load.await.expect("load");
    let t = tally(&shots);
    assert!(
        t.statuses.is_empty(),
        "only 202s and connection errors expected, got {:?}",
        t.statuses
    );
    assert_eq!(t.sent, t.accepted.len() + t.conn_errors);
    assert!(t.accepted.len() >= KILL_AFTER - 8, "{}", t.accepted.len());
    assert!(
        t.conn_errors > 0,
        "the kill came too late: every request was answered"
    );

    let app = ProcApp::spawn(&vars, &log).await;
    let got = collect(
        &mut q,
        &t.accepted,
        Duration::from_secs(15),
        Duration::from_millis(1500),
    )
    .await;
    let d = compare(&got, &t.accepted, &prefix);
    report(&format!("kill -9 mid-load ({backend:?})"), &t, &d, started);
    assert!(
        d.missing.is_empty(),
        "{} ids answered 202 never arrived, e.g. {:?}\n{}",
        d.missing.len(),
        &d.missing[..d.missing.len().min(10)],
        app.log_tail(40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_kill9_mid_load_sqlite() {
    kill9_mid_load(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_kill9_mid_load_postgres() {
    kill9_mid_load(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Broker outage during load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_broker_outage_during_load() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let exchange = unique("faults-outage");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let proxy = SwitchableProxy::reserve();
    proxy.start().await;
    let vars = proc_env(&database_url, &proxy.amqp_url(), &exchange);
    let app = ProcApp::spawn(&vars, &dir.path().join("postbox.log")).await;
    wait_broker(&app, "connected", Duration::from_secs(10)).await;

    let prefix = unique("outage");
    let mut spec = Load::new(&app.base, "/faults/outage", &prefix, 20_000, 4);
    spec.pace = Duration::from_millis(10);
    let (answered, stop) = (spec.answered.clone(), spec.stop.clone());
    let load = tokio::spawn(fire(spec));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_cut = answered.load(Ordering::SeqCst);

    proxy.cut().await;
    let cut_at = Instant::now();
    let mut saw_unreachable = false;
    let mut max_pending = 0.0_f64;
    let mut readyz_checks = 0;
    while cut_at.elapsed() < Duration::from_secs(4)
        || (!(saw_unreachable && max_pending > 0.0) && cut_at.elapsed() < Duration::from_secs(8))
    {
        let (code, ready) = app.get_json("/readyz").await;
        readyz_checks += 1;
        assert_eq!(code, 200, "ready while the broker is away: {ready}");
        assert_eq!(ready["status"], "ready", "{ready}");
        if ready["broker"]["state"] == "unreachable" {
            assert!(ready["broker"]["error"].is_string(), "{ready}");
            saw_unreachable = true;
        }
        let pending = metric_value(&app.metrics().await, "postbox_outbox_pending").unwrap_or(0.0);
        max_pending = max_pending.max(pending);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut_for = cut_at.elapsed();
    let during_cut = answered.load(Ordering::SeqCst) - before_cut;
    assert!(
        saw_unreachable,
        "/readyz never reported the broker unreachable during the cut\n{}",
        app.log_tail(30)
    );
    assert!(
        max_pending > 0.0,
        "postbox_outbox_pending stayed 0 during the cut"
    );

    proxy.start().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    let shots = load.await.expect("load");
    let t = tally(&shots);
    let not_accepted: Vec<(&str, &Answer)> = shots
        .iter()
        .filter(|s| s.answer != Answer::Accepted)
        .map(|s| (s.id.as_str(), &s.answer))
        .take(5)
        .collect();
    assert!(
        not_accepted.is_empty(),
        "every POST must be accepted while the broker is away: {not_accepted:?}"
    );

    let got = collect(
        &mut q,
        &t.accepted,
        Duration::from_secs(25),
        Duration::from_millis(1500),
    )
    .await;
    let d = compare(&got, &t.accepted, &prefix);
    report("broker outage during load", &t, &d, started);
    eprintln!(
        "[faults] broker outage: cut for {:.1} s, {during_cut} POSTs answered during the cut, \
         {readyz_checks} /readyz checks all 200, max postbox_outbox_pending {max_pending}",
        cut_for.as_secs_f64()
    );
    assert!(
        d.missing.is_empty(),
        "{} ids answered 202 never arrived, e.g. {:?}\n{}",
        d.missing.len(),
        &d.missing[..d.missing.len().min(10)],
        app.log_tail(40)
    );
    assert_eq!(d.unacknowledged_but_delivered, 0);

    // The backlog drains: the gauge (refreshed every 2 s) returns to 0.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let pending = metric_value(&app.metrics().await, "postbox_outbox_pending");
        if pending == Some(0.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "postbox_outbox_pending is still {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_broker(&app, "connected", Duration::from_secs(5)).await;
    // One lost connection, one reconnect.
    let metrics = app.metrics().await;
    let reconnects = metric_value(&metrics, "postbox_broker_reconnects_total");
    let connection_failures = metric_value(
        &metrics,
        "postbox_publish_failures_total{reason=\"connection\"}",
    );
    eprintln!(
        "[faults] broker outage: reconnects {reconnects:?}, connection failures {connection_failures:?}"
    );
    assert_eq!(reconnects, Some(1.0), "exactly one reconnect");
}

async fn wait_broker(app: &ProcApp, state: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (code, ready) = app.get_json("/readyz").await;
        assert_eq!(code, 200, "{ready}");
        if ready["broker"]["state"] == state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker not {state} within {within:?}: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Nack → retried → dead, never published; other events still flow

/// A queue bound to `exchange` that makes RabbitMQ nack every publish routed to it
/// (`x-max-length=0`, `x-overflow=reject-publish`). Returns the connection that owns it.
async fn rejecting_queue(exchange: &str, binding: &str) -> (Connection, lapin::Channel, String) {
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let ch = conn.create_channel().await.expect("channel");
    let name = unique("faults-reject");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("queue_declare");
    ch.queue_bind(
        name.as_str().into(),
        exchange.into(),
        binding.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue_bind");
    (conn, ch, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_nacked_event_is_retried_then_dead_and_does_not_block_others() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let exchange = unique("faults-nack");
    let mut ok_q = TestQueue::bind(&exchange, "events.order.paid.#").await;
    let (_conn, ch, reject_q) = rejecting_queue(&exchange, "events.user.signed_up.#").await;
    let mut vars = proc_env(&database_url, AMQP_URL, &exchange);
    set_var(&mut vars, "POSTBOX_MAX_ATTEMPTS", "3");
    // Slow enough to watch attempts grow: ~150-300 ms, then ~300-600 ms.
    set_var(&mut vars, "POSTBOX_RETRY_BASE_MS", "300");
    set_var(&mut vars, "POSTBOX_RETRY_MAX_MS", "1000");
    let app = ProcApp::spawn(&vars, &dir.path().join("postbox.log")).await;

    let post = |body: Value| {
        let app = &app;
        async move {
            let r = app
                .client
                .post(app.url("/v1/events"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("POST");
            assert_eq!(r.status().as_u16(), 202);
            header(&r, "location").expect("Location")
        }
    };
    let bad_id = unique("nacked");
    let location = post(json!({
        "type": "user.signed_up", "version": "v1", "id": bad_id, "source": "/faults/nack",
        "data": {"user_id": "u-1", "email": "ada@example.com"},
    }))
    .await;
    let mut ok_ids = HashSet::new();
    for i in 0..10 {
        let id = format!("{bad_id}-ok-{i}");
        post(event(&id, "/faults/nack")).await;
        ok_ids.insert(id);
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut attempts_seen = Vec::new();
    let mut nack_errors_seen = 0;
    let dead = loop {
        let (code, ev) = app.get_json(&location).await;
        assert_eq!(code, 200, "{ev}");
        assert_ne!(
            ev["status"], "published",
            "a nacked event is never published"
        );
        let attempts = ev["attempts"].as_i64().expect("attempts");
        if attempts_seen.last() != Some(&attempts) {
            attempts_seen.push(attempts);
        }
        if attempts > 0 {
            let err = ev["last_error"].as_str().unwrap_or_default();
            assert!(err.contains("nack"), "last_error names the nack: {ev}");
            nack_errors_seen += 1;
        }
        if ev["status"] == "dead" {
            break ev;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not dead in time: {ev}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(dead["attempts"], 3, "{dead}");
    assert!(dead["published_at"].is_null(), "{dead}");
    assert!(
        attempts_seen.windows(2).all(|w| w[0] < w[1]),
        "attempts only grow: {attempts_seen:?}"
    );
    assert!(
        attempts_seen.iter().any(|a| *a == 1 || *a == 2),
        "intermediate attempts were visible: {attempts_seen:?}"
    );

    // Events posted after the failing one is dead flow too.
    for i in 10..20 {
        let id = format!("{bad_id}-ok-{i}");
        post(event(&id, "/faults/nack")).await;
        ok_ids.insert(id);
    }
    let got = collect(
        &mut ok_q,
        &ok_ids,
        Duration::from_secs(10),
        Duration::from_millis(1000),
    )
    .await;
    let d = compare(&got, &ok_ids, &bad_id);
    assert!(!got.contains_key(&bad_id), "the nacked event was routed");
    assert!(d.missing.is_empty(), "missing: {:?}", d.missing);
    assert_eq!(d.duplicates, 0, "{got:?}");
    assert_eq!(d.distinct, 20);

    // RabbitMQ kept nothing in the rejecting queue; the relay counted exactly three nacks.
    let declared = ch
        .queue_declare(
            reject_q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert_eq!(declared.message_count(), 0);
    // Still dead a little later: no further attempts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, ev) = app.get_json(&location).await;
    assert_eq!(ev["status"], "dead", "{ev}");
    assert_eq!(ev["attempts"], 3, "{ev}");
    let metrics = app.metrics().await;
    let nacked = metric_value(
        &metrics,
        "postbox_publish_failures_total{reason=\"nacked\"}",
    );
    assert_eq!(nacked, Some(3.0), "exactly three nacked attempts");
    let returned = metric_value(
        &metrics,
        "postbox_publish_failures_total{reason=\"returned\"}",
    );
    assert_eq!(returned, None, "nothing was unroutable");
    eprintln!(
        "[faults] nack: attempts seen {attempts_seen:?} ({nack_errors_seen} polls showed the nack), \
         dead with attempts 3, nacked metric {nacked:?}, rejecting queue holds {}; \
         other events: 202 20, delivered {} distinct in {} messages, duplicates {}, missing {}; {:.1} s",
        declared.message_count(),
        d.distinct,
        d.messages,
        d.duplicates,
        d.missing.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Graceful shutdown (SIGTERM) under load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_sigterm_under_load_loses_nothing() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let exchange = unique("faults-term");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let vars = proc_env(&database_url, AMQP_URL, &exchange);
    let log = dir.path().join("postbox.log");
    let mut app = ProcApp::spawn(&vars, &log).await;

    let prefix = unique("term");
    let source = "/faults/term";
    let spec = Load::new(&app.base, source, &prefix, KILL_EVENTS, 8);
    let answered = spec.answered.clone();
    let load = tokio::spawn(fire(spec));
    until_answered(&answered, 600, Duration::from_secs(30), &app).await;
    app.term();
    let term_at = Instant::now();
    let status = app.wait_exit(Duration::from_secs(15)).await;
    let exited_after = term_at.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "postbox did not exit within 15 s of SIGTERM\n{}",
            app.log_tail(30)
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}\n{}",
        app.log_tail(30)
    );
    let shots = load.await.expect("load");
    let t = tally(&shots);
    let unexpected: Vec<&u16> = t.statuses.keys().filter(|c| **c != 503).collect();
    assert!(
        unexpected.is_empty(),
        "after SIGTERM only 503 or a connection error: {:?}",
        t.statuses
    );
    let accepted_after_term = shots
        .iter()
        .filter(|s| s.answer == Answer::Accepted && s.answered_at > term_at)
        .count();

    // Every 202 is in the outbox after a restart on the same database...
    let app = ProcApp::spawn(&vars, &log).await;
    let enc_source = "%2Ffaults%2Fterm";
    let not_stored: Vec<(String, u16, Value)> = futures_util::stream::iter(t.accepted.iter())
        .map(|id| {
            let app = &app;
            async move {
                let (code, ev) = app
                    .get_json(&format!("/v1/events/{id}?source={enc_source}"))
                    .await;
                (id.clone(), code, ev)
            }
        })
        .buffer_unordered(8)
        .filter(|(_, code, ev)| {
            let ok = *code == 200 && (ev["status"] == "pending" || ev["status"] == "published");
            std::future::ready(!ok)
        })
        .collect()
        .await;
    assert!(
        not_stored.is_empty(),
        "{} ids answered 202 are not in the outbox, e.g. {:?}",
        not_stored.len(),
        &not_stored[..not_stored.len().min(5)]
    );

    // ...and in the queue.
    let got = collect(
        &mut q,
        &t.accepted,
        Duration::from_secs(20),
        Duration::from_millis(1500),
    )
    .await;
    let d = compare(&got, &t.accepted, &prefix);
    report("SIGTERM under load", &t, &d, started);
    eprintln!(
        "[faults] SIGTERM: exit 0 after {:.2} s; {accepted_after_term} 202s answered after the signal",
        exited_after.as_secs_f64()
    );
    assert!(
        d.missing.is_empty(),
        "{} ids answered 202 never arrived, e.g. {:?}",
        d.missing.len(),
        &d.missing[..d.missing.len().min(10)]
    );
    assert!(
        t.conn_errors + t.statuses.get(&503).copied().unwrap_or(0) > 0,
        "the signal came too late: every request was accepted"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. SQLite outbox locked by another writer

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_locked_sqlite_outbox_is_503_never_202_and_recovers() {
    use sqlx::{
        ConnectOptions,
        sqlite::{SqliteConnectOptions, SqliteJournalMode},
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("outbox.db");
    let url = format!("sqlite://{}", db.display());
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.database_url = Some(url)).await;
    assert_eq!(
        app.post_json(&order_paid("o-warm")).await.status().as_u16(),
        202
    );

    // Another process's writer holds SQLite's write lock for longer than postbox's busy
    // timeout (5 s).
    let mut conn = SqliteConnectOptions::new()
        .filename(&db)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("second connection");
    sqlx::query("begin exclusive")
        .execute(&mut conn)
        .await
        .expect("begin exclusive");
    let event = event("locked-1", "/faults/locked");
    let posted = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(15), app.post_json(&event))
        .await
        .expect("postbox answers while the outbox is locked");
    let waited = posted.elapsed();
    let retry_after = header(&resp, "retry-after");
    let p = assert_problem(resp, 503, "outbox-unavailable").await;
    assert!(retry_after.is_some(), "Retry-After");
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("nothing was stored"),
        "{p}"
    );
    sqlx::query("rollback")
        .execute(&mut conn)
        .await
        .expect("rollback");

    // The 503 stored nothing: the same event is new now.
    let resp = app.post_json(&event).await;
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(header(&resp, "idempotent-replayed"), None);
    let (code, ev) = app
        .get_json("/v1/events/locked-1?source=%2Ffaults%2Flocked")
        .await;
    assert_eq!(code, 200, "{ev}");
    eprintln!(
        "[faults] locked SQLite: 503 after {:.1} s, then 202 (not a replay); {:.1} s",
        waited.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
