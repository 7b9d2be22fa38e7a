//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` and
//! `tracestate` request headers are checked here, stored with each event, and the relay's
//! publish of an event becomes a child span of its stored `traceparent` (same trace id, a new
//! span id, the same flags), optionally exported over OTLP ([`otlp`]).

pub mod otlp;

use std::time::SystemTime;

use axum::http::HeaderMap;
use rand::Rng;

/// Longest `tracestate` kept. W3C Trace Context §3.3.1.5 asks to propagate at least 512
/// characters; postbox keeps up to that and drops a longer header whole (it is an AMQP
/// header of every message of the request).
pub const MAX_TRACESTATE: usize = 512;

/// Most list-members in a `tracestate` (§3.3.1.1).
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// A parsed `traceparent` (`version-traceid-parentid-flags`, lowercase hex, §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 hex digits, not all zero.
    pub trace_id: String,
    /// 16 hex digits, not all zero: the span that sent the request.
    pub parent_id: String,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parse a `traceparent` value; `None` when it is not valid (the header is then ignored,
    /// as §3.2.2 says, and so is `tracestate`).
    pub fn parse(v: &str) -> Option<TraceParent> {
        let parts: Vec<&str> = v.split('-').collect();
        let [version, trace_id, parent_id, flags] = parts.as_slice() else {
            return None;
        };
        let ok = hex(version, 2)
            && *version != "ff"
            && hex(trace_id, 32)
            && hex(parent_id, 16)
            && hex(flags, 2)
            && trace_id.bytes().any(|b| b != b'0')
            && parent_id.bytes().any(|b| b != b'0');
        if !ok {
            return None;
        }
        Some(TraceParent {
            trace_id: (*trace_id).to_owned(),
            parent_id: (*parent_id).to_owned(),
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// Whether the caller sampled this trace (flag bit 0): only sampled spans are exported.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// A child of this span: same trace id and flags, a new random span id.
    pub fn child(&self) -> Child {
        Child {
            trace_id: self.trace_id.clone(),
            parent_id: self.parent_id.clone(),
            span_id: new_span_id(),
            flags: self.flags,
        }
    }
}

/// A span that is the child of a stored `traceparent` (the relay's publish of one event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// Trace id, as in the parent.
    pub trace_id: String,
    /// The parent's span id.
    pub parent_id: String,
    /// This span's id (16 hex digits).
    pub span_id: String,
    /// Trace flags, as in the parent.
    pub flags: u8,
}

impl Child {
    /// The `traceparent` that names this span as the parent of whatever comes next (the
    /// consumer's processing).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// A finished span, ready to export.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// Trace, span and parent ids.
    pub ctx: Child,
    /// The `tracestate` that came with the parent.
    pub trace_state: Option<String>,
    /// Span name.
    pub name: &'static str,
    /// Start and end.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
    /// String attributes (OpenTelemetry semantic conventions).
    pub attributes: Vec<(&'static str, String)>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// 8 random bytes as 16 hex digits, never all zero (§3.2.2.4).
fn new_span_id() -> String {
    let mut rng = rand::rng();
    let id: u64 = loop {
        let v: u64 = rng.random();
        if v != 0 {
            break v;
        }
    };
    format!("{id:016x}")
}

fn hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The request's trace context to store: a valid `traceparent` and, with it, a valid
/// `tracestate` (several `tracestate` header lines are one comma-separated list, RFC 9110
/// §5.3). Anything invalid is dropped, never refused: tracing must not cost a client its event.
pub fn from_headers(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let mut parents = headers.get_all("traceparent").iter();
    let traceparent = match (parents.next(), parents.next()) {
        (Some(v), None) => v
            .to_str()
            .ok()
            .filter(|v| TraceParent::parse(v).is_some())
            .map(str::to_owned),
        // Several traceparent headers are invalid (§3.2).
        _ => None,
    };
    if traceparent.is_none() {
        return (None, None);
    }
    let mut lines = Vec::new();
    for v in headers.get_all("tracestate") {
        match v.to_str() {
            Ok(s) => lines.push(s),
            Err(_) => return (traceparent, None),
        }
    }
    let tracestate = (!lines.is_empty())
        .then(|| lines.join(","))
        .and_then(|s| valid_tracestate(&s).then_some(s));
    (traceparent, tracestate)
}

/// `tracestate` per §3.3: at most 32 comma-separated `key=value` members (empty members
/// allowed), keys unique; a key is `lcalpha 0*255(lcalpha / DIGIT / "_" / "-" / "*" / "/")` or
/// `tenant@system`; a value is 1-256 printable ASCII characters other than `,` and `=`, not
/// ending in a space. Also at most [`MAX_TRACESTATE`] characters in all.
pub fn valid_tracestate(v: &str) -> bool {
    if v.len() > MAX_TRACESTATE {
        return false;
    }
    let mut keys: Vec<&str> = Vec::new();
    for member in v.split(',') {
        let member = member.trim_matches(|c| c == ' ' || c == '\t');
        if member.is_empty() {
            continue;
        }
        let Some((key, value)) = member.split_once('=') else {
            return false;
        };
        if !valid_key(key) || !valid_value(value) || keys.contains(&key) {
            return false;
        }
        keys.push(key);
    }
    !keys.is_empty() && keys.len() <= MAX_TRACESTATE_MEMBERS
}

fn valid_key(key: &str) -> bool {
    let part = |s: &str, max: usize, first_digit_ok: bool| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= max
            && (b[0].is_ascii_lowercase() || (first_digit_ok && b[0].is_ascii_digit()))
            && b.iter().all(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, b'_' | b'-' | b'*' | b'/')
            })
    };
    match key.split_once('@') {
        None => part(key, 256, false),
        Some((tenant, system)) => part(tenant, 241, true) && part(system, 14, false),
    }
}

fn valid_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && !value.ends_with(' ')
        && value
            .bytes()
            .all(|b| b == b' ' || ((b'\x21'..=b'\x7e').contains(&b) && b != b',' && b != b'='))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn traceparent_format() {
        let tp = TraceParent::parse(TP).unwrap();
        assert_eq!(tp.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(tp.parent_id, "b7ad6b7169203331");
        assert!(tp.sampled());
        for bad in [
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "garbage",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn child_keeps_trace_and_flags_with_a_new_span() {
        let tp =
            TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        let c = tp.child();
        assert_eq!(c.parent_id, "b7ad6b7169203331");
        assert_ne!(c.span_id, c.parent_id);
        let header = c.traceparent();
        let back = TraceParent::parse(&header).unwrap();
        assert_eq!(back.trace_id, tp.trace_id);
        assert_eq!(back.parent_id, c.span_id);
        assert_eq!(back.flags, 0);
        assert_ne!(tp.child().span_id, c.span_id);
    }

    #[test]
    fn tracestate_rules() {
        for good in [
            "congo=t61rcWkgMzE",
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            "rojo=00f067aa0ba902b7 , ,\tcongo=t61rcWkgMzE",
            "fw529a3039@dt=ZmYyZmZjMGM2MTY3ZDQxNA, 1a-2f@x=y z",
            "a*/_-0=!\"#$%&'()*+-./:;<>?@[]^_`{|}~",
        ] {
            assert!(valid_tracestate(good), "{good}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        for bad in [
            String::new(),
            " , ".to_owned(),
            "Rojo=1".to_owned(),
            "1abc=x".to_owned(),
            "rojo".to_owned(),
            "rojo=".to_owned(),
            "rojo=a=b".to_owned(),
            "rojo=a\tb".to_owned(),
            "rojo=caf\u{e9}".to_owned(),
            "rojo=1,rojo=2".to_owned(),
            "rojo=\u{7f}".to_owned(),
            format!("k={}", "v".repeat(257)),
            format!("k={}", "v".repeat(256)) + &format!(",l={}", "v".repeat(256)),
            many.join(","),
        ] {
            assert!(!valid_tracestate(&bad), "{bad}");
        }
    }

    #[test]
    fn headers_give_context_only_with_a_valid_traceparent() {
        let mut h = HeaderMap::new();
        h.append("tracestate", "rojo=1".parse().unwrap());
        h.append("tracestate", "congo=2".parse().unwrap());
        assert_eq!(from_headers(&h), (None, None));
        h.insert("traceparent", TP.parse().unwrap());
        assert_eq!(
            from_headers(&h),
            (Some(TP.to_owned()), Some("rojo=1,congo=2".to_owned()))
        );
        h.append("tracestate", "bad key=1".parse().unwrap());
        assert_eq!(from_headers(&h), (Some(TP.to_owned()), None));
        h.append("traceparent", TP.parse().unwrap());
        assert_eq!(from_headers(&h), (None, None));
    }
}
