//! postbox under test: in-process ([`TestApp`], `postbox::start` on port 0) or the real binary
//! as a child process ([`ProcApp`], for kill -9, SIGTERM, resource limits and exact `/metrics`:
//! in-process apps share one global metrics recorder). Both deref to [`Http`], the calls a test
//! makes.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use postbox::{
    config::{Config, Settings},
    outbox::Store,
};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{AMQP_URL, Event, Exchange, PgDatabase, free_port, header, sqlite_url};

/// Which outbox an in-process app gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the app's temp dir.
    Sqlite,
    /// A fresh PostgreSQL database, dropped with the app.
    Postgres,
}

/// The repository's example schemas.
pub fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

/// The benchmark's schemas (`bench.event`).
pub fn bench_schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/schemas")
}

/// Settings most tests want: fast retries and polling, the repo's schemas, a SQLite outbox in
/// `dir` (for [`Backend::Postgres`] the URL is filled in later) and a fresh exchange name.
pub fn test_settings(backend: Backend, dir: &Path) -> Settings {
    let database_url = match backend {
        Backend::Sqlite => sqlite_url(dir),
        Backend::Postgres => String::new(),
    };
    Settings {
        database_url: Some(database_url),
        amqp_url: Some(AMQP_URL.to_owned()),
        schemas_dir: Some(schemas_dir()),
        exchange: Some(super::unique("test-events")),
        retry_base_ms: Some(50),
        retry_max_ms: Some(200),
        poll_ms: Some(50),
        max_attempts: Some(3),
        confirm_timeout_secs: Some(5),
        shutdown_grace_secs: Some(10),
        ..Settings::default()
    }
}

/// The HTTP side of a running postbox: what tests call on both kinds of app.
pub struct Http {
    /// `http://127.0.0.1:{port}`.
    pub base: String,
    pub client: reqwest::Client,
    /// The process's log, for failure messages (real binary only).
    log: Option<PathBuf>,
}

