//! Request bodies to events: postbox's native envelope, CloudEvents 1.0 structured, binary and
//! batch modes (CloudEvents HTTP protocol binding, <https://github.com/cloudevents/spec>).
//!
//! Parsing only checks the envelope; the `data` is checked against its JSON Schema afterwards.
//! Every error carries a JSON pointer into the request body, so batch errors name their index.

use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::pointer::FieldError;

/// Longest accepted `id`.
pub const MAX_ID_LEN: usize = 128;
/// Longest accepted `type`.
pub const MAX_TYPE_LEN: usize = 128;
/// Longest accepted `source`.
pub const MAX_SOURCE_LEN: usize = 256;
/// Longest accepted `subject` or ordering `key`.
pub const MAX_TEXT_LEN: usize = 256;
/// Longest accepted `dataschema` or `datacontenttype`.
pub const MAX_URI_LEN: usize = 2048;
/// Longest accepted string value of an extension attribute (they become AMQP headers, and a
/// message's headers must fit in one AMQP frame).
pub const MAX_EXTENSION_LEN: usize = 1024;
/// Most extension attributes on one event (same reason).
pub const MAX_EXTENSIONS: usize = 32;
/// Source recorded for native events that do not name one.
pub const DEFAULT_SOURCE: &str = "postbox";

/// CloudEvents context attributes that are not extensions.
const CE_CORE: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "data",
    "data_base64",
];

/// How the request body is to be read, decided from the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `application/json`: native envelope, a CloudEvent, or an array of either.
    Json,
    /// `application/cloudevents+json`.
    Structured,
    /// `application/cloudevents-batch+json`.
    Batch,
    /// `ce-specversion` header present: the body is the event's `data`.
    Binary,
}

/// Why a body could not even be read as events.
#[derive(Debug)]
pub enum ParseError {
    /// Content type not one postbox reads (415).
    UnsupportedMediaType(String),
    /// Malformed JSON or envelope (400); every problem found.
    Invalid(Vec<FieldError>),
    /// More events than allowed in one batch (413).
    TooManyEvents {
        /// Events in the request.
        got: usize,
        /// The limit.
        max: usize,
    },
}

impl Mode {
    /// Where attribute `attr` (`type`, `source`, `version`, `data`) of `event` was in the
    /// request, for error messages: a JSON pointer into the body, or in binary mode the `ce-*`
    /// header (the body is then the `data`, and the version is part of `ce-type`).
    pub fn locate(self, event: &Event, attr: &str) -> String {
        match (self, attr) {
            (Mode::Binary, "data") => String::new(),
            (Mode::Binary, "version") => "header:ce-type".to_owned(),
            (Mode::Binary, attr) => format!("header:ce-{attr}"),
            (_, attr) => format!("{}/{attr}", event.pointer),
        }
    }
}

/// An event whose envelope is valid; `data` still has to pass its schema.
#[derive(Debug, Clone)]
pub struct Event {
    /// Event id (client's, or a UUIDv7).
    pub id: String,
    /// Whether the client chose the id (only then is `(source, id)` an idempotency key).
    pub id_supplied: bool,
    /// CloudEvents `source`.
    pub source: String,
    /// Type without version suffix: what schemas and routing keys use.
    pub event_type: String,
    /// Schema version, e.g. `v1`.
    pub version: String,
    /// Optional subject.
    pub subject: Option<String>,
    /// Optional ordering key.
    pub key: Option<String>,
    /// Event time (client's, or acceptance time).
    pub time: OffsetDateTime,
    /// The CloudEvent to publish, attributes and `data`, exactly as it will be sent.
    pub cloudevent: Map<String, Value>,
    /// SHA-256 of what the client sent, to tell a replay from a reused key.
    pub content_hash: [u8; 32],
    /// JSON pointer of this event in the request body ("" or "/3").
    pub pointer: String,
    /// Sent as postbox's native envelope (not as a CloudEvent).
    pub native: bool,
}

impl Event {
    /// The `data` to validate.
    pub fn data(&self) -> &Value {
        self.cloudevent.get("data").unwrap_or(&Value::Null)
    }

    /// The CloudEvents `type` as sent (may carry a `.vN` suffix).
    pub fn ce_type(&self) -> &str {
        self.cloudevent
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(&self.event_type)
    }
}

/// What the parser needs besides the body.
pub struct ParseContext<'a> {
    /// Base URL used for `dataschema` of native events.
    pub public_url: &'a str,
    /// Batch size limit.
    pub max_batch_events: usize,
}

