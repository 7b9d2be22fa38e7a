//! Test helpers: spawn postbox on port 0 against a fresh SQLite file or a fresh PostgreSQL
//! database, bind real RabbitMQ queues, and check problem documents.
#![allow(dead_code)]

use std::{path::PathBuf, time::Duration};

use futures_util::StreamExt;
use lapin::{
    Connection, ConnectionProperties, ExchangeKind,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};
use postbox::{
    config::{Config, Settings},
    outbox::Store,
};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running postbox with its own exchange (so tests never see each other's messages).
pub struct TestApp {
    pub base: String,
    pub exchange: String,
    pub store: Store,
    pub client: reqwest::Client,
    token: CancellationToken,
    done: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Settings most tests want: fast retries and polling, unique exchange.
pub fn test_settings(backend: Backend, dir: &std::path::Path) -> Settings {
    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.join("outbox.db").display()),
        Backend::Postgres => String::new(), // filled by spawn_with
    };
    Settings {
        database_url: Some(database_url),
        amqp_url: Some(AMQP_URL.to_owned()),
        schemas_dir: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas")),
        exchange: Some(unique("test-events")),
        retry_base_ms: Some(50),
        retry_max_ms: Some(200),
        poll_ms: Some(50),
        max_attempts: Some(3),
        confirm_timeout_secs: Some(5),
        shutdown_grace_secs: Some(10),
        ..Settings::default()
    }
}

