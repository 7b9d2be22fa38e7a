//! Bad networks between postbox and its two dependencies (issue 10, item 4), played by the
//! harness's TCP proxy because this machine's kernel has no `netem`: latency with jitter,
//! a link that stops passing bytes one way for a while without closing, and resets. Each test
//! counts every 202'd id on a real queue, and prints one `[network]` line with its figures.
//!
//! The real binary runs each time: its `/metrics` are its own, and timeouts and reconnects are
//! those of the shipped process.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    AMQP_URL, Answer, Dir, Exchange, Http, Load, Outbox, PgDatabase, ProcApp, ProcEnv, Proxy,
    TestQueue, accepted_or_outbox_unavailable, metric_value, ms, quantile, unique,
};

/// `/readyz` sampled in the background: when each broker state and readiness began.
struct Readiness {
    samples: Arc<Mutex<Vec<(Instant, u16, String)>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Readiness {
    fn watch(app: &Http) -> Readiness {
        let samples: Arc<Mutex<Vec<(Instant, u16, String)>>> = Arc::default();
        let stop = CancellationToken::new();
        let (client, url) = (app.client.clone(), app.url("/readyz"));
        let task = tokio::spawn({
            let (samples, stop) = (samples.clone(), stop.clone());
            async move {
                while !stop.is_cancelled() {
                    let sample = match client
                        .get(&url)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await
                    {
                        Ok(r) => {
                            let code = r.status().as_u16();
                            let body: Value = r.json().await.unwrap_or(Value::Null);
                            let broker = body["broker"]["state"].as_str().unwrap_or("?");
                            (code, broker.to_owned())
                        }
                        Err(_) => (0, "no answer".to_owned()),
                    };
                    samples
                        .lock()
                        .expect("samples")
                        .push((Instant::now(), sample.0, sample.1));
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        () = stop.cancelled() => {}
                    }
                }
            }
        });
        Readiness {
            samples,
            stop,
            task,
        }
    }

    /// The first sample at or after `from` that matches.
    fn first(&self, from: Instant, f: impl Fn(u16, &str) -> bool) -> Option<Instant> {
        self.samples
            .lock()
            .expect("samples")
            .iter()
            .find(|(at, code, broker)| *at >= from && f(*code, broker))
            .map(|(at, _, _)| *at)
    }

