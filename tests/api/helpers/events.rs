//! The one event builder. Every event body a test sends starts here:
//!
//! ```ignore
//! Event::order_paid("o-1").id("pay-1").source("/shop").key("customer-7").json()
//! Event::bench(42).id("b-42").body()           // ~1 KB `bench.event`
//! Event::order_paid("o-1").id("ce-1").source("/s").cloudevent()
//! ```
//!
//! Bodies that are deliberately not JSON, or not representable as a `serde_json::Value`
//! (duplicate keys, invalid UTF-8, numbers beyond f64), stay raw strings in their tests.

use serde_json::{Map, Value, json};

/// An event envelope under construction: type, version, optional envelope fields and `data`.
#[derive(Clone, Debug)]
pub struct Event {
    ty: String,
    version: String,
    /// Envelope fields other than type, version and data (id, source, key, subject, time, and
    /// whatever a test adds), in the order they were set.
    fields: Vec<(String, Value)>,
    /// Envelope fields to leave out (e.g. `version`, to test a missing field).
    without: Vec<String>,
    data: Value,
}

impl Event {
    /// Any type and version, with this `data`.
    pub fn new(ty: &str, version: &str, data: Value) -> Event {
        Event {
            ty: ty.to_owned(),
            version: version.to_owned(),
            fields: Vec::new(),
            without: Vec::new(),
            data,
        }
    }

    /// `order.paid` v1 for `order_id` (25.50 EUR).
    pub fn order_paid(order_id: &str) -> Event {
        Event::new(
            "order.paid",
            "v1",
            json!({"order_id": order_id, "amount": 25.5, "currency": "EUR"}),
        )
    }

    /// `user.signed_up` v1 for `user_id` (ada@example.com).
    pub fn user_signed_up(user_id: &str) -> Event {
        Event::new(
            "user.signed_up",
            "v1",
            json!({"user_id": user_id, "email": "ada@example.com"}),
        )
    }

    /// The benchmark's `bench.event` v1 (schemas under `bench/schemas`): ~1 KB, padded.
    pub fn bench(seq: usize) -> Event {
        Event::new(
            "bench.event",
            "v1",
            json!({"seq": seq, "customer": "c-1", "payload": "x".repeat(900)}),
        )
    }

    /// Set (or replace) an envelope field; for CloudEvents an extension attribute.
    pub fn field(mut self, name: &str, value: impl Into<Value>) -> Event {
        self.fields.retain(|(n, _)| n != name);
        self.without.retain(|n| n != name);
        self.fields.push((name.to_owned(), value.into()));
        self
    }

    /// Leave an envelope field out (`type`, `version`, `data` included).
    pub fn without(mut self, name: &str) -> Event {
        self.fields.retain(|(n, _)| n != name);
        self.without.push(name.to_owned());
        self
    }

    /// The client-supplied event id.
    pub fn id(self, id: &str) -> Event {
        self.field("id", id)
    }

    /// The event's source.
    pub fn source(self, source: &str) -> Event {
        self.field("source", source)
    }

    /// The ordering key.
    pub fn key(self, key: &str) -> Event {
        self.field("key", key)
    }

    /// The subject.
    pub fn subject(self, subject: &str) -> Event {
        self.field("subject", subject)
    }

    /// Another type.
    pub fn ty(mut self, ty: &str) -> Event {
        self.ty = ty.to_owned();
        self
    }

    /// Another version.
    pub fn version(mut self, version: &str) -> Event {
        self.version = version.to_owned();
        self
    }

    /// Replace `data` entirely.
    pub fn data(mut self, data: Value) -> Event {
        self.data = data;
        self
    }

    /// Set one field of `data`.
    pub fn data_field(mut self, name: &str, value: impl Into<Value>) -> Event {
        if let Some(obj) = self.data.as_object_mut() {
            obj.insert(name.to_owned(), value.into());
        }
        self
    }

    /// Remove one field of `data`.
    pub fn data_without(mut self, name: &str) -> Event {
        if let Some(obj) = self.data.as_object_mut() {
            obj.remove(name);
        }
        self
    }

    /// `data.amount` (order events).
    pub fn amount(self, amount: impl Into<Value>) -> Event {
        self.data_field("amount", amount)
    }

    /// The `data` this event carries.
    pub fn data_value(&self) -> &Value {
        &self.data
    }

    fn kept(&self, name: &str) -> bool {
        !self.without.iter().any(|n| n == name)
    }

    /// postbox's native envelope.
    pub fn json(&self) -> Value {
        let mut m = Map::new();
        if self.kept("type") {
            m.insert("type".into(), json!(self.ty));
        }
        if self.kept("version") {
            m.insert("version".into(), json!(self.version));
        }
        for (name, value) in &self.fields {
            m.insert(name.clone(), value.clone());
        }
        if self.kept("data") {
            m.insert("data".into(), self.data.clone());
        }
        Value::Object(m)
    }

    /// The native envelope as a request body.
    pub fn body(&self) -> String {
        self.json().to_string()
    }

    /// CloudEvents 1.0 structured mode: `type` is `{type}.{version}`, the ordering key is the
    /// `partitionkey` extension, every other field is an attribute.
    pub fn cloudevent(&self) -> Value {
        let mut m = Map::new();
        m.insert("specversion".into(), json!("1.0"));
        if self.kept("type") {
            m.insert(
                "type".into(),
                json!(format!("{}.{}", self.ty, self.version)),
            );
        }
        for (name, value) in &self.fields {
            let name = if name == "key" { "partitionkey" } else { name };
            m.insert(name.to_owned(), value.clone());
        }
        if self.kept("data") {
            m.insert("data".into(), self.data.clone());
        }
        Value::Object(m)
    }
}

/// A batch (JSON array) of native envelopes.
pub fn batch(events: impl IntoIterator<Item = Event>) -> Value {
    Value::Array(events.into_iter().map(|e| e.json()).collect())
}