/// A fresh, empty PostgreSQL database; returns its URL.
pub async fn fresh_pg_database() -> String {
    use sqlx::Executor;
    let name = unique("postbox_test").replace('-', "_");
    let admin = sqlx::PgPool::connect(PG_ADMIN_URL)
        .await
        .expect("PostgreSQL must be running on 127.0.0.1:5432 (scripts/test.sh starts it)");
    admin
        .execute(format!("create database {name}").as_str())
        .await
        .expect("create database");
    admin.close().await;
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, edit: impl FnOnce(&mut Settings)) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = test_settings(backend, dir.path());
        if backend == Backend::Postgres {
            settings.database_url = Some(fresh_pg_database().await);
        }
        edit(&mut settings);
        Self::start(settings, dir).await
    }

    /// Start postbox with exactly these settings (the temp dir lives as long as the app).
    pub async fn start(settings: Settings, dir: tempfile::TempDir) -> TestApp {
        let exchange = settings.exchange.clone().unwrap_or_else(|| "events".into());
        let config = Config::from_settings(settings).expect("valid test config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let token = CancellationToken::new();
        let running = postbox::start(config, listener, token.clone())
            .await
            .expect("postbox starts");
        TestApp {
            base: format!("http://{}", running.addr),
            exchange,
            store: running.store,
            client: reqwest::Client::new(),
            token,
            done: Some(running.done),
            _dir: dir,
        }
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
        self.client
            .post(self.url("/v1/events"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn post_json(&self, body: &Value) -> reqwest::Response {
        self.post("application/json", body.to_string()).await
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
        req.send().await.expect("request")
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

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Poll GET /v1/events/{id} until `status` (or panic after `timeout`).
    pub async fn wait_status(&self, location: &str, status: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (code, body) = self.get_json(location).await;
            if code == 200 && body["status"] == status {
                return body;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "event at {location} did not become {status} within {timeout:?}; last: {code} {body}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

/// A real queue bound to an exchange, consumed with lapin.
pub struct TestQueue {
    pub name: String,
    _conn: Connection,
    consumer: lapin::Consumer,
}

impl TestQueue {
    /// Declare the (durable topic) exchange too, so binding works before postbox declares it.
    pub async fn bind(exchange: &str, binding: &str) -> TestQueue {
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ must be running on 127.0.0.1:5672 (scripts/test.sh starts it)");
        let ch = conn.create_channel().await.expect("channel");
        ch.exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange_declare");
        let name = unique("test-q");
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
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
        let consumer = ch
            .basic_consume(
                name.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("basic_consume");
        TestQueue {
            name,
            _conn: conn,
            consumer,
        }
    }

    /// Bind this (exclusive) queue to one more routing pattern, on its own connection.
    pub async fn also_bind(&self, exchange: &str, binding: &str) {
        let ch = self._conn.create_channel().await.expect("channel");
        ch.queue_bind(
            self.name.as_str().into(),
            exchange.into(),
            binding.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue_bind");
    }

    /// Next message (acked), or None after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Delivery> {
        match tokio::time::timeout(timeout, self.consumer.next()).await {
            Ok(Some(Ok(d))) => {
                d.ack(BasicAckOptions::default()).await.expect("ack");
                Some(d)
            }
            _ => None,
        }
    }

    /// Every message arriving within `quiet` of the previous one.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Delivery> {
        let mut out = Vec::new();
        while let Some(d) = self.next(quiet).await {
            out.push(d);
        }
        out
    }
}

impl TestQueue {
    /// Exactly `n` messages, each within `timeout` of the previous one (panics otherwise).
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next(timeout).await {
                Some(d) => out.push(d),
                None => panic!(
                    "expected {n} messages on {}, got {} (none for {timeout:?})",
                    self.name,
                    out.len()
                ),
            }
        }
        out
    }
}

/// The `message_id` property of an AMQP message.
pub fn message_id(d: &Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default()
}

/// The body of an AMQP message as JSON.
#[track_caller]
pub fn body_json(d: &Delivery) -> Value {
    serde_json::from_slice(&d.data).expect("message body is JSON")
}

/// A response header as a string.
pub fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Run one statement on the `postgres` admin database.
pub async fn pg_admin(sql: String) {
    let admin = sqlx::PgPool::connect(PG_ADMIN_URL)
        .await
        .expect("PostgreSQL must be running on 127.0.0.1:5432");
    sqlx::query(sql.clone().as_str())
        .execute(&admin)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    admin.close().await;
}

/// Header value of an AMQP message as a string.
pub fn header_str(d: &Delivery, name: &str) -> Option<String> {
    let headers = d.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => {
            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        lapin::types::AMQPValue::ShortString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Assert a problem+json response and return its body.
#[track_caller]
pub fn assert_problem_parts(
    status: u16,
    content_type: &str,
    body: &Value,
    want_status: u16,
    kind: &str,
) {
    assert_eq!(status, want_status, "status; body: {body}");
    assert!(
        content_type.starts_with("application/problem+json"),
        "content-type {content_type}; body: {body}"
    );
    assert_eq!(
        body["type"],
        format!("/problems/{kind}"),
        "problem type; body: {body}"
    );
    assert_eq!(body["status"], want_status, "problem status; body: {body}");
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
}

/// Read a response and assert it is the problem `kind` with `status`.
pub async fn assert_problem(resp: reqwest::Response, status: u16, kind: &str) -> Value {
    let code = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_problem_parts(code, &ct, &body, status, kind);
    body
}

/// A TCP proxy in front of RabbitMQ that can be switched on and off, to play "broker down"
/// without stopping the shared broker. Connections are refused while it is off.
pub struct BrokerProxy {
    pub port: u16,
    stop: CancellationToken,
}

impl BrokerProxy {
    /// A proxy port that is not listening yet.
    pub async fn reserve() -> BrokerProxy {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        BrokerProxy {
            port,
            stop: CancellationToken::new(),
        }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Start forwarding to 127.0.0.1:5672.
    pub async fn start(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("proxy bind");
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { return };
                        let stop = stop.clone();
                        tokio::spawn(async move {
                            let Ok(mut outbound) = TcpStream::connect("127.0.0.1:5672").await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                () = stop.cancelled() => {}
                            }
                        });
                    }
                }
            }
        });
    }

    /// Stop listening and cut every proxied connection.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for BrokerProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn order_paid(order_id: &str) -> Value {
    serde_json::json!({
        "type": "order.paid",
        "version": "v1",
        "data": {"order_id": order_id, "amount": 25.5, "currency": "EUR"}
    })
}

/// A TCP proxy in front of RabbitMQ that can be cut (listener and every proxied connection
/// dropped) and started again on the same port, as often as a test likes: a broker outage in
/// the middle of a run, without touching the shared broker.
pub struct SwitchableProxy {
    pub port: u16,
    running: std::sync::Mutex<Option<ProxyRun>>,
}

struct ProxyRun {
    stop: CancellationToken,
    accept: tokio::task::JoinHandle<()>,
    conns: tokio_util::task::TaskTracker,
}

impl SwitchableProxy {
    /// A proxy port that is not listening yet.
    pub fn reserve() -> SwitchableProxy {
        SwitchableProxy {
            port: free_port(),
            running: std::sync::Mutex::new(None),
        }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Listen on the port again and forward every connection to 127.0.0.1:5672.
    pub async fn start(&self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("[proxy] bind {}: {e}; retrying", self.port);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("proxy bind 127.0.0.1:{}: {e}", self.port),
            }
        };
        let stop = CancellationToken::new();
        let conns = tokio_util::task::TaskTracker::new();
        let accept = tokio::spawn({
            let stop = stop.clone();
            let conns = conns.clone();
            async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        accepted = listener.accept() => {
                            let Ok((mut inbound, _)) = accepted else { return };
                            let stop = stop.clone();
                            conns.spawn(async move {
                                let Ok(mut outbound) = TcpStream::connect("127.0.0.1:5672").await else { return };
                                tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                    () = stop.cancelled() => {}
                                }
                            });
                        }
                    }
                }
            }
        });
        let old = self.running.lock().expect("proxy state").replace(ProxyRun {
            stop,
            accept,
            conns,
        });
        assert!(
            old.is_none(),
            "SwitchableProxy::start while already running"
        );
    }

    /// Stop listening and drop every proxied connection; returns once they are all closed.
    pub async fn cut(&self) {
        let run = self.running.lock().expect("proxy state").take();
        if let Some(run) = run {
            run.stop.cancel();
            let _ = run.accept.await;
            run.conns.close();
            run.conns.wait().await;
        }
    }
}

