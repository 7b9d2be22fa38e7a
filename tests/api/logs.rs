//! What an operator sees of rejected requests, on the real binary: one `request rejected` log
//! line per request saying why (status, problem type, detail) without the payload, and the
//! same reason counted in `postbox_http_rejected_total`.

use std::time::Duration;

use crate::helpers::{AMQP_URL, Event, Exchange, ProcApp, ProcEnv, metric_value, sqlite_url};

/// In every body below, never in what postbox may quote back.
const MARKER: &str = "PAYLOAD-MARKER-7f3a";

#[tokio::test]
async fn every_rejected_request_is_logged_once_without_its_payload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("postbox.log");
    let exchange = Exchange::new("events");
    let env = ProcEnv::new(&sqlite_url(dir.path()), AMQP_URL, &exchange);
    let app = ProcApp::spawn(&env, &log).await;

    let post = |ct: &'static str, body: String| {
        let req = app
            .client
            .post(app.url("/v1/events"))
            .header("content-type", ct)
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(body);
        async move { req.send().await.expect("request").status().as_u16() }
    };
    let cases = [
        (
            post("application/json", format!("{{\"type\": \"{MARKER}")).await,
            400,
            "invalid-request",
        ),
        (
            post("text/plain", MARKER.to_owned()).await,
            415,
            "unsupported-media-type",
        ),
        (
            // `currency` is missing; the violation names the field, not the values.
            post(
                "application/json",
                Event::order_paid(MARKER)
                    .amount(1)
                    .data_without("currency")
                    .body(),
            )
            .await,
            422,
            "schema-violation",
        ),
    ];
    for (got, want, reason) in cases {
        assert_eq!(got, want, "{reason}");
    }
    let put = app
        .client
        .put(app.url("/v1/events"))
        .body(MARKER)
        .send()
        .await
        .expect("request");
    assert_eq!(put.status().as_u16(), 405);

    let metrics = app.metrics().await;
    for reason in [
        "invalid-request",
        "unsupported-media-type",
        "schema-violation",
        "method-not-allowed",
    ] {
        let series = format!("postbox_http_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_value(&metrics, &series), Some(1.0), "{series}");
    }

    // The log is written as the requests are answered; give the writer a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request rejected"))
        .collect();
    assert_eq!(lines.len(), 4, "one line per rejected request:\n{text}");
    for (line, (status, reason)) in lines.iter().zip([
        (400, "invalid-request"),
        (415, "unsupported-media-type"),
        (422, "schema-violation"),
        (405, "method-not-allowed"),
    ]) {
        assert!(line.contains(&format!("status={status}")), "{line}");
        assert!(line.contains(&format!("reason=\"{reason}\"")), "{line}");
    }
    assert!(
        !text.contains(MARKER),
        "the payload reached the log:\n{text}"
    );
    assert!(
        !text.contains("b7ad6b7169203331"),
        "a header value reached the log:\n{text}"
    );
}
