//! API keys (401/403, admin scope, key name on the event), per-key rate limits (429), the
//! loopback-only default, secrets kept out of output, and TLS to PostgreSQL.

use std::time::Duration;

use postbox::{
    auth::{KeySpec, hash_key},
    config::{Config, KeySpecs, Settings},
};
use serde_json::{Value, json};

use crate::helpers::*;

const CHECKOUT: &str = "pbk_test_checkout_0123456789";
const OPS: &str = "pbk_test_ops_0123456789";
const USERS: &str = "pbk_test_users_0123456789";

fn key(name: &str, secret: &str, types: &[&str]) -> KeySpec {
    KeySpec {
        name: name.into(),
        hash: hash_key(secret),
        types: types.iter().map(|t| (*t).to_owned()).collect(),
        sources: vec![],
        admin: false,
        rate_per_sec: None,
        burst: None,
    }
}

fn keys() -> KeySpecs {
    let mut checkout = key("checkout", CHECKOUT, &["order.*"]);
    checkout.sources = vec!["/shop/*".into()];
    let mut ops = key("ops", OPS, &[]);
    ops.admin = true;
    KeySpecs(vec![checkout, ops, key("users", USERS, &["user.*"])])
}

fn order(id: &str, source: &str) -> Value {
    Event::order_paid(id).amount(1).id(id).source(source).json()
}

async fn send(app: &TestApp, secret: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = app.client.post(app.url("/v1/events")).json(body);
    if let Some(s) = secret {
        req = req.bearer_auth(s);
    }
    req.send().await.expect("request")
}

async fn get(app: &TestApp, secret: &str, path: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(secret)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn api_keys_decide_who_may_send_what() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.api_keys = Some(keys())).await;
    let mut queue = TestQueue::bind(&app.exchange, "#").await;

    // No key, a wrong key, a wrong scheme: 401 with a Bearer challenge; nothing stored.
    let resp = send(&app, None, &order("a-1", "/shop/checkout")).await;
    assert_eq!(
        header(&resp, "www-authenticate").as_deref(),
        Some("Bearer realm=\"postbox\"")
    );
    assert_problem(resp, 401, "unauthorized").await;
    let resp = send(&app, Some("pbk_not_a_key"), &order("a-1", "/shop/checkout")).await;
    assert_eq!(
        header(&resp, "www-authenticate").as_deref(),
        Some("Bearer realm=\"postbox\", error=\"invalid_token\"")
    );
    assert_problem(resp, 401, "unauthorized").await;
    let resp = app
        .client
        .post(app.url("/v1/events"))
        .basic_auth("checkout", Some(CHECKOUT))
        .json(&order("a-1", "/shop/checkout"))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 401, "unauthorized").await;

    // A type the key may not send, and a source it may not use: 403 naming the field.
    let user = Event::user_signed_up("u-1").source("/shop/checkout").json();
    let p = assert_problem(send(&app, Some(CHECKOUT), &user).await, 403, "forbidden").await;
    assert_eq!(p["errors"][0]["pointer"], "/type");
    let p = assert_problem(
        send(&app, Some(CHECKOUT), &order("a-2", "/billing")).await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(p["errors"][0]["pointer"], "/source");
    // One forbidden event in a batch refuses the whole batch.
    let batch = json!([order("a-3", "/shop/checkout"), user]);
    let p = assert_problem(send(&app, Some(CHECKOUT), &batch).await, 403, "forbidden").await;
    assert_eq!(p["errors"].as_array().unwrap().len(), 1);
    assert_eq!(p["errors"][0]["pointer"], "/1/type");
    let resp = get(&app, OPS, "/v1/events/a-3?source=%2Fshop%2Fcheckout").await;
    assert_eq!(resp.status(), 404, "nothing of a refused batch is stored");

    // The allowed event: 202, the key's name recorded, published.
    let resp = send(&app, Some(CHECKOUT), &order("a-4", "/shop/checkout")).await;
    assert_eq!(resp.status(), 202);
    let location = header(&resp, "location").unwrap();
    let resp = get(&app, CHECKOUT, &location).await;
    assert_eq!(resp.status(), 200);
    let record: Value = resp.json().await.unwrap();
    assert_eq!(record["api_key"], "checkout");
    let got = queue.take(1, Duration::from_secs(10)).await;
    assert_eq!(message_id(&got[0]), "a-4");

    // Reading: admins read everything, a key the types it may send, others see 404.
    assert_eq!(get(&app, OPS, &location).await.status(), 200);
    assert_problem(get(&app, USERS, &location).await, 404, "not-found").await;

    // Operator endpoints need the admin scope.
    let p = assert_problem(
        get(&app, CHECKOUT, "/v1/events?status=dead").await,
        403,
        "forbidden",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("admin"));
    let resp = app
        .client
        .post(app.url("/v1/events/redeliver"))
        .bearer_auth(CHECKOUT)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 403, "forbidden").await;
    // So do the schema registry's changes; reading schemas needs no scope.
    let schema = json!({"type": "object", "properties": {"id": {"type": "string"}}});
    for (secret, want) in [(None, 401), (Some(CHECKOUT), 403), (Some(OPS), 201)] {
        let mut req = app
            .client
            .put(app.url("/v1/schemas/auth.checked/v1"))
            .json(&schema);
        if let Some(s) = secret {
            req = req.bearer_auth(s);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "PUT schema with {secret:?}");
    }
    assert_eq!(
        get(&app, CHECKOUT, "/v1/schemas/auth.checked")
            .await
            .status(),
        200
    );
    // The message can reach the queue a moment before its settlement commits: poll.
    let mut listed = 0;
    for _ in 0..50 {
        let resp = get(&app, OPS, "/v1/events?status=published").await;
        assert_eq!(resp.status(), 200);
        let page: Value = resp.json().await.unwrap();
        listed = page["events"].as_array().unwrap().len();
        if listed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed, 1);
    let resp = app
        .client
        .post(app.url("/v1/events/redeliver"))
        .bearer_auth(OPS)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Health, schemas and documentation stay public.
    for path in [
        "/healthz",
        "/readyz",
        "/v1/schemas",
        "/openapi.json",
        "/metrics",
    ] {
        let status = app.client.get(app.url(path)).send().await.unwrap().status();
        assert_eq!(status, 200, "{path}");
    }
    // Only the one allowed event ever reached the queue.
    assert!(queue.drain(Duration::from_millis(500)).await.is_empty());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn each_key_has_its_own_rate_limit() {
    let mut limited = key("limited", CHECKOUT, &["order.*"]);
    limited.rate_per_sec = Some(2.0);
    limited.burst = Some(3.0);
    let other = key("other", USERS, &["order.*"]);
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.api_keys = Some(KeySpecs(vec![limited, other]))
    })
    .await;
    for i in 0..3 {
        let resp = send(&app, Some(CHECKOUT), &order(&format!("r-{i}"), "/s")).await;
        assert_eq!(resp.status(), 202, "within the burst");
    }
    let resp = send(&app, Some(CHECKOUT), &order("r-x", "/s")).await;
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_problem(resp, 429, "rate-limited").await;
    assert_eq!(
        get(&app, CHECKOUT, "/v1/events/r-x?source=%2Fs")
            .await
            .status(),
        404,
        "a 429 stores nothing"
    );
    // Another key is not slowed down by it.
    let resp = send(&app, Some(USERS), &order("o-1", "/s")).await;
    assert_eq!(resp.status(), 202);
    // After Retry-After the key may send again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let resp = send(&app, Some(CHECKOUT), &order("r-x", "/s")).await;
    assert_eq!(resp.status(), 202);
    app.stop().await.unwrap();
}

