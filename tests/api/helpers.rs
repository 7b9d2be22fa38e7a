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
