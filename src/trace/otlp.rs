//! Optional OpenTelemetry export of the relay's publish spans: batched and POSTed as OTLP/HTTP
//! with the JSON encoding (`Content-Type: application/json` to `{endpoint}/v1/traces`, OTLP
//! specification "OTLP/HTTP"; trace and span ids as hex strings, 64-bit times as decimal
//! strings). A small hand-rolled exporter instead of the `opentelemetry` crates keeps the
//! build light and free of a second TLS provider; it speaks plain `http://` (run a local
//! collector or agent for TLS). Export never holds up publishing: a full queue drops spans,
//! and a failed POST drops its batch; both are counted.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::SpanRecord;

/// Spans waiting to be exported; beyond it new spans are dropped.
const QUEUE: usize = 8192;
/// Most spans per POST.
const MAX_BATCH: usize = 512;
/// How long a batch collects spans after its first one.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// Longest wait for the collector.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// OpenTelemetry `SPAN_KIND_PRODUCER`: the span sends a message.
const KIND_PRODUCER: u8 = 4;
/// `STATUS_CODE_OK` and `STATUS_CODE_ERROR`.
const STATUS_OK: u8 = 1;
const STATUS_ERROR: u8 = 2;

/// The traces URL for an OTLP endpoint: `http://host:port` gets `/v1/traces` appended (as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` does); a URL that already ends in `/v1/traces` is used as is.
pub fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let url = url::Url::parse(endpoint)
        .with_context(|| format!("otlp_endpoint is not a URL (got `{endpoint}`)"))?;
    match url.scheme() {
        "http" => {}
        "https" => bail!(
            "otlp_endpoint: https is not supported by postbox's exporter; point it at a local \
             collector or agent over http:// (got `{endpoint}`)"
        ),
        other => bail!("otlp_endpoint must be an http:// URL (got scheme `{other}`)"),
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("otlp_endpoint needs a host (got `{endpoint}`)");
    }
    let base = url.as_str().trim_end_matches('/');
    Ok(if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    })
}

/// Where finished spans go; cheap to clone. Dropping every clone stops the exporter after it
/// has sent what it holds.
#[derive(Clone, Debug)]
pub struct SpanSink {
    tx: mpsc::Sender<SpanRecord>,
}

impl SpanSink {
    /// Queue a span for export, or drop it (counted) when the queue is full.
    pub fn record(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            metrics::counter!("postbox_trace_spans_dropped_total", "reason" => "queue_full")
                .increment(1);
        }
    }
}

/// Start the exporter on `tracker`, POSTing to `url` (from [`traces_url`]).
pub fn spawn(url: String, tracker: &TaskTracker) -> SpanSink {
    let (tx, rx) = mpsc::channel(QUEUE);
    tracker.spawn(run(url, rx));
    SpanSink { tx }
}

async fn run(url: String, mut rx: mpsc::Receiver<SpanRecord>) {
    let client = match reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the OTLP exporter; spans are not exported");
            return;
        }
    };
    tracing::info!(%url, "exporting publish spans over OTLP/HTTP (JSON)");
    let mut failing = false;
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        export(&client, &url, &batch, &mut failing).await;
    }
}

/// POST one batch; logs the first failure and the recovery, not every failed batch.
async fn export(client: &reqwest::Client, url: &str, batch: &[SpanRecord], failing: &mut bool) {
    let body = request_body(batch).to_string();
    let result = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
    match result {
        Ok(resp) if resp.status().is_success() => {
            metrics::counter!("postbox_trace_spans_exported_total").increment(n);
            if *failing {
                tracing::info!(%url, "OTLP export works again");
                *failing = false;
            }
        }
        other => {
            metrics::counter!("postbox_trace_spans_dropped_total", "reason" => "export_failed")
                .increment(n);
            if !*failing {
                let why = match other {
                    Ok(resp) => format!("the collector answered {}", resp.status()),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(%url, error = %why, spans = n, "OTLP export failed; dropping spans until it works");
                *failing = true;
            }
        }
    }
}

/// An OTLP `ExportTraceServiceRequest` in the JSON encoding.
fn request_body(batch: &[SpanRecord]) -> Value {
    let version = env!("CARGO_PKG_VERSION");
    let spans: Vec<Value> = batch.iter().map(span_json).collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                attr("service.name", "postbox"),
                attr("service.version", version),
            ]},
            "scopeSpans": [{
                "scope": {"name": "postbox", "version": version},
                "spans": spans,
            }],
        }],
    })
}

fn span_json(s: &SpanRecord) -> Value {
    let mut span = json!({
        "traceId": s.ctx.trace_id,
        "spanId": s.ctx.span_id,
        "parentSpanId": s.ctx.parent_id,
        "name": s.name,
        "kind": KIND_PRODUCER,
        "startTimeUnixNano": unix_nanos(s.start),
        "endTimeUnixNano": unix_nanos(s.end),
        "attributes": s.attributes.iter().map(|(k, v)| attr(k, v)).collect::<Vec<_>>(),
        "status": match &s.error {
            None => json!({"code": STATUS_OK}),
            Some(e) => json!({"code": STATUS_ERROR, "message": e}),
        },
    });
    if let (Some(ts), Some(obj)) = (&s.trace_state, span.as_object_mut()) {
        obj.insert("traceState".to_owned(), Value::String(ts.clone()));
    }
    span
}

fn attr(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn unix_nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceParent;

    #[test]
    fn endpoint_becomes_traces_url() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/otlp/v1/traces").unwrap(),
            "http://c:4318/otlp/v1/traces"
        );
        for bad in ["https://c:4318", "grpc://c:4317", "127.0.0.1:4318", "nope"] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spans_are_encoded_as_otlp_json() {
        let ctx = TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .unwrap()
            .child();
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let span = SpanRecord {
            ctx: ctx.clone(),
            trace_state: Some("rojo=1".into()),
            name: "publish",
            start,
            end: start + Duration::from_millis(2),
            attributes: vec![("messaging.system", "rabbitmq".into())],
            error: Some("nacked by RabbitMQ".into()),
        };
        let body = request_body(&[span]);
        let s = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(s["parentSpanId"], "b7ad6b7169203331");
        assert_eq!(s["spanId"], ctx.span_id.as_str());
        assert_eq!(s["kind"], 4);
        assert_eq!(s["startTimeUnixNano"], "1700000000123456789");
        assert_eq!(s["endTimeUnixNano"], "1700000000125456789");
        assert_eq!(s["traceState"], "rojo=1");
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(s["attributes"][0]["value"]["stringValue"], "rabbitmq");
        assert_eq!(
            body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "postbox"
        );
    }
}
