//! Several postbox processes on one PostgreSQL outbox and one RabbitMQ: they split the
//! partitions evenly, each publishes its share, and when one is killed (`kill -9`) in the middle
//! of a keyed load the others take its partitions over within seconds. Every id answered 202
//! arrives, each key's events arrive in the order their 202s were received, and duplicates are
//! counted (at most one per key: a key has one event in flight at a time).

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use crate::helpers::{
    AMQP_URL, Answer, Event, Exchange, Load, PgDatabase, ProcApp, ProcEnv, Proxy, TestQueue,
    message_id, metric_value, pg_terminate, unique,
};

const INSTANCES: usize = 3;
const KEYS: usize = 30;
const PER_KEY: usize = 80;
/// Answers before the kill.
const KILL_AFTER: usize = 900;
/// The instance that is killed.
const VICTIM: usize = 1;

/// Partitions owned by each app (`None` for a dead one).
async fn owned(apps: &[ProcApp], alive: &[bool]) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for (app, alive) in apps.iter().zip(alive) {
        out.push(if *alive {
            Some(app.metric("postbox_partitions_owned").await)
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

/// POST one event to `app`, assert 202, return its id.
async fn post_ok(app: &ProcApp, event: Event) -> String {
    let r = app.post_event(&event).await;
    assert_eq!(r.status().as_u16(), 202);
    event.json()["id"].as_str().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_partitions_and_take_over_a_killed_one() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = PgDatabase::create().await;
    let exchange = Exchange::new("instances");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let env = ProcEnv::new(&db.url(), AMQP_URL, &exchange);
    let mut apps = Vec::new();
    for i in 0..INSTANCES {
        apps.push(ProcApp::spawn(&env, &dir.path().join(format!("postbox-{i}.log"))).await);
    }
    let mut alive = vec![true; INSTANCES];
    let balanced_in = until_balanced(&apps, &alive, Duration::from_secs(15)).await;
    for app in &apps {
        assert_eq!(app.metric("postbox_instances").await, 3.0);
    }

    let prefix = unique("inst");
    let load = Load::across(apps.iter().map(|a| a.base.clone()).collect(), &prefix)
        .source("/test/instances")
        .keyed(KEYS, PER_KEY)
        .failover()
        .spawn();
    load.until_answered(KILL_AFTER, Duration::from_secs(60), &apps[0])
        .await;
    // Every instance has published its share of the events before the kill.
    let mut published_before = Vec::new();
    for app in &apps {
        published_before.push(app.metric("postbox_published_total").await);
    }
    apps[VICTIM].kill9();
    let killed_at = Instant::now();
    alive[VICTIM] = false;
    let takeover = until_balanced(&apps, &alive, Duration::from_secs(10)).await;

    let t = load.finish().await;
    let load_done_after = killed_at.elapsed();
    let accepted = &t.accepted;
    let accepted_n = t
        .shots
        .iter()
        .filter(|s| s.answer == Answer::Accepted)
        .count();
    let conn_errors = t.conn_errors;
    assert!(
        t.statuses.is_empty(),
        "only 202s and connection errors: {:?}",
        t.statuses
    );
    assert_eq!(accepted.len(), accepted_n, "an id was answered twice");
    assert_eq!(accepted_n + conn_errors, KEYS * PER_KEY);
    assert!(
        conn_errors > 0,
        "the kill came too late: every request was answered"
    );

    let c = q
        .collect(
            accepted,
            (killed_at + Duration::from_secs(30)).saturating_duration_since(Instant::now()),
            Duration::from_secs(1),
        )
        .await;
    c.assert_all_from(&prefix);
    let (count, missing) = (&c.count, c.missing.len());
    let delivered_all_after = c.all_at.map(|t| t.duration_since(killed_at));
    let distinct = c.distinct();
    let messages = c.messages();
    let duplicates = c.duplicates();
    let without_202 = c.not_in(accepted);
    let mut published_after = Vec::new();
    for (app, alive) in apps.iter().zip(&alive) {
        published_after.push(if *alive {
            Some(app.metric("postbox_published_total").await)
        } else {
            None
        });
    }
    let mut takeover_rows = Vec::new();
    for (app, alive) in apps.iter().zip(&alive) {
        if *alive {
            takeover_rows.push(app.metric("postbox_partition_takeover_rows_total").await);
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
    t.assert_key_order(&c);
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
    let db = PgDatabase::create().await;
    let exchange = Exchange::new("owner-lost");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let app = ProcApp::spawn(
        &ProcEnv::new(&db.url(), AMQP_URL, &exchange),
        &dir.path().join("postbox.log"),
    )
    .await;
    let alive = [true];
    until_balanced(std::slice::from_ref(&app), &alive, Duration::from_secs(10)).await;

    let terminated = pg_terminate(db.name(), Some("postbox-partition-owner")).await;
    assert_eq!(
        terminated,
        vec![true],
        "one ownership connection per instance"
    );
    let cut_at = Instant::now();
    let post = |i: usize| {
        let id = format!("lost-{i:03}");
        let event = Event::order_paid(&id)
            .id(&id)
            .source("/test/lost")
            .key(&format!("k{}", i % 7));
        post_ok(&app, event)
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
    let db = PgDatabase::create().await;
    let exchange = Exchange::new("handover");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let env = ProcEnv::new(&db.url(), AMQP_URL, &exchange);
    let log = |i: usize| dir.path().join(format!("postbox-{i}.log"));
    let mut apps = vec![
        ProcApp::spawn(&env, &log(0)).await,
        ProcApp::spawn(&env, &log(1)).await,
    ];
    until_balanced(&apps, &[true, true], Duration::from_secs(15)).await;

    // The load goes to the first two; the third only publishes.
    let prefix = unique("hand");
    let load = Load::across(apps.iter().map(|a| a.base.clone()).collect(), &prefix)
        .source("/test/instances")
        .keyed(KEYS, 999)
        .pace(Duration::from_millis(10))
        .failover()
        .spawn();
    tokio::time::sleep(Duration::from_millis(700)).await;
    apps.push(ProcApp::spawn(&env, &log(2)).await);
    let joined = until_balanced(&apps, &[true, true, true], Duration::from_secs(15)).await;
    let at_join = load.answered();
    tokio::time::sleep(Duration::from_millis(700)).await;

    // Instance 0 leaves: no new requests to it, then SIGTERM.
    load.mark_dead(0);
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
    load.stop();
    let t = load.finish().await;
    let accepted = &t.accepted;
    let accepted_n = t
        .shots
        .iter()
        .filter(|s| s.answer == Answer::Accepted)
        .count();
    let conn_errors = t.conn_errors;
    assert!(
        t.statuses.is_empty() && conn_errors == 0,
        "every POST answered 202: {:?}, {conn_errors} connection errors",
        t.statuses
    );
    assert_eq!(accepted.len(), accepted_n);

    let c = q
        .collect(accepted, Duration::from_secs(20), Duration::from_secs(1))
        .await;
    c.assert_all_from(&prefix);
    let messages = c.messages();
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
        c.missing.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(c.missing.len(), 0, "every 202 arrived");
    assert_eq!(c.count.len(), accepted_n, "nothing that was not accepted");
    assert_eq!(messages, accepted_n, "nothing published twice");
    t.assert_key_order(&c);
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
    let db = PgDatabase::create().await;
    let exchange = Exchange::new("wake");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let env = ProcEnv::new(&db.url(), AMQP_URL, &exchange).set("POSTBOX_POLL_MS", 10000);
    let apps = vec![
        ProcApp::spawn(&env, &dir.path().join("postbox-0.log")).await,
        ProcApp::spawn(&env, &dir.path().join("postbox-1.log")).await,
    ];
    until_balanced(&apps, &[true, true], Duration::from_secs(15)).await;
    // Let both relays go back to sleep on their 10 s poll.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let prefix = unique("wake");
    let posted = Instant::now();
    let mut ids = HashSet::new();
    for i in 0..40 {
        let id = format!("{prefix}-{i:02}");
        ids.insert(
            post_ok(
                &apps[0],
                Event::order_paid(&id).id(&id).source("/test/wake"),
            )
            .await,
        );
    }
    let got: HashSet<String> = q
        .take(40, Duration::from_secs(3))
        .await
        .iter()
        .map(message_id)
        .collect();
    let took = posted.elapsed();
    let by_other = apps[1].metric("postbox_published_total").await;
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
    let db = PgDatabase::create().await;
    let exchange = Exchange::new("nobroker");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let proxy = Proxy::rabbitmq().await;
    let apps = vec![
        ProcApp::spawn(
            &ProcEnv::new(&db.url(), &proxy.amqp_url(), &exchange),
            &dir.path().join("postbox-0.log"),
        )
        .await,
        ProcApp::spawn(
            &ProcEnv::new(&db.url(), AMQP_URL, &exchange),
            &dir.path().join("postbox-1.log"),
        )
        .await,
    ];
    until_balanced(&apps, &[true, true], Duration::from_secs(15)).await;

    let prefix = unique("nobroker");
    let post = |i: usize| {
        let id = format!("{prefix}-{i:02}");
        post_ok(
            &apps[0],
            Event::order_paid(&id).id(&id).source("/test/nobroker"),
        )
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
    assert_eq!(apps[1].metric("postbox_instances").await, 1.0);
    let first: HashSet<String> = q
        .take(30, Duration::from_secs(5))
        .await
        .iter()
        .map(message_id)
        .collect();
    let delivered_after = cut_at.elapsed();
    assert_eq!(first, ids);
    assert_eq!(apps[0].metric("postbox_published_total").await, 0.0);

    // RabbitMQ is back for instance 0: it takes its share again and publishes.
    proxy.listen().await;
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
    let by_first = apps[0].metric("postbox_published_total").await;
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

/// A frozen instance (SIGSTOP: alive to TCP, not running) keeps its PostgreSQL session, so
/// session locks alone kept its partitions stalled for as long as it was frozen. With leases
/// the others take its partitions within 10 s; when it runs again it notices before it
/// publishes (its leases are gone, claims are fenced by their epoch), and every 202'd id is
/// delivered, per key in order; duplicates (a publish already on its way when it froze) are
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_take_over_a_frozen_one_and_it_notices_when_it_runs_again() {
    const FROZEN: usize = 2;
    const FREEZE: Duration = Duration::from_secs(15);
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = PgDatabase::create().await;
    let exchange = Exchange::new("frozen");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let env = ProcEnv::new(&db.url(), AMQP_URL, &exchange);
    let mut apps = Vec::new();
    for i in 0..INSTANCES {
        apps.push(ProcApp::spawn(&env, &dir.path().join(format!("postbox-{i}.log"))).await);
    }
    let mut alive = vec![true; INSTANCES];
    until_balanced(&apps, &alive, Duration::from_secs(15)).await;

    let prefix = unique("frozen");
    let load = Load::across(apps.iter().map(|a| a.base.clone()).collect(), &prefix)
        .source("/test/frozen")
        .keyed(20, 60)
        .failover()
        .timeout(Duration::from_secs(2))
        .spawn();
    load.until_answered(300, Duration::from_secs(60), &apps[0])
        .await;
    let signal = |sig: &str, pid: u32| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP", apps[FROZEN].pid());
    let frozen_at = Instant::now();
    alive[FROZEN] = false;
    let takeover = until_balanced(&apps, &alive, Duration::from_secs(10)).await;
    tokio::time::sleep(FREEZE.saturating_sub(frozen_at.elapsed())).await;
    signal("-CONT", apps[FROZEN].pid());
    let resumed_at = Instant::now();
    alive[FROZEN] = true;
    let rebalanced = until_balanced(&apps, &alive, Duration::from_secs(20)).await;
    let t = load.finish().await;
    assert!(
        t.statuses.is_empty(),
        "only 202s and timeouts: {:?}",
        t.statuses
    );
    let c = q
        .collect(&t.accepted, Duration::from_secs(30), Duration::from_secs(1))
        .await;
    c.assert_all_from(&prefix);
    // It notices at its first round after SIGCONT: either the renewal finds its leases gone,
    // or a statement of its round that was waiting when it froze times out at once and the
    // round gives everything up (then it takes a fresh share).
    let lost = apps[FROZEN].metric("postbox_partitions_lost_total").await
        + apps[FROZEN]
            .metric("postbox_partition_ownership_lost_total")
            .await;
    let stale = metric_value(
        &apps[FROZEN].metrics().await,
        "postbox_stale_batches_dropped_total",
    );
    eprintln!(
        "[instances] SIGSTOP of 1 of {INSTANCES} for {} s under a keyed load: the others own all \
         partitions {:.2} s after the stop; after SIGCONT it noticed (leases or ownership lost \
         {lost}, stale batches not sent {stale:?}) and the shares were even again {:.2} s later; 202 {}, \
         timeouts/connection errors {}; delivered {} distinct in {} messages, duplicates {}, \
         without a 202 {}, missing {}; {:.1} s",
        FREEZE.as_secs(),
        takeover.as_secs_f64(),
        rebalanced.as_secs_f64(),
        t.accepted.len(),
        t.conn_errors,
        c.distinct(),
        c.messages(),
        c.duplicates(),
        c.not_in(&t.accepted),
        c.missing.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = resumed_at;
    c.assert_none_missing(&apps[0].log_tail(30));
    t.assert_key_order(&c);
    assert!(
        takeover < Duration::from_secs(10),
        "the frozen instance's partitions waited {takeover:?}"
    );
    assert!(
        lost > 0.0,
        "the resumed instance did not notice that its leases were taken"
    );
}