impl Drop for SwitchableProxy {
    fn drop(&mut self) {
        if let Ok(mut g) = self.running.lock()
            && let Some(run) = g.take()
        {
            run.stop.cancel();
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `POSTBOX_*` variables for running the real binary: this outbox, broker and exchange, the
/// repo's schemas, and the fast retries of [`test_settings`].
pub fn proc_env(database_url: &str, amqp_url: &str, exchange: &str) -> Vec<(String, String)> {
    let schemas = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas");
    [
        ("POSTBOX_DATABASE_URL", database_url.to_owned()),
        ("POSTBOX_AMQP_URL", amqp_url.to_owned()),
        ("POSTBOX_EXCHANGE", exchange.to_owned()),
        ("POSTBOX_SCHEMAS_DIR", schemas.display().to_string()),
        ("POSTBOX_RETRY_BASE_MS", "50".to_owned()),
        ("POSTBOX_RETRY_MAX_MS", "200".to_owned()),
        ("POSTBOX_POLL_MS", "50".to_owned()),
        ("POSTBOX_CONFIRM_TIMEOUT_SECS", "5".to_owned()),
        ("POSTBOX_SHUTDOWN_GRACE_SECS", "10".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The real `postbox` binary as a child process (for SIGKILL / SIGTERM tests, and for exact
/// `/metrics` figures: in-process apps share one global metrics recorder). Output goes to a log
/// file, printed by [`ProcApp::log_tail`]. Killed on drop.
pub struct ProcApp {
    pub base: String,
    pub client: reqwest::Client,
    child: std::process::Child,
    log: PathBuf,
}

impl ProcApp {
    /// Start the binary with `vars` (plus `POSTBOX_LISTEN` on a free port; inherited
    /// `POSTBOX_*` variables are removed) and wait until `/healthz` answers. Output is appended
    /// to `log`.
    pub async fn spawn(vars: &[(String, String)], log: &std::path::Path) -> ProcApp {
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = free_port();
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("log file");
            let err = out.try_clone().expect("log file");
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_postbox"));
            for (k, _) in std::env::vars() {
                if k.starts_with("POSTBOX_") {
                    cmd.env_remove(k);
                }
            }
            cmd.envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("POSTBOX_LISTEN", format!("127.0.0.1:{port}"))
                .env("POSTBOX_LOG_FORMAT", "pretty")
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err);
            let child = cmd.spawn().expect("spawn the postbox binary");
            let mut app = ProcApp {
                base: format!("http://127.0.0.1:{port}"),
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .expect("client"),
                child,
                log: log.to_owned(),
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

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
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

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        match self.client.get(self.url(path)).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => panic!("GET {path}: {e}\n{}", self.log_tail(20)),
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(r.status().as_u16(), 200);
        r.text().await.expect("metrics body")
    }

    /// The last `n` lines of the process's output.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!(
            "--- postbox log ({}) ---\n{}",
            self.log.display(),
            lines[from..].join("\n")
        )
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

/// The value of one series in Prometheus text: `series` is the metric name with its labels
/// exactly as rendered, e.g. `postbox_publish_failures_total{reason="nacked"}`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Pointers of a problem's `errors`, in order.
pub fn pointers(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["pointer"].as_str().unwrap_or("<none>").to_owned())
                .collect()
        })
        .unwrap_or_default()
}
