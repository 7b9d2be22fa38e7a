//! The use case "accept these events from this caller": authorize, validate against their
//! schemas, guard the idempotency keys, check the backlog, build outbox rows, hand them to the
//! group-commit writer and report what became of them.
//!
//! An input (the HTTP API today; gRPC or another encoding tomorrow) authenticates the caller,
//! parses its request into [`Event`]s, calls [`Ingest::accept`] and turns the [`Receipt`] or the
//! [`IngestError`] into its own answer (`http::error` maps errors to RFC 9457 problems). Nothing
//! here knows about HTTP.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{
    auth::Caller,
    envelope::{Event, Mode},
    outbox::{
        NewRow, StoredRef, WriteOutcome, WriteRequest, micros,
        writer::{WriteError, Writer},
    },
    pointer::{FieldError, summarize},
    schema::Registry,
};

/// Longest accepted idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// What ingest takes from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// First word of every routing key: `{prefix}.{type}.{version}`.
    pub routing_prefix: String,
    /// Refuse events while the outbox holds at least this many undelivered ones (0: no limit).
    pub max_backlog: u64,
}

/// The ingest service: cheap handles, shared by every input.
#[derive(Clone)]
pub struct Ingest {
    settings: Arc<Settings>,
    registry: Registry,
    writer: Writer,
    /// Undelivered events, as last counted by housekeeping.
    pending: Arc<AtomicI64>,
}

/// One request's events and what came with them.
#[derive(Debug)]
pub struct Submission {
    /// The parsed events, in request order; all of them are stored, or none.
    pub events: Vec<Event>,
    /// How they were encoded: where a problem is located (a body pointer or a `ce-*` header).
    pub mode: Mode,
    /// The request's idempotency key as sent, if any. Checked here (1-255 visible ASCII
    /// characters, optionally in double quotes), after the events, so the order of refusals is
    /// the same for every input.
    pub idempotency_key: Option<String>,
    /// The request's W3C trace context, stored with every event.
    pub trace: TraceContext,
}

/// A request's W3C trace context, already checked by the input (`trace::from_headers`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// `traceparent`.
    pub traceparent: Option<String>,
    /// `tracestate` (only with a `traceparent`).
    pub tracestate: Option<String>,
}

/// The events are committed to the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// One per event, in request order.
    pub refs: Vec<StoredRef>,
    /// True when nothing new was stored: the request replays an earlier one.
    pub replayed: bool,
    /// The deprecated schema versions the events used (each once).
    pub deprecated: Vec<DeprecatedUse>,
}

/// Events of a deprecated schema version were accepted: the caller is told (RFC 9745).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeprecatedUse {
    /// Event type.
    pub event_type: String,
    /// The deprecated version.
    pub version: String,
    /// Deprecated since (µs since the epoch).
    pub since: i64,
    /// The newest version of the type that is not deprecated.
    pub successor: Option<String>,
}

/// Why events were not accepted. Nothing of the request was stored, except where
/// [`WriteError::TimedOut`] says it may have been. `Display` is the sentence to show the caller.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The caller may not send some of the events (their type or source).
    #[error("{}", summarize(.errors, "event this key may not send"))]
    Forbidden {
        /// One per denied type or source.
        errors: Vec<FieldError>,
    },
    /// The caller's key is over its rate limit.
    #[error("API key `{key}` is over its rate limit; nothing was stored")]
    RateLimited {
        /// The key's name.
        key: String,
        /// When it may send again.
        retry_after: Duration,
    },
    /// No schema for the type or version of some events.
    #[error("{}", summarize(.errors, "unknown type or version"))]
    UnknownSchema {
        /// One per event.
        errors: Vec<FieldError>,
        /// The versions that exist for the (last) type named.
        available: Vec<String>,
    },
    /// The data of some events fails its schema.
    #[error("{}", summarize(.errors, "schema violation"))]
    SchemaViolation {
        /// Every violation, with its pointer.
        errors: Vec<FieldError>,
    },
    /// The idempotency key is empty, too long or not visible ASCII.
    #[error("Idempotency-Key must be 1-{max} visible ASCII characters", max = MAX_IDEMPOTENCY_KEY)]
    InvalidIdempotencyKey,
    /// A request with the same idempotency key or event id is being committed right now.
    #[error(
        "a request with the same idempotency key or event id is being committed; retry shortly"
    )]
    InProgress,
    /// The idempotency key or an event's `(source, id)` was used before for other content.
    #[error("{0}")]
    KeyReused(String),
    /// The outbox holds too many undelivered events.
    #[error("the outbox holds more than {limit} undelivered events; nothing was stored")]
    BacklogFull {
        /// `max_backlog`.
        limit: u64,
    },
    /// The outbox writer did not commit the events.
    #[error("{}", unavailable(.0))]
    Unavailable(#[source] WriteError),
}

