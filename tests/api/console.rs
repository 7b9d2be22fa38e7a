//! What the operator console stands on, through the public API: `GET /v1/stats` (sampled
//! figures), the search filters of `GET /v1/events`, filtered redelivery with a dry run,
//! `POST /v1/schemas/{type}/{version}/validate`, and the console's own files (CSP, caching).
//! Stats and search run on both outbox backends.

use std::time::Duration;

use postbox::{
    auth::{KeySpec, hash_key},
    config::KeySpecs,
};
use serde_json::{Value, json};

use crate::helpers::*;

/// Fast sampling, and one attempt: an event nobody routes is dead at once.
fn console_settings(s: &mut postbox::config::Settings) {
    s.stats_interval_ms = Some(1000);
    s.max_attempts = Some(1);
}

async fn post_json(app: &TestApp, path: &str, body: Option<&Value>) -> reqwest::Response {
    let mut req = app.client.post(app.url(path));
    if let Some(b) = body {
        req = req.json(b);
    }
    req.send().await.expect("request")
}

/// `GET /v1/stats` until `ok` holds (or panic after `within`).
async fn stats_until(app: &TestApp, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (code, s) = app.get_json("/v1/stats").await;
        assert_eq!(code, 200, "{s}");
        if ok(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stats never showed it within {within:?}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stats_sample_throughput_lag_and_backlog(backend: Backend) {
    let app = TestApp::spawn_with(backend, console_settings).await;
    let mut q = TestQueue::bind(&app.exchange, "events.order.paid.#").await;
    let (code, first) = app.get_json("/v1/stats").await;
    assert_eq!(code, 200, "{first}");
    let name = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(first["outbox"]["backend"], name);
    assert_eq!(first["window_seconds"], 900);
    assert_eq!(first["interval_seconds"], 1.0);
    assert_eq!(first["broker"]["name"], "RabbitMQ");
    assert_eq!(first["relay"]["partitions"], 64);
    if backend == Backend::Sqlite {
        assert_eq!(first["relay"]["instances"], 1);
    }

    for i in 0..20 {
        app.accept(&Event::order_paid(&format!("o-{i}")).id(&format!("st-{i}")))
            .await;
    }
    // No queue for user.signed_up: returned, and with one attempt, dead.
    let dead = app
        .accept(&Event::user_signed_up("u-1").id("st-dead"))
        .await;
    q.take(20, Duration::from_secs(10)).await;
    app.wait_status(&dead, "dead", Duration::from_secs(10))
        .await;

    // Counters are the process's (in-process apps share one recorder): at least ours.
    let s = stats_until(&app, Duration::from_secs(10), |s| {
        let series = s["series"].as_array().cloned().unwrap_or_default();
        s["totals"]["accepted"].as_u64().unwrap_or(0) >= 21
            && s["latest"]["dead"] == 1
            && s["latest"]["pending"] == 0
            && series
                .iter()
                .any(|p| p["accepted_per_second"].as_f64() > Some(0.0))
            && series
                .iter()
                .any(|p| p["published_per_second"].as_f64() > Some(0.0))
            && series
                .iter()
                .any(|p| p["failed_per_second"].as_f64() > Some(0.0))
            && series.iter().any(|p| p["relay_lag_seconds"].is_number())
    })
    .await;
    assert!(s["totals"]["published"].as_u64() >= Some(20), "{s}");
    assert!(s["totals"]["publish_failures"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["outbox"]["dead"], 1, "{s}");
    assert_eq!(s["outbox"]["pending"], 0, "{s}");
    assert_eq!(s["outbox"]["oldest_pending_age_seconds"], 0.0, "{s}");
    assert!(s["sampled_at"].is_string(), "{s}");
    let series = s["series"].as_array().expect("series");
    assert_eq!(s["latest"], *series.last().expect("a point"));
    let times: Vec<&str> = series.iter().filter_map(|p| p["at"].as_str()).collect();
    assert_eq!(times.len(), series.len());
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {times:?}"
    );
    let lag = series
        .iter()
        .filter_map(|p| p["relay_lag_seconds"].as_f64())
        .fold(0.0, f64::max);
    assert!(lag < 10.0, "commit to confirm lag on a local broker: {lag}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_sample_throughput_lag_and_backlog_sqlite() {
    stats_sample_throughput_lag_and_backlog(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_sample_throughput_lag_and_backlog_postgres() {
    stats_sample_throughput_lag_and_backlog(Backend::Postgres).await;
}

/// Ids on a page of `GET /v1/events`, and its cursor.
async fn page(app: &TestApp, query: &str) -> (Vec<String>, Option<String>) {
    let (code, body) = app.get_json(&format!("/v1/events?{query}")).await;
    assert_eq!(code, 200, "{query}: {body}");
    let ids = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    (ids, body["next_cursor"].as_str().map(str::to_owned))
}

async fn search_filters_select_what_they_say(backend: Backend) {
    let app = TestApp::spawn_with(backend, console_settings).await;
    let mut q = TestQueue::bind(&app.exchange, "events.order.paid.#").await;
    app.accept(&Event::order_paid("1").id("s-1").source("/shop").key("k-1"))
        .await;
    app.accept(&Event::order_paid("2").id("s-2").source("/shop").key("k-1"))
        .await;
    let dead = app
        .accept(
            &Event::user_signed_up("u")
                .id("s-u")
                .source("/accounts")
                .key("k-2"),
        )
        .await;
    app.wait_status(&dead, "dead", Duration::from_secs(10))
        .await;
    q.take(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let last = app
        .accept(&Event::order_paid("3").id("s-3").source("/other"))
        .await;
    q.take(1, Duration::from_secs(10)).await;
    app.wait_status(&last, "published", Duration::from_secs(10))
        .await;
    let at = between
        .format(&time::format_description::well_known::Rfc3339)
        .expect("rfc3339");
    let at = url::form_urlencoded::byte_serialize(at.as_bytes()).collect::<String>();

    // The default is still the dead ones, oldest first (backward compatible).
    assert_eq!(page(&app, "").await.0, ["s-u"]);
    assert_eq!(
        page(&app, "status=any&type=order.paid").await.0,
        ["s-1", "s-2", "s-3"]
    );
    assert_eq!(
        page(&app, "status=published&source=%2Fshop&key=k-1")
            .await
            .0,
        ["s-1", "s-2"]
    );
    assert_eq!(page(&app, "status=any&key=k-2").await.0, ["s-u"]);
    assert_eq!(page(&app, "status=any&id=s-2").await.0, ["s-2"]);
    assert_eq!(page(&app, "status=pending").await.0, Vec::<String>::new());
    assert_eq!(
        page(&app, &format!("status=any&since={at}")).await.0,
        ["s-3"]
    );
    assert_eq!(
        page(&app, &format!("status=any&until={at}&order=desc"))
            .await
            .0,
        ["s-u", "s-2", "s-1"]
    );
    // Newest first, two at a time.
    let (ids, cursor) = page(&app, "status=any&order=desc&limit=2").await;
    assert_eq!(ids, ["s-3", "s-u"]);
    let cursor = cursor.expect("a next page");
    let (ids, cursor) = page(
        &app,
        &format!("status=any&order=desc&limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(ids, ["s-2", "s-1"]);
    let (ids, cursor) = match cursor {
        Some(c) => page(&app, &format!("status=any&order=desc&limit=2&cursor={c}")).await,
        None => (Vec::new(), None),
    };
    assert!(ids.is_empty() && cursor.is_none(), "{ids:?}");

    // The event record carries what the console's event page shows.
    let (_, e) = app.get_json("/v1/events/s-u?source=%2Faccounts").await;
    assert_eq!(e["status"], "dead", "{e}");
    assert_eq!(e["attempts"], 1, "{e}");
    assert!(e["last_error"].is_string(), "{e}");
    assert!(
        e.get("trace_id").is_some() && e.get("traceparent").is_some(),
        "{e}"
    );

    // Every bad parameter is a 400 naming it; limit is 1-500 as the document says.
    for (query, pointer) in [
        ("limit=0", "query:limit"),
        ("limit=501", "query:limit"),
        ("status=lost", "query:status"),
        ("order=up", "query:order"),
        ("since=yesterday", "query:since"),
        ("until=2026-13-01T00:00:00Z", "query:until"),
        ("cursor=-1", "query:cursor"),
        ("type=", "query:type"),
    ] {
        let resp = app
            .client
            .get(app.url(&format!("/v1/events?{query}")))
            .send()
            .await
            .expect("request");
        let p = assert_problem(resp, 400, "invalid-request").await;
        assert_eq!(pointers(&p), [pointer], "{query}: {p}");
    }

    // Filtered redelivery: a dry run counts, changes nothing.
    let dry = json!({"type": "user.signed_up", "source": "/accounts", "dry_run": true});
    let resp = post_json(&app, "/v1/events/redeliver", Some(&dry)).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.json::<Value>().await.expect("json"),
        json!({"redelivered": 0, "matched": 1})
    );
    assert_eq!(page(&app, "").await.0, ["s-u"], "a dry run changes nothing");
    let none = json!({"type": "user.signed_up", "source": "/elsewhere"});
    let resp = post_json(&app, "/v1/events/redeliver", Some(&none)).await;
    assert_eq!(
        resp.json::<Value>().await.expect("json"),
        json!({"redelivered": 0, "matched": 0})
    );
    // An array is not a filter (serde alone would read it as the fields in order).
    let resp = post_json(
        &app,
        "/v1/events/redeliver",
        Some(&json!([null, null, null, null])),
    )
    .await;
    assert_problem(resp, 400, "invalid-request").await;
    let resp = post_json(
        &app,
        "/v1/events/redeliver",
        Some(&json!({"colour": "red"})),
    )
    .await;
    assert_problem(resp, 400, "invalid-request").await;
    // Fix the cause, redeliver what the filter selects, see it go out.
    let mut users = TestQueue::bind(&app.exchange, "events.user.signed_up.#").await;
    let go = json!({"type": "user.signed_up", "key": "k-2", "until": "2999-01-01T00:00:00Z"});
    let resp = post_json(&app, "/v1/events/redeliver", Some(&go)).await;
    assert_eq!(
        resp.json::<Value>().await.expect("json"),
        json!({"redelivered": 1, "matched": 1})
    );
    assert_eq!(users.take_ids(1, Duration::from_secs(10)).await, ["s-u"]);
    app.wait_status(&dead, "published", Duration::from_secs(10))
        .await;
    // No body at all, or JSON null: every dead event (none now), as the document says.
    let resp = post_json(&app, "/v1/events/redeliver", None).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.json::<Value>().await.expect("json"),
        json!({"redelivered": 0, "matched": 0})
    );
    let resp = post_json(&app, "/v1/events/redeliver", Some(&Value::Null)).await;
    assert_eq!(resp.status().as_u16(), 200);
    // Filters are 1-256 characters, as documented.
    for body in [json!({"type": ""}), json!({"key": "k".repeat(257)})] {
        let p = assert_problem(
            post_json(&app, "/v1/events/redeliver", Some(&body)).await,
            400,
            "invalid-request",
        )
        .await;
        assert_eq!(pointers(&p).len(), 1, "{p}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn search_filters_select_what_they_say_sqlite() {
    search_filters_select_what_they_say(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn search_filters_select_what_they_say_postgres() {
    search_filters_select_what_they_say(Backend::Postgres).await;
}

#[tokio::test]
async fn the_trace_id_of_the_request_is_on_the_event() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = app
        .post_with(
            "application/json",
            &[("traceparent", tp)],
            Event::order_paid("t").id("traced").body(),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    let (_, e) = app.get_json("/v1/events/traced").await;
    assert_eq!(e["traceparent"], tp, "{e}");
    assert_eq!(e["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{e}");
}

#[tokio::test]
async fn validation_answers_as_an_event_post_would() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let url = "/v1/schemas/order.paid/v1/validate";
    let good = json!({"data": {"order_id": "o-1", "amount": 2, "currency": "EUR"}});
    let resp = post_json(&app, url, Some(&good)).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.json::<Value>().await.expect("json"),
        json!({"valid": true, "type": "order.paid", "version": "v1"})
    );
    // A whole event may be pasted.
    let event = Event::order_paid("o-2").id("v-1").source("/shop").json();
    assert_eq!(
        post_json(&app, url, Some(&event)).await.status().as_u16(),
        200
    );

    // The same bad event: the same 422, word for word, from both.
    let bad = Event::order_paid("o-3")
        .amount(-5)
        .data_without("currency")
        .json();
    let checked = assert_problem(
        post_json(&app, url, Some(&bad)).await,
        422,
        "schema-violation",
    )
    .await;
    let posted = assert_problem(app.post_json(&bad).await, 422, "schema-violation").await;
    assert_eq!(checked, posted);
    let ptrs = pointers(&checked);
    assert!(ptrs.contains(&"/data/amount".to_owned()), "{checked}");
    assert!(ptrs.contains(&"/data".to_owned()), "{checked}");
    assert!(
        app.get_json("/v1/events/v-1").await.0 == 404,
        "validation stores nothing"
    );

    // What is not an event of this schema.
    let p = assert_problem(
        post_json(&app, "/v1/schemas/order.paid/v9/validate", Some(&good)).await,
        404,
        "not-found",
    )
    .await;
    assert!(
        p["detail"].as_str().unwrap_or_default().contains("v1, v2"),
        "{p}"
    );
    let wrong = json!({"type": "user.signed_up", "data": {}});
    let p = assert_problem(
        post_json(&app, url, Some(&wrong)).await,
        400,
        "invalid-request",
    )
    .await;
    assert_eq!(pointers(&p), ["/type"]);
    let p = assert_problem(
        post_json(&app, url, Some(&json!({"order_id": "o-1"}))).await,
        400,
        "invalid-request",
    )
    .await;
    assert_eq!(pointers(&p), ["/data"]);
    let resp = app
        .client
        .post(app.url(url))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_problem(resp, 415, "unsupported-media-type").await;
}

const OPS: &str = "pbk_test_console_ops_0123456789";
const SHOP: &str = "pbk_test_console_shop_0123456789";

#[tokio::test]
async fn the_console_is_served_from_the_binary_with_a_strict_csp() {
    let mut ops = KeySpec {
        name: "ops".into(),
        hash: hash_key(OPS),
        types: vec![],
        sources: vec![],
        admin: true,
        rate_per_sec: None,
        burst: None,
    };
    let shop = KeySpec {
        name: "shop".into(),
        hash: hash_key(SHOP),
        types: vec!["order.*".into()],
        admin: false,
        ..ops.clone()
    };
    ops.types = vec!["*".into()];
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.api_keys = Some(KeySpecs(vec![ops, shop]));
    })
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    let resp = client.get(app.url("/console")).send().await.expect("get");
    assert_eq!(resp.status().as_u16(), 308);
    assert_eq!(header(&resp, "location").as_deref(), Some("console/"));

    let resp = client.get(app.url("/console/")).send().await.expect("get");
    assert_eq!(resp.status().as_u16(), 200, "the page needs no key");
    let csp = header(&resp, "content-security-policy").expect("a CSP");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(
        header(&resp, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert!(
        header(&resp, "content-type")
            .unwrap_or_default()
            .starts_with("text/html")
    );
    let html = resp.text().await.expect("html");
    assert!(
        html.contains("<script type=\"module\" src=\"app.js\">"),
        "{html}"
    );

    let resp = client
        .get(app.url("/console/pages/overview.js"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        header(&resp, "content-type")
            .unwrap_or_default()
            .starts_with("text/javascript")
    );
    assert!(header(&resp, "content-security-policy").is_some());
    let etag = header(&resp, "etag").expect("an ETag");
    let resp = client
        .get(app.url("/console/pages/overview.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 304);
    let resp = client
        .get(app.url("/console/../Cargo.toml"))
        .send()
        .await
        .expect("get");
    assert_ne!(resp.status().as_u16(), 200);
    let resp = client
        .get(app.url("/console/nope.js"))
        .send()
        .await
        .expect("get");
    assert_problem(resp, 404, "not-found").await;

    // With keys configured the console's figures and schema pages stay public (as /metrics and
    // /v1/schemas are); listing events takes an admin key; a shop key reads only its types.
    assert_eq!(app.get_json("/v1/stats").await.0, 200);
    let good = json!({"data": {"order_id": "o-1", "amount": 2, "currency": "EUR"}});
    let resp = post_json(&app, "/v1/schemas/order.paid/v1/validate", Some(&good)).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_problem(
        client
            .get(app.url("/v1/events?status=any"))
            .send()
            .await
            .expect("get"),
        401,
        "unauthorized",
    )
    .await;
    let resp = client
        .get(app.url("/v1/events?status=any"))
        .bearer_auth(SHOP)
        .send()
        .await
        .expect("get");
    assert_problem(resp, 403, "forbidden").await;
    let resp = client
        .get(app.url("/v1/events?status=any"))
        .bearer_auth(OPS)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 200);
}
