//! Arbitrary bytes into envelope parsing, in every mode: no input may panic.
//!
//! The first byte picks the mode and the content type, the next ones (up to a NUL) are
//! binary-mode `ce-*` headers as `name=value` lines; the rest is the body.
#![no_main]

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use postbox::envelope::{self, Mode, ParseContext};

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
    "application/json; charset=utf-8",
    "application/vnd.x+json",
    "text/plain",
    "",
];

fuzz_target!(|input: &[u8]| {
    let Some((&selector, rest)) = input.split_first() else {
        return;
    };
    let (head, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) if selector & 0x80 != 0 => (&rest[..i], &rest[i + 1..]),
        _ => (&[][..], rest),
    };
    let mut headers = HeaderMap::new();
    let ct = CONTENT_TYPES[usize::from(selector & 0x07) % CONTENT_TYPES.len()];
    if !ct.is_empty() {
        headers.insert("content-type", HeaderValue::from_static(ct));
    }
    if selector & 0x80 != 0 {
        // Binary mode: a valid base, then whatever the input says (may override or garble).
        for (n, v) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "f-1"),
            ("ce-source", "/fuzz"),
            ("ce-type", "order.paid.v1"),
        ] {
            headers.insert(n, HeaderValue::from_static(v));
        }
        for line in head.split(|&b| b == b'\n') {
            let mut kv = line.splitn(2, |&b| b == b'=');
            let (Some(k), Some(v)) = (kv.next(), kv.next()) else {
                continue;
            };
            let mut name = b"ce-".to_vec();
            name.extend_from_slice(k);
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&name), HeaderValue::from_bytes(v)) {
                headers.insert(n, v);
            }
        }
    }
    let ctx = ParseContext {
        public_url: "http://127.0.0.1:8080",
        max_batch_events: 8,
    };
    // The mode as the server decides it, and every mode forced, whatever the headers say.
    if let Ok(mode) = envelope::mode(&headers) {
        let _ = envelope::parse(mode, &headers, body, &ctx);
    }
    let forced = [Mode::Json, Mode::Structured, Mode::Batch, Mode::Binary];
    let mode = forced[usize::from((selector >> 3) & 0x03)];
    if let Ok((events, _)) = envelope::parse(mode, &headers, body, &ctx) {
        for e in &events {
            // What the handler does next must not panic either.
            let _ = e.data();
            let _ = e.ce_type();
            let _ = envelope::format_time(e.time);
            assert!(!e.id.is_empty() && !e.event_type.is_empty() && !e.version.is_empty());
        }
    }
});