impl IngestError {
    /// How long the caller should wait before trying again, when waiting helps.
    pub fn retry_after(&self) -> Option<Duration> {
        let secs = match self {
            IngestError::RateLimited { retry_after, .. } => return Some(*retry_after),
            IngestError::InProgress => 1,
            IngestError::BacklogFull { .. } => 5,
            IngestError::Unavailable(WriteError::QueueFull | WriteError::Closed) => 1,
            IngestError::Unavailable(WriteError::Store(_) | WriteError::TimedOut) => 2,
            _ => return None,
        };
        Some(Duration::from_secs(secs))
    }
}

/// What the caller is told when the writer fails: never the database's own words.
fn unavailable(e: &WriteError) -> &'static str {
    match e {
        WriteError::QueueFull => "postbox is at capacity (writer queue full); nothing was stored",
        WriteError::Store(_) => "the outbox database is unavailable; nothing was stored",
        WriteError::TimedOut => {
            "the outbox did not confirm the commit in time; the events may be stored: retry \
             with the same event ids or Idempotency-Key"
        }
        WriteError::Closed => "postbox is shutting down; nothing was stored",
    }
}

impl Ingest {
    /// The service over these handles.
    pub fn new(
        settings: Settings,
        registry: Registry,
        writer: Writer,
        pending: Arc<AtomicI64>,
    ) -> Ingest {
        Ingest {
            settings: Arc::new(settings),
            registry,
            writer,
            pending,
        }
    }

    /// Accept `submission` from `caller`: answers once the events are committed (or known to
    /// be stored already), or says why not. Refusals come in this order: permissions, rate
    /// limit, schemas, idempotency key, a request in progress with the same keys, backlog.
    pub async fn accept(
        &self,
        caller: &Caller,
        submission: Submission,
    ) -> Result<Receipt, IngestError> {
        let Submission {
            events,
            mode,
            idempotency_key,
            trace,
        } = submission;
        authorize(caller, &events, mode)?;
        let deprecated = self.validate(&events, mode)?;
        let idempotency = idempotency_key
            .map(|k| idempotency(&k, &events))
            .transpose()?;
        // Held from before the request is queued until its commit has ended (see `writer`).
        let in_flight = self
            .writer
            .claim_keys(in_flight_keys(&events, idempotency.as_ref()))
            .ok_or(IngestError::InProgress)?;
        self.check_backlog()?;
        let api_key = caller.key_name();
        let rows = events
            .iter()
            .map(|e| self.to_row(e, &trace, api_key.clone()))
            .collect();
        let outcome = self
            .writer
            .submit(WriteRequest { rows, idempotency }, in_flight)
            .await
            .map_err(IngestError::Unavailable)?;
        match outcome {
            WriteOutcome::KeyReused(detail) => Err(IngestError::KeyReused(detail)),
            WriteOutcome::InProgress => Err(IngestError::InProgress),
            WriteOutcome::Stored { refs, replayed } => {
                for e in &events {
                    metrics::counter!("postbox_events_accepted_total", "type" => e.event_type.clone())
                        .increment(1);
                }
                if !replayed {
                    for e in events.iter().filter(|e| {
                        deprecated
                            .iter()
                            .any(|d| d.event_type == e.event_type && d.version == e.version)
                    }) {
                        metrics::counter!("postbox_deprecated_events_total", "type" => e.event_type.clone(), "version" => e.version.clone())
                            .increment(1);
                    }
                }
                Ok(Receipt {
                    refs,
                    replayed,
                    deprecated,
                })
            }
        }
    }

    /// Every event against its schema (all of one request against one snapshot of the
    /// registry); all problems of all events are reported together. Returns the deprecated
    /// versions used.
    fn validate(&self, events: &[Event], mode: Mode) -> Result<Vec<DeprecatedUse>, IngestError> {
        let schemas = self.registry.snapshot();
        let mut unknown: Vec<FieldError> = Vec::new();
        let mut available = Vec::new();
        let mut violations: Vec<FieldError> = Vec::new();
        let mut deprecated: Vec<DeprecatedUse> = Vec::new();
        for e in events {
            match schemas.get(&e.event_type, &e.version) {
                None => {
                    let versions = schemas.versions(&e.event_type);
                    let msg = if versions.is_empty() {
                        format!("there is no schema for type `{}`", e.event_type)
                    } else {
                        format!(
                            "type `{}` has no version `{}`; it has {}",
                            e.event_type,
                            e.version,
                            versions.join(", ")
                        )
                    };
                    // The type exists, so the native envelope's `version` is what is wrong.
                    let wrong = if e.native && !versions.is_empty() {
                        "version"
                    } else {
                        "type"
                    };
                    unknown.push(FieldError::new(mode.locate(e, wrong), msg));
                    available = versions;
                }
                Some(schema) => {
                    violations.extend(schema.violations(e.data(), &mode.locate(e, "data")));
                    if let Some(since) = schema.deprecated_at
                        && !deprecated
                            .iter()
                            .any(|d| d.event_type == e.event_type && d.version == e.version)
                    {
                        deprecated.push(DeprecatedUse {
                            event_type: e.event_type.clone(),
                            version: e.version.clone(),
                            since,
                            successor: schemas
                                .newest(&e.event_type)
                                .filter(|v| **v != e.version)
                                .cloned(),
                        });
                    }
                }
            }
        }
        if !unknown.is_empty() {
            return Err(IngestError::UnknownSchema {
                errors: unknown,
                available,
            });
        }
        if !violations.is_empty() {
            return Err(IngestError::SchemaViolation { errors: violations });
        }
        Ok(deprecated)
    }