/// Decide the mode from `Content-Type` and `ce-specversion`.
pub fn mode(headers: &HeaderMap) -> Result<Mode, ParseError> {
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    // The media type decides first (CloudEvents HTTP binding §3.1): a structured or batched
    // event is that whatever stray `ce-*` headers come with it.
    if matches!(
        essence.as_str(),
        "application/cloudevents+json" | "application/cloudevents-batch+json"
    ) {
        return Ok(if essence == "application/cloudevents+json" {
            Mode::Structured
        } else {
            Mode::Batch
        });
    }
    // An empty `ce-specversion` names no version: it does not make a request binary mode.
    let specversion = headers
        .get("ce-specversion")
        .is_some_and(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace));
    if specversion {
        // An event without `datacontenttype` has no Content-Type in binary mode (the SDKs send
        // none); postbox reads JSON data only, so that is JSON.
        return if essence.is_empty() || is_json(&essence) {
            Ok(Mode::Binary)
        } else {
            Err(ParseError::UnsupportedMediaType(format!(
                "binary-mode CloudEvents must carry JSON data (content-type application/json), got `{ct}`"
            )))
        };
    }
    match essence.as_str() {
        "application/cloudevents+json" => Ok(Mode::Structured),
        "application/cloudevents-batch+json" => Ok(Mode::Batch),
        e if is_json(e) => Ok(Mode::Json),
        "" => Err(ParseError::UnsupportedMediaType(
            "missing Content-Type; send application/json, application/cloudevents+json or application/cloudevents-batch+json".into(),
        )),
        _ => Err(ParseError::UnsupportedMediaType(format!(
            "unsupported Content-Type `{ct}`; send application/json, application/cloudevents+json or application/cloudevents-batch+json"
        ))),
    }
}

fn is_json(essence: &str) -> bool {
    essence == "application/json"
        || (essence.starts_with("application/")
            && essence.ends_with("+json")
            && !essence.contains("cloudevents"))
}

/// Parse a whole request body into events (one, or several for a batch).
pub fn parse(
    mode: Mode,
    headers: &HeaderMap,
    body: &[u8],
    ctx: &ParseContext<'_>,
) -> Result<(Vec<Event>, bool), ParseError> {
    let value: Value = if body.is_empty() {
        if mode == Mode::Binary {
            Value::Null
        } else {
            return Err(invalid("", "request body is empty; send a JSON event"));
        }
    } else {
        strict::from_slice(body)?
    };
    let now = OffsetDateTime::now_utc();
    match (mode, value) {
        (Mode::Binary, data) => Ok((vec![from_binary(headers, data, now)?], false)),
        (Mode::Structured, Value::Object(o)) => Ok((vec![from_cloudevent(o, "", now)?], false)),
        (Mode::Json, Value::Object(o)) if o.contains_key("specversion") => {
            Ok((vec![from_cloudevent(o, "", now)?], false))
        }
        (Mode::Json, Value::Object(o)) => Ok((vec![from_native(o, "", now, ctx)?], false)),
        (Mode::Batch | Mode::Json, Value::Array(items)) => {
            Ok((parse_batch(mode, items, now, ctx)?, true))
        }
        (Mode::Batch, _) => Err(invalid("", "a CloudEvents batch must be a JSON array")),
        (_, _) => Err(invalid("", "an event must be a JSON object")),
    }
}

