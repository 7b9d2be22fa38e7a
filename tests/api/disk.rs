//! The filesystem under the SQLite outbox fills up mid-load: every POST that cannot commit is a
//! 503 `outbox-unavailable` with `Retry-After` (never a 202, never a crash), `/readyz` says
//! why, and once space returns postbox recovers by itself, with every 202'd event delivered
//! and the database intact.
//!
//! Two ways to run out of space, both with the real binary: a 12 MB tmpfs the test mounts
//! (needs root; skipped with a message where mounting is not allowed), and a file size limit
//! (`RLIMIT_FSIZE` through `prlimit`), which works anywhere and is raised again with
//! `prlimit --pid`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::helpers::{
    AMQP_URL, Event, Exchange, Load, ProcApp, ProcEnv, Tally, TestQueue,
    accepted_or_outbox_unavailable, bench_schemas_dir, metric_value, sqlite_inspect,
};

const SOURCE: &str = "/disk";

fn env_for(db: &Path, exchange: &str) -> ProcEnv {
    ProcEnv::new(&format!("sqlite://{}", db.display()), AMQP_URL, exchange)
        .set("POSTBOX_SCHEMAS_DIR", bench_schemas_dir().display())
}

/// ~1 KB events `{prefix}-{i}` from `tasks` tasks; every answer must be a 202 or a 503
/// `outbox-unavailable` with `Retry-After` (more than 20 others stop the load).
fn load(app: &ProcApp, prefix: &str, max: usize, tasks: usize) -> Load {
    Load::new(&app.base, prefix)
        .source(SOURCE)
        .event(|_, i| Event::bench(i))
        .events(max)
        .tasks(tasks)
        .check(accepted_or_outbox_unavailable)
        .stop_after_wrong(20)
}

/// Load until commits have failed `failures` times, at most `within`. Meanwhile `/readyz` is
/// sampled: returns the load's tally and the first "not writable" reason it reported.
async fn fill(
    app: &ProcApp,
    prefix: &str,
    failures: f64,
    within: Duration,
) -> (Tally, Option<String>) {
    let run = load(app, prefix, usize::MAX, 8).spawn();
    let stop = run.stop_token();
    let watch = {
        let stop = stop.clone();
        let (client, metrics, readyz) =
            (app.client.clone(), app.url("/metrics"), app.url("/readyz"));
        tokio::spawn(async move {
            let started = Instant::now();
            let mut unready = None;
            while !stop.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if unready.is_none()
                    && let Ok(r) = client.get(&readyz).send().await
                    && r.status().as_u16() == 503
                {
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    if body["outbox"]["writable"] == false {
                        unready = body["outbox"]["error"].as_str().map(str::to_owned);
                    }
                }
                let text = match client.get(&metrics).send().await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                let failed = metric_value(&text, "postbox_commit_failures_total").unwrap_or(0.0);
                if (failed >= failures && unready.is_some()) || started.elapsed() > within {
                    stop.cancel();
                }
            }
            unready
        })
    };
    let seen = run.finish().await;
    stop.cancel();
    let unready = watch.await.expect("watcher");
    (seen, unready)
}

