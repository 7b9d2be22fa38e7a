//! A problem at one place of a request, located by a JSON pointer: the value that envelope
//! parsing, schema validation and ingest report, and that the HTTP error type renders.
//!
//! A leaf: it imports nothing of the crate, so every layer can use it without importing the
//! layers above it (the HTTP error module used to own it, and `envelope` imported it from there).

use serde::Serialize;
use utoipa::ToSchema;

/// One problem with one part of the request, located by a JSON pointer (RFC 6901) into the
/// request body, or `header:NAME` for a header.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct FieldError {
    /// Where: a JSON pointer into the request body (`/data/amount`, `/3/type` in a batch).
    #[schema(example = "/data/amount")]
    pub pointer: String,
    /// What is wrong, in words.
    #[schema(example = "-5 is less than the minimum of 0")]
    pub message: String,
}

impl FieldError {
    /// A new field error.
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            pointer: pointer.into(),
            message: message.into(),
        }
    }

    /// Index of the batch item this error points into, if any.
    pub fn index(&self) -> Option<usize> {
        self.pointer
            .strip_prefix('/')
            .and_then(|p| p.split('/').next())
            .and_then(|i| i.parse().ok())
    }
}

/// One line for many errors, naming the batch items they are in: "2 errors in batch item(s)
/// 0, 3; first: …". `what` is the singular noun (`"schema violation"`).
pub fn summarize(errors: &[FieldError], what: &str) -> String {
    let n = errors.len();
    let first = errors.first().map(|e| {
        if e.pointer.is_empty() {
            e.message.clone()
        } else {
            format!("{}: {}", e.pointer, e.message)
        }
    });
    let mut idx: Vec<usize> = errors.iter().filter_map(FieldError::index).collect();
    idx.dedup();
    let plural = if n == 1 { "" } else { "s" };
    match (first, idx.is_empty()) {
        (Some(f), true) => format!("{n} {what}{plural}; first: {f}"),
        (Some(f), false) => format!(
            "{n} {what}{plural} in batch item(s) {}; first: {f}",
            idx.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (None, _) => format!("no {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_of_batch_item() {
        assert_eq!(FieldError::new("/3/data/x", "bad").index(), Some(3));
        assert_eq!(FieldError::new("/data/x", "bad").index(), None);
        assert_eq!(FieldError::new("header:ce-type", "bad").index(), None);
    }

    #[test]
    fn summary_names_batch_items() {
        let s = summarize(
            &[FieldError::new("/0/a", "x"), FieldError::new("/2/b", "y")],
            "error",
        );
        assert_eq!(s, "2 errors in batch item(s) 0, 2; first: /0/a: x");
    }
}