fn parse_batch(
    mode: Mode,
    items: Vec<Value>,
    now: OffsetDateTime,
    ctx: &ParseContext<'_>,
) -> Result<Vec<Event>, ParseError> {
    if items.is_empty() {
        return Err(invalid("", "a batch must hold at least one event"));
    }
    if items.len() > ctx.max_batch_events {
        return Err(ParseError::TooManyEvents {
            got: items.len(),
            max: ctx.max_batch_events,
        });
    }
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let pointer = format!("/{i}");
        let parsed = match item {
            Value::Object(o) if mode == Mode::Batch || o.contains_key("specversion") => {
                from_cloudevent(o, &pointer, now)
            }
            Value::Object(o) => from_native(o, &pointer, now, ctx),
            _ => Err(invalid(&pointer, "each batch item must be a JSON object")),
        };
        match parsed {
            Ok(e) => events.push(e),
            Err(ParseError::Invalid(mut errs)) => errors.append(&mut errs),
            Err(other) => return Err(other),
        }
    }
    // The same client id twice in one batch is a client mistake, not a replay.
    let mut seen = std::collections::HashSet::new();
    for e in events.iter().filter(|e| e.id_supplied) {
        if !seen.insert((e.source.as_str(), e.id.as_str())) {
            errors.push(FieldError::new(
                format!("{}/id", e.pointer),
                format!(
                    "id `{}` of source `{}` appears twice in this batch",
                    e.id, e.source
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(ParseError::Invalid(errors))
    }
}

/// The native envelope: `{"type","version","data"}` plus optional fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Native {
    #[serde(rename = "type")]
    event_type: Option<Value>,
    version: Option<Value>,
    #[serde(default)]
    data: Option<Value>,
    id: Option<Value>,
    source: Option<Value>,
    subject: Option<Value>,
    key: Option<Value>,
    time: Option<Value>,
}

fn from_native(
    obj: Map<String, Value>,
    ptr: &str,
    now: OffsetDateTime,
    ctx: &ParseContext<'_>,
) -> Result<Event, ParseError> {
    let content_hash = hash(&obj);
    let native: Native = serde_json::from_value(Value::Object(obj)).map_err(|e| {
        invalid(
            ptr,
            format!(
                "{e}; the envelope fields are type, version, data, id, source, subject, key, time"
            ),
        )
    })?;
    let mut errs = Errors::new(ptr);
    let event_type = errs.required(native.event_type, "type", check_type);
    let version = errs.required(native.version, "version", check_version);
    let id = errs.optional(native.id, "id", check_id);
    let source = errs.optional(native.source, "source", check_source);
    let subject = errs.optional(native.subject, "subject", check_text);
    let key = errs.optional(native.key, "key", check_text);
    let time = errs.optional(native.time, "time", check_time);
    if native.data.is_none() {
        errs.push(
            "data",
            "`data` is required (it is what the schema validates)",
        );
    }
    errs.finish()?;
    let (Some(event_type), Some(version)) = (event_type, version) else {
        return Err(invalid(ptr, "type and version are required"));
    };
    let id_supplied = id.is_some();
    let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let source = source.unwrap_or_else(|| DEFAULT_SOURCE.to_owned());
    let time_value = time.unwrap_or(now);
    let mut ce = Map::new();
    ce.insert("specversion".into(), "1.0".into());
    ce.insert("id".into(), id.clone().into());
    ce.insert("source".into(), source.clone().into());
    ce.insert("type".into(), event_type.clone().into());
    ce.insert("datacontenttype".into(), "application/json".into());
    ce.insert(
        "dataschema".into(),
        format!("{}/v1/schemas/{event_type}/{version}", ctx.public_url).into(),
    );
    if let Some(s) = &subject {
        ce.insert("subject".into(), s.clone().into());
    }
    ce.insert("time".into(), format_time(time_value).into());
    if let Some(k) = &key {
        // CloudEvents "partitioning" extension.
        ce.insert("partitionkey".into(), k.clone().into());
    }
    ce.insert("data".into(), native.data.unwrap_or(Value::Null));
    Ok(Event {
        id,
        id_supplied,
        source,
        event_type,
        version,
        subject,
        key,
        time: time_value,
        cloudevent: ce,
        content_hash,
        pointer: ptr.to_owned(),
        native: true,
    })
}

fn from_cloudevent(
    mut ce: Map<String, Value>,
    ptr: &str,
    now: OffsetDateTime,
) -> Result<Event, ParseError> {
    let content_hash = hash(&ce);
    let mut errs = Errors::new(ptr);
    match ce.get("specversion") {
        Some(Value::String(v)) if v == "1.0" => {}
        Some(_) => errs.push(
            "specversion",
            "postbox accepts CloudEvents specversion \"1.0\"",
        ),
        None => errs.push("specversion", "`specversion` is required"),
    }
    let id = errs.required(ce.get("id").cloned(), "id", check_id);
    let source = errs.required(ce.get("source").cloned(), "source", check_source);
    let ce_type = errs.required(ce.get("type").cloned(), "type", check_ce_type);
    let subject = errs.optional(ce.get("subject").cloned(), "subject", check_text);
    let time = errs.optional(ce.get("time").cloned(), "time", check_time);
    if let Some(ct) = ce.get("datacontenttype") {
        let ok = ct
            .as_str()
            .filter(|s| s.len() <= MAX_URI_LEN && no_control(s))
            .map(|s| {
                is_json(
                    s.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                        .as_str(),
                )
            })
            .unwrap_or(false);
        if !ok {
            errs.push(
                "datacontenttype",
                "postbox accepts JSON data only (application/json)",
            );
        }
    }
    if ce.contains_key("data_base64") {
        errs.push(
            "data_base64",
            "postbox accepts JSON `data` only, not `data_base64`",
        );
    }
    let schema_version = errs.optional(
        ce.get("dataschema").cloned(),
        "dataschema",
        check_dataschema,
    );
    let mut key = None;
    let mut extensions = 0;
    for (name, value) in &ce {
        if CE_CORE.contains(&name.as_str()) {
            continue;
        }
        extensions += 1;
        let field = escape_pointer(name);
        if !valid_extension_name(name) {
            errs.push(
                &field,
                "CloudEvents extension names are 1-20 lowercase letters or digits",
            );
        } else if !(value.is_string() || value.is_boolean() || value.is_i64() || value.is_u64()) {
            errs.push(
                &field,
                "extension values must be strings, booleans or integers",
            );
        } else if name == "partitionkey" {
            key = errs.optional(Some(value.clone()), name, check_text);
        } else if let Some(Err(msg)) = value.as_str().map(check_extension_value) {
            errs.push(&field, msg);
        }
    }
    if extensions > MAX_EXTENSIONS {
        errs.push(
            "",
            format!("an event may carry at most {MAX_EXTENSIONS} extension attributes"),
        );
    }
    let (event_type, version) = match &ce_type {
        Some(t) => split_version(t, schema_version.as_deref(), &mut errs),
        None => (None, None),
    };
    errs.finish()?;
    let (Some(id), Some(source), Some(event_type), Some(version)) =
        (id, source, event_type, version)
    else {
        return Err(invalid(ptr, "id, source and type are required"));
    };
    ce.entry("data").or_insert(Value::Null);
    Ok(Event {
        id,
        id_supplied: true,
        source,
        event_type,
        version,
        subject,
        key,
        time: time.unwrap_or(now),
        cloudevent: ce,
        content_hash,
        pointer: ptr.to_owned(),
        native: false,
    })
}

/// Binary mode: attributes in `ce-*` headers, body = data (HTTP binding §3.1).
fn from_binary(headers: &HeaderMap, data: Value, now: OffsetDateTime) -> Result<Event, ParseError> {
    let mut ce = Map::new();
    let mut errs = Errors::new("");
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        match value.to_str() {
            // Header values are percent-encoded per the HTTP binding (§3.1.3.2).
            Ok(v) => match percent_decode(v) {
                Some(decoded) => {
                    ce.insert(attr.to_owned(), Value::String(decoded));
                }
                None => errs.push_header(
                    name.as_str(),
                    "header value is not valid percent-encoded UTF-8",
                ),
            },
            Err(_) => errs.push_header(name.as_str(), "header value must be visible ASCII"),
        }
    }
    errs.finish()?;
    if let Some(ct) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        ce.insert("datacontenttype".into(), ct.to_owned().into());
    }
    ce.insert("data".into(), data);
    from_cloudevent(ce, "", now).map_err(|e| match e {
        // Point binary-mode attribute errors at their headers, not at the body.
        ParseError::Invalid(list) => ParseError::Invalid(
            list.into_iter()
                .map(|mut f| {
                    if let Some(attr) = f.pointer.strip_prefix('/') {
                        if attr != "data" {
                            let attr = attr.replace("~1", "/").replace("~0", "~");
                            f.pointer = format!("header:ce-{attr}");
                        } else {
                            f.pointer = String::new();
                        }
                    }
                    f
                })
                .collect(),
        ),
        other => other,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            // from_str_radix alone would take a sign ("%+1").
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `order.paid.v2` → (`order.paid`, `v2`); the version may instead come from `dataschema`;
/// when both are present they must agree (postbox never guesses a version).
fn split_version(
    ce_type: &str,
    from_schema: Option<&str>,
    errs: &mut Errors,
) -> (Option<String>, Option<String>) {
    let suffix = ce_type
        .rsplit_once('.')
        .filter(|(base, v)| !base.is_empty() && check_version_str(v).is_ok());
    match (suffix, from_schema) {
        (Some((base, v)), Some(s)) if v != s => {
            errs.push(
                "dataschema",
                format!("`dataschema` names version {s} but `type` ends in .{v}; they must agree"),
            );
            (Some(base.to_owned()), None)
        }
        (Some((base, v)), _) => (Some(base.to_owned()), Some(v.to_owned())),
        (None, Some(s)) => (Some(ce_type.to_owned()), Some(s.to_owned())),
        (None, None) => {
            errs.push(
                "type",
                "the schema version is missing: end `type` with .v1 (e.g. order.paid.v1) or set `dataschema` to /v1/schemas/{type}/{version}",
            );
            (Some(ce_type.to_owned()), None)
        }
    }
}

/// Canonical hash of what the client sent (serde_json maps are sorted, so key order does not
/// matter).
fn hash(obj: &Map<String, Value>) -> [u8; 32] {
    let mut h = Sha256::new();
    // Serializing a Value into a Vec cannot fail.
    h.update(serde_json::to_vec(obj).unwrap_or_default());
    h.finalize().into()
}

/// RFC 3339 with UTC offset, as CloudEvents `time` wants.
pub fn format_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn invalid(ptr: &str, msg: impl Into<String>) -> ParseError {
    ParseError::Invalid(vec![FieldError::new(ptr.to_owned(), msg)])
}

/// Collects every field error of one event.
struct Errors {
    ptr: String,
    list: Vec<FieldError>,
}

impl Errors {
    fn new(ptr: &str) -> Self {
        Errors {
            ptr: ptr.to_owned(),
            list: Vec::new(),
        }
    }

    /// `field` is a JSON pointer token (already escaped); "" means the event itself.
    fn push(&mut self, field: &str, msg: impl Into<String>) {
        let pointer = if field.is_empty() {
            self.ptr.clone()
        } else {
            format!("{}/{field}", self.ptr)
        };
        self.list.push(FieldError::new(pointer, msg));
    }

    fn push_header(&mut self, header: &str, msg: impl Into<String>) {
        self.list
            .push(FieldError::new(format!("header:{header}"), msg));
    }

    fn required<T>(
        &mut self,
        v: Option<Value>,
        field: &str,
        check: fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        match v {
            None | Some(Value::Null) => {
                self.push(field, format!("`{field}` is required"));
                None
            }
            some => self.optional(some, field, check),
        }
    }

    fn optional<T>(
        &mut self,
        v: Option<Value>,
        field: &str,
        check: fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match check(&s) {
                Ok(t) => Some(t),
                Err(msg) => {
                    self.push(field, msg);
                    None
                }
            },
            Some(_) => {
                self.push(field, format!("`{field}` must be a string"));
                None
            }
        }
    }

    fn finish(self) -> Result<(), ParseError> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(ParseError::Invalid(self.list))
        }
    }
}

