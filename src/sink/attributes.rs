//! The `ce-*` header values of a message's stored attributes, read without building a JSON tree:
//! names and values borrow from the stored text where they can. (Parsing them into a
//! `serde_json::Value` and formatting each name with `format!` was about a tenth of the relay's
//! instructions per event on either sink: `bench/instructions.sh`, `MODE=drain`.)

use std::{borrow::Cow, fmt};

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, Visitor},
};
use serde_json::value::RawValue;

/// The attributes of `attributes` (a JSON object, as the ingest stores it) that a header can
/// carry, in stored order, with their values as text: strings unquoted, booleans and numbers as
/// JSON writes them (what `Value::to_string` gave). `null`, objects and arrays are left out,
/// and so are names other than the CloudEvents ones (ASCII letters and digits), which not
/// every broker's headers can carry. Not an object: none.
pub fn header_values(attributes: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    let Ok(Pairs(raw)) = serde_json::from_str::<Pairs<'_>>(attributes) else {
        return Vec::new();
    };
    raw.into_iter()
        .filter(|(name, _)| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric()))
        .filter_map(|(name, value)| Some((name, text(value)?)))
        .collect()
}

/// `ce-` and the attribute's name: a header's name.
pub fn header_name(attribute: &str) -> String {
    let mut name = String::with_capacity(3 + attribute.len());
    name.push_str("ce-");
    name.push_str(attribute);
    name
}

/// A scalar's text; `None` for `null`, an object or an array.
fn text(value: &RawValue) -> Option<Cow<'_, str>> {
    let raw = value.get();
    match raw.as_bytes().first()? {
        b'"' => match raw.get(1..raw.len() - 1) {
            Some(inner) if !inner.contains('\\') => Some(Cow::Borrowed(inner)),
            _ => serde_json::from_str::<String>(raw).ok().map(Cow::Owned),
        },
        // An integer reads as written; a fraction or exponent as `Number`'s `Display` has it
        // (`1e+300` for a stored `1e300`).
        b'-' | b'0'..=b'9' if raw.contains(['.', 'e', 'E']) => {
            serde_json::from_str::<serde_json::Number>(raw)
                .ok()
                .map(|n| Cow::Owned(n.to_string()))
        }
        b't' | b'f' | b'-' | b'0'..=b'9' => Some(Cow::Borrowed(raw)),
        _ => None,
    }
}

/// An object's members as they are written.
struct Pairs<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

/// A member's name, borrowed unless it has escapes.
#[derive(Deserialize)]
struct Name<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> Deserialize<'de> for Pairs<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Pairs<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Name(name), value)) = map.next_entry::<Name<'de>, &RawValue>()? {
                    members.push((name, value));
                }
                Ok(Pairs(members))
            }
        }
        d.deserialize_map(Members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the `Value` parse gave, for every kind of attribute.
    fn by_value(attributes: &str) -> Vec<(String, String)> {
        let Ok(serde_json::Value::Object(attrs)) = serde_json::from_str(attributes) else {
            return Vec::new();
        };
        attrs
            .into_iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::String(s) => Some((k, s)),
                serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {
                    Some((k, v.to_string()))
                }
                _ => None,
            })
            .collect()
    }

    /// In the `Value` parse's order (by name).
    fn owned(attributes: &str) -> Vec<(String, String)> {
        let mut pairs: Vec<_> = header_values(attributes)
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        pairs.sort();
        pairs
    }

    #[test]
    fn scalars_read_as_the_value_parse_read_them() {
        for attributes in [
            r#"{"id":"e1","source":"/s","specversion":"1.0","type":"order.paid.v1"}"#,
            r#"{"a":true,"b":false,"n":-3,"f":1.5,"e":1e300,"z":0,"big":18446744073709551615}"#,
            r#"{"q":"say \"hi\"","u":"caf\u00e9 \u2603","s":"a\/b","t":"tab\there"}"#,
            r#"{"x":null,"o":{"k":1},"l":[1,2],"id":"e2"}"#,
            r#"{"nl":"two\nlines","cr":"a\rb","ok":"fine"}"#,
            r#"{}"#,
        ] {
            assert_eq!(owned(attributes), by_value(attributes), "{attributes}");
        }
    }

    #[test]
    fn plain_strings_are_borrowed_and_escaped_ones_decoded() {
        let attrs = r#"{"id":"e1","q":"a\"b","n":42}"#;
        let values = header_values(attrs);
        assert!(matches!(
            values[0],
            (Cow::Borrowed("id"), Cow::Borrowed("e1"))
        ));
        assert_eq!(values[1].1, "a\"b");
        assert!(matches!(values[1].1, Cow::Owned(_)));
        assert!(matches!(values[2].1, Cow::Borrowed("42")));
    }

    #[test]
    fn anything_else_gives_no_headers() {
        for attributes in ["", "[]", "\"id\"", "{\"id\":", "not json", "null"] {
            assert!(header_values(attributes).is_empty(), "{attributes}");
        }
        // Names no header may carry are left out, the rest kept.
        assert_eq!(
            owned(r#"{"bad:name":"x","ümlaut":"y","":"z","ok1":"w"}"#),
            vec![("ok1".to_owned(), "w".to_owned())]
        );
        assert_eq!(header_name("type"), "ce-type");
    }
}