    async fn stop(&mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

/// postbox's warnings and errors (the first `n`), to show what it did.
fn warnings(app: &Http, n: usize) -> String {
    let text = app.log_text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    let shown: Vec<&str> = lines.iter().take(n).copied().collect();
    format!(
        "[network]   postbox logged {} warnings/errors{}\n{}",
        lines.len(),
        if lines.len() > n {
            format!(", the first {n}:")
        } else {
            ":".to_owned()
        },
        shown.join("\n")
    )
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || "never".to_owned(),
        |d| format!("{:.1} s", d.as_secs_f64()),
    )
}

// ---------------------------------------------------------------------------------------------
// 1. postbox → RabbitMQ with 100 ms ± 50 ms latency each way

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_broker_latency_does_not_reach_the_202_and_keyed_order_holds() {
    const KEYS: usize = 20;
    const PER_KEY: usize = 20;
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = Exchange::new("net-latency");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let proxy = Proxy::rabbitmq().await;
    proxy.latency(
        Dir::Both,
        Duration::from_millis(100),
        Duration::from_millis(50),
    );
    let env = ProcEnv::new(
        &Outbox::sqlite(dir.path()).url,
        &proxy.amqp_url(),
        &exchange,
    );
    let app = ProcApp::spawn(&env, &dir.path().join("postbox.log")).await;
    app.wait_broker("connected", Duration::from_secs(20)).await;

    let prefix = unique("lat");
    let t = Load::new(&app.base, &prefix)
        .source("/network/latency")
        .keyed(KEYS, PER_KEY)
        .pace(Duration::from_millis(20))
        .run()
        .await;
    let posted_in = started.elapsed();
    let not_accepted = t.not_accepted(5);
    assert!(
        not_accepted.is_empty(),
        "every POST is a 202: {not_accepted:?}"
    );
    let load_done = Instant::now();
    let got = q
        .collect(&t.accepted, Duration::from_secs(40), Duration::from_secs(1))
        .await;
    got.assert_all_from(&prefix);
    let drained = got.all_at.map(|at| at.duration_since(load_done));
    let (p50, p99) = (t.p(0.5), t.p(0.99));
    let m = app.metrics().await;
    let lag_mean = metric_value(&m, "postbox_relay_lag_seconds_sum").unwrap_or(0.0)
        / metric_value(&m, "postbox_relay_lag_seconds_count").unwrap_or(1.0);
    eprintln!(
        "[network] broker latency 100±50 ms each way: {} keyed POSTs ({KEYS} keys) answered 202 \
         p50 {:.1} ms p99 {:.1} ms max {:.1} ms; delivered {} distinct in {} messages \
         (duplicates {}, missing {}) {} after the last 202, per-key order kept; mean relay lag \
         {lag_mean:.2} s; proxy {:?}; load {:.1} s, total {:.1} s",
        t.sent,
        ms(p50),
        ms(p99),
        ms(t.slowest()),
        got.distinct(),
        got.messages(),
        got.duplicates(),
        got.missing.len(),
        secs(drained),
        proxy.stats(),
        posted_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    eprintln!("{}", warnings(&app, 12));
    got.assert_none_missing(&app.log_tail(30));
    t.assert_key_order(&got);
    assert_eq!(got.not_in(&t.accepted), 0);
    // The HTTP path commits to the outbox and answers; it never waits for RabbitMQ.
    assert!(
        p99 < Duration::from_millis(100),
        "the 202's p99 ({p99:?}) follows the broker's latency"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. postbox → RabbitMQ link that passes no bytes one way for 30 s, without closing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_broker_link_stalled_one_way_keeps_accepting_and_delivers_after() {
    const STALL: Duration = Duration::from_secs(30);
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = Exchange::new("net-stall");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let proxy = Proxy::rabbitmq().await;
    let env = ProcEnv::new(
        &Outbox::sqlite(dir.path()).url,
        &proxy.amqp_url(),
        &exchange,
    )
    .set("POSTBOX_CONFIRM_TIMEOUT_SECS", 3);
    let app = ProcApp::spawn(&env, &dir.path().join("postbox.log")).await;
    app.wait_broker("connected", Duration::from_secs(10)).await;
    let mut ready = Readiness::watch(&app);

    let prefix = unique("stall");
    let load = Load::new(&app.base, &prefix)
        .source("/network/stall")
        .tasks(4)
        .pace(Duration::from_millis(20))
        .spawn();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = load.answered();
    // postbox → RabbitMQ passes nothing: publishes and heartbeats are held, confirms never come.
    proxy.stall_for(Dir::Up, STALL);
    let stalled_at = Instant::now();
    tokio::time::sleep(STALL).await;
    let resumed_at = Instant::now();
    let during = load.answered() - before;
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop();
    let t = load.finish().await;
    let during_202 = t
        .shots
        .iter()
        .filter(|s| {
            s.answer == Answer::Accepted && s.answered_at > stalled_at && s.answered_at < resumed_at
        })
        .count();
    let stall_latencies: Vec<Duration> = t
        .shots
        .iter()
        .filter(|s| s.answered_at > stalled_at && s.answered_at < resumed_at)
        .map(|s| s.took)
        .collect();

    let got = q
        .collect(&t.accepted, Duration::from_secs(40), Duration::from_secs(2))
        .await;
    let all_after = got
        .all_at
        .map(|at| at.saturating_duration_since(resumed_at));
    ready.stop().await;
    let noticed = ready
        .first(stalled_at, |_, broker| broker != "connected")
        .map(|at| at.duration_since(stalled_at));
    let reconnected = ready
        .first(resumed_at, |_, broker| broker == "connected")
        .map(|at| at.duration_since(resumed_at));
    let m = app.metrics().await;
    let timeouts = metric_value(&m, "postbox_publish_failures_total{reason=\"timeout\"}");
    let reconnects = metric_value(&m, "postbox_broker_reconnects_total");
    eprintln!(
        "[network] broker link stalled one way (postbox → RabbitMQ) for {} s: {during} POSTs \
         answered during the stall ({during_202} of them 202, p50 {:.1} ms p99 {:.1} ms), \
         all load {} sent / {} 202 / statuses {:?} / connection errors {}; postbox noticed after \
         {} (confirm timeout 3 s), broker connected again {} after the link came back, every \
         202 delivered {} after it; delivered {} distinct in {} messages, duplicates {}, \
         missing {}; publish timeouts {timeouts:?}, reconnects {reconnects:?}; proxy {:?}; {:.1} s",
        STALL.as_secs(),
        ms(quantile(&stall_latencies, 0.5)),
        ms(quantile(&stall_latencies, 0.99)),
        t.sent,
        t.accepted.len(),
        t.statuses,
        t.conn_errors,
        secs(noticed),
        secs(reconnected),
        secs(all_after),
        got.distinct(),
        got.messages(),
        got.duplicates(),
        got.missing.len(),
        proxy.stats(),
        started.elapsed().as_secs_f64()
    );
    eprintln!("{}", warnings(&app, 12));
    let not_accepted = t.not_accepted(5);
    assert!(
        not_accepted.is_empty(),
        "every POST is a 202 while the broker link is stalled: {not_accepted:?}"
    );
    assert!(
        during_202 >= 100,
        "202s kept flowing during the stall: only {during_202}\n{}",
        app.log_tail(30)
    );
    got.assert_all_from(&prefix);
    got.assert_none_missing(&app.log_tail(40));
    // The settler reports the broken link as soon as the confirms time out (3 s), not after
    // closing the old connection and timing out the new handshake (it used to take 18 s).
    assert!(
        noticed.is_some_and(|d| d <= Duration::from_secs(6)),
        "/readyz showed the broker as connected for {} into the stall (confirm timeout 3 s)",
        secs(noticed)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. postbox → PostgreSQL with 20 ms ± 10 ms latency each way

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_postgres_latency_slows_the_202_but_loses_nothing() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = PgDatabase::create().await;
    let exchange = Exchange::new("net-pglat");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let proxy = Proxy::postgres().await;
    proxy.latency(
        Dir::Both,
        Duration::from_millis(20),
        Duration::from_millis(10),
    );
    let env = ProcEnv::new(&db.url_via(proxy.port()), AMQP_URL, &exchange);
    let app = ProcApp::spawn(&env, &dir.path().join("postbox.log")).await;
    let (code, ready) = app.readyz_until(200, Duration::from_secs(20)).await;
    assert_eq!(code, 200, "{ready}");

    let prefix = unique("pglat");
    let t = Load::new(&app.base, &prefix)
        .source("/network/pglat")
        .events(300)
        .tasks(8)
        .run()
        .await;
    let load_done = Instant::now();
    let load_took = load_done.duration_since(started);
    let got = q
        .collect(&t.accepted, Duration::from_secs(40), Duration::from_secs(1))
        .await;
    let drained = got.all_at.map(|at| at.duration_since(load_done));
    eprintln!(
        "[network] PostgreSQL latency 20±10 ms each way: {} POSTs from 8 tasks, 202 {} \
         (p50 {:.1} ms p99 {:.1} ms max {:.1} ms), statuses {:?}, connection errors {}; \
         delivered {} distinct in {} messages (duplicates {}, missing {}) {} after the last \
         answer; proxy {:?}; {:.1} s",
        t.sent,
        t.accepted.len(),
        ms(t.p(0.5)),
        ms(t.p(0.99)),
        ms(t.slowest()),
        t.statuses,
        t.conn_errors,
        got.distinct(),
        got.messages(),
        got.duplicates(),
        got.missing.len(),
        secs(drained),
        proxy.stats(),
        load_took.as_secs_f64()
    );
    eprintln!("{}", warnings(&app, 12));
    let not_accepted = t.not_accepted(5);
    assert!(
        not_accepted.is_empty(),
        "every POST is answered 202, if slower: {not_accepted:?}\n{}",
        app.log_tail(30)
    );
    // A commit needs round trips to the database: the latency is visible in the 202.
    assert!(t.p(0.5) >= Duration::from_millis(20), "{:?}", t.p(0.5));
    got.assert_all_from(&prefix);
    got.assert_none_missing(&app.log_tail(30));
}

// ---------------------------------------------------------------------------------------------
// 4. postbox → PostgreSQL link that passes no bytes one way for 20 s

/// postbox's outbox commit timeout (`src/outbox/writer.rs`).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_postgres_stall_is_503_within_the_commit_timeout_and_recovers() {
    const STALL: Duration = Duration::from_secs(20);
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = PgDatabase::create().await;
    let exchange = Exchange::new("net-pgstall");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let proxy = Proxy::postgres().await;
    let env = ProcEnv::new(&db.url_via(proxy.port()), AMQP_URL, &exchange);
    let app = ProcApp::spawn(&env, &dir.path().join("postbox.log")).await;
    let (code, ready) = app.readyz_until(200, Duration::from_secs(20)).await;
    assert_eq!(code, 200, "{ready}");
    let mut readiness = Readiness::watch(&app);

    let prefix = unique("pgstall");
    let load = Load::new(&app.base, &prefix)
        .source("/network/pgstall")
        .tasks(8)
        .pace(Duration::from_millis(5))
        .timeout(Duration::from_secs(40))
        .check(accepted_or_outbox_unavailable)
        .spawn();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // postbox → PostgreSQL passes nothing: queries and commits are held, nothing is closed.
    proxy.stall_for(Dir::Up, STALL);
    let stalled_at = Instant::now();
    tokio::time::sleep(STALL).await;
    let resumed_at = Instant::now();
    // Ready again, and accepting again.
    let ready_again = loop {
        if let Some(at) = readiness.first(resumed_at, |code, _| code == 200) {
            break Some(at.duration_since(resumed_at));
        }
        if resumed_at.elapsed() > Duration::from_secs(30) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop();
    let t = load.finish().await;
    readiness.stop().await;
    let unready = readiness
        .first(stalled_at, |code, _| code != 200)
        .map(|at| at.duration_since(stalled_at));
    let in_stall =
        |s: &&crate::helpers::Shot| s.answered_at > stalled_at && s.answered_at < resumed_at;
    let refused: Vec<Duration> = t
        .shots
        .iter()
        .filter(in_stall)
        .filter(|s| s.answer == Answer::Status(503))
        .map(|s| s.took)
        .collect();
    let accepted_after = t
        .shots
        .iter()
        .filter(|s| s.answer == Answer::Accepted && s.answered_at > resumed_at)
        .count();
    let first_503 = t
        .shots
        .iter()
        .filter(|s| s.answer == Answer::Status(503))
        .map(|s| s.answered_at.saturating_duration_since(stalled_at))
        .min();

    // Never a 202 that was not committed: every 202'd id is in the outbox (read directly, not
    // through the proxy).
    let stored: std::collections::HashSet<String> = {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&db.url())
            .await
            .expect("database");
        sqlx::query_scalar::<_, String>("select event_id from outbox")
            .fetch_all(&mut c)
            .await
            .expect("ids")
            .into_iter()
            .collect()
    };
    let not_stored: Vec<&String> = t
        .accepted
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    let got = q
        .collect(&t.accepted, Duration::from_secs(30), Duration::from_secs(2))
        .await;
    eprintln!(
        "[network] PostgreSQL link stalled one way (postbox → PostgreSQL) for {} s: sent {}, \
         202 {} (p50 {:.1} ms p99 {:.1} ms), 503 {} (first {} after the stall began; \
         {} during the stall, slowest {:.2} s), other {:?}, connection errors {}, slowest answer \
         {:.2} s; /readyz unready {} after the stall began, ready again {} after it ended, \
         {accepted_after} 202s after it; 202'd ids not stored {}; delivered {} distinct in {} \
         messages (duplicates {}, delivered without a 202 {}, missing {}); proxy {:?}; {:.1} s",
        STALL.as_secs(),
        t.sent,
        t.accepted.len(),
        ms(t.p(0.5)),
        ms(t.p(0.99)),
        t.status(503),
        secs(first_503),
        refused.len(),
        quantile(&refused, 1.0).as_secs_f64(),
        t.wrong.iter().take(3).collect::<Vec<_>>(),
        t.conn_errors,
        t.slowest().as_secs_f64(),
        secs(unready),
        secs(ready_again),
        not_stored.len(),
        got.distinct(),
        got.messages(),
        got.duplicates(),
        got.not_in(&t.accepted),
        got.missing.len(),
        proxy.stats(),
        started.elapsed().as_secs_f64()
    );
    eprintln!("{}", warnings(&app, 12));
    assert!(
        t.wrong.is_empty(),
        "only 202 or 503 outbox-unavailable with Retry-After: {:?}\n{}",
        &t.wrong[..t.wrong.len().min(5)],
        app.log_tail(30)
    );
    assert!(
        not_stored.is_empty(),
        "202 for events that were not committed: {:?}",
        &not_stored[..not_stored.len().min(5)]
    );
    assert!(
        !refused.is_empty(),
        "no POST was refused during a 20 s database stall\n{}",
        app.log_tail(30)
    );
    // A 503 comes within postbox's commit timeout (10 s, README "A commit that takes longer
    // than 10 s"), give or take a second of scheduling; never anything like a hang.
    let late: Vec<String> = t
        .shots
        .iter()
        .filter(|s| s.took > COMMIT_TIMEOUT + Duration::from_millis(1500))
        .map(|s| format!("{:?} after {:.2} s", s.answer, s.took.as_secs_f64()))
        .collect();
    assert!(
        late.is_empty(),
        "{} POSTs were answered later than the commit timeout ({COMMIT_TIMEOUT:?}): {:?}\n{}",
        late.len(),
        &late[..late.len().min(5)],
        warnings(&app, 20)
    );
    assert!(
        ready_again.is_some(),
        "/readyz not ready within 30 s of the link coming back\n{}",
        app.log_tail(30)
    );
    assert!(accepted_after > 0, "no 202 after the stall");
    got.assert_all_from(&prefix);
    got.assert_none_missing(&app.log_tail(30));
}

// ---------------------------------------------------------------------------------------------
// 5. Every RabbitMQ connection reset mid-load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_broker_connections_reset_mid_load_lose_nothing() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = Exchange::new("net-reset");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let proxy = Proxy::rabbitmq().await;
    let env = ProcEnv::new(
        &Outbox::sqlite(dir.path()).url,
        &proxy.amqp_url(),
        &exchange,
    );
    let app = ProcApp::spawn(&env, &dir.path().join("postbox.log")).await;
    app.wait_broker("connected", Duration::from_secs(10)).await;

    let prefix = unique("reset");
    let load = Load::new(&app.base, &prefix)
        .source("/network/reset")
        .events(3000)
        .tasks(4)
        .pace(Duration::from_millis(5))
        .spawn();
    load.until_answered(300, Duration::from_secs(20), &app)
        .await;
    let open = proxy.stats().open;
    proxy.reset().await;
    let reset_at = Instant::now();
    let at_reset = load.answered();
    load.until_answered(at_reset + 300, Duration::from_secs(20), &app)
        .await;
    load.stop();
    let t = load.finish().await;
    let got = q
        .collect(&t.accepted, Duration::from_secs(30), Duration::from_secs(2))
        .await;
    let m = app.metrics().await;
    let reconnects = metric_value(&m, "postbox_broker_reconnects_total");
    let failures: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("postbox_publish_failures_total"))
        .collect();
    eprintln!(
        "[network] every RabbitMQ connection reset ({open} open) after {at_reset} answers: \
         202 {} of {} (p50 {:.1} ms p99 {:.1} ms), statuses {:?}; delivered {} distinct in {} \
         messages, duplicates {}, missing {}, all delivered {} after the reset; reconnects \
         {reconnects:?}, failures {failures:?}; proxy {:?}; {:.1} s",
        t.accepted.len(),
        t.sent,
        ms(t.p(0.5)),
        ms(t.p(0.99)),
        t.statuses,
        got.distinct(),
        got.messages(),
        got.duplicates(),
        got.missing.len(),
        secs(got.all_at.map(|at| at.saturating_duration_since(reset_at))),
        proxy.stats(),
        started.elapsed().as_secs_f64()
    );
    eprintln!("{}", warnings(&app, 12));
    let not_accepted = t.not_accepted(5);
    assert!(
        not_accepted.is_empty(),
        "every POST is a 202: {not_accepted:?}"
    );
    assert!(open >= 1, "postbox's connection went through the proxy");
    got.assert_all_from(&prefix);
    got.assert_none_missing(&app.log_tail(40));
    assert_eq!(got.not_in(&t.accepted), 0);
    assert!(
        reconnects.is_some_and(|n| n >= 1.0),
        "the relay reconnected: {reconnects:?}"
    );
}