fn segment_ok(seg: &str) -> bool {
    let mut chars = seg.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Event types: dot-separated words of `[A-Za-z0-9_-]`, so that no AMQP wildcard (`*`, `#`),
/// empty word or path trick (`..`, `/`) reaches a routing key or the schema lookup.
fn check_type(s: &str) -> Result<String, String> {
    if s.len() > MAX_TYPE_LEN {
        return Err(format!("`type` is longer than {MAX_TYPE_LEN} characters"));
    }
    if s.split('.').all(segment_ok) {
        Ok(s.to_owned())
    } else {
        Err(
            "`type` must be dot-separated words of letters, digits, `_` and `-` (e.g. order.paid)"
                .into(),
        )
    }
}

fn check_ce_type(s: &str) -> Result<String, String> {
    check_type(s)
}

fn check_version_str(s: &str) -> Result<(), String> {
    let digits = s.strip_prefix('v').unwrap_or("");
    if !digits.is_empty() && digits.len() <= 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err("`version` must look like v1, v2, … (postbox never guesses the latest)".into())
    }
}

fn check_version(s: &str) -> Result<String, String> {
    check_version_str(s).map(|()| s.to_owned())
}

fn check_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(format!("`id` must be 1-{MAX_ID_LEN} characters"));
    }
    if s == "." || s == ".." {
        // It is a path segment of /v1/events/{id}; dot segments would be resolved away.
        return Err("`id` must not be `.` or `..`".into());
    }
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~:@+=".contains(&b))
    {
        Ok(s.to_owned())
    } else {
        Err("`id` may contain letters, digits and - . _ ~ : @ + = only".into())
    }
}