impl Http {
    fn new(base: String, log: Option<PathBuf>) -> Http {
        Http {
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client"),
            log,
        }
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST `body` to /v1/events with a content type.
    pub async fn post(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.post_with(content_type, &[], body).await
    }

    /// POST a JSON value (an envelope, a batch, or anything else) as `application/json`.
    pub async fn post_json(&self, body: &Value) -> reqwest::Response {
        self.post("application/json", body.to_string()).await
    }

    /// POST one event's native envelope.
    pub async fn post_event(&self, event: &Event) -> reqwest::Response {
        self.post("application/json", event.body()).await
    }

    /// POST to /v1/events with extra headers (`content_type` may be empty: no Content-Type).
    pub async fn post_with(
        &self,
        content_type: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut req = self.client.post(self.url("/v1/events")).body(body);
        if !content_type.is_empty() {
            req = req.header("content-type", content_type);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        match req.send().await {
            Ok(r) => r,
            Err(e) => panic!("POST /v1/events: {e}\n{}", self.log_tail(20)),
        }
    }

    /// POST a JSON body, assert 202 and return `(body, Location)`.
    pub async fn post_accepted(&self, body: &Value) -> (Value, String) {
        let resp = self.post_json(body).await;
        let status = resp.status().as_u16();
        let location = header(&resp, "location").unwrap_or_default();
        let json: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 202, "POST {body} answered {status}: {json}");
        (json, location)
    }

    /// POST one event, assert 202 and return its Location.
    pub async fn accept(&self, event: &Event) -> String {
        self.post_accepted(&event.json()).await.1
    }

    /// GET `path`: status and JSON body (Null if it is not JSON).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        match self.client.get(self.url(path)).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => panic!("GET {path}: {e}\n{}", self.log_tail(20)),
        }
    }

    /// Poll GET `location` until the event's `status` (or panic after `timeout`).
    pub async fn wait_status(&self, location: &str, status: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (code, body) = self.get_json(location).await;
            if code == 200 && body["status"] == status {
                return body;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "event at {location} did not become {status} within {timeout:?}; last: {code} {body}\n{}",
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/metrics` text. A failed request is tried twice more: a keep-alive connection the
    /// server closed (after a SIGSTOP/SIGCONT, say) fails once.
    pub async fn metrics(&self) -> String {
        let mut tries = 0;
        let r = loop {
            match self.client.get(self.url("/metrics")).send().await {
                Ok(r) => break r,
                Err(_) if tries < 2 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("GET /metrics: {e}\n{}", self.log_tail(20)),
            }
        };
        assert_eq!(r.status().as_u16(), 200);
        r.text().await.expect("metrics body")
    }

    /// One series of `/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        super::metric_value(&self.metrics().await, series).unwrap_or(0.0)
    }

    /// Wait until `/readyz` (which must stay 200) reports the broker in `state`.
    pub async fn wait_broker(&self, state: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (code, ready) = self.get_json("/readyz").await;
            assert_eq!(code, 200, "{ready}");
            if ready["broker"]["state"] == state {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "broker not {state} within {within:?}: {ready}\n{}",
                self.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `/readyz` answers `status`, at most `within`; returns the last answer.
    pub async fn readyz_until(&self, status: u16, within: Duration) -> (u16, Value) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let r = self.get_json("/readyz").await;
            if r.0 == status || tokio::time::Instant::now() > deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `n` lines of the process's output (empty for an in-process app).
    pub fn log_tail(&self, n: usize) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!(
            "--- postbox log ({}) ---\n{}",
            log.display(),
            lines[from..].join("\n")
        )
    }

    /// The whole log (real binary only).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }
}

/// A running in-process postbox with its own exchange (so tests never see each other's
/// messages). Its exchange, and its PostgreSQL database if it made one, are removed when it is
/// dropped.
pub struct TestApp {
    http: Http,
    /// The exchange it publishes to.
    pub exchange: String,
    /// The outbox's URL.
    pub database_url: String,
    pub store: Store,
    token: CancellationToken,
    done: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    // Dropped in this order, after `Drop::drop` has cancelled the app.
    _exchange: Exchange,
    _database: Option<PgDatabase>,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestApp {
    type Target = Http;
    fn deref(&self) -> &Http {
        &self.http
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, |_| {}).await
    }

    /// [`test_settings`] for `backend`, edited by `edit`, then started.
    pub async fn spawn_with(backend: Backend, edit: impl FnOnce(&mut Settings)) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = test_settings(backend, dir.path());
        let database = match backend {
            Backend::Postgres => {
                let db = PgDatabase::create().await;
                settings.database_url = Some(db.url());
                Some(db)
            }
            Backend::Sqlite => None,
        };
        edit(&mut settings);
        Self::start(settings, dir, database).await
    }

    /// Start postbox with exactly these settings; the temp dir and the database live as long
    /// as the app, the exchange named in `settings` is deleted after it.
    pub async fn start(
        settings: Settings,
        dir: tempfile::TempDir,
        database: Option<PgDatabase>,
    ) -> TestApp {
        Self::try_start(settings, dir, database)
            .await
            .expect("postbox starts")
    }

    /// [`TestApp::start`], returning why postbox did not start (for tests of start-up
    /// failures).
    pub async fn try_start(
        settings: Settings,
        dir: tempfile::TempDir,
        database: Option<PgDatabase>,
    ) -> anyhow::Result<TestApp> {
        let exchange = settings.exchange.clone().unwrap_or_else(|| "events".into());
        assert!(
            exchange.starts_with("test-"),
            "tests use exchanges of their own: {exchange}"
        );
        // Owned from here: removed even if start-up fails half way.
        let exchange_guard = Exchange::adopt(&exchange);
        let database_url = settings.database_url.clone().unwrap_or_default();
        let config = Config::from_settings(settings)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let token = CancellationToken::new();
        let running = postbox::start(config, listener, token.clone()).await?;
        Ok(TestApp {
            http: Http::new(format!("http://{}", running.addr), None),
            _exchange: exchange_guard,
            exchange,
            database_url,
            store: running.store,
            token,
            done: Some(running.done),
            _database: database,
            _dir: dir,
        })
    }

    /// Graceful shutdown; returns what `done` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.token.cancel();
        match self.done.take() {
            Some(d) => d.await.expect("join"),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// `POSTBOX_*` variables for running the real binary.
#[derive(Clone, Debug)]
pub struct ProcEnv(Vec<(String, String)>);

impl ProcEnv {
    /// This outbox, broker and exchange, the repo's schemas, and the fast retries of
    /// [`test_settings`].
    pub fn new(database_url: &str, amqp_url: &str, exchange: &str) -> ProcEnv {
        let vars = [
            ("POSTBOX_DATABASE_URL", database_url.to_owned()),
            ("POSTBOX_AMQP_URL", amqp_url.to_owned()),
            ("POSTBOX_EXCHANGE", exchange.to_owned()),
            ("POSTBOX_SCHEMAS_DIR", schemas_dir().display().to_string()),
            ("POSTBOX_RETRY_BASE_MS", "50".to_owned()),
            ("POSTBOX_RETRY_MAX_MS", "200".to_owned()),
            ("POSTBOX_POLL_MS", "50".to_owned()),
            ("POSTBOX_CONFIRM_TIMEOUT_SECS", "5".to_owned()),
            ("POSTBOX_SHUTDOWN_GRACE_SECS", "10".to_owned()),
        ];
        ProcEnv(vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// The variables, for a `Command`.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Set (or replace) a variable.
    pub fn set(mut self, key: &str, value: impl ToString) -> ProcEnv {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_owned(), value.to_string()));
        self
    }
}

/// The real `postbox` binary as a child process. Output goes to a log file, printed by
/// [`Http::log_tail`]. Killed on drop.
pub struct ProcApp {
    http: Http,
    child: std::process::Child,
}

impl std::ops::Deref for ProcApp {
    type Target = Http;
    fn deref(&self) -> &Http {
        &self.http
    }
}

impl ProcApp {
    /// Start the binary with `env` (plus `POSTBOX_LISTEN` on a free port; inherited
    /// `POSTBOX_*` variables are removed) and wait until `/healthz` answers. Output is appended
    /// to `log`.
    pub async fn spawn(env: &ProcEnv, log: &Path) -> ProcApp {
        Self::spawn_via(&[], env, log).await
    }

    /// [`ProcApp::spawn`], run through a wrapper command that execs it (e.g. `prlimit
    /// --fsize=…`), so the process is still postbox itself.
    pub async fn spawn_via(wrapper: &[&str], env: &ProcEnv, log: &Path) -> ProcApp {
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = free_port();
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("log file");
            let err = out.try_clone().expect("log file");
            let bin = env!("CARGO_BIN_EXE_postbox");
            let mut cmd = match wrapper.split_first() {
                None => std::process::Command::new(bin),
                Some((program, args)) => {
                    let mut c = std::process::Command::new(program);
                    c.args(args).arg(bin);
                    c
                }
            };
            for (k, _) in std::env::vars() {
                if k.starts_with("POSTBOX_") {
                    cmd.env_remove(k);
                }
            }
            cmd.envs(env.0.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("POSTBOX_LISTEN", format!("127.0.0.1:{port}"))
                .env("POSTBOX_LOG_FORMAT", "pretty")
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err);
            let child = cmd.spawn().expect("spawn the postbox binary");
            let mut app = ProcApp {
                http: Http::new(format!("http://127.0.0.1:{port}"), Some(log.to_owned())),
                child,
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = app.child.try_wait() {
                    last_err = format!("postbox exited at start-up: {status}");
                    break;
                }
                if let Ok(r) = app
                    .client
                    .get(app.url("/healthz"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    && r.status().as_u16() == 200
                {
                    return app;
                }
                if tokio::time::Instant::now() > deadline {
                    panic!(
                        "postbox did not answer /healthz within 30 s\n{}",
                        app.log_tail(40)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Most likely the port was taken in between: try another one.
            eprintln!("{last_err}\n{}", app.log_tail(20));
        }
        panic!(
            "{last_err}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (graceful shutdown).
    pub fn term(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Wait for the process to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ProcApp {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