    fn check_backlog(&self) -> Result<(), IngestError> {
        let limit = self.settings.max_backlog;
        if limit > 0
            && self.pending.load(Ordering::Relaxed) >= i64::try_from(limit).unwrap_or(i64::MAX)
        {
            return Err(IngestError::BacklogFull { limit });
        }
        Ok(())
    }

    fn to_row(&self, e: &Event, trace: &TraceContext, api_key: Option<String>) -> NewRow {
        let body = serde_json::to_vec(&e.cloudevent).unwrap_or_default();
        // Attributes for the ce-* headers: everything but `data` (not cloned: it can be large).
        let attrs: BTreeMap<&String, &Value> = e
            .cloudevent
            .iter()
            .filter(|(k, _)| k.as_str() != "data")
            .collect();
        let attributes = serde_json::to_string(&attrs).unwrap_or_default();
        NewRow {
            event_id: e.id.clone(),
            source: e.source.clone(),
            event_type: e.event_type.clone(),
            version: e.version.clone(),
            ce_type: e.ce_type().to_owned(),
            subject: e.subject.clone(),
            ordering_key: e.key.clone(),
            event_time: micros(e.time),
            routing_key: format!(
                "{}.{}.{}",
                self.settings.routing_prefix, e.event_type, e.version
            ),
            body,
            attributes,
            content_hash: e.content_hash.to_vec(),
            traceparent: trace.traceparent.clone(),
            tracestate: trace.tracestate.clone(),
            api_key,
        }
    }
}

/// Every event the caller's key may not send (type or source), then its rate limit (one token
/// per event).
fn authorize(caller: &Caller, events: &[Event], mode: Mode) -> Result<(), IngestError> {
    let Caller::Key(key) = caller else {
        return Ok(());
    };
    let mut denied = Vec::new();
    for e in events {
        if !key.may_send_type(&e.event_type) {
            denied.push(FieldError::new(
                mode.locate(e, "type"),
                format!(
                    "API key `{}` may not send events of type `{}`",
                    key.name, e.event_type
                ),
            ));
        }
        if !key.may_use_source(&e.source) {
            denied.push(FieldError::new(
                mode.locate(e, "source"),
                format!(
                    "API key `{}` may not send events with source `{}`",
                    key.name, e.source
                ),
            ));
        }
    }
    if !denied.is_empty() {
        return Err(IngestError::Forbidden { errors: denied });
    }
    key.take(events.len(), Instant::now())
        .map_err(|retry_after| IngestError::RateLimited {
            key: key.name.clone(),
            retry_after,
        })
}

/// The idempotency key as stored, and the hash of the request's content that tells a replay
/// (same content) from a reused key.
fn idempotency(raw: &str, events: &[Event]) -> Result<(String, Vec<u8>), IngestError> {
    let key = raw.trim_matches('"');
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(IngestError::InvalidIdempotencyKey);
    }
    let mut h = Sha256::new();
    for e in events {
        h.update(e.content_hash);
    }
    Ok((key.to_owned(), h.finalize().to_vec()))
}

/// The keys no other request may commit at the same time: each client-chosen `(source, id)`,
/// and the idempotency key.
fn in_flight_keys(events: &[Event], idempotency: Option<&(String, Vec<u8>)>) -> Vec<String> {
    let mut keys: Vec<String> = events
        .iter()
        .filter(|e| e.id_supplied)
        .map(|e| format!("e\u{0}{}\u{0}{}", e.source, e.id))
        .collect();
    if let Some((k, _)) = idempotency {
        keys.push(format!("k\u{0}{k}"));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert_eq!(idempotency("\"abc\"", &[]).unwrap().0, "abc");
        for bad in ["", "\"\"", "a b", "é", &"x".repeat(MAX_IDEMPOTENCY_KEY + 1)] {
            assert!(
                matches!(
                    idempotency(bad, &[]),
                    Err(IngestError::InvalidIdempotencyKey)
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn writer_failures_never_show_the_database_error() {
        let e = IngestError::Unavailable(WriteError::Store("password=hunter2".to_owned()));
        assert_eq!(
            e.to_string(),
            "the outbox database is unavailable; nothing was stored"
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert!(std::error::Error::source(&e).is_some());
    }
}