fn no_control(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

fn check_source(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_SOURCE_LEN || !no_control(s) {
        Err(format!(
            "`source` must be 1-{MAX_SOURCE_LEN} characters without control characters (a URI-reference)"
        ))
    } else {
        Ok(s.to_owned())
    }
}

fn check_text(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_TEXT_LEN || !no_control(s) {
        Err(format!(
            "must be 1-{MAX_TEXT_LEN} characters without control characters"
        ))
    } else {
        Ok(s.to_owned())
    }
}

fn check_extension_value(s: &str) -> Result<(), String> {
    if s.len() > MAX_EXTENSION_LEN || !no_control(s) {
        Err(format!(
            "extension values must be at most {MAX_EXTENSION_LEN} bytes without control characters"
        ))
    } else {
        Ok(())
    }
}

fn check_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|_| "`time` must be an RFC 3339 timestamp, e.g. 2026-11-26T12:00:00Z".to_owned())
}

/// `dataschema` → version: its last path segment (with or without `.json`) must be `vN`.
fn check_dataschema(s: &str) -> Result<String, String> {
    if s.len() > MAX_URI_LEN || !no_control(s) {
        return Err(format!(
            "`dataschema` must be a URI of at most {MAX_URI_LEN} characters without control characters"
        ));
    }
    let path = s.split(['?', '#']).next().unwrap_or("");
    let last = path.rsplit('/').next().unwrap_or("");
    let last = last.strip_suffix(".json").unwrap_or(last);
    match check_version_str(last) {
        Ok(()) => Ok(last.to_owned()),
        Err(_) => Err(
            "`dataschema` must end in the schema version, e.g. http://postbox/v1/schemas/order.paid/v1".into(),
        ),
    }
}