#[test]
fn no_keys_means_loopback_only_unless_insecure() {
    let on_all = |keys: Option<KeySpecs>, insecure: Option<bool>| {
        Config::from_settings(Settings {
            listen: Some("0.0.0.0:8080".parse().unwrap()),
            api_keys: keys,
            insecure_no_auth: insecure,
            ..Settings::default()
        })
    };
    let err = on_all(None, None).unwrap_err().to_string();
    assert!(err.contains("--insecure-no-auth"), "{err}");
    assert!(on_all(None, Some(true)).is_ok());
    assert!(on_all(Some(keys()), None).is_ok());
    let local = Config::from_settings(Settings {
        listen: Some("[::1]:8080".parse().unwrap()),
        ..Settings::default()
    });
    assert!(local.is_ok());
}

#[test]
fn the_binary_refuses_a_public_address_without_keys() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postbox"))
        .env_clear()
        .env("POSTBOX_LISTEN", "0.0.0.0:0")
        .output()
        .expect("run postbox");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no API keys configured"), "{stderr}");
}

#[tokio::test]
async fn secrets_stay_out_of_help_logs_errors_and_readiness() {
    const PG_SECRET: &str = "pg-pa55word-xyzzy";
    const AMQP_SECRET: &str = "amqp-pa55word-plugh";
    let key_secret = postbox::auth::generate_key();
    let db = PgDatabase::create().await;
    // Trust authentication ignores the password, so postbox runs with it in its URL.
    let db_url = db
        .url()
        .replace("postgres@", &format!("postgres:{PG_SECRET}@"));
    // A wrong RabbitMQ password: the relay fails to log in and says so.
    let amqp_url = format!("amqp://guest:{AMQP_SECRET}@127.0.0.1:5672/%2f");
    let keys = format!(
        r#"[{{"name":"svc","hash":"{}","types":["*"]}}]"#,
        hash_key(&key_secret)
    );
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_postbox"))
        .arg("--help")
        .env("POSTBOX_DATABASE_URL", &db_url)
        .env("POSTBOX_AMQP_URL", &amqp_url)
        .env("POSTBOX_API_KEYS", &keys)
        .output()
        .expect("run postbox --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("POSTBOX_API_KEYS"), "help lists the variable");

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("postbox.log");
    let exchange = Exchange::new("events");
    let env = ProcEnv::new(&db_url, &amqp_url, &exchange).set("POSTBOX_API_KEYS", &keys);
    let app = ProcApp::spawn(&env, &log).await;
    let resp = app
        .client
        .post(app.url("/v1/events"))
        .bearer_auth(&key_secret)
        .json(&order("s-1", "/s"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "stored although the broker refuses us");
    let resp = app
        .client
        .post(app.url("/v1/events"))
        .bearer_auth("pbk_wrong-secret-in-a-header")
        .json(&order("s-2", "/s"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let unauthorized = resp.text().await.unwrap();
    // Wait until the relay has tried (and failed) to log in to RabbitMQ.
    let mut readyz = String::new();
    for _ in 0..100 {
        readyz = app
            .client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if readyz.contains("\"error\":\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(readyz.contains("\"error\":\""), "{readyz}");
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    drop(app);
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("postgres://postgres:***@"), "{logs}");
    for (what, text) in [
        ("--help", help.as_ref()),
        ("logs", logs.as_str()),
        ("/readyz", readyz.as_str()),
        ("401 body", unauthorized.as_str()),
        ("/metrics", metrics.as_str()),
    ] {
        for secret in [
            PG_SECRET,
            AMQP_SECRET,
            key_secret.as_str(),
            "pbk_wrong-secret-in-a-header",
        ] {
            assert!(!text.contains(secret), "{what} shows a secret:\n{text}");
        }
    }
}

#[tokio::test]
async fn postgres_over_tls_with_sslmode() {
    // The machine's PostgreSQL has ssl = on (Debian's snakeoil certificate).
    let db = PgDatabase::create().await;
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.database_url = Some(format!("{}?sslmode=require", db.url()))
    })
    .await;
    let mut queue = TestQueue::bind(&app.exchange, "#").await;
    let location = app.accept(&Event::order_paid("tls-1")).await;
    app.wait_status(&location, "published", Duration::from_secs(10))
        .await;
    assert_eq!(queue.take(1, Duration::from_secs(10)).await.len(), 1);
    // Every connection postbox holds to that database is encrypted.
    let (total, encrypted) = pg_ssl_sessions(db.name()).await;
    assert!(total > 0);
    assert_eq!(total, encrypted);
    app.stop().await.unwrap();

    // verify-full checks the certificate against the web PKI roots: the self-signed one fails,
    // with an error rather than a panic or a plain-text fallback.
    let s = Settings {
        database_url: Some(format!("{}?sslmode=verify-full", db.url())),
        ..test_settings(Backend::Sqlite, std::path::Path::new("/nonexistent"))
    };
    let started = tokio::time::timeout(
        Duration::from_secs(30),
        TestApp::try_start(s, tempfile::tempdir().unwrap(), None),
    )
    .await
    .expect("fails fast");
    let err = started.err().expect("an untrusted certificate is refused");
    let msg = format!("{err:#}").to_lowercase();
    assert!(
        msg.contains("certificate") || msg.contains("tls"),
        "the error says what failed: {msg}"
    );
}

#[tokio::test]
async fn amqps_means_tls_and_a_failed_handshake_only_delays_delivery() {
    for url in [
        "amqps://user:pw@rabbit.example.com:5671/%2f",
        "amqps://rabbit.example.com/vhost?heartbeat=30",
    ] {
        let c = Config::from_settings(Settings {
            amqp_url: Some(url.into()),
            ..Settings::default()
        })
        .unwrap();
        let postbox::config::SinkConfig::Amqp(amqp) = &c.sink else {
            panic!("expected the AMQP sink")
        };
        assert_eq!(amqp.nodes.len(), 1);
        assert_eq!(amqp.nodes[0].url.expose(), url);
    }
    // 5672 speaks plain AMQP: a TLS client must fail its handshake there, not fall back to
    // cleartext. Events are still accepted and wait in the outbox.
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.amqp_url = Some("amqps://guest:guest@127.0.0.1:5672/%2f".into())
    })
    .await;
    let location = app.accept(&Event::order_paid("tls-amqp-1")).await;
    let mut broker = Value::Null;
    for _ in 0..100 {
        let (_, ready) = app.get_json("/readyz").await;
        broker = ready["broker"].clone();
        if broker["error"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(broker["state"], "unreachable", "{broker}");
    let (_, event) = app.get_json(&location).await;
    assert_eq!(event["status"], "pending");
    assert_eq!(event["attempts"], 0, "nothing was sent in cleartext");
    app.stop().await.unwrap();
}