/// The scenario, given how to take the space away (already done) and give it back. With
/// `stays_full`, nothing frees space by itself meanwhile (a full filesystem), so postbox must
/// still be unready after the load; under a file size limit SQLite may make room by itself
/// (a checkpoint resets the WAL), and small commits can come and go.
async fn full_then_freed(
    app: &mut ProcApp,
    db: &Path,
    queue: &mut TestQueue,
    stays_full: bool,
    free_space: impl FnOnce(&ProcApp),
) {
    let started = Instant::now();
    let (full, unready) = fill(app, "d", 50.0, Duration::from_secs(60)).await;
    assert!(
        full.wrong.is_empty(),
        "only 202 or 503 outbox-unavailable with Retry-After: {:?}\n{}",
        &full.wrong[..full.wrong.len().min(5)],
        app.log_tail(20)
    );
    let refused = full.status(503);
    assert!(
        refused > 0,
        "the disk never filled up ({} accepted)\n{}",
        full.accepted.len(),
        app.log_tail(20)
    );
    // Not ready while it cannot commit, with the reason.
    let why = unready.unwrap_or_else(|| {
        panic!(
            "/readyz never said the outbox is not writable\n{}",
            app.log_tail(20)
        )
    });
    if stays_full {
        let (code, ready) = app.get_json("/readyz").await;
        assert_eq!(code, 503, "{ready}");
        assert_eq!(ready["outbox"]["writable"], false, "{ready}");
    }

    free_space(app);
    // Ready again by itself (its own probe commits), without a client retrying.
    let (code, ready) = app.readyz_until(200, Duration::from_secs(10)).await;
    assert_eq!(
        code,
        200,
        "not ready after space came back: {ready}\n{}",
        app.log_tail(20)
    );
    let after = load(app, "a", 50, 4).run().await;
    assert!(after.wrong.is_empty(), "{:?}", after.wrong);
    assert_eq!(after.accepted.len(), 50, "every POST is accepted again");

    // Every 202 is delivered (duplicates are allowed: at-least-once).
    let mut expected = full.accepted.clone();
    expected.extend(after.accepted.iter().cloned());
    let got = queue
        .collect(&expected, Duration::from_secs(120), Duration::ZERO)
        .await;
    let missing: Vec<&String> = got.missing.iter().take(5).collect();
    assert!(
        missing.is_empty(),
        "{} of {} accepted events were not delivered, e.g. {missing:?}\n{}",
        got.missing.len(),
        expected.len(),
        app.log_tail(20)
    );

    // A clean stop, then the database is intact and holds every accepted event.
    app.term();
    assert!(app.wait_exit(Duration::from_secs(30)).await.is_some());
    let (check, stored) = sqlite_inspect(db).await;
    assert_eq!(check, "ok", "PRAGMA integrity_check");
    let missing = expected.iter().filter(|id| !stored.contains(*id)).count();
    assert_eq!(missing, 0, "accepted events missing from the outbox");
    eprintln!(
        "[disk] {} accepted and {} refused (503) while filling; `{why}`; then {} accepted; \
         all {} delivered; integrity ok; {:.1} s",
        full.accepted.len(),
        refused,
        after.accepted.len(),
        expected.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A tmpfs mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn disk_full_tmpfs_is_503_never_202_and_heals_by_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mnt) = Tmpfs::mount(&dir.path().join("mnt"), "12m") else {
        eprintln!(
            "SKIPPED disk_full_tmpfs: cannot mount a tmpfs here (needs root); \
             disk_full_file_size_limit exercises the same path"
        );
        return;
    };
    let db = mnt.0.join("outbox.db");
    let exchange = Exchange::new("disk");
    let mut queue = TestQueue::bind(&exchange, "events.#").await;
    let mut app = ProcApp::spawn(&env_for(&db, &exchange), &dir.path().join("postbox.log")).await;
    // Leave ~3 MB for postbox, taken by a file the test can delete to give the space back.
    let filler = mnt.0.join("filler");
    let status = Command::new("fallocate")
        .args(["-l", "8M"])
        .arg(&filler)
        .status()
        .expect("fallocate");
    assert!(status.success());
    full_then_freed(&mut app, &db, &mut queue, true, |_| {
        std::fs::remove_file(&filler).expect("remove the filler");
    })
    .await;
}

#[tokio::test]
async fn disk_full_file_size_limit_is_503_never_202_and_heals_by_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("outbox.db");
    let exchange = Exchange::new("fsize");
    let mut queue = TestQueue::bind(&exchange, "events.#").await;
    // No file of the process may grow past 3 MB (the WAL reaches it first).
    let mut app = ProcApp::spawn_via(
        &["prlimit", "--fsize=3145728:unlimited", "--"],
        &env_for(&db, &exchange),
        &dir.path().join("postbox.log"),
    )
    .await;
    full_then_freed(&mut app, &db, &mut queue, false, |app| {
        let status = Command::new("prlimit")
            .args(["--fsize=unlimited:unlimited", "--pid"])
            .arg(app.pid().to_string())
            .status()
            .expect("prlimit --pid");
        assert!(status.success(), "raising the file size limit");
    })
    .await;
}