/// A JSON pointer token (RFC 6901 §3: `~` → `~0`, `/` → `~1`).
pub fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// JSON parsing that refuses duplicate object keys. RFC 8259 §4 leaves their meaning open and
/// parsers disagree (serde_json keeps the last, others the first), so a body with two `type`s
/// or two `data.amount`s could mean one thing to postbox and another to whoever re-reads it;
/// postbox refuses the ambiguity with a 400 pointing at the second occurrence. Nesting depth is
/// bounded by serde_json's recursion limit (128), which also answers 400.
mod strict {
    use std::cell::RefCell;

    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Number, Value};

    use super::{ParseError, escape_pointer, invalid};

    pub(super) fn from_slice(body: &[u8]) -> Result<Value, ParseError> {
        let path = RefCell::new(Vec::new());
        let duplicate = RefCell::new(None);
        let mut de = serde_json::Deserializer::from_slice(body);
        let seed = Strict {
            path: &path,
            duplicate: &duplicate,
        };
        let parsed = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
        parsed.map_err(|e| match duplicate.take() {
            Some((pointer, key)) => invalid(
                &pointer,
                format!("duplicate key `{key}`; every key may appear once per object"),
            ),
            None => invalid("", format!("malformed JSON: {e}")),
        })
    }

    #[derive(Clone, Copy)]
    struct Strict<'a> {
        /// Pointer tokens of the value being read.
        path: &'a RefCell<Vec<String>>,
        /// Set when a duplicate key is found: (its pointer, the key).
        duplicate: &'a RefCell<Option<(String, String)>>,
    }

    impl<'de> DeserializeSeed<'de> for Strict<'_> {
        type Value = Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Strict<'_> {
        type Value = Value;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_none<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            self.deserialize(d)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut out = Vec::new();
            loop {
                self.path.borrow_mut().push(out.len().to_string());
                let next = seq.next_element_seed(self);
                self.path.borrow_mut().pop();
                match next? {
                    Some(v) => out.push(v),
                    None => return Ok(Value::Array(out)),
                }
            }
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut out = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                let token = escape_pointer(&key);
                if out.contains_key(&key) {
                    let mut pointer = String::new();
                    for t in self.path.borrow().iter().chain(std::iter::once(&token)) {
                        pointer.push('/');
                        pointer.push_str(t);
                    }
                    let msg = format!("duplicate key `{key}`");
                    *self.duplicate.borrow_mut() = Some((pointer, key));
                    return Err(de::Error::custom(msg));
                }
                self.path.borrow_mut().push(token);
                let value = map.next_value_seed(self);
                self.path.borrow_mut().pop();
                out.insert(key, value?);
            }
            Ok(Value::Object(out))
        }
    }
}

fn valid_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ctx() -> ParseContext<'static> {
        ParseContext {
            public_url: "http://x",
            max_batch_events: 10,
        }
    }

    fn parse_json(body: &str) -> Result<(Vec<Event>, bool), ParseError> {
        parse(Mode::Json, &HeaderMap::new(), body.as_bytes(), &ctx())
    }

    fn pointers(e: ParseError) -> Vec<String> {
        match e {
            ParseError::Invalid(l) => l.into_iter().map(|f| f.pointer).collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn shortest_native_envelope() {
        let (ev, batch) =
            parse_json(r#"{"type":"order.paid","version":"v1","data":{"a":1}}"#).unwrap();
        assert!(!batch);
        let e = &ev[0];
        assert_eq!(
            (e.event_type.as_str(), e.version.as_str()),
            ("order.paid", "v1")
        );
        assert!(!e.id_supplied);
        assert_eq!(e.source, DEFAULT_SOURCE);
        assert_eq!(
            e.cloudevent["dataschema"],
            "http://x/v1/schemas/order.paid/v1"
        );
        assert_eq!(e.data()["a"], 1);
    }

    #[test]
    fn native_errors_name_every_field() {
        let err = parse_json(r#"{"type":"order.#","version":"latest","id":"a/b"}"#).unwrap_err();
        let p = pointers(err);
        assert_eq!(p, vec!["/type", "/version", "/id", "/data"]);
        let err = parse_json(r#"{"type":"a","version":"v1","data":1,"sujbect":"x"}"#).unwrap_err();
        assert_eq!(pointers(err), vec![""]);
    }

    #[test]
    fn cloudevent_version_from_type_suffix_or_dataschema() {
        let (ev, _) = parse_json(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"order.paid.v2","data":{}}"#,
        )
        .unwrap();
        assert_eq!(
            (ev[0].event_type.as_str(), ev[0].version.as_str()),
            ("order.paid", "v2")
        );
        assert_eq!(ev[0].ce_type(), "order.paid.v2");
        let (ev, _) = parse(
            Mode::Structured,
            &HeaderMap::new(),
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"order.paid","dataschema":"http://h/v1/schemas/order.paid/v1","data":{}}"#,
            &ctx(),
        )
        .unwrap();
        assert_eq!(ev[0].version, "v1");
        let err = parse_json(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"order.paid.v2","dataschema":"http://h/v1/schemas/order.paid/v1"}"#,
        )
        .unwrap_err();
        assert_eq!(pointers(err), vec!["/dataschema"]);
        let err = parse_json(r#"{"specversion":"1.0","id":"1","source":"/s","type":"order.paid"}"#)
            .unwrap_err();
        assert_eq!(pointers(err), vec!["/type"]);
    }

    /// The media type decides first: a structured or batched event with a stray (even empty)
    /// `ce-specversion` header is not binary mode.
    #[test]
    fn structured_media_types_win_over_stray_ce_headers() {
        for (ct, want) in [
            ("application/cloudevents+json", Mode::Structured),
            (
                "application/cloudevents+json; charset=utf-8",
                Mode::Structured,
            ),
            ("application/cloudevents-batch+json", Mode::Batch),
        ] {
            let mut h = HeaderMap::new();
            h.insert("content-type", HeaderValue::from_str(ct).unwrap());
            h.insert("ce-specversion", HeaderValue::from_static(""));
            assert_eq!(mode(&h).unwrap(), want, "{ct}");
        }
    }

    #[test]
    fn binary_mode_reads_headers() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("ce-specversion", HeaderValue::from_static("1.0"));
        h.insert("ce-id", HeaderValue::from_static("abc"));
        h.insert("ce-source", HeaderValue::from_static("/my%20src"));
        h.insert("ce-type", HeaderValue::from_static("order.paid.v1"));
        h.insert("ce-partitionkey", HeaderValue::from_static("cust-1"));
        assert_eq!(mode(&h).unwrap(), Mode::Binary);
        let (ev, _) = parse(Mode::Binary, &h, br#"{"x":1}"#, &ctx()).unwrap();
        assert_eq!(ev[0].source, "/my src");
        assert_eq!(ev[0].key.as_deref(), Some("cust-1"));
        assert_eq!(ev[0].data()["x"], 1);
        h.remove("content-type");
        assert_eq!(
            mode(&h).unwrap(),
            Mode::Binary,
            "no Content-Type in binary mode is JSON"
        );
        h.remove("ce-id");
        let err = parse(Mode::Binary, &h, b"{}", &ctx()).unwrap_err();
        assert_eq!(pointers(err), vec!["header:ce-id"]);
    }

    #[test]
    fn batch_errors_by_index_and_limits() {
        let err = parse_json(r#"[{"type":"a","version":"v1","data":1},{"type":"a","data":1}]"#)
            .unwrap_err();
        assert_eq!(pointers(err), vec!["/1/version"]);
        let many = format!(
            "[{}]",
            [r#"{"type":"a","version":"v1","data":1}"#; 11].join(",")
        );
        assert!(matches!(
            parse_json(&many),
            Err(ParseError::TooManyEvents { got: 11, max: 10 })
        ));
        let dup = r#"[{"type":"a","version":"v1","data":1,"id":"x"},{"type":"a","version":"v1","data":2,"id":"x"}]"#;
        assert_eq!(pointers(parse_json(dup).unwrap_err()), vec!["/1/id"]);
    }

    #[test]
    fn content_type_decides_mode() {
        let mut h = HeaderMap::new();
        assert!(matches!(mode(&h), Err(ParseError::UnsupportedMediaType(_))));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        assert!(matches!(mode(&h), Err(ParseError::UnsupportedMediaType(_))));
        h.insert(
            "content-type",
            HeaderValue::from_static("application/cloudevents-batch+json; charset=utf-8"),
        );
        assert_eq!(mode(&h).unwrap(), Mode::Batch);
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_pointer() {
        let err = parse_json(r#"{"type":"a","version":"v1","type":"b","data":1}"#).unwrap_err();
        assert_eq!(pointers(err), vec!["/type"]);
        let err =
            parse_json(r#"[{"type":"a","version":"v1","data":{"x/y":1,"x/y":2}}]"#).unwrap_err();
        assert_eq!(pointers(err), vec!["/0/data/x~1y"]);
        // Same key in different objects is fine.
        assert!(
            parse_json(r#"{"type":"a","version":"v1","data":{"a":{"x":1},"b":{"x":1}}}"#).is_ok()
        );
    }

    #[test]
    fn deep_nesting_is_a_400_not_a_stack_overflow() {
        let deep = "[".repeat(100_000);
        assert_eq!(pointers(parse_json(&deep).unwrap_err()), vec![""]);
        let body = format!(
            r#"{{"type":"a","version":"v1","data":{}1{}}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert_eq!(pointers(parse_json(&body).unwrap_err()), vec![""]);
    }

    #[test]
    fn hostile_strings_are_refused_where_they_matter() {
        for (body, ptr) in [
            (r#"{"type":"a.*","version":"v1","data":1}"#, "/type"),
            (r#"{"type":"a..b","version":"v1","data":1}"#, "/type"),
            (r#"{"type":"a/b","version":"v1","data":1}"#, "/type"),
            (r#"{"type":"a","version":"v#","data":1}"#, "/version"),
            (r#"{"type":"a","version":"v1","data":1,"id":".."}"#, "/id"),
            (r#"{"type":"a","version":"v1","data":1,"id":"a/b"}"#, "/id"),
            (
                r#"{"type":"a","version":"v1","data":1,"source":"a\u0000"}"#,
                "/source",
            ),
            (
                r#"{"type":"a","version":"v1","data":1,"key":"\u001b[2J"}"#,
                "/key",
            ),
            (
                r#"{"type":"a","version":"v1","data":1,"subject":"a\nb"}"#,
                "/subject",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"a.v1","ext":"a\u0000"}"#,
                "/ext",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"a.v1","a/b":"x"}"#,
                "/a~1b",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"a.v1","dataschema":"v1\u0000/v1"}"#,
                "/dataschema",
            ),
        ] {
            assert_eq!(pointers(parse_json(body).unwrap_err()), vec![ptr], "{body}");
        }
        // Control characters are fine inside data.
        assert!(parse_json(r#"{"type":"a","version":"v1","data":"\u0000"}"#).is_ok());
    }

    #[test]
    fn percent_decoding_wants_two_hex_digits() {
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%+1"), None);
        assert_eq!(percent_decode("%2"), None);
    }

    #[test]
    fn same_content_same_hash() {
        let a = parse_json(r#"{"type":"a","version":"v1","data":{"x":1,"y":2},"id":"1"}"#).unwrap();
        let b = parse_json(r#"{"id":"1","data":{"y":2,"x":1},"version":"v1","type":"a"}"#).unwrap();
        let c = parse_json(r#"{"type":"a","version":"v1","data":{"x":2},"id":"1"}"#).unwrap();
        assert_eq!(a.0[0].content_hash, b.0[0].content_hash);
        assert_ne!(a.0[0].content_hash, c.0[0].content_hash);
    }
}
