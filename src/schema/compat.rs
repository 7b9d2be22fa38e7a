//! Schema compatibility: is every event valid under one schema version also valid under another?
//!
//! The registry applies Confluent Schema Registry's modes to *event data*: `BACKWARD` means every
//! event valid under the previous version is valid under the new one (old ⊆ new), `FORWARD` the
//! reverse (new ⊆ old), `FULL` both, and the `_TRANSITIVE` variants check every earlier version
//! instead of only the previous one.
//!
//! The core is [`subschema`], a structural test of "instances of `narrow` ⊆ instances of
//! `wide`" over the vocabulary event schemas use. It is *sound but incomplete*: an empty answer
//! is a proof, while anything it cannot decide (two different regular expressions, `not`,
//! `unevaluatedProperties`, non-local `$ref`s, …) is reported as "cannot prove", never passed.
//!
//! How it stays sound:
//! - The wide schema is a conjunction of its keywords, so narrow ⊆ wide is checked keyword by
//!   keyword: for each constraint of `wide`, some constraint of `narrow` must imply it.
//! - The narrow side is kept as a list of conjuncts (its `allOf` members, `$ref` targets) and its
//!   `anyOf`/`oneOf` branches are distributed into separate cases, each of which must fit.
//!   Narrow keywords the checker does not understand only shrink the narrow set, so ignoring them
//!   is safe; wide keywords it does not understand could reject events, so they are reported.
//! - When the narrow side is a finite set of values (`enum`, `const`, `type: "null"`) each value
//!   is validated against the wide schema with the same validator the registry uses, which
//!   decides exactly, including `pattern` and `format`.
//! - Recursive `$ref`s are handled co-inductively: a pair already being compared further up is
//!   assumed to hold when it is met again *deeper in the event* (events are finite trees, so this
//!   is induction on their depth); met again at the same depth it is a loop and cannot be proven.
//! - Each document is read in its own dialect (`$schema`): drafts up to 7 ignore keywords next
//!   to `$ref`, `prefixItems` exists only from 2020-12, `const` only from draft 6.
//!
//! The content model decides what adding or removing a property means. In a closed model
//! (`additionalProperties: false`) events carry only listed properties, so adding an optional
//! one is BACKWARD-compatible and removing one is not. In an open model an old event may already
//! carry *any* property with *any* value: adding `note: {"type": "string"}` rejects old events
//! with `note: 5`, so it is not BACKWARD-compatible, while removing a property is.

use std::{
    collections::{BTreeSet, HashMap},
    fmt::{self, Write as _},
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How a new schema version must relate to the earlier versions of its event type.
///
/// ⊆ is transitive, so a chain of versions each compatible with the one before is compatible
/// with all of them: the `_TRANSITIVE` modes find more only when some earlier step was not
/// compatible (registered under `NONE`, or before the mode was raised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    /// Events valid under the previous version are valid under the new one.
    Backward,
    /// Events valid under any earlier version are valid under the new one.
    BackwardTransitive,
    /// Events valid under the new version are valid under the previous one.
    Forward,
    /// Events valid under the new version are valid under every earlier one.
    ForwardTransitive,
    /// `Backward` and `Forward`.
    Full,
    /// `BackwardTransitive` and `ForwardTransitive`.
    FullTransitive,
    /// No check.
    None,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 7] = [
        Mode::Backward,
        Mode::BackwardTransitive,
        Mode::Forward,
        Mode::ForwardTransitive,
        Mode::Full,
        Mode::FullTransitive,
        Mode::None,
    ];

    /// The name used in configuration and the API, e.g. `BACKWARD_TRANSITIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Backward => "BACKWARD",
            Mode::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Mode::Forward => "FORWARD",
            Mode::ForwardTransitive => "FORWARD_TRANSITIVE",
            Mode::Full => "FULL",
            Mode::FullTransitive => "FULL_TRANSITIVE",
            Mode::None => "NONE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Mode::BackwardTransitive | Mode::ForwardTransitive | Mode::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Mode::Backward | Mode::BackwardTransitive | Mode::Full | Mode::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Mode::Forward | Mode::ForwardTransitive | Mode::Full | Mode::FullTransitive
        )
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compatibility mode name that is not one of [`Mode::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown compatibility mode `{0}`: expected one of BACKWARD, BACKWARD_TRANSITIVE, FORWARD, \
     FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE, NONE"
)]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Mode, UnknownMode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMode(s.to_owned()))
    }
}

/// One reason why a new version is not (provably) compatible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Incompatibility {
    /// JSON pointer into the new schema at the breaking construct, or where it would be.
    pub pointer: String,
    /// What changed and which version's events break, for the producer who changed it.
    pub message: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pointer, self.message)
    }
}

/// Is every instance valid under `narrow` also valid under `wide`? Empty = provably yes.
///
/// Pointers point into `wide`; messages treat `narrow` as the older schema.
pub fn subschema(narrow: &Value, wide: &Value) -> Vec<Incompatibility> {
    compare(
        narrow,
        wide,
        Labels {
            narrow: "the narrow schema",
            wide: "the wide schema",
            narrow_is_new: false,
        },
    )
}

/// Check `new` (its version name and document) against the earlier versions (oldest first)
/// under `mode`; empty = compatible.
pub fn check(mode: Mode, earlier: &[(&str, &Value)], new: (&str, &Value)) -> Vec<Incompatibility> {
    let against: &[(&str, &Value)] = if mode.transitive() {
        earlier
    } else {
        earlier.last().map(std::slice::from_ref).unwrap_or(&[])
    };
    let (new_version, new_schema) = new;
    let mut out = Vec::new();
    for &(version, old) in against {
        if mode.backward() {
            out.extend(compare(
                old,
                new_schema,
                Labels {
                    narrow: version,
                    wide: new_version,
                    narrow_is_new: false,
                },
            ));
        }
        if mode.forward() {
            out.extend(compare(
                new_schema,
                old,
                Labels {
                    narrow: new_version,
                    wide: version,
                    narrow_is_new: true,
                },
            ));
        }
    }
    out
}

/// Keywords that never reject an event, so a change in them cannot break a producer.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "examples",
    "$comment",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// True when `old` and `new` differ only in annotation keywords (`title`, `description`,
/// `examples`, `$comment`, `default`, `deprecated`, `readOnly`, `writeOnly`) at any depth.
///
/// `$schema` and `$id` are not annotations here: they change how the rest is read (the dialect,
/// where `$ref`s point). Only schema positions are stripped, so a *property* named `title` is
/// still compared.
pub fn annotations_only_change(old: &Value, new: &Value) -> bool {
    strip_annotations(old) == strip_annotations(new)
}

fn strip_annotations(schema: &Value) -> Value {
    let Value::Object(m) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (k, v) in m {
        if ANNOTATIONS.contains(&k.as_str()) {
            continue;
        }
        let v = match k.as_str() {
            "additionalProperties"
            | "additionalItems"
            | "contains"
            | "propertyNames"
            | "not"
            | "if"
            | "then"
            | "else"
            | "unevaluatedItems"
            | "unevaluatedProperties"
            | "contentSchema" => strip_annotations(v),
            // `items` is a schema, or (before 2020-12) an array of them.
            "items" | "allOf" | "anyOf" | "oneOf" | "prefixItems" => match v {
                Value::Array(xs) => Value::Array(xs.iter().map(strip_annotations).collect()),
                other => strip_annotations(other),
            },
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas"
            | "dependencies" => match v {
                // `dependencies` values are schemas or arrays of names; arrays stay as they are.
                Value::Object(map) => Value::Object(
                    map.iter()
                        .map(|(name, s)| (name.clone(), strip_annotations(s)))
                        .collect(),
                ),
                other => other.clone(),
            },
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    Value::Object(out)
}

// --- types as sets --------------------------------------------------------------------------

/// A set of JSON types; `INTEGER` and `FRACTION` split "number" so that integer ⊂ number.
type Types = u8;
const NULL: Types = 1;
const BOOLEAN: Types = 2;
const OBJECT: Types = 4;
const ARRAY: Types = 8;
const INTEGER: Types = 16;
const FRACTION: Types = 32;
const STRING: Types = 64;
const NUMBER: Types = INTEGER | FRACTION;
const ANY: Types = 127;

fn type_bits(name: &str) -> Types {
    match name {
        "null" => NULL,
        "boolean" => BOOLEAN,
        "object" => OBJECT,
        "array" => ARRAY,
        "integer" => INTEGER,
        "number" => NUMBER,
        "string" => STRING,
        // Not a type: a validator refuses the schema, and the empty set is the safe reading.
        _ => 0,
    }
}

fn value_type(v: &Value) -> Types {
    match v {
        Value::Null => NULL,
        Value::Bool(_) => BOOLEAN,
        Value::Object(_) => OBJECT,
        Value::Array(_) => ARRAY,
        Value::String(_) => STRING,
        // Since draft 6, 1.0 is an integer.
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) {
                INTEGER
            } else {
                FRACTION
            }
        }
    }
}

/// The types one schema object allows by its `type`, `const` and `enum`.
fn declared_types(m: &Map<String, Value>, d: Dialect) -> Types {
    let mut t = ANY;
    match m.get("type") {
        Some(Value::String(s)) => t &= type_bits(s),
        Some(Value::Array(xs)) => {
            t &= xs
                .iter()
                .filter_map(Value::as_str)
                .fold(0, |acc, s| acc | type_bits(s));
        }
        _ => {}
    }
    if let Some(c) = m.get("const").filter(|_| !d.draft4) {
        t &= value_type(c);
    }
    if let Some(Value::Array(xs)) = m.get("enum") {
        t &= xs.iter().fold(0, |acc, x| acc | value_type(x));
    }
    t
}

fn describe_types(t: Types) -> String {
    if t == ANY {
        return "any type".to_owned();
    }
    let mut names = Vec::new();
    for (bit, name) in [
        (STRING, "string"),
        (OBJECT, "object"),
        (ARRAY, "array"),
        (BOOLEAN, "boolean"),
        (NULL, "null"),
    ] {
        if t & bit != 0 {
            names.push(name);
        }
    }
    match t & NUMBER {
        NUMBER => names.insert(0, "number"),
        INTEGER => names.insert(0, "integer"),
        FRACTION => names.insert(0, "non-integer number"),
        _ => {}
    }
    match names.as_slice() {
        [] => "nothing".to_owned(),
        [one] => format!("\"{one}\""),
        many => format!(
            "[{}]",
            many.iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

// --- small helpers --------------------------------------------------------------------------

/// Keywords that never reject anything on the wide side (annotations and structure).
fn ignorable(k: &str) -> bool {
    ANNOTATIONS.contains(&k)
        || matches!(
            k,
            "$schema"
                | "$id"
                | "$anchor"
                | "$dynamicAnchor"
                | "$recursiveAnchor"
                | "$vocabulary"
                | "$defs"
                | "definitions"
        )
}

/// `true`, `{}` or only annotations: accepts everything.
fn trivially_true(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Object(m) => m.keys().all(|k| ignorable(k)),
        _ => false,
    }
}

/// Append one reference token to a JSON pointer (RFC 6901 escaping).
fn child(base: &str, token: &str) -> String {
    format!("{base}/{}", token.replace('~', "~0").replace('/', "~1"))
}

/// A value for a message: compact JSON, cut so a huge enum cannot flood the response.
fn display(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= 60 {
        return s;
    }
    let cut: String = s.chars().take(57).collect();
    format!("{cut}…")
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A JSON pointer as a URI fragment (RFC 6901 section 6).
fn percent_encode_fragment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Does every `$ref`-like keyword in `v` satisfy `ok`? (Also walks non-schema values: a false
/// "no" only costs the fast path.)
fn refs_all(v: &Value, ok: &dyn Fn(&str) -> bool) -> bool {
    match v {
        Value::Object(m) => m.iter().all(|(k, x)| {
            let this_ok = match (k.as_str(), x) {
                ("$ref", Value::String(r)) => ok(r),
                ("$dynamicRef" | "$recursiveRef", _) => false,
                _ => true,
            };
            this_ok && refs_all(x, ok)
        }),
        Value::Array(xs) => xs.iter().all(|x| refs_all(x, ok)),
        _ => true,
    }
}

/// Does the document embed resources (`$id` below the root)? Then `#/...` inside them is
/// relative to *them*, which this checker does not track.
fn has_nested_id(root: &Value) -> bool {
    fn walk(v: &Value, depth: usize) -> bool {
        match v {
            Value::Object(m) => m
                .iter()
                .any(|(k, x)| (k == "$id" && depth > 0) || walk(x, depth + 1)),
            Value::Array(xs) => xs.iter().any(|x| walk(x, depth + 1)),
            _ => false,
        }
    }
    walk(root, 0)
}

/// Does the document use references the validator resolves in ways this checker does not
/// follow? Then the checker does not lean on the validator for it either.
fn has_dynamic_ref(v: &Value) -> bool {
    match v {
        Value::Object(m) => m
            .iter()
            .any(|(k, x)| k == "$dynamicRef" || k == "$recursiveRef" || has_dynamic_ref(x)),
        Value::Array(xs) => xs.iter().any(has_dynamic_ref),
        _ => false,
    }
}

/// Every subschema of `v` (at `ptr`), through the keywords that hold subschemas.
fn subschemas<'v>(v: &'v Value, ptr: String, out: &mut Vec<(String, &'v Value)>) {
    let Value::Object(m) = v else {
        return;
    };
    out.push((ptr.clone(), v));
    for (k, x) in m {
        let kp = child(&ptr, k);
        match (k.as_str(), x) {
            (
                "additionalProperties"
                | "additionalItems"
                | "contains"
                | "propertyNames"
                | "not"
                | "if"
                | "then"
                | "else"
                | "unevaluatedItems"
                | "unevaluatedProperties"
                | "contentSchema"
                | "items",
                Value::Object(_),
            ) => subschemas(x, kp, out),
            ("items" | "allOf" | "anyOf" | "oneOf" | "prefixItems", Value::Array(xs)) => {
                for (i, s) in xs.iter().enumerate() {
                    subschemas(s, child(&kp, &i.to_string()), out);
                }
            }
            (
                "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas"
                | "dependencies",
                Value::Object(map),
            ) => {
                for (name, s) in map {
                    subschemas(s, child(&kp, name), out);
                }
            }
            _ => {}
        }
    }
}

/// A subschema that reaches itself through keywords applying to the *same* value (`$ref`,
/// `allOf`, `anyOf`, `oneOf`, `not`, `if`/`then`/`else`, `dependentSchemas`): validation of it
/// never ends in theory, and validators disagree on what it means in practice. Returns where.
fn unproductive_loop(root: &Value) -> Option<String> {
    let mut nodes = Vec::new();
    subschemas(root, String::new(), &mut nodes);
    let edges: HashMap<&str, Vec<String>> = nodes
        .iter()
        .map(|(ptr, v)| (ptr.as_str(), in_place(root, ptr, v)))
        .collect();
    // Depth-first search; 1 = on the current path, 2 = done.
    let mut state: HashMap<String, u8> = HashMap::new();
    for (start, _) in &nodes {
        if state.contains_key(start) {
            continue;
        }
        let mut stack: Vec<(String, usize)> = vec![(start.clone(), 0)];
        state.insert(start.clone(), 1);
        while let Some((ptr, i)) = stack.pop() {
            let next = edges.get(ptr.as_str()).and_then(|e| e.get(i)).cloned();
            let Some(next) = next else {
                state.insert(ptr, 2);
                continue;
            };
            stack.push((ptr, i + 1));
            match state.get(&next) {
                Some(1) => return Some(next),
                Some(_) => {}
                None => {
                    state.insert(next.clone(), 1);
                    stack.push((next, 0));
                }
            }
        }
    }
    None
}

/// The subschemas that apply to the same value as the one at `ptr`.
fn in_place(root: &Value, ptr: &str, v: &Value) -> Vec<String> {
    let Value::Object(m) = v else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(target) = m
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
        .and_then(percent_decode)
        .filter(|p| root.pointer(p).is_some())
    {
        out.push(target);
    }
    for kw in ["allOf", "anyOf", "oneOf"] {
        let n = m.get(kw).and_then(Value::as_array).map_or(0, Vec::len);
        out.extend((0..n).map(|i| child(&child(ptr, kw), &i.to_string())));
    }
    for kw in ["not", "if", "then", "else"] {
        if m.get(kw).is_some_and(Value::is_object) {
            out.push(child(ptr, kw));
        }
    }
    for kw in ["dependentSchemas", "dependencies"] {
        if let Some(Value::Object(map)) = m.get(kw) {
            for (name, s) in map {
                if s.is_object() {
                    out.push(child(&child(ptr, kw), name));
                }
            }
        }
    }
    out
}

/// What the `$schema` of a document changes in how its keywords read. Keywords a dialect does
/// not have are ignored by the validator, so the narrow side must not count on them.
#[derive(Clone, Copy)]
struct Dialect {
    /// Drafts up to 7 ignore every keyword next to `$ref`; 2019-09 and later apply both.
    legacy_ref: bool,
    /// `prefixItems` exists from 2020-12 (earlier drafts write tuples as `items: [...]`).
    prefix_items: bool,
    /// Draft 4 and earlier: no `const`, and 1.0 is not an integer.
    draft4: bool,
}

impl Dialect {
    /// No `$schema` means 2020-12, the validator's default.
    fn of(root: &Value) -> Dialect {
        let s = root
            .get("$schema")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let draft4 = s.contains("draft-03") || s.contains("draft-04");
        let legacy_ref = draft4 || s.contains("draft-06") || s.contains("draft-07");
        Dialect {
            legacy_ref,
            prefix_items: !legacy_ref && !s.contains("2019-09"),
            draft4,
        }
    }
}

/// Does a keyword next to `unevaluated*` apply more subschemas to the same value, which could
/// evaluate properties or items? Without one, `unevaluated*` sees exactly what the adjacent
/// `properties`/`patternProperties` (or `prefixItems`/`items`) left over.
fn evaluates_in_place(m: &Map<String, Value>) -> bool {
    [
        "$ref",
        "$dynamicRef",
        "$recursiveRef",
        "allOf",
        "anyOf",
        "oneOf",
        "if",
        "then",
        "else",
        "dependentSchemas",
        "dependencies",
    ]
    .iter()
    .any(|k| m.contains_key(*k))
}

/// What properties not named by `properties`/`patternProperties` must satisfy, and the keyword
/// that says so: `additionalProperties`, or `unevaluatedProperties` (2019-09 on) when nothing
/// else can evaluate them — 2020-12's usual way to close a model.
fn other_properties(m: &Map<String, Value>, d: Dialect) -> Option<(&Value, &'static str)> {
    if let Some(a) = m.get("additionalProperties") {
        return Some((a, "additionalProperties"));
    }
    let u = m
        .get("unevaluatedProperties")
        .filter(|_| !d.legacy_ref && !evaluates_in_place(m))?;
    Some((u, "unevaluatedProperties"))
}

fn string_list(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::Array(xs)) => xs.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Is `m` a multiple of `of`? Within floating-point noise, as validators also compute it.
fn is_multiple(m: f64, of: f64) -> bool {
    if of <= 0.0 || m <= 0.0 {
        return false;
    }
    let ratio = m / of;
    ratio.round() >= 1.0 && (ratio - ratio.round()).abs() <= 1e-9 * ratio.abs().max(1.0)
}

/// The type a keyword constrains (it accepts every value of the other types); `None` for
/// keywords that are not type-specific or not known.
fn applies_to(k: &str) -> Option<Types> {
    Some(match k {
        "minimum" | "exclusiveMinimum" | "maximum" | "exclusiveMaximum" | "multipleOf" => NUMBER,
        "minLength" | "maxLength" | "pattern" | "format" => STRING,
        "minItems" | "maxItems" | "uniqueItems" | "unevaluatedItems" => ARRAY,
        "properties"
        | "required"
        | "additionalProperties"
        | "patternProperties"
        | "minProperties"
        | "maxProperties"
        | "propertyNames"
        | "dependentRequired"
        | "dependentSchemas"
        | "dependencies"
        | "unevaluatedProperties" => OBJECT,
        _ => return None,
    })
}

/// Where the whole root document sits inside the wrapper built by [`build_validator`].
const ROOT_KEY: &str = "__postbox_compat_root";

/// A validator for the subschema at `ptr` of `root`, built like the registry builds its own
/// (formats asserted). The root is embedded under `$defs` so the subschema's `#/$defs/...`
/// references still resolve; `None` when that does not compile (remote references, …).
fn build_validator(root: &Value, ptr: &str) -> Option<jsonschema::Validator> {
    let mut defs = Map::new();
    if let Some(Value::Object(d)) = root.get("$defs") {
        defs.extend(d.clone());
    }
    let mut inner = root.clone();
    if let Value::Object(m) = &mut inner {
        m.remove("$schema");
    }
    defs.insert(ROOT_KEY.to_owned(), inner);
    let mut wrapper = Map::new();
    if let Some(s) = root.get("$schema") {
        wrapper.insert("$schema".to_owned(), s.clone());
    }
    if let Some(d) = root.get("definitions") {
        wrapper.insert("definitions".to_owned(), d.clone());
    }
    wrapper.insert("$defs".to_owned(), Value::Object(defs));
    wrapper.insert(
        "$ref".to_owned(),
        Value::String(format!(
            "#/$defs/{ROOT_KEY}{}",
            percent_encode_fragment(ptr)
        )),
    );
    jsonschema::options()
        .should_validate_formats(true)
        .build(&Value::Object(wrapper))
        .ok()
}

/// Map a failing keyword's location in the wrapper back to the schema document.
fn schema_location(path: &str, fallback: &str) -> String {
    let prefix = format!("/$defs/{ROOT_KEY}");
    match path.strip_prefix(&prefix) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.to_owned(),
        // Copies of the root's own `$defs`/`definitions` sit at the same place in the wrapper.
        _ if path.starts_with("/$defs/") || path.starts_with("/definitions/") => path.to_owned(),
        _ => fallback.to_owned(),
    }
}

// --- the checker ----------------------------------------------------------------------------

/// How to name the two sides in messages.
struct Labels<'a> {
    narrow: &'a str,
    wide: &'a str,
    /// FORWARD checks new ⊆ old: pointers then go into the narrow side, and "added"/"removed"
    /// are read from old to new.
    narrow_is_new: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Narrow,
    Wide,
}

/// One conjunct of the narrow side: a schema and where it is in the narrow document.
#[derive(Clone)]
struct Part<'a> {
    v: &'a Value,
    ptr: String,
}

/// The narrow side at one position: the conjunction of `parts`, restricted to `types`.
#[derive(Clone)]
struct Narrow<'a> {
    parts: Vec<Part<'a>>,
    types: Types,
    /// Where to point in the narrow document when something is missing there.
    np: String,
}

impl<'a> Narrow<'a> {
    fn one(v: &'a Value, ptr: String) -> Narrow<'a> {
        Narrow {
            parts: vec![Part {
                v,
                ptr: ptr.clone(),
            }],
            types: ANY,
            np: ptr,
        }
    }

    fn objects(&self) -> impl Iterator<Item = (&'a Map<String, Value>, &str)> {
        self.parts.iter().filter_map(|p| match p.v {
            Value::Object(m) => Some((m, p.ptr.as_str())),
            _ => None,
        })
    }

    fn requires(&self, name: &str) -> bool {
        self.objects()
            .any(|(m, _)| string_list(m.get("required")).contains(&name))
    }

    /// A part with `additionalProperties: false` (or the like) and no `patternProperties`: its
    /// events carry only the properties it lists.
    fn closed_part(&self, d: Dialect) -> Option<&'a Map<String, Value>> {
        self.objects().map(|(m, _)| m).find(|m| {
            other_properties(m, d).is_some_and(|(v, _)| *v == Value::Bool(false))
                && m.get("patternProperties")
                    .and_then(Value::as_object)
                    .is_none_or(Map::is_empty)
        })
    }
}

// Limits that keep a hostile or runaway schema from stalling a registry request; past them the
// answer is "cannot prove", never "compatible".
/// Subset and disjointness tests per comparison (a few thousand cover hundreds of properties
/// under a handful of `anyOf` branches).
const MAX_STEPS: usize = 5_000;
/// The one reason given when a limit is hit.
const TOO_BIG: &str = "the schemas are too large, too branched or too deeply nested to compare";
/// Nested subset tests (schema depth, plus `$ref`/`allOf` hops).
const MAX_DEPTH: usize = 128;
/// Cases the narrow side's `anyOf`/`oneOf` branches may multiply into.
const MAX_BRANCHES: usize = 64;
/// Conjuncts followed while flattening one narrow position (`$ref`/`allOf` loops end here).
const MAX_EXPANSION: usize = 1_000;
/// Nesting of disjointness proofs (discriminators inside discriminators).
const MAX_DISJOINT_DEPTH: usize = 6;

/// One comparison of a narrow document against a wide one.
struct Checker<'a> {
    roots: [&'a Value; 2],
    dialects: [Dialect; 2],
    nested_ids: [bool; 2],
    /// The document resolves references in ways this checker does not follow (nested `$id`,
    /// `$dynamicRef`): its values are not validated here.
    opaque: [bool; 2],
    /// Both documents use the same dialect (`$schema`): equal subschemas mean the same.
    same_dialect: bool,
    /// `$defs`/`definitions` are equal: equal subschemas that only refer into them mean the same.
    defs_equal: bool,
    labels: Labels<'a>,
    /// Where in the event we are, for messages; its length is the event depth.
    ipath: Vec<String>,
    /// Pairs being compared further up, with the event depth they were met at.
    assumed: Vec<(String, usize)>,
    steps: usize,
    depth: usize,
    out: Vec<Incompatibility>,
    validators: HashMap<(Side, String), Option<jsonschema::Validator>>,
    patterns: HashMap<String, Option<jsonschema::Validator>>,
}

fn compare(narrow: &Value, wide: &Value, labels: Labels<'_>) -> Vec<Incompatibility> {
    // Annotations never reject anything.
    if narrow == wide || annotations_only_change(narrow, wide) {
        return Vec::new();
    }
    for (doc, label, is_new) in [
        (narrow, labels.narrow, labels.narrow_is_new),
        (wide, labels.wide, !labels.narrow_is_new),
    ] {
        if let Some(at) = unproductive_loop(doc) {
            let message = format!(
                "cannot prove that events valid under {} are valid under {}: `{at}` in {label} \
                 leads back to itself without descending into the event, so what it accepts is \
                 not defined",
                labels.narrow, labels.wide
            );
            return vec![Incompatibility {
                pointer: if is_new { at } else { String::new() },
                message,
            }];
        }
    }
    let nested_ids = [has_nested_id(narrow), has_nested_id(wide)];
    let same_dialect = narrow.get("$schema") == wide.get("$schema");
    let mut c = Checker {
        roots: [narrow, wide],
        dialects: [Dialect::of(narrow), Dialect::of(wide)],
        nested_ids,
        opaque: [
            nested_ids[0] || has_dynamic_ref(narrow),
            nested_ids[1] || has_dynamic_ref(wide),
        ],
        same_dialect,
        defs_equal: same_dialect
            && !nested_ids[0]
            && !nested_ids[1]
            && narrow.get("$defs") == wide.get("$defs")
            && narrow.get("definitions") == wide.get("definitions"),
        labels,
        ipath: Vec::new(),
        assumed: Vec::new(),
        steps: 0,
        depth: 0,
        out: Vec::new(),
        validators: HashMap::new(),
        patterns: HashMap::new(),
    };
    c.sub(&Narrow::one(narrow, String::new()), wide, "");
    let mut seen = BTreeSet::new();
    let mut too_big = false;
    c.out.retain(|i| {
        // One "too large" is enough; where the budget ran out says nothing.
        let first_too_big = if i.message.ends_with(TOO_BIG) {
            !std::mem::replace(&mut too_big, true)
        } else {
            true
        };
        first_too_big && seen.insert((i.pointer.clone(), i.message.clone()))
    });
    c.out
}

impl<'a> Checker<'a> {
    fn root(&self, side: Side) -> &'a Value {
        self.roots[side as usize]
    }

    fn dialect(&self, side: Side) -> Dialect {
        self.dialects[side as usize]
    }

    // --- reporting --------------------------------------------------------------------------

    fn path(&self, extra: Option<&str>) -> String {
        let mut s = String::new();
        for seg in self.ipath.iter().map(String::as_str).chain(extra) {
            if !s.is_empty() && !seg.starts_with('[') {
                s.push('.');
            }
            s.push_str(seg);
        }
        s
    }

    fn report(&mut self, n_loc: &str, w_loc: &str, what: &str, proven: bool, subject: bool) {
        let pointer = if self.labels.narrow_is_new {
            n_loc
        } else {
            w_loc
        };
        let subject = if subject && !self.ipath.is_empty() {
            format!("`{}`: ", self.path(None))
        } else {
            String::new()
        };
        let (n, w) = (self.labels.narrow, self.labels.wide);
        let message = if proven {
            format!("{subject}{what}: events valid under {n} may be invalid under {w}")
        } else {
            format!("{subject}cannot prove that events valid under {n} are valid under {w}: {what}")
        };
        self.out.push(Incompatibility {
            pointer: pointer.to_owned(),
            message,
        });
    }

    fn breaks(&mut self, n_loc: &str, w_loc: &str, what: &str) {
        self.report(n_loc, w_loc, what, true, true);
    }

    fn unproven(&mut self, n_loc: &str, w_loc: &str, what: &str) {
        self.report(n_loc, w_loc, what, false, true);
    }

    /// "`kw` rose from 0 to 1", read from the old version to the new one whichever side is
    /// narrow.
    fn change(&self, kw: &str, narrow: Option<String>, wide: Option<String>) -> String {
        let (old, new) = if self.labels.narrow_is_new {
            (wide, narrow)
        } else {
            (narrow, wide)
        };
        match (old, new) {
            (None, Some(n)) => format!("`{kw}` {n} was added"),
            (Some(o), None) => format!("`{kw}` {o} was removed"),
            (Some(o), Some(n)) => {
                let verb = match (o.parse::<f64>(), n.parse::<f64>()) {
                    (Ok(a), Ok(b)) if b > a => "rose",
                    (Ok(a), Ok(b)) if b < a => "fell",
                    _ => "changed",
                };
                format!("`{kw}` {verb} from {o} to {n}")
            }
            (None, None) => format!("`{kw}` changed"),
        }
    }

    /// Run `f`, returning what it found instead of reporting it (to try alternatives).
    fn probe(&mut self, f: impl FnOnce(&mut Self)) -> Vec<Incompatibility> {
        let saved = std::mem::take(&mut self.out);
        f(self);
        std::mem::replace(&mut self.out, saved)
    }

    fn fits(&mut self, n: &Narrow<'a>, w: &'a Value, wp: &str) -> bool {
        self.probe(|c| c.sub(n, w, wp)).is_empty()
    }

    // --- resolution -------------------------------------------------------------------------

    fn same(&self, a: &Value, b: &Value) -> bool {
        a == b
            && self.same_dialect
            && refs_all(a, &|r| {
                self.defs_equal && (r.starts_with("#/$defs/") || r.starts_with("#/definitions/"))
            })
    }

    fn resolve(&self, side: Side, r: &str) -> Result<(&'a Value, String), String> {
        let label = match side {
            Side::Narrow => self.labels.narrow,
            Side::Wide => self.labels.wide,
        };
        if self.nested_ids[side as usize] {
            return Err(format!(
                "`$ref` {r} in {label} is not followed: the document embeds resources with their \
                 own `$id`"
            ));
        }
        let Some(fragment) = r.strip_prefix('#') else {
            return Err(format!(
                "`$ref` {r} in {label} points outside the document; only `#/...` references \
                 are followed"
            ));
        };
        let ptr = percent_decode(fragment)
            .filter(|p| p.is_empty() || p.starts_with('/'))
            .ok_or_else(|| {
                format!("`$ref` {r} in {label} is not a JSON pointer (anchors are not followed)")
            })?;
        match self.root(side).pointer(&ptr) {
            Some(v) => Ok((v, ptr)),
            None => Err(format!("`$ref` {r} in {label} points to nothing")),
        }
    }

    /// Split the narrow side into cases (its `anyOf`/`oneOf` branches), each a flat list of
    /// conjuncts with `$ref`s and `allOf`s followed. `oneOf` is read as `anyOf`: it accepts a
    /// subset of what `anyOf` does, so this only makes the narrow side larger (safe).
    ///
    /// A conjunct met twice in one case is skipped (A ∧ A = A): that keeps expanding an already
    /// expanded side idempotent, which the co-induction keys rely on, and ends `$ref` loops.
    fn expand(&self, n: &Narrow<'a>) -> Result<Vec<Narrow<'a>>, String> {
        let mut out = Vec::new();
        let mut stack = vec![Case {
            pending: n.parts.iter().rev().cloned().collect(),
            done: Vec::new(),
            seen: BTreeSet::new(),
        }];
        let mut work = 0;
        while let Some(mut case) = stack.pop() {
            let Some(part) = case.pending.pop() else {
                let np = case
                    .done
                    .first()
                    .map_or_else(|| n.np.clone(), |p| p.ptr.clone());
                out.push(Narrow {
                    parts: case.done,
                    types: n.types,
                    np,
                });
                continue;
            };
            work += 1;
            if work > MAX_EXPANSION || out.len() + stack.len() > MAX_BRANCHES {
                return Err(format!(
                    "{} nests `$ref`/`allOf`/`anyOf` too deeply to compare",
                    self.labels.narrow
                ));
            }
            if !case.seen.insert(part.ptr.clone()) {
                stack.push(case);
                continue;
            }
            let m = match part.v {
                Value::Bool(true) => {
                    stack.push(case);
                    continue;
                }
                // This case accepts nothing: nothing to check.
                Value::Bool(false) => continue,
                Value::Object(m) => m,
                _ => return Err(format!("{} is not a schema", part.ptr)),
            };
            let Unfolded {
                children,
                groups,
                keep,
            } = self.unfold(&part, m)?;
            if keep {
                case.done.push(part);
            }
            case.pending.extend(children.into_iter().rev());
            let mut cases = vec![case];
            for group in groups {
                cases = cases
                    .iter()
                    .flat_map(|c| {
                        group.iter().map(move |branch| {
                            let mut c = c.clone();
                            c.pending.push(branch.clone());
                            c
                        })
                    })
                    .collect();
                if cases.len() > MAX_BRANCHES {
                    return Err(format!(
                        "{} has too many combinations of `anyOf`/`oneOf` branches to compare",
                        self.labels.narrow
                    ));
                }
            }
            stack.extend(cases.into_iter().rev());
        }
        Ok(out)
    }

    /// What one narrow conjunct brings in: `$ref` targets and `allOf` members (conjuncts),
    /// `anyOf`/`oneOf` branches (alternatives), and whether its own keywords still count.
    fn unfold(&self, part: &Part<'a>, m: &'a Map<String, Value>) -> Result<Unfolded<'a>, String> {
        let mut out = Unfolded {
            children: Vec::new(),
            groups: Vec::new(),
            keep: true,
        };
        if let Some(r) = m.get("$ref") {
            let r = r.as_str().ok_or("`$ref` is not a string")?;
            let (v, ptr) = self.resolve(Side::Narrow, r)?;
            out.children.push(Part { v, ptr });
            if self.dialect(Side::Narrow).legacy_ref {
                // Draft 7 and earlier ignore everything next to `$ref`.
                out.keep = false;
                return Ok(out);
            }
        }
        let listed = |kw: &str| -> Vec<Part<'a>> {
            m.get(kw)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(i, v)| Part {
                    v,
                    ptr: child(&child(&part.ptr, kw), &i.to_string()),
                })
                .collect()
        };
        out.children.extend(listed("allOf"));
        out.groups = ["anyOf", "oneOf"]
            .into_iter()
            .map(listed)
            .filter(|g| !g.is_empty())
            .collect();
        // A conjunct that only refers elsewhere adds nothing itself.
        out.keep = m
            .keys()
            .any(|k| !ignorable(k) && !matches!(k.as_str(), "$ref" | "allOf" | "anyOf" | "oneOf"));
        Ok(out)
    }

    fn narrow_types(&self, n: &Narrow<'a>) -> Types {
        n.parts.iter().fold(n.types, |t, p| match p.v {
            Value::Object(m) => t & declared_types(m, self.dialect(Side::Narrow)),
            Value::Bool(false) => 0,
            _ => t,
        })
    }

    /// The narrow side's schema for property `name`: what each conjunct applies to it
    /// (`properties`, matching `patternProperties`, else `additionalProperties`). No parts =
    /// anything goes.
    fn narrow_prop(&mut self, n: &Narrow<'a>, name: &str) -> Narrow<'a> {
        let mut parts = Vec::new();
        for (m, ptr) in n.objects() {
            let listed = m.get("properties").and_then(|p| p.get(name));
            if let Some(v) = listed {
                parts.push(Part {
                    v,
                    ptr: child(&child(ptr, "properties"), name),
                });
            }
            let mut matched = false;
            let mut unknown = false;
            if let Some(Value::Object(pp)) = m.get("patternProperties") {
                for (pat, v) in pp {
                    match self.name_matches(pat, name) {
                        Some(true) => {
                            matched = true;
                            parts.push(Part {
                                v,
                                ptr: child(&child(ptr, "patternProperties"), pat),
                            });
                        }
                        Some(false) => {}
                        // Leaving out a schema that might apply only makes the narrow side
                        // larger; applying `additionalProperties` when it might not would not.
                        None => unknown = true,
                    }
                }
            }
            if listed.is_none()
                && !matched
                && !unknown
                && let Some((v, kw)) = other_properties(m, self.dialect(Side::Narrow))
            {
                parts.push(Part {
                    v,
                    ptr: child(ptr, kw),
                });
            }
        }
        Narrow {
            parts,
            types: ANY,
            np: child(&child(&n.np, "properties"), name),
        }
    }

    /// Is the narrow side empty (no instance at all)?
    fn provably_empty(&self, n: &Narrow<'a>) -> bool {
        self.expand(n)
            .is_ok_and(|ds| ds.iter().all(|d| self.narrow_types(d) == 0))
    }

    // --- validation through the real validator ---------------------------------------------

    fn validate(&mut self, side: Side, ptr: &str, value: &Value) -> Option<Result<(), String>> {
        if self.opaque[side as usize] {
            return None;
        }
        let root = self.root(side);
        let validator = self
            .validators
            .entry((side, ptr.to_owned()))
            .or_insert_with(|| build_validator(root, ptr))
            .as_ref()?;
        Some(match validator.iter_errors(value).next() {
            None => Ok(()),
            Some(e) => Err(schema_location(e.schema_path().as_str(), ptr)),
        })
    }

    /// Does property name `name` match ECMA-262 regex `pattern`? `None` if it does not compile.
    fn name_matches(&mut self, pattern: &str, name: &str) -> Option<bool> {
        let validator = self
            .patterns
            .entry(pattern.to_owned())
            .or_insert_with(|| {
                jsonschema::validator_for(&serde_json::json!({ "pattern": pattern })).ok()
            })
            .as_ref()?;
        Some(validator.is_valid(&Value::String(name.to_owned())))
    }

    /// The values the narrow side can take, when it is a finite list: `const`, `enum`, or only
    /// `null`/`boolean`. Values other conjuncts reject are dropped.
    fn finite_values(&mut self, n: &Narrow<'a>, nt: Types) -> Option<(Vec<Value>, String)> {
        let mut found = None;
        for (m, ptr) in n.objects() {
            if let Some(c) = m
                .get("const")
                .filter(|_| !self.dialect(Side::Narrow).draft4)
            {
                found = Some((vec![c.clone()], child(ptr, "const")));
                break;
            }
            if let Some(Value::Array(xs)) = m.get("enum") {
                found = Some((xs.clone(), child(ptr, "enum")));
                break;
            }
        }
        if found.is_none() && nt & !(NULL | BOOLEAN) == 0 {
            let values = vec![Value::Null, Value::Bool(false), Value::Bool(true)];
            found = Some((values, child(&n.np, "type")));
        }
        let (values, loc) = found?;
        let mut kept = Vec::new();
        for v in values {
            if value_type(&v) & nt == 0 {
                continue;
            }
            let parts: Vec<String> = n.parts.iter().map(|p| p.ptr.clone()).collect();
            let rejected = parts
                .iter()
                .any(|ptr| matches!(self.validate(Side::Narrow, ptr, &v), Some(Err(_))));
            if !rejected {
                kept.push(v);
            }
        }
        Some((kept, loc))
    }

    /// Decide exactly when the narrow side is a finite list of values: validate each one
    /// against the wide schema. False if that is not possible (then the structural rules run).
    fn finite(&mut self, n: &Narrow<'a>, nt: Types, wp: &str) -> bool {
        let Some((values, n_loc)) = self.finite_values(n, nt) else {
            return false;
        };
        let mut rejected = Vec::new();
        for v in values {
            match self.validate(Side::Wide, wp, &v) {
                None => return false,
                Some(Ok(())) => {}
                Some(Err(w_loc)) => rejected.push((v, w_loc)),
            }
        }
        for (v, w_loc) in rejected {
            let kw = w_loc.rsplit('/').next().unwrap_or_default();
            let what = if kw == "enum" || kw == "const" {
                let verb = if self.labels.narrow_is_new {
                    "added"
                } else {
                    "removed"
                };
                format!("value {} was {verb}", display(&v))
            } else {
                format!(
                    "value {} is allowed by {} but rejected by `{kw}` in {}",
                    display(&v),
                    self.labels.narrow,
                    self.labels.wide
                )
            };
            self.breaks(&n_loc, &w_loc, &what);
        }
        true
    }

    // --- the subset test --------------------------------------------------------------------

    /// Report every reason why `n` ⊄ the wide subschema `w` found at `wp`.
    fn sub(&mut self, n: &Narrow<'a>, w: &'a Value, wp: &str) {
        if trivially_true(w) || n.parts.iter().any(|p| self.same(p.v, w)) {
            return;
        }
        self.steps += 1;
        if self.steps > MAX_STEPS || self.depth >= MAX_DEPTH {
            // Reported at every call past the limit, so no probe can mistake it for a fit.
            self.unproven(&n.np, wp, TOO_BIG);
            return;
        }
        self.depth += 1;
        match self.expand(n) {
            Err(reason) => self.unproven(&n.np, wp, &reason),
            Ok(cases) => {
                for case in &cases {
                    self.sub_case(case, w, wp);
                }
            }
        }
        self.depth -= 1;
    }

    fn sub_case(&mut self, n: &Narrow<'a>, w: &'a Value, wp: &str) {
        let nt = self.narrow_types(n);
        if nt == 0 || n.parts.iter().any(|p| self.same(p.v, w)) {
            return;
        }
        let wm = match w {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                let what = if self.ipath.is_empty() {
                    format!("{} accepts no events (schema `false`)", self.labels.wide)
                } else {
                    format!(
                        "`{}` is not allowed by {} (schema `false`)",
                        self.path(None),
                        self.labels.wide
                    )
                };
                self.report(&n.np, wp, &what, true, false);
                return;
            }
            Value::Object(m) => m,
            _ => {
                self.unproven(&n.np, wp, &format!("{wp} is not a schema"));
                return;
            }
        };
        let mut key: String = n.parts.iter().map(|p| format!("{},", p.ptr)).collect();
        let _ = write!(key, "|{}|{wp}", n.types);
        let event_depth = self.ipath.len();
        if let Some(&(_, met_at)) = self.assumed.iter().find(|(k, _)| *k == key) {
            if met_at < event_depth {
                // Co-induction: this pair is being proven further up for a shallower part of
                // the event; by induction on event depth it holds here.
                return;
            }
            let what = "a `$ref` loops without descending into the event";
            self.unproven(&n.np, wp, what);
            return;
        }
        self.assumed.push((key, event_depth));
        self.against(n, nt, wm, wp);
        self.assumed.pop();
    }

    fn against(&mut self, n: &Narrow<'a>, nt: Types, wm: &'a Map<String, Value>, wp: &str) {
        if self.finite(n, nt, wp) {
            return;
        }
        if let Some(r) = wm.get("$ref") {
            let target = r
                .as_str()
                .ok_or_else(|| "`$ref` is not a string".to_owned())
                .and_then(|r| self.resolve(Side::Wide, r));
            match target {
                Ok((t, tp)) => self.sub(n, t, &tp),
                Err(reason) => self.unproven(&n.np, &child(wp, "$ref"), &reason),
            }
            if self.dialect(Side::Wide).legacy_ref {
                return;
            }
        }
        // Keywords read together, checked once.
        if nt & ARRAY != 0 {
            if [
                "items",
                "prefixItems",
                "additionalItems",
                "unevaluatedItems",
            ]
            .iter()
            .any(|k| wm.contains_key(*k))
            {
                self.check_items(n, wm, wp);
            }
            if wm.contains_key("contains") {
                self.check_group(n, &["contains", "minContains", "maxContains"], wm, wp);
            }
        }
        for (k, v) in wm {
            let kp = child(wp, k);
            match k.as_str() {
                "allOf" => {
                    for (i, member) in v.as_array().into_iter().flatten().enumerate() {
                        self.sub(n, member, &child(&kp, &i.to_string()));
                    }
                }
                "anyOf" | "oneOf" => self.branches(n, nt, k, v, &kp),
                "not" => self.check_not(n, v, &kp),
                "if" => self.conditional(n, wm, wp),
                "type" => self.check_type(n, nt, v, wp),
                "enum" | "const" => self.check_values(n, nt, k, v, wp),
                // Resolved against the dynamic scope, which this checker does not follow.
                "$dynamicRef" | "$recursiveRef" => {
                    let what = format!("`{k}` is not followed");
                    self.unproven(&n.np, &kp, &what);
                }
                // `contentSchema` applies under `contentMediaType`: compared as one.
                "contentEncoding" | "contentMediaType" | "contentSchema" => {
                    let group = ["contentEncoding", "contentMediaType", "contentSchema"];
                    self.check_group(n, &group, wm, wp);
                }
                "$ref" | "then" | "else" | "items" | "prefixItems" | "additionalItems"
                | "contains" | "minContains" | "maxContains" => {}
                k if ignorable(k) => {}
                k => match applies_to(k) {
                    Some(types) if nt & types != 0 => self.typed(n, nt, k, v, wm, wp),
                    // A keyword for types the narrow side cannot have.
                    Some(_) => {}
                    // Unknown to this checker. If the narrow side has the very same keyword
                    // and value it constrains the narrow side as much (a keyword the validator
                    // does not know is ignored by it, and those it knows that are not handled
                    // here depend only on their own value); otherwise it might reject events.
                    None => self.check_group(n, &[k], wm, wp),
                },
            }
        }
    }

    /// A wide keyword that constrains one type, when the narrow side may have that type.
    fn typed(
        &mut self,
        n: &Narrow<'a>,
        nt: Types,
        k: &str,
        v: &'a Value,
        wm: &'a Map<String, Value>,
        wp: &str,
    ) {
        match k {
            "minimum" | "exclusiveMinimum" | "maximum" | "exclusiveMaximum" => {
                self.check_bound(n, nt, k, wm, wp);
            }
            "multipleOf" => self.check_multiple(n, nt, v, wp),
            "pattern" | "format" => self.check_same_string(n, k, v, wp),
            "uniqueItems" => self.check_unique(n, v, wp),
            "unevaluatedItems" => self.check_unevaluated_items(n, wm, v, wp),
            "properties" => self.check_properties(n, v, wp),
            "required" => self.check_required(n, v, wp),
            "additionalProperties" => self.check_additional(n, wm, v, wp, k),
            "patternProperties" => self.check_patterns(n, v, wp),
            "propertyNames" => self.check_property_names(n, v, wp),
            "dependentRequired" | "dependentSchemas" | "dependencies" => {
                self.check_group(n, &[k], wm, wp);
            }
            "unevaluatedProperties" => self.check_unevaluated_properties(n, wm, v, wp),
            // The counts: `minLength`, `maxLength`, `minItems`, `maxItems`, `minProperties`,
            // `maxProperties`, with what the narrow side implies without saying.
            _ => {
                let implied = self.implied_count(n, k);
                let found = self.narrow_counts(n, k, implied);
                self.check_count(n, k, found, v, wp);
            }
        }
    }

    /// Counts the narrow side implies: a closed tuple's length, the number of required
    /// properties, a closed model's number of properties.
    fn implied_count(&self, n: &Narrow<'a>, k: &str) -> Vec<(f64, String)> {
        match k {
            "maxItems" => self.narrow_tuple_max(n).into_iter().collect(),
            "minProperties" => {
                let required: BTreeSet<&str> = n
                    .objects()
                    .flat_map(|(m, _)| string_list(m.get("required")))
                    .collect();
                vec![(required.len() as f64, required.len().to_string())]
            }
            "maxProperties" => n
                .closed_part(self.dialect(Side::Narrow))
                .and_then(|m| m.get("properties"))
                .and_then(Value::as_object)
                .map(|p| vec![(p.len() as f64, p.len().to_string())])
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Wide keywords checked only by equality: some narrow conjunct must carry the same values
    /// for the whole group (absent = absent).
    fn check_group(&mut self, n: &Narrow<'a>, keys: &[&str], wm: &Map<String, Value>, wp: &str) {
        let matches = n.objects().any(|(m, _)| {
            keys.iter().all(|k| match (m.get(*k), wm.get(*k)) {
                (None, None) => true,
                (Some(a), Some(b)) => self.same(a, b),
                _ => false,
            })
        });
        if matches {
            return;
        }
        let k = keys.first().copied().unwrap_or_default();
        let narrow = n.objects().find_map(|(m, _)| m.get(k)).map(display);
        let what = self.change(k, narrow, wm.get(k).map(display));
        self.unproven(&child(&n.np, k), &child(wp, k), &what);
    }

    fn check_type(&mut self, n: &Narrow<'a>, nt: Types, v: &Value, wp: &str) {
        let wt = match v {
            Value::String(s) => type_bits(s),
            Value::Array(xs) => xs
                .iter()
                .filter_map(Value::as_str)
                .fold(0, |acc, s| acc | type_bits(s)),
            _ => ANY,
        };
        // Draft 4 does not count 1.0 as an integer; later drafts do.
        let integer_gap = self.dialect(Side::Wide).draft4
            && !self.dialect(Side::Narrow).draft4
            && nt & INTEGER != 0
            && wt & FRACTION == 0;
        if integer_gap && nt & !wt == 0 {
            let what = "`integer` in draft 4 excludes numbers like 1.0 that later drafts accept";
            self.unproven(&child(&n.np, "type"), &child(wp, "type"), what);
        }
        if nt & !wt != 0 {
            let what = self.change("type", Some(describe_types(nt)), Some(describe_types(wt)));
            self.breaks(&child(&n.np, "type"), &child(wp, "type"), &what);
        }
    }

    /// Wide `enum`/`const` when the finite path could not decide.
    fn check_values(&mut self, n: &Narrow<'a>, nt: Types, k: &str, v: &Value, wp: &str) {
        let allowed: Vec<&Value> = match (k, v) {
            ("const", v) => vec![v],
            (_, Value::Array(xs)) => xs.iter().collect(),
            _ => Vec::new(),
        };
        let narrow = n.objects().find_map(|(m, ptr)| {
            m.get("const")
                .filter(|_| !self.dialect(Side::Narrow).draft4)
                .map(|c| (vec![c.clone()], child(ptr, "const")))
                .or_else(|| {
                    m.get("enum")
                        .and_then(Value::as_array)
                        .map(|xs| (xs.clone(), child(ptr, "enum")))
                })
        });
        match narrow {
            Some((values, n_loc)) => {
                for x in values {
                    if value_type(&x) & nt != 0 && !allowed.contains(&&x) {
                        let verb = if self.labels.narrow_is_new {
                            "added"
                        } else {
                            "removed"
                        };
                        let what = format!("value {} was {verb}", display(&x));
                        self.breaks(&n_loc, &child(wp, k), &what);
                    }
                }
            }
            None => {
                let what = self.change(k, None, Some(display(v)));
                self.breaks(&child(&n.np, k), &child(wp, k), &what);
            }
        }
    }

    /// `minimum`/`exclusiveMinimum`/`maximum`/`exclusiveMaximum` of the wide side.
    fn check_bound(
        &mut self,
        n: &Narrow<'a>,
        nt: Types,
        k: &str,
        wm: &Map<String, Value>,
        wp: &str,
    ) {
        let lower = k.ends_with("inimum");
        let Some(wide) = bound_of(wm, k, self.dialect(Side::Wide)) else {
            // Draft 4 reads `exclusiveMinimum: true` with `minimum` and ignores a number there.
            return;
        };
        let integer_only = nt & NUMBER == INTEGER;
        let mut best: Option<(Bound, String)> = None;
        for (m, ptr) in n.objects() {
            let kws: [&str; 2] = if lower {
                ["minimum", "exclusiveMinimum"]
            } else {
                ["maximum", "exclusiveMaximum"]
            };
            for kw in kws {
                let Some(mut b) = bound_of(m, kw, self.dialect(Side::Narrow)) else {
                    continue;
                };
                if integer_only {
                    b = b.for_integers(lower);
                }
                if best
                    .as_ref()
                    .is_none_or(|(cur, _)| b.tighter_than(cur, lower))
                {
                    best = Some((b, child(ptr, kw)));
                }
            }
        }
        let ok = best.as_ref().is_some_and(|(b, _)| b.within(&wide, lower));
        if ok {
            return;
        }
        let what = match &best {
            Some((b, _)) if b.keyword == wide.keyword => {
                self.change(k, Some(b.shown.clone()), Some(wide.shown.clone()))
            }
            Some((b, _)) => {
                let (old, new) = if self.labels.narrow_is_new {
                    (&wide, b)
                } else {
                    (b, &wide)
                };
                let side = if lower { "lower" } else { "upper" };
                format!(
                    "{side} bound changed from `{}` {} to `{}` {}",
                    old.keyword, old.shown, new.keyword, new.shown
                )
            }
            None => self.change(k, None, Some(wide.shown.clone())),
        };
        let n_loc = best.map_or_else(|| child(&n.np, k), |(_, loc)| loc);
        self.breaks(&n_loc, &child(wp, k), &what);
    }

    fn check_multiple(&mut self, n: &Narrow<'a>, nt: Types, v: &Value, wp: &str) {
        let Some(of) = v.as_f64() else {
            return;
        };
        let mut candidates: Vec<f64> = n
            .objects()
            .filter_map(|(m, _)| m.get("multipleOf").and_then(Value::as_f64))
            .collect();
        // Every integer is a multiple of 1.
        if nt & NUMBER == INTEGER {
            candidates.push(1.0);
        }
        if candidates.iter().any(|&m| is_multiple(m, of)) {
            return;
        }
        let narrow = n
            .objects()
            .find_map(|(m, _)| m.get("multipleOf"))
            .map(display);
        let what = self.change("multipleOf", narrow, Some(display(v)));
        self.breaks(&child(&n.np, "multipleOf"), &child(wp, "multipleOf"), &what);
    }

    /// The narrow side's values of a count keyword (`minLength`, `maxItems`, …) plus implied ones.
    fn narrow_counts(
        &self,
        n: &Narrow<'a>,
        k: &str,
        mut implied: Vec<(f64, String)>,
    ) -> Vec<(f64, String)> {
        for (m, _) in n.objects() {
            if let Some(x) = m.get(k).and_then(Value::as_f64) {
                implied.push((x, display(&m[k])));
            }
        }
        implied
    }

    /// `min*` on the wide side needs a narrow value at least as high; `max*` at most as high.
    fn check_count(
        &mut self,
        n: &Narrow<'a>,
        k: &str,
        narrow: Vec<(f64, String)>,
        v: &Value,
        wp: &str,
    ) {
        let Some(wide) = v.as_f64() else {
            return;
        };
        let lower = k.starts_with("min");
        let best = narrow.into_iter().reduce(|a, b| {
            let keep_a = if lower { a.0 >= b.0 } else { a.0 <= b.0 };
            if keep_a { a } else { b }
        });
        let ok = best
            .as_ref()
            .is_some_and(|(x, _)| if lower { *x >= wide } else { *x <= wide });
        // `minLength: 0` and the like constrain nothing.
        if ok || (lower && wide <= 0.0) {
            return;
        }
        let what = self.change(k, best.map(|(_, s)| s), Some(display(v)));
        self.breaks(&child(&n.np, k), &child(wp, k), &what);
    }

    /// `pattern` and `format`: regular expressions and formats are not compared, so the wide
    /// side's must appear verbatim on the narrow side.
    fn check_same_string(&mut self, n: &Narrow<'a>, k: &str, v: &Value, wp: &str) {
        // Which formats are asserted differs between drafts (draft 7 ignores `uuid`).
        let comparable = k == "pattern" || self.same_dialect;
        if comparable && n.objects().any(|(m, _)| m.get(k) == Some(v)) {
            return;
        }
        let narrow = n.objects().find_map(|(m, _)| m.get(k)).map(display);
        let proven = narrow.is_none();
        let what = if narrow.as_deref() == Some(display(v).as_str()) {
            format!(
                "`{k}` {}: drafts differ in which formats they check",
                display(v)
            )
        } else {
            self.change(k, narrow, Some(display(v)))
        };
        self.report(&child(&n.np, k), &child(wp, k), &what, proven, true);
    }

    fn check_unique(&mut self, n: &Narrow<'a>, v: &Value, wp: &str) {
        if v != &Value::Bool(true) {
            return;
        }
        let narrow_unique = n
            .objects()
            .any(|(m, _)| m.get("uniqueItems") == Some(&Value::Bool(true)));
        let at_most_one = self
            .narrow_counts(
                n,
                "maxItems",
                self.narrow_tuple_max(n).into_iter().collect(),
            )
            .iter()
            .any(|(x, _)| *x <= 1.0);
        if !narrow_unique && !at_most_one {
            let what = self.change("uniqueItems", None, Some("true".to_owned()));
            self.breaks(
                &child(&n.np, "uniqueItems"),
                &child(wp, "uniqueItems"),
                &what,
            );
        }
    }

    /// A closed tuple (`items: false` after `prefixItems`) has at most as many items as positions.
    fn narrow_tuple_max(&self, n: &Narrow<'a>) -> Option<(f64, String)> {
        n.objects()
            .map(|(m, ptr)| shape(m, ptr, self.dialect(Side::Narrow)))
            .filter(|s| {
                s.rest
                    .as_ref()
                    .is_some_and(|(v, _)| **v == Value::Bool(false))
            })
            .map(|s| (s.prefix.len() as f64, s.prefix.len().to_string()))
            .reduce(|a, b| if a.0 <= b.0 { a } else { b })
    }

    fn check_items(&mut self, n: &Narrow<'a>, wm: &'a Map<String, Value>, wp: &str) {
        let wide = shape(wm, wp, self.dialect(Side::Wide));
        let nd = self.dialect(Side::Narrow);
        let narrow: Vec<Shape<'a>> = n.objects().map(|(m, ptr)| shape(m, ptr, nd)).collect();
        let max = self
            .narrow_counts(
                n,
                "maxItems",
                self.narrow_tuple_max(n).into_iter().collect(),
            )
            .into_iter()
            .map(|(x, _)| x)
            .reduce(f64::min);
        let len = narrow
            .iter()
            .map(|s| s.prefix.len())
            .chain([wide.prefix.len()])
            .max()
            .unwrap_or(0);
        let position = |i: Option<usize>| -> Narrow<'a> {
            let at = |s: &Shape<'a>| match i {
                Some(i) => s.at(i).cloned(),
                None => s.rest.clone(),
            };
            let parts: Vec<Part<'a>> = narrow
                .iter()
                .filter_map(at)
                .map(|(v, ptr)| Part { v, ptr })
                .collect();
            let np = parts.first().map_or_else(
                || match i {
                    Some(i) => child(&child(&n.np, "prefixItems"), &i.to_string()),
                    None => child(&n.np, "items"),
                },
                |p| p.ptr.clone(),
            );
            Narrow {
                parts,
                types: ANY,
                np,
            }
        };
        for i in 0..len {
            // Arrays of the narrow side never get this long.
            if max.is_some_and(|m| i as f64 >= m) {
                return;
            }
            let Some((w, w_ptr)) = wide.at(i) else {
                continue;
            };
            let at = position(Some(i));
            self.ipath.push(format!("[{i}]"));
            self.sub(&at, w, w_ptr);
            self.ipath.pop();
        }
        if max.is_some_and(|m| len as f64 >= m) {
            return;
        }
        if let Some((w, w_ptr)) = &wide.rest {
            let rest = position(None);
            self.ipath.push("[]".to_owned());
            self.sub(&rest, w, w_ptr);
            self.ipath.pop();
        }
    }

    fn check_unevaluated_items(
        &mut self,
        n: &Narrow<'a>,
        wm: &'a Map<String, Value>,
        v: &'a Value,
        wp: &str,
    ) {
        let wide = shape(wm, wp, self.dialect(Side::Wide));
        // `items` (or `additionalItems`) next to it already evaluates every item.
        if trivially_true(v) || wide.rest.is_some() {
            return;
        }
        let max = self
            .narrow_counts(
                n,
                "maxItems",
                self.narrow_tuple_max(n).into_iter().collect(),
            )
            .into_iter()
            .map(|(x, _)| x)
            .reduce(f64::min);
        if max.is_some_and(|m| m <= wide.prefix.len() as f64) {
            return;
        }
        // Equal values prove nothing: what is left unevaluated depends on the siblings.
        let what = "`unevaluatedItems` depends on what every other keyword evaluated, which is \
                    not compared";
        self.unproven(
            &child(&n.np, "unevaluatedItems"),
            &child(wp, "unevaluatedItems"),
            what,
        );
    }

    fn check_properties(&mut self, n: &Narrow<'a>, v: &'a Value, wp: &str) {
        let Some(props) = v.as_object() else {
            return;
        };
        for (name, w) in props {
            if trivially_true(w) {
                continue;
            }
            let w_loc = child(&child(wp, "properties"), name);
            let np = self.narrow_prop(n, name);
            let unevaluated = n
                .objects()
                .any(|(m, _)| m.contains_key("unevaluatedProperties"));
            if np.parts.is_empty() && unevaluated {
                let what = format!(
                    "{} may restrict `{}` only through `unevaluatedProperties`, which is not \
                     compared",
                    self.labels.narrow,
                    self.path(Some(name))
                );
                self.report(&np.np, &w_loc, &what, false, false);
                continue;
            }
            if np.parts.is_empty() {
                // The narrow side says nothing about `name`: its events may carry it with any
                // value, which the wide side's schema for it may reject.
                let full = self.path(Some(name));
                let what = if self.labels.narrow_is_new {
                    format!(
                        "`{full}` was removed, but {} does not close the model \
                         (`additionalProperties: false`), so its events may still carry \
                         `{full}`, with any value",
                        self.labels.narrow
                    )
                } else {
                    format!(
                        "`{full}` was added, but {} does not close the model \
                         (`additionalProperties: false`), so its events may already carry \
                         `{full}`, with any value",
                        self.labels.narrow
                    )
                };
                self.report(&np.np, &w_loc, &what, true, false);
                continue;
            }
            self.ipath.push(name.clone());
            self.sub(&np, w, &w_loc);
            self.ipath.pop();
        }
    }

    fn check_required(&mut self, n: &Narrow<'a>, v: &Value, wp: &str) {
        for name in string_list(Some(v)) {
            if n.requires(name) {
                continue;
            }
            let full = self.path(Some(name));
            let what = if self.labels.narrow_is_new {
                format!("`{full}` is no longer required")
            } else {
                format!("`{full}` became required")
            };
            self.report(
                &child(&n.np, "required"),
                &child(wp, "required"),
                &what,
                true,
                false,
            );
        }
    }

    /// Wide `additionalProperties` (or an `unevaluatedProperties` that means the same), `kw`.
    fn check_additional(
        &mut self,
        n: &Narrow<'a>,
        wm: &'a Map<String, Value>,
        a: &'a Value,
        wp: &str,
        kw: &str,
    ) {
        if trivially_true(a) {
            return;
        }
        let a_loc = child(wp, kw);
        let wide_names: BTreeSet<&str> = wm
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let wide_patterns: Vec<&str> = wm
            .get("patternProperties")
            .and_then(Value::as_object)
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        // Properties the narrow side names but the wide side does not: `a` applies to them.
        let listed: BTreeSet<&'a str> = n
            .objects()
            .filter_map(|(m, _)| m.get("properties").and_then(Value::as_object))
            .flat_map(|p| p.keys().map(String::as_str))
            .collect();
        for name in listed {
            if wide_names.contains(name)
                || wide_patterns
                    .iter()
                    .any(|pat| self.name_matches(pat, name) == Some(true))
            {
                continue;
            }
            let np = self.narrow_prop(n, name);
            if *a != Value::Bool(false) {
                self.ipath.push(name.to_owned());
                self.sub(&np, a, &a_loc);
                self.ipath.pop();
            } else if !self.provably_empty(&np) {
                let full = self.path(Some(name));
                let what = if self.labels.narrow_is_new {
                    let wide = self.labels.wide;
                    format!("`{full}` was added, but {wide} is a closed model (`{kw}: false`)")
                } else {
                    format!("`{full}` was removed from a closed model (`{kw}: false`)")
                };
                let w_loc = child(&child(wp, "properties"), name);
                self.report(&np.np, &w_loc, &what, true, false);
            }
        }
        self.check_other_properties(n, a, &a_loc, kw);
    }

    /// Properties no narrow conjunct lists: some conjunct must send all of them into schemas
    /// that fit `a` (what it gives other properties, and its `patternProperties` for names
    /// that match).
    fn check_other_properties(&mut self, n: &Narrow<'a>, a: &'a Value, a_loc: &str, kw: &str) {
        let d = self.dialect(Side::Narrow);
        let candidates: Vec<Vec<Narrow<'a>>> = n
            .objects()
            .filter_map(|(m, ptr)| {
                let (own, own_kw) = other_properties(m, d)?;
                let mut schemas = vec![Narrow::one(own, child(ptr, own_kw))];
                if let Some(Value::Object(pp)) = m.get("patternProperties") {
                    for (pat, s) in pp {
                        let p = child(&child(ptr, "patternProperties"), pat);
                        schemas.push(Narrow::one(s, p));
                    }
                }
                Some(schemas)
            })
            .collect();
        self.ipath.push("*".to_owned());
        let covered = candidates
            .iter()
            .any(|list| list.iter().all(|s| self.fits(s, a, a_loc)));
        if !covered {
            match candidates.first() {
                // Report why the first one does not do (at least one of its schemas fails).
                Some(list) => {
                    for s in list {
                        self.sub(s, a, a_loc);
                    }
                }
                None => self.open_model(n, a, a_loc, kw),
            }
        }
        self.ipath.pop();
    }

    /// The narrow side lets other properties carry anything; the wide side's `kw` does not.
    fn open_model(&mut self, n: &Narrow<'a>, a: &'a Value, a_loc: &str, kw: &str) {
        let n_loc = child(&n.np, kw);
        // About the object itself, not about its other properties.
        let saved = self.ipath.pop();
        if *a == Value::Bool(false) {
            let (n_label, w_label) = (self.labels.narrow, self.labels.wide);
            let what = if self.labels.narrow_is_new {
                format!(
                    "the model was opened (`{kw}: false` was removed), so {n_label} lets events \
                     carry properties {w_label} does not list"
                )
            } else {
                format!(
                    "the model was closed (`{kw}: false`), but {n_label} lets events carry \
                     properties {w_label} does not list"
                )
            };
            self.breaks(&n_loc, a_loc, &what);
        } else {
            let what = self.change(kw, None, Some(display(a)));
            self.breaks(&n_loc, a_loc, &what);
        }
        self.ipath.extend(saved);
    }

    fn check_patterns(&mut self, n: &Narrow<'a>, v: &'a Value, wp: &str) {
        let Some(pp) = v.as_object() else {
            return;
        };
        for (pat, w) in pp {
            if trivially_true(w) {
                continue;
            }
            let w_loc = child(&child(wp, "patternProperties"), pat);
            // Some conjunct constrains the same names at least as much.
            let same_pattern = n.objects().any(|(m, ptr)| {
                m.get("patternProperties")
                    .and_then(|p| p.get(pat))
                    .is_some_and(|s| {
                        let p = child(&child(ptr, "patternProperties"), pat);
                        self.fits(&Narrow::one(s, p), w, &w_loc)
                    })
            });
            if same_pattern {
                continue;
            }
            // A closed narrow side has finitely many names: check those that may match.
            if let Some(m) = n.closed_part(self.dialect(Side::Narrow)) {
                let names: Vec<&'a String> = m
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|p| p.keys().collect())
                    .unwrap_or_default();
                for name in names {
                    if self.name_matches(pat, name) == Some(false) {
                        continue;
                    }
                    let np = self.narrow_prop(n, name);
                    self.ipath.push(name.clone());
                    self.sub(&np, w, &w_loc);
                    self.ipath.pop();
                }
                continue;
            }
            let what = format!(
                "`patternProperties` {} constrains properties that {} leaves open",
                display(&Value::String(pat.clone())),
                self.labels.narrow
            );
            self.unproven(&child(&n.np, "patternProperties"), &w_loc, &what);
        }
    }

    fn check_property_names(&mut self, n: &Narrow<'a>, v: &'a Value, wp: &str) {
        if trivially_true(v) {
            return;
        }
        let kp = child(wp, "propertyNames");
        if n.objects()
            .any(|(m, _)| m.get("propertyNames").is_some_and(|x| self.same(x, v)))
        {
            return;
        }
        if let Some(m) = n.closed_part(self.dialect(Side::Narrow)) {
            let names: Vec<String> = m
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            let all_ok = names.into_iter().all(|name| {
                matches!(
                    self.validate(Side::Wide, &kp, &Value::String(name)),
                    Some(Ok(()))
                )
            });
            if all_ok {
                return;
            }
        }
        let narrow = n
            .objects()
            .find_map(|(m, _)| m.get("propertyNames"))
            .map(display);
        let what = self.change("propertyNames", narrow, Some(display(v)));
        self.unproven(&child(&n.np, "propertyNames"), &kp, &what);
    }

    fn check_unevaluated_properties(
        &mut self,
        n: &Narrow<'a>,
        wm: &'a Map<String, Value>,
        v: &'a Value,
        wp: &str,
    ) {
        // `additionalProperties` next to it already evaluates every property.
        if trivially_true(v) || wm.contains_key("additionalProperties") {
            return;
        }
        // Nothing else evaluates properties: it means what `additionalProperties` would.
        if let Some((_, "unevaluatedProperties")) = other_properties(wm, self.dialect(Side::Wide)) {
            self.check_additional(n, wm, v, wp, "unevaluatedProperties");
            return;
        }
        // A closed narrow side whose every name the wide side's own `properties` (or
        // `patternProperties`) evaluate leaves nothing unevaluated.
        if let Some(m) = n.closed_part(self.dialect(Side::Narrow)) {
            let wide_names = wm.get("properties").and_then(Value::as_object);
            let wide_patterns: Vec<&String> = wm
                .get("patternProperties")
                .and_then(Value::as_object)
                .map(|p| p.keys().collect())
                .unwrap_or_default();
            let names: Vec<&String> = m
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().collect())
                .unwrap_or_default();
            let all = names.into_iter().all(|name| {
                wide_names.is_some_and(|w| w.contains_key(name))
                    || wide_patterns
                        .iter()
                        .any(|pat| self.name_matches(pat, name) == Some(true))
            });
            if all {
                return;
            }
        }
        let what = "`unevaluatedProperties` depends on what every other keyword evaluated, which \
                    is not compared";
        self.unproven(
            &child(&n.np, "unevaluatedProperties"),
            &child(wp, "unevaluatedProperties"),
            what,
        );
    }

    /// Wide `anyOf`/`oneOf`: the narrow side must fit one branch (for `oneOf`, one branch that
    /// provably excludes all the others). If it does not fit any as a whole, each of its types
    /// may fit a different branch (`["string", "null"]` against `anyOf: [string, null]`).
    fn branches(&mut self, n: &Narrow<'a>, nt: Types, kw: &str, v: &'a Value, kp: &str) {
        let Some(list) = v.as_array() else {
            return;
        };
        let first = match self.pick_branch(n, list, kp, kw == "oneOf") {
            Ok(()) => return,
            Err(failure) => failure,
        };
        if nt.count_ones() > 1 {
            let mut all = true;
            for bit in (0..7).map(|b| 1u8 << b).filter(|b| nt & b != 0) {
                let mut one_type = n.clone();
                one_type.types = n.types & bit;
                if self
                    .pick_branch(&one_type, list, kp, kw == "oneOf")
                    .is_err()
                {
                    all = false;
                    break;
                }
            }
            if all {
                return;
            }
        }
        if first.findings.is_empty() {
            // No branch at all: a validator refuses such a schema; never pass it.
            let what = format!("`{kw}` has no branches");
            self.unproven(&n.np, kp, &what);
            return;
        }
        let prefix = match first.branch {
            Some(i) => format!(
                "no `{kw}` branch of {} accepts every event valid under {}; the closest, branch \
                 {i}, fails: ",
                self.labels.wide, self.labels.narrow
            ),
            None => format!("no `{kw}` branch of {} accepts them: ", self.labels.wide),
        };
        for mut f in first.findings {
            f.message = format!("{prefix}{}", f.message);
            self.out.push(f);
        }
    }

    fn pick_branch(
        &mut self,
        n: &Narrow<'a>,
        list: &'a [Value],
        kp: &str,
        exclusive: bool,
    ) -> Result<(), BranchFailure> {
        let mut best: Option<BranchFailure> = None;
        for (i, b) in list.iter().enumerate() {
            let bp = child(kp, &i.to_string());
            let mut findings = self.probe(|c| c.sub(n, b, &bp));
            if findings.is_empty() {
                if !exclusive {
                    return Ok(());
                }
                let overlap = (0..list.len())
                    .filter(|j| *j != i)
                    .find(|&j| !self.disjoint(n, &list[j], &child(kp, &j.to_string()), 0));
                let Some(j) = overlap else {
                    return Ok(());
                };
                let what = format!(
                    "they match branch {i} of `oneOf`, but cannot be shown not to match branch {j} \
                     too (an event matching two branches is invalid)"
                );
                findings = self.probe(|c| c.unproven(&n.np, &bp, &what));
            }
            if best
                .as_ref()
                .is_none_or(|cur| findings.len() < cur.findings.len())
            {
                best = Some(BranchFailure {
                    branch: Some(i),
                    findings,
                });
            }
        }
        Err(best.unwrap_or(BranchFailure {
            branch: None,
            findings: Vec::new(),
        }))
    }

    /// Can no instance satisfy both `n` and the wide subschema `w`? False when not provable.
    fn disjoint(&mut self, n: &Narrow<'a>, w: &'a Value, wp: &str, depth: usize) -> bool {
        // Each required property may recurse: without a shared budget a recursive schema makes
        // this exponential. Running out only means "not shown disjoint".
        self.steps += 1;
        if depth > MAX_DISJOINT_DEPTH || self.steps > MAX_STEPS {
            return false;
        }
        let Ok(cases) = self.expand(n) else {
            return false;
        };
        cases
            .iter()
            .all(|case| self.disjoint_case(case, w, wp, depth))
    }

    fn disjoint_case(&mut self, n: &Narrow<'a>, w: &'a Value, wp: &str, depth: usize) -> bool {
        let nt = self.narrow_types(n);
        let wm = match w {
            _ if nt == 0 => return true,
            Value::Bool(b) => return !b,
            Value::Object(m) => m,
            _ => return false,
        };
        // `w` is a conjunction: being disjoint from one of its parts is enough.
        if let Some(Ok((t, tp))) = wm
            .get("$ref")
            .and_then(Value::as_str)
            .map(|r| self.resolve(Side::Wide, r))
            && self.disjoint(n, t, &tp, depth + 1)
        {
            return true;
        }
        if wm.contains_key("$ref") && self.dialect(Side::Wide).legacy_ref {
            // Nothing next to `$ref` counts in drafts up to 7.
            return false;
        }
        if let Some(Value::Array(xs)) = wm.get("allOf") {
            for (i, x) in xs.iter().enumerate() {
                if self.disjoint(n, x, &child(&child(wp, "allOf"), &i.to_string()), depth + 1) {
                    return true;
                }
            }
        }
        for kw in ["anyOf", "oneOf"] {
            if let Some(Value::Array(xs)) = wm.get(kw) {
                let all = xs.iter().enumerate().all(|(i, x)| {
                    self.disjoint(n, x, &child(&child(wp, kw), &i.to_string()), depth + 1)
                });
                if all && !xs.is_empty() {
                    return true;
                }
            }
        }
        let wt = declared_types(wm, self.dialect(Side::Wide));
        if nt & wt == 0 {
            return true;
        }
        // Finitely many narrow values, each rejected by `w`.
        if let Some((values, _)) = self.finite_values(n, nt)
            && values
                .iter()
                .all(|v| matches!(self.validate(Side::Wide, wp, v), Some(Err(_))))
        {
            return true;
        }
        // Finitely many wide values, each rejected by the narrow side.
        let wide_values: Option<Vec<Value>> = wm
            .get("const")
            .filter(|_| !self.dialect(Side::Wide).draft4)
            .map(|c| vec![c.clone()])
            .or_else(|| wm.get("enum").and_then(Value::as_array).cloned());
        if let Some(values) = wide_values {
            let parts: Vec<String> = n.parts.iter().map(|p| p.ptr.clone()).collect();
            let all_rejected = values.iter().all(|v| {
                value_type(v) & nt == 0
                    || parts
                        .iter()
                        .any(|p| matches!(self.validate(Side::Narrow, p, v), Some(Err(_))))
            });
            if all_rejected {
                return true;
            }
        }
        // Only objects could be in both: a property may tell them apart (a discriminator).
        nt & wt == OBJECT && self.disjoint_objects(n, wm, wp, depth)
    }

    /// Objects of the narrow side never satisfy `wm`: a property the narrow side requires has
    /// values `wm` rejects, or one side requires a property the other forbids.
    fn disjoint_objects(
        &mut self,
        n: &Narrow<'a>,
        wm: &'a Map<String, Value>,
        wp: &str,
        depth: usize,
    ) -> bool {
        let wide_props = wm.get("properties").and_then(Value::as_object);
        for (name, s) in wide_props.into_iter().flatten() {
            if n.requires(name) {
                let np = self.narrow_prop(n, name);
                let sp = child(&child(wp, "properties"), name);
                if self.disjoint(&np, s, &sp, depth + 1) {
                    return true;
                }
            }
        }
        for name in string_list(wm.get("required")) {
            let np = self.narrow_prop(n, name);
            if self.provably_empty(&np) {
                return true;
            }
        }
        let wide_closed = other_properties(wm, self.dialect(Side::Wide))
            .is_some_and(|(v, _)| *v == Value::Bool(false))
            && !wm.contains_key("patternProperties");
        wide_closed
            && n.objects()
                .flat_map(|(m, _)| string_list(m.get("required")))
                .any(|r| wide_props.is_none_or(|p| !p.contains_key(r)))
    }

    /// Wide `not`: fine when the narrow side has the same `not`, or provably never matches it.
    fn check_not(&mut self, n: &Narrow<'a>, x: &'a Value, kp: &str) {
        if n.objects()
            .any(|(m, _)| m.get("not").is_some_and(|y| self.same(x, y)))
            || self.disjoint(n, x, kp, 0)
        {
            return;
        }
        let narrow = n.objects().find_map(|(m, _)| m.get("not")).map(display);
        let what = self.change("not", narrow, Some(display(x)));
        self.unproven(&child(&n.np, "not"), kp, &what);
    }

    /// Wide `if`/`then`/`else`.
    fn conditional(&mut self, n: &Narrow<'a>, wm: &'a Map<String, Value>, wp: &str) {
        let Some(cond) = wm.get("if") else {
            return;
        };
        let matches = n.objects().any(|(m, _)| {
            ["if", "then", "else"]
                .iter()
                .all(|k| match (m.get(*k), wm.get(*k)) {
                    (None, None) => true,
                    (Some(a), Some(b)) => self.same(a, b),
                    _ => false,
                })
        });
        if matches {
            return;
        }
        let (then_p, else_p) = (child(wp, "then"), child(wp, "else"));
        let then_ok = wm.get("then").is_none_or(|t| self.fits(n, t, &then_p));
        let else_ok = wm.get("else").is_none_or(|e| self.fits(n, e, &else_p));
        if then_ok && else_ok {
            return;
        }
        let if_p = child(wp, "if");
        if self.fits(n, cond, &if_p) {
            if let Some(t) = wm.get("then") {
                self.sub(n, t, &then_p);
            }
            return;
        }
        if self.disjoint(n, cond, &if_p, 0) {
            if let Some(e) = wm.get("else") {
                self.sub(n, e, &else_p);
            }
            return;
        }
        let what = "`if`/`then`/`else` was added or changed";
        self.unproven(&child(&n.np, "if"), &if_p, what);
    }
}

/// One case of the narrow side while it is being flattened.
#[derive(Clone)]
struct Case<'a> {
    pending: Vec<Part<'a>>,
    done: Vec<Part<'a>>,
    /// Conjuncts already taken in (by pointer).
    seen: BTreeSet<String>,
}

struct Unfolded<'a> {
    children: Vec<Part<'a>>,
    groups: Vec<Vec<Part<'a>>>,
    keep: bool,
}

struct BranchFailure {
    branch: Option<usize>,
    findings: Vec<Incompatibility>,
}

/// One numeric bound: `x >= value` (or `>` when exclusive).
#[derive(Clone)]
struct Bound {
    value: f64,
    exclusive: bool,
    keyword: &'static str,
    shown: String,
}

/// The bound keyword `k` of `m` sets, if any. Draft 4 spells exclusive bounds as
/// `exclusiveMinimum: true` next to `minimum` and ignores numeric ones; later drafts the reverse.
fn bound_of(m: &Map<String, Value>, k: &str, d: Dialect) -> Option<Bound> {
    let flag = |kw: &str| d.draft4 && m.get(kw) == Some(&Value::Bool(true));
    let (keyword, exclusive): (&'static str, bool) = match k {
        "minimum" => ("minimum", flag("exclusiveMinimum")),
        "maximum" => ("maximum", flag("exclusiveMaximum")),
        "exclusiveMinimum" if !d.draft4 => ("exclusiveMinimum", true),
        "exclusiveMaximum" if !d.draft4 => ("exclusiveMaximum", true),
        _ => return None,
    };
    let raw = m.get(k)?;
    Some(Bound {
        value: raw.as_f64()?,
        exclusive,
        keyword,
        shown: display(raw),
    })
}

impl Bound {
    /// For integers `> 0.5` is `>= 1`: normalise to an inclusive whole bound.
    fn for_integers(mut self, lower: bool) -> Bound {
        self.value = match (lower, self.exclusive) {
            (true, true) => self.value.floor() + 1.0,
            (true, false) => self.value.ceil(),
            (false, true) => self.value.ceil() - 1.0,
            (false, false) => self.value.floor(),
        };
        self.exclusive = false;
        self
    }

    fn tighter_than(&self, other: &Bound, lower: bool) -> bool {
        let further = if lower {
            self.value > other.value
        } else {
            self.value < other.value
        };
        further || (self.value == other.value && self.exclusive && !other.exclusive)
    }

    /// Does every number within `self` also lie within `wide`?
    fn within(&self, wide: &Bound, lower: bool) -> bool {
        let further = if lower {
            self.value > wide.value
        } else {
            self.value < wide.value
        };
        further || (self.value == wide.value && (self.exclusive || !wide.exclusive))
    }
}

/// An array schema as positions: `prefix[i]` for item `i`, `rest` for the ones after.
/// Draft 2020-12 spells it `prefixItems` + `items`; earlier drafts `items: [...]` +
/// `additionalItems` (and `additionalItems` means nothing next to a schema-valued `items`).
struct Shape<'a> {
    prefix: Vec<(&'a Value, String)>,
    rest: Option<(&'a Value, String)>,
}

impl<'a> Shape<'a> {
    fn at(&self, i: usize) -> Option<&(&'a Value, String)> {
        self.prefix.get(i).or(self.rest.as_ref())
    }
}

fn shape<'a>(m: &'a Map<String, Value>, ptr: &str, d: Dialect) -> Shape<'a> {
    let listed = |kw: &str, xs: &'a [Value]| -> Vec<(&'a Value, String)> {
        xs.iter()
            .enumerate()
            .map(|(i, x)| (x, child(&child(ptr, kw), &i.to_string())))
            .collect()
    };
    let (prefix, rest) = match m.get("items") {
        Some(Value::Array(xs)) => (
            listed("items", xs),
            m.get("additionalItems")
                .map(|v| (v, child(ptr, "additionalItems"))),
        ),
        items => (
            match m.get("prefixItems") {
                Some(Value::Array(xs)) if d.prefix_items => listed("prefixItems", xs),
                _ => Vec::new(),
            },
            items.map(|v| (v, child(ptr, "items"))),
        ),
    };
    // Nothing else evaluates items: `unevaluatedItems` means what `items` would.
    let rest = rest.or_else(|| {
        m.get("unevaluatedItems")
            .filter(|_| !d.legacy_ref && !evaluates_in_place(m) && !m.contains_key("contains"))
            .map(|v| (v, child(ptr, "unevaluatedItems")))
    });
    Shape { prefix, rest }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const YES: bool = true;
    const NO: bool = false;

    /// One row: how `old` → `new` fares under BACKWARD (old ⊆ new) and FORWARD (new ⊆ old).
    struct Row {
        name: &'static str,
        old: Value,
        new: Value,
        backward: bool,
        forward: bool,
    }

    fn row(name: &'static str, old: Value, new: Value, backward: bool, forward: bool) -> Row {
        Row {
            name,
            old,
            new,
            backward,
            forward,
        }
    }

    /// An object that allows no other properties (`additionalProperties: false`).
    fn closed(props: Value, required: &[&str]) -> Value {
        json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
    }

    /// An object that allows any other property with any value.
    fn open(props: Value, required: &[&str]) -> Value {
        json!({"type": "object", "properties": props, "required": required})
    }

    /// A closed event with one required field `f` of schema `f`.
    fn field(f: Value) -> Value {
        closed(json!({ "f": f }), &["f"])
    }

    fn id() -> Value {
        json!({"type": "string"})
    }

    fn rows() -> Vec<Row> {
        let s = || json!({"type": "string"});
        let tree = |max: u64| {
            json!({
                "$defs": {"node": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "maxLength": max},
                        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}
                    }
                }},
                "$ref": "#/$defs/node"
            })
        };
        let variant = |kind: &str, field: &str| {
            json!({"type": "object", "required": ["kind", field], "additionalProperties": false,
                   "properties": {"kind": {"const": kind}, field: {"type": "string"}}})
        };
        vec![
            row("identical schemas", field(s()), field(s()), YES, YES),
            // --- objects: the content model decides what adding or removing a field means.
            // A closed model's events never carry unlisted fields, so a new optional field
            // takes nothing away from them; the new version's events may carry it, though.
            row(
                "add optional field to closed model",
                closed(json!({"id": id()}), &["id"]),
                closed(json!({"id": id(), "note": s()}), &["id"]),
                YES,
                NO,
            ),
            // An open model's events may already carry `note: 5`, which the new schema rejects.
            row(
                "add optional field to open model",
                open(json!({"id": id()}), &["id"]),
                open(json!({"id": id(), "note": s()}), &["id"]),
                NO,
                YES,
            ),
            row(
                "add required field to closed model",
                closed(json!({"id": id()}), &["id"]),
                closed(json!({"id": id(), "note": s()}), &["id", "note"]),
                NO,
                NO,
            ),
            row(
                "add required field to open model",
                open(json!({"id": id()}), &["id"]),
                open(json!({"id": id(), "note": s()}), &["id", "note"]),
                NO,
                YES,
            ),
            row(
                "remove field from closed model",
                closed(json!({"id": id(), "note": s()}), &["id"]),
                closed(json!({"id": id()}), &["id"]),
                NO,
                YES,
            ),
            // The open new model accepts `note` with any value; but its events may carry
            // `note: 5`, which the old one rejects.
            row(
                "remove field from open model",
                open(json!({"id": id(), "note": s()}), &["id"]),
                open(json!({"id": id()}), &["id"]),
                YES,
                NO,
            ),
            row(
                "make field required",
                closed(json!({"id": id(), "note": s()}), &["id"]),
                closed(json!({"id": id(), "note": s()}), &["id", "note"]),
                NO,
                YES,
            ),
            row(
                "make field optional",
                closed(json!({"id": id(), "note": s()}), &["id", "note"]),
                closed(json!({"id": id(), "note": s()}), &["id"]),
                YES,
                NO,
            ),
            row(
                "close an open model",
                open(json!({"id": id()}), &["id"]),
                closed(json!({"id": id()}), &["id"]),
                NO,
                YES,
            ),
            row(
                "open a closed model",
                closed(json!({"id": id()}), &["id"]),
                open(json!({"id": id()}), &["id"]),
                YES,
                NO,
            ),
            row(
                "additionalProperties schema widened (integer to number)",
                json!({"type": "object", "additionalProperties": {"type": "integer"}}),
                json!({"type": "object", "additionalProperties": {"type": "number"}}),
                YES,
                NO,
            ),
            // Under the old schema `x-trace: 5` matched the pattern and escaped
            // `additionalProperties`; under the new one it does not.
            row(
                "patternProperties dropped next to additionalProperties",
                json!({"type": "object", "additionalProperties": {"type": "string"}, "patternProperties": {"^x-": true}}),
                json!({"type": "object", "additionalProperties": {"type": "string"}}),
                NO,
                YES,
            ),
            // 2020-12's usual closed model: nothing but `properties` evaluates properties, so
            // `unevaluatedProperties: false` means what `additionalProperties: false` would.
            row(
                "add optional field to model closed by unevaluatedProperties",
                json!({"type": "object", "properties": {"id": id()}, "required": ["id"], "unevaluatedProperties": false}),
                json!({"type": "object", "properties": {"id": id(), "note": s()}, "required": ["id"], "unevaluatedProperties": false}),
                YES,
                NO,
            ),
            // True BACKWARD, but what `allOf` evaluates is not tracked: cannot prove.
            row(
                "add optional field inside allOf under unevaluatedProperties",
                json!({"allOf": [{"properties": {"id": id()}}], "unevaluatedProperties": false}),
                json!({"allOf": [{"properties": {"id": id(), "note": s()}}], "unevaluatedProperties": false}),
                NO,
                NO,
            ),
            // --- types
            row(
                "widen integer to number",
                field(json!({"type": "integer"})),
                field(json!({"type": "number"})),
                YES,
                NO,
            ),
            row(
                "narrow number to integer",
                field(json!({"type": "number"})),
                field(json!({"type": "integer"})),
                NO,
                YES,
            ),
            row(
                "widen string to [string, null]",
                field(s()),
                field(json!({"type": ["string", "null"]})),
                YES,
                NO,
            ),
            row(
                "narrow [string, null] to string",
                field(json!({"type": ["string", "null"]})),
                field(s()),
                NO,
                YES,
            ),
            row(
                "change string to integer",
                field(s()),
                field(json!({"type": "integer"})),
                NO,
                NO,
            ),
            // --- enum / const (finite sets are validated value by value, exactly)
            row(
                "add enum value",
                field(json!({"type": "string", "enum": ["free", "pro"]})),
                field(json!({"type": "string", "enum": ["free", "pro", "team"]})),
                YES,
                NO,
            ),
            row(
                "remove enum value",
                field(json!({"type": "string", "enum": ["free", "pro", "team"]})),
                field(json!({"type": "string", "enum": ["free", "pro"]})),
                NO,
                YES,
            ),
            row(
                "const to enum containing it",
                field(json!({"const": "card"})),
                field(json!({"enum": ["card", "iban"]})),
                YES,
                NO,
            ),
            row(
                "one-value enum to the same const",
                field(json!({"enum": ["card"]})),
                field(json!({"const": "card"})),
                YES,
                YES,
            ),
            row(
                "enum to the string constraints its values meet",
                field(json!({"type": "string", "enum": ["ab", "cd"]})),
                field(json!({"type": "string", "maxLength": 2, "pattern": "^[a-z]+$"})),
                YES,
                NO,
            ),
            // --- numbers
            row(
                "raise minimum",
                field(json!({"type": "number", "minimum": 0})),
                field(json!({"type": "number", "minimum": 1})),
                NO,
                YES,
            ),
            row(
                "lower minimum",
                field(json!({"type": "number", "minimum": 1})),
                field(json!({"type": "number", "minimum": 0})),
                YES,
                NO,
            ),
            row(
                "raise maximum",
                field(json!({"type": "number", "maximum": 100})),
                field(json!({"type": "number", "maximum": 1000})),
                YES,
                NO,
            ),
            row(
                "minimum 0 to exclusiveMinimum 0",
                field(json!({"type": "number", "minimum": 0})),
                field(json!({"type": "number", "exclusiveMinimum": 0})),
                NO,
                YES,
            ),
            row(
                "integers: minimum 1 equals exclusiveMinimum 0",
                field(json!({"type": "integer", "minimum": 1})),
                field(json!({"type": "integer", "exclusiveMinimum": 0})),
                YES,
                YES,
            ),
            row(
                "exclusiveMaximum 10 to maximum 10",
                field(json!({"type": "number", "exclusiveMaximum": 10})),
                field(json!({"type": "number", "maximum": 10})),
                YES,
                NO,
            ),
            row(
                "add multipleOf",
                field(json!({"type": "number"})),
                field(json!({"type": "number", "multipleOf": 0.01})),
                NO,
                YES,
            ),
            row(
                "multipleOf 0.5 to 0.25",
                field(json!({"type": "number", "multipleOf": 0.5})),
                field(json!({"type": "number", "multipleOf": 0.25})),
                YES,
                NO,
            ),
            // --- strings
            row(
                "tighten maxLength",
                field(json!({"type": "string", "maxLength": 64})),
                field(json!({"type": "string", "maxLength": 32})),
                NO,
                YES,
            ),
            row(
                "loosen minLength",
                field(json!({"type": "string", "minLength": 1})),
                field(json!({"type": "string", "minLength": 0})),
                YES,
                NO,
            ),
            row(
                "add pattern",
                field(s()),
                field(json!({"type": "string", "pattern": "^[A-Z]{3}$"})),
                NO,
                YES,
            ),
            row(
                "remove pattern",
                field(json!({"type": "string", "pattern": "^[A-Z]{3}$"})),
                field(s()),
                YES,
                NO,
            ),
            // `^[A-Z]{3}$` ⊆ `^[A-Z]+$` is true, but regular expressions are not compared.
            row(
                "change pattern",
                field(json!({"type": "string", "pattern": "^[A-Z]{3}$"})),
                field(json!({"type": "string", "pattern": "^[A-Z]+$"})),
                NO,
                NO,
            ),
            row(
                "add format",
                field(s()),
                field(json!({"type": "string", "format": "date-time"})),
                NO,
                YES,
            ),
            row(
                "remove format",
                field(json!({"type": "string", "format": "date-time"})),
                field(s()),
                YES,
                NO,
            ),
            // --- nesting
            row(
                "nested: tighten a field two levels down",
                closed(
                    json!({"customer": closed(json!({"address": closed(json!({"zip": {"type": "string", "maxLength": 10}}), &["zip"])}), &["address"])}),
                    &["customer"],
                ),
                closed(
                    json!({"customer": closed(json!({"address": closed(json!({"zip": {"type": "string", "maxLength": 5}}), &["zip"])}), &["address"])}),
                    &["customer"],
                ),
                NO,
                YES,
            ),
            row(
                "nested: add required field two levels down",
                closed(
                    json!({"customer": closed(json!({"address": closed(json!({"zip": s()}), &["zip"])}), &["address"])}),
                    &["customer"],
                ),
                closed(
                    json!({"customer": closed(json!({"address": closed(json!({"zip": s(), "country": s()}), &["zip", "country"])}), &["address"])}),
                    &["customer"],
                ),
                NO,
                NO,
            ),
            // --- arrays
            row(
                "items: integer to number",
                field(json!({"type": "array", "items": {"type": "integer"}})),
                field(json!({"type": "array", "items": {"type": "number"}})),
                YES,
                NO,
            ),
            row(
                "items: number to integer",
                field(json!({"type": "array", "items": {"type": "number"}})),
                field(json!({"type": "array", "items": {"type": "integer"}})),
                NO,
                YES,
            ),
            row(
                "raise minItems",
                field(json!({"type": "array"})),
                field(json!({"type": "array", "minItems": 1})),
                NO,
                YES,
            ),
            row(
                "lower maxItems",
                field(json!({"type": "array", "maxItems": 10})),
                field(json!({"type": "array", "maxItems": 5})),
                NO,
                YES,
            ),
            // `items` evaluates every item, so the old `unevaluatedItems: false` was idle;
            // the new one alone allows only empty arrays.
            row(
                "drop items next to unevaluatedItems: false",
                field(
                    json!({"type": "array", "items": {"type": "integer"}, "unevaluatedItems": false}),
                ),
                field(json!({"type": "array", "unevaluatedItems": false})),
                NO,
                YES,
            ),
            row(
                "add uniqueItems",
                field(json!({"type": "array"})),
                field(json!({"type": "array", "uniqueItems": true})),
                NO,
                YES,
            ),
            row(
                "prefixItems: closed tuple gains a position",
                field(
                    json!({"type": "array", "prefixItems": [s(), {"type": "integer"}], "items": false}),
                ),
                field(
                    json!({"type": "array", "prefixItems": [s(), {"type": "integer"}, {"type": "boolean"}], "items": false}),
                ),
                YES,
                NO,
            ),
            row(
                "prefixItems: a position changes type",
                field(json!({"type": "array", "prefixItems": [s(), {"type": "integer"}]})),
                field(json!({"type": "array", "prefixItems": [s(), s()]})),
                NO,
                NO,
            ),
            row(
                "draft-07 tuple to the same 2020-12 tuple",
                json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "array",
                       "items": [s(), {"type": "integer"}], "additionalItems": false}),
                json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "array",
                       "prefixItems": [s(), {"type": "integer"}], "items": false}),
                YES,
                YES,
            ),
            // --- $ref
            row(
                "inline schema moved behind $ref",
                field(json!({"type": "string", "maxLength": 3})),
                json!({"$defs": {"code": {"type": "string", "maxLength": 3}},
                       "type": "object", "required": ["f"], "additionalProperties": false,
                       "properties": {"f": {"$ref": "#/$defs/code"}}}),
                YES,
                YES,
            ),
            row(
                "$ref on both sides, definition tightened",
                json!({"$defs": {"money": {"type": "number", "minimum": 0}}, "type": "object",
                       "properties": {"amount": {"$ref": "#/$defs/money"}}}),
                json!({"$defs": {"money": {"type": "number", "minimum": 1}}, "type": "object",
                       "properties": {"amount": {"$ref": "#/$defs/money"}}}),
                NO,
                YES,
            ),
            row(
                "$ref on both sides, unchanged, optional field added to closed model",
                json!({"$defs": {"money": {"type": "number"}}, "type": "object", "additionalProperties": false,
                       "properties": {"amount": {"$ref": "#/$defs/money"}}}),
                json!({"$defs": {"money": {"type": "number"}}, "type": "object", "additionalProperties": false,
                       "properties": {"amount": {"$ref": "#/$defs/money"}, "fee": {"$ref": "#/$defs/money"}}}),
                YES,
                NO,
            ),
            // Draft 7 ignores `maxLength` next to `$ref`: the old schema accepts any string.
            row(
                "draft-07: keywords next to $ref are ignored",
                json!({"$schema": "http://json-schema.org/draft-07/schema#",
                       "definitions": {"s": {"type": "string"}}, "$ref": "#/definitions/s", "maxLength": 3}),
                json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "string", "maxLength": 3}),
                NO,
                YES,
            ),
            // --- dialects: a keyword the old draft does not have is ignored by the validator.
            row(
                "draft-07 prefixItems (not a keyword there) to 2020-12 prefixItems",
                json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "array",
                       "prefixItems": [{"type": "integer"}]}),
                json!({"type": "array", "prefixItems": [{"type": "integer"}]}),
                NO,
                YES,
            ),
            row(
                "draft-04 const (not a keyword there) to 2020-12 const",
                json!({"$schema": "http://json-schema.org/draft-04/schema#", "type": "string", "const": "a"}),
                json!({"type": "string", "const": "a"}),
                NO,
                YES,
            ),
            row(
                "draft-04 numeric exclusiveMaximum (ignored there) to draft-07",
                json!({"$schema": "http://json-schema.org/draft-04/schema#", "type": "number", "exclusiveMaximum": 1}),
                json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "number", "exclusiveMaximum": 1}),
                NO,
                YES,
            ),
            row(
                "draft-04 exclusive maximum to draft-07 exclusiveMaximum",
                json!({"$schema": "http://json-schema.org/draft-04/schema#", "type": "number",
                       "maximum": 1, "exclusiveMaximum": true}),
                json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "number",
                       "exclusiveMaximum": 1}),
                YES,
                YES,
            ),
            row(
                "recursive $ref: tree node name shortened",
                tree(50),
                tree(20),
                NO,
                YES,
            ),
            // --- combinators
            row(
                "anyOf: add a branch",
                json!({"anyOf": [s(), {"type": "integer"}]}),
                json!({"anyOf": [s(), {"type": "integer"}, {"type": "null"}]}),
                YES,
                NO,
            ),
            row(
                "anyOf: remove a branch",
                json!({"anyOf": [s(), {"type": "integer"}, {"type": "null"}]}),
                json!({"anyOf": [s(), {"type": "integer"}]}),
                NO,
                YES,
            ),
            row(
                "type union to the same anyOf",
                json!({"type": ["string", "null"]}),
                json!({"anyOf": [s(), {"type": "null"}]}),
                YES,
                YES,
            ),
            row(
                "oneOf: add a branch of another type",
                json!({"oneOf": [s(), {"type": "integer"}]}),
                json!({"oneOf": [s(), {"type": "integer"}, {"type": "null"}]}),
                YES,
                NO,
            ),
            // "abcd" matches both new branches, so it is invalid under the new `oneOf`.
            row(
                "oneOf: overlapping branches",
                json!({"type": "string", "maxLength": 5}),
                json!({"oneOf": [{"type": "string", "maxLength": 10}, {"type": "string", "minLength": 3}]}),
                NO,
                NO,
            ),
            row(
                "oneOf: discriminated union gains a variant",
                json!({"oneOf": [variant("card", "number"), variant("iban", "iban")]}),
                json!({"oneOf": [variant("card", "number"), variant("iban", "iban"), variant("wallet", "wallet")]}),
                YES,
                NO,
            ),
            row(
                "allOf: same constraints split into members",
                closed(json!({"id": id()}), &["id"]),
                json!({"allOf": [{"type": "object", "properties": {"id": id()}, "additionalProperties": false},
                                 {"required": ["id"]}]}),
                YES,
                YES,
            ),
            row(
                "allOf: a member adds a constraint",
                open(json!({"id": id()}), &[]),
                json!({"allOf": [open(json!({"id": id()}), &[]), {"required": ["id"]}]}),
                NO,
                YES,
            ),
            row(
                "not: exclusion widened",
                json!({"type": "string", "not": {"const": "x"}}),
                json!({"type": "string", "not": {"enum": ["x", "y"]}}),
                NO,
                YES,
            ),
            row(
                "if/then unchanged, optional field added to closed model",
                json!({"type": "object", "additionalProperties": false, "properties": {"kind": s(), "card": s()},
                       "if": {"properties": {"kind": {"const": "card"}}}, "then": {"required": ["card"]}}),
                json!({"type": "object", "additionalProperties": false, "properties": {"kind": s(), "card": s(), "note": s()},
                       "if": {"properties": {"kind": {"const": "card"}}}, "then": {"required": ["card"]}}),
                YES,
                NO,
            ),
            // --- true / {} / false
            row("{} to true", json!({}), json!(true), YES, YES),
            row("string to true", s(), json!(true), YES, NO),
            row("true to string", json!(true), s(), NO, YES),
            row("false to string", json!(false), s(), YES, NO),
            // --- annotations and unknown keywords
            row(
                "annotations only",
                json!({"title": "a", "type": "object", "properties": {"id": {"type": "string", "description": "old"}}}),
                json!({"title": "b", "description": "new", "examples": [{}], "type": "object",
                       "properties": {"id": {"type": "string", "description": "new", "deprecated": true, "$comment": "x"}}}),
                YES,
                YES,
            ),
            // A keyword the checker does not know could reject events on the wide side; on the
            // narrow side it can only take events away.
            row(
                "unknown keyword added",
                s(),
                json!({"type": "string", "maxGraphemes": 3}),
                NO,
                YES,
            ),
        ]
    }

    fn verdicts(old: &Value, new: &Value) -> [Vec<Incompatibility>; 3] {
        [Mode::Backward, Mode::Forward, Mode::Full].map(|m| check(m, &[("v1", old)], ("v2", new)))
    }

    #[test]
    fn compatibility_table() {
        let mut wrong = Vec::new();
        let mut table = String::from("| case | BACKWARD | FORWARD | FULL |\n|---|---|---|---|\n");
        let mark = |ok: bool| if ok { "yes" } else { "no" };
        for r in rows() {
            let [b, f, full] = verdicts(&r.old, &r.new);
            for (mode, want, got) in [
                ("BACKWARD", r.backward, &b),
                ("FORWARD", r.forward, &f),
                ("FULL", r.backward && r.forward, &full),
            ] {
                if got.is_empty() != want {
                    wrong.push(format!(
                        "{}: {mode} expected {} but got {got:#?}",
                        r.name,
                        mark(want)
                    ));
                }
            }
            // FULL reports exactly what the two directions report.
            assert_eq!(full, [b.clone(), f.clone()].concat(), "{}", r.name);
            assert!(check(Mode::None, &[("v1", &r.old)], ("v2", &r.new)).is_empty());
            table.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                r.name,
                mark(b.is_empty()),
                mark(f.is_empty()),
                mark(full.is_empty())
            ));
        }
        println!("{table}");
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[track_caller]
    fn assert_finding(found: &[Incompatibility], pointer: &str, fragment: &str) {
        assert!(
            found
                .iter()
                .any(|i| i.pointer == pointer && i.message.contains(fragment)),
            "no finding at {pointer} containing {fragment:?} in {found:#?}"
        );
    }

    fn backward(old: &Value, new: &Value) -> Vec<Incompatibility> {
        check(Mode::Backward, &[("v2", old)], ("v3", new))
    }

    fn forward(old: &Value, new: &Value) -> Vec<Incompatibility> {
        check(Mode::Forward, &[("v2", old)], ("v3", new))
    }

    #[test]
    fn required_names_field_and_direction() {
        let old = closed(json!({"id": id(), "user_id": id()}), &["id"]);
        let new = closed(json!({"id": id(), "user_id": id()}), &["id", "user_id"]);
        let found = backward(&old, &new);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].pointer, "/required");
        assert_eq!(
            found[0].message,
            "`user_id` became required: events valid under v2 may be invalid under v3"
        );
        // FORWARD of the reverse change: v3 dropped the requirement, v3's events break v2.
        let found = forward(&new, &old);
        assert_finding(
            &found,
            "/required",
            "`user_id` is no longer required: events valid under v3 may be invalid under v2",
        );
    }

    #[test]
    fn bound_change_names_keyword_values_and_versions() {
        let old = field(json!({"type": "number", "minimum": 0}));
        let new = field(json!({"type": "number", "minimum": 1}));
        let found = check(Mode::Backward, &[("v1", &old)], ("v2", &new));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].pointer, "/properties/f/minimum");
        assert_eq!(
            found[0].message,
            "`f`: `minimum` rose from 0 to 1: events valid under v1 may be invalid under v2"
        );
        // FORWARD from 1 back to 0: the pointer goes into the new schema.
        let found = check(Mode::Forward, &[("v1", &new)], ("v2", &old));
        assert_finding(
            &found,
            "/properties/f/minimum",
            "`minimum` fell from 1 to 0: events valid under v2 may be invalid under v1",
        );
    }

    #[test]
    fn nested_change_points_two_levels_down() {
        let nest = |zip: Value| {
            closed(
                json!({"customer": closed(json!({"address": closed(json!({"zip": zip}), &["zip"])}), &["address"])}),
                &["customer"],
            )
        };
        let found = backward(
            &nest(json!({"type": "string", "maxLength": 10})),
            &nest(json!({"type": "string", "maxLength": 5})),
        );
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_finding(
            &found,
            "/properties/customer/properties/address/properties/zip/maxLength",
            "`customer.address.zip`: `maxLength` fell from 10 to 5",
        );
    }

    #[test]
    fn closed_and_open_models_explain_themselves() {
        let small = closed(json!({"id": id()}), &["id"]);
        let big = closed(json!({"id": id(), "note": s_()}), &["id"]);
        assert_finding(
            &backward(&big, &small),
            "/properties/note",
            "`note` was removed from a closed model",
        );
        assert_finding(
            &forward(&small, &big),
            "/properties/note",
            "`note` was added, but v2 is a closed model",
        );
        let small = open(json!({"id": id()}), &["id"]);
        let big = open(json!({"id": id(), "note": s_()}), &["id"]);
        assert_finding(
            &backward(&small, &big),
            "/properties/note",
            "v2 does not close the model",
        );
        assert_finding(
            &forward(&big, &small),
            "/properties/note",
            "`note` was removed, but v3 does not close the model",
        );
        assert_finding(
            &backward(&small, &closed(json!({"id": id()}), &["id"])),
            "/additionalProperties",
            "the model was closed",
        );
    }

    fn s_() -> Value {
        json!({"type": "string"})
    }

    #[test]
    fn undecidable_changes_say_cannot_prove() {
        let found = backward(
            &field(json!({"type": "string", "pattern": "^a$"})),
            &field(json!({"type": "string", "pattern": "^b$"})),
        );
        assert_finding(
            &found,
            "/properties/f/pattern",
            "cannot prove that events valid under v2 are valid under v3: `pattern` changed from \"^a$\" to \"^b$\"",
        );
        let found = backward(&s_(), &json!({"type": "string", "maxGraphemes": 3}));
        assert_finding(&found, "/maxGraphemes", "cannot prove");
        let found = subschema(&s_(), &json!({"$ref": "other.json#/$defs/x"}));
        assert_finding(&found, "/$ref", "points outside the document");
        let found = subschema(&s_(), &json!({"type": "string", "not": {"pattern": "^a"}}));
        assert_finding(&found, "/not", "cannot prove");
    }

    #[test]
    fn enum_values_are_named() {
        let old = field(json!({"enum": ["free", "pro", "team"]}));
        let new = field(json!({"enum": ["free", "pro"]}));
        assert_finding(
            &backward(&old, &new),
            "/properties/f/enum",
            "`f`: value \"team\" was removed",
        );
        assert_finding(
            &forward(&new, &old),
            "/properties/f/enum",
            "`f`: value \"team\" was added: events valid under v3 may be invalid under v2",
        );
    }

    #[test]
    fn refs_point_into_definitions() {
        let doc = |min: u64| json!({"$defs": {"money": {"type": "number", "minimum": min}}, "properties": {"amount": {"$ref": "#/$defs/money"}}});
        assert_finding(
            &backward(&doc(0), &doc(1)),
            "/$defs/money/minimum",
            "`amount`: `minimum` rose from 0 to 1",
        );
        let tree = |max: u64| {
            json!({"$defs": {"node": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": max},
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}, "$ref": "#/$defs/node"})
        };
        let found = backward(&tree(50), &tree(20));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_finding(
            &found,
            "/$defs/node/properties/name/maxLength",
            "`name`: `maxLength` fell from 50 to 20",
        );
        // Unchanged recursive schemas with another annotation compare without looping.
        let mut described = tree(50);
        described["description"] = json!("a tree");
        assert!(backward(&tree(50), &described).is_empty());
    }

    #[test]
    fn ref_loops_are_not_interpreted() {
        let loop_ =
            json!({"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"});
        let found = check(Mode::Full, &[("v1", &s_())], ("v2", &loop_));
        assert_finding(&found, "/$defs/a", "`/$defs/a` in v2 leads back to itself");
        assert_eq!(found.len(), 2, "{found:#?}");
        let through_one_of = json!({"oneOf": [{"$ref": "#"}, {"type": "string"}]});
        assert_finding(
            &subschema(&s_(), &through_one_of),
            "",
            "leads back to itself",
        );
        // Recursion that descends into the event is fine.
        let list = json!({"type": "object", "properties": {"next": {"$ref": "#"}}});
        assert!(subschema(&list, &list.clone()).is_empty());
        let mut described = list.clone();
        described["description"] = json!("a linked list");
        assert!(subschema(&list, &described).is_empty());
    }

    #[test]
    fn subschema_points_into_wide() {
        assert!(subschema(&json!({"type": "integer"}), &json!({"type": "number"})).is_empty());
        let found = subschema(&json!({"type": "number"}), &json!({"type": "integer"}));
        assert_finding(
            &found,
            "/type",
            "`type` changed from \"number\" to \"integer\": events valid under the narrow schema may be invalid under the wide schema",
        );
    }

    #[test]
    fn oneof_overlap_is_explained() {
        let found = backward(
            &json!({"type": "string", "maxLength": 5}),
            &json!({"oneOf": [{"type": "string", "maxLength": 10}, {"type": "string", "minLength": 3}]}),
        );
        assert_finding(&found, "/oneOf/0", "cannot be shown not to match branch 1");
    }

    /// ⊆ is transitive, so a chain of versions each BACKWARD-compatible with the one before is
    /// also BACKWARD_TRANSITIVE-compatible. The transitive modes differ only when an earlier
    /// step was *not* compatible (registered under NONE, or before the mode was raised): here
    /// v1 → v2 removed `note` from a closed model, v3 brings it back as an integer. v2 → v3 is
    /// fine, so BACKWARD passes; v1's `note: "x"` fails v3, so BACKWARD_TRANSITIVE does not.
    #[test]
    fn transitive_modes_check_every_earlier_version() {
        let v1 = closed(json!({"id": id(), "note": s_()}), &["id"]);
        let v2 = closed(json!({"id": id()}), &["id"]);
        let v3 = closed(json!({"id": id(), "note": {"type": "integer"}}), &["id"]);
        assert!(!check(Mode::Backward, &[("v1", &v1)], ("v2", &v2)).is_empty());
        let history = [("v1", &v1), ("v2", &v2)];
        assert!(check(Mode::Backward, &history, ("v3", &v3)).is_empty());
        let found = check(Mode::BackwardTransitive, &history, ("v3", &v3));
        assert_finding(
            &found,
            "/properties/note/type",
            "`note`: `type` changed from \"string\" to \"integer\": events valid under v1 may be invalid under v3",
        );
        assert!(!check(Mode::FullTransitive, &history, ("v3", &v3)).is_empty());

        // FORWARD: v2 added `note` to a closed model (v2's events break v1), v3 requires it.
        let v1 = closed(json!({"id": id()}), &["id"]);
        let v2 = closed(json!({"id": id(), "note": s_()}), &["id"]);
        let v3 = closed(json!({"id": id(), "note": s_()}), &["id", "note"]);
        let history = [("v1", &v1), ("v2", &v2)];
        assert!(check(Mode::Forward, &history, ("v3", &v3)).is_empty());
        let found = check(Mode::ForwardTransitive, &history, ("v3", &v3));
        assert_finding(
            &found,
            "/properties/note",
            "`note` was added, but v1 is a closed model",
        );

        // FULL: v3 only re-describes v2, but v1 differs from both.
        let mut v3 = v2.clone();
        v3["description"] = json!("v2 with docs");
        assert!(check(Mode::Full, &history, ("v3", &v3)).is_empty());
        assert!(!check(Mode::FullTransitive, &history, ("v3", &v3)).is_empty());

        // A proper chain stays compatible transitively.
        let v1 = field(json!({"type": "integer", "minimum": 0}));
        let v2 = field(json!({"type": "number", "minimum": 0}));
        let v3 = field(json!({"type": ["number", "null"]}));
        let history = [("v1", &v1), ("v2", &v2)];
        assert!(check(Mode::BackwardTransitive, &history, ("v3", &v3)).is_empty());
    }

    /// Realistic large schemas stay well inside the step budget (a "too large" verdict on them
    /// would block producers for no reason).
    #[test]
    fn large_schemas_fit_the_budget() {
        let fields = |n: usize| -> Map<String, Value> {
            (0..n)
                .map(|i| {
                    (
                        format!("field_{i}"),
                        json!({"type": "string", "maxLength": 64}),
                    )
                })
                .collect()
        };
        let nested: Map<String, Value> = (0..10)
            .map(|i| {
                (
                    format!("group_{i}"),
                    closed(Value::Object(fields(20)), &["field_0"]),
                )
            })
            .collect();
        let mut props = fields(300);
        props.extend(nested);
        props.insert(
            "plan".to_owned(),
            json!({"enum": (0..100).map(|i| format!("plan_{i}")).collect::<Vec<_>>()}),
        );
        let v1 = closed(Value::Object(props.clone()), &["field_0"]);
        props.insert("note".to_owned(), s_());
        let v2 = closed(Value::Object(props), &["field_0"]);
        assert!(backward(&v1, &v2).is_empty());
        assert_eq!(forward(&v1, &v2).len(), 1);

        // A discriminated union of 12 variants of 20 fields gains a 13th.
        let variant = |kind: usize| {
            let mut p = fields(20);
            p.insert("kind".to_owned(), json!({"const": format!("kind_{kind}")}));
            closed(Value::Object(p), &["kind"])
        };
        let v1 = json!({"oneOf": (0..12).map(variant).collect::<Vec<_>>()});
        let v2 = json!({"oneOf": (0..13).map(variant).collect::<Vec<_>>()});
        assert!(backward(&v1, &v2).is_empty(), "{:#?}", backward(&v1, &v2));
        let found = forward(&v1, &v2);
        assert!(
            !found.is_empty() && found.iter().all(|f| !f.message.contains(TOO_BIG)),
            "{found:#?}"
        );
    }

    #[test]
    fn no_earlier_version_is_compatible() {
        for mode in Mode::ALL {
            assert!(check(mode, &[], ("v1", &json!(false))).is_empty());
        }
    }

    /// `order.paid` v2 is a breaking change in every direction, so FULL fails too:
    /// - BACKWARD: v2 requires `customer_id` and `amount_minor`, which v1 events lack, and v2
    ///   is closed without `amount`, which every v1 event carries.
    /// - FORWARD: v1 requires `amount`, which v2 events lack, and v1 is closed without
    ///   `customer_id`, `amount_minor`, `paid_at` and `items`, which v2 events carry.
    ///
    /// Registering it would take `NONE` (or a new event type).
    #[test]
    fn shipped_order_paid_v2_breaks_v1_both_ways() {
        let v1: Value =
            serde_json::from_str(include_str!("../../schemas/order.paid/v1.json")).unwrap();
        let v2: Value =
            serde_json::from_str(include_str!("../../schemas/order.paid/v2.json")).unwrap();
        let b = check(Mode::Backward, &[("v1", &v1)], ("v2", &v2));
        assert_finding(&b, "/required", "`customer_id` became required");
        assert_finding(&b, "/required", "`amount_minor` became required");
        assert_finding(
            &b,
            "/properties/amount",
            "`amount` was removed from a closed model",
        );
        assert_eq!(b.len(), 3, "{b:#?}");
        let f = check(Mode::Forward, &[("v1", &v1)], ("v2", &v2));
        assert_finding(
            &f,
            "/required",
            "`amount` is no longer required: events valid under v2 may be invalid under v1",
        );
        for name in ["customer_id", "amount_minor", "paid_at", "items"] {
            assert_finding(
                &f,
                &format!("/properties/{name}"),
                &format!("`{name}` was added, but v1 is a closed model"),
            );
        }
        assert_eq!(f.len(), 5, "{f:#?}");
        assert_eq!(check(Mode::Full, &[("v1", &v1)], ("v2", &v2)).len(), 8);
    }

    #[test]
    fn annotation_only_changes() {
        let base = json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
            "properties": {"title": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
            "$defs": {"x": {"type": "integer"}}});
        let mut docs = base.clone();
        docs["title"] = json!("order");
        docs["description"] = json!("d");
        docs["properties"]["title"]["description"] = json!("a property called title");
        docs["properties"]["tags"]["items"]["examples"] = json!(["a"]);
        docs["$defs"]["x"]["deprecated"] = json!(true);
        docs["$defs"]["x"]["default"] = json!(1);
        docs["$defs"]["x"]["$comment"] = json!("c");
        docs["properties"]["tags"]["readOnly"] = json!(true);
        assert!(annotations_only_change(&base, &docs));
        assert!(annotations_only_change(&base, &base));
        // A property named like an annotation is data, not an annotation.
        let mut no_title = base.clone();
        no_title["properties"]
            .as_object_mut()
            .unwrap()
            .remove("title");
        assert!(!annotations_only_change(&base, &no_title));
        let mut tighter = base.clone();
        tighter["properties"]["tags"]["items"]["maxLength"] = json!(3);
        assert!(!annotations_only_change(&base, &tighter));
        let mut dialect = base.clone();
        dialect["$schema"] = json!("http://json-schema.org/draft-07/schema#");
        assert!(!annotations_only_change(&base, &dialect));
        let mut enum_value = json!({"enum": [{"title": "a"}]});
        assert!(annotations_only_change(&enum_value, &enum_value.clone()));
        let other = json!({"enum": [{"title": "b"}]});
        assert!(!annotations_only_change(&enum_value, &other));
        enum_value["description"] = json!("fine");
        assert!(annotations_only_change(
            &enum_value,
            &json!({"enum": [{"title": "a"}]})
        ));
    }

    #[test]
    fn modes_parse_print_and_serialize_as_upper_snake() {
        for mode in Mode::ALL {
            assert_eq!(mode.as_str().parse::<Mode>().unwrap(), mode);
            assert_eq!(mode.to_string(), mode.as_str());
            assert_eq!(serde_json::to_value(mode).unwrap(), json!(mode.as_str()));
            assert_eq!(
                serde_json::from_value::<Mode>(json!(mode.as_str())).unwrap(),
                mode
            );
        }
        assert_eq!(
            "FULL_TRANSITIVE".parse::<Mode>().unwrap(),
            Mode::FullTransitive
        );
        assert!("backward".parse::<Mode>().is_err());
        assert!(
            "SIDEWAYS"
                .parse::<Mode>()
                .unwrap_err()
                .to_string()
                .contains("SIDEWAYS")
        );
    }
}

#[cfg(test)]
mod soundness {
    //! Random schema pairs: whenever `subschema(a, b)` finds nothing, no random instance valid
    //! under `a` may be invalid under `b`.

    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
    use serde_json::json;

    /// Scalars near the bounds, lengths, patterns and formats the schemas below use.
    fn leaf(r: &mut StdRng) -> Value {
        let pool = [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(1),
            json!(2),
            json!(-1),
            json!(0.5),
            json!(1.5),
            json!(10),
            json!(""),
            json!("a"),
            json!("ab"),
            json!("ABC"),
            json!("x@y.io"),
            json!("2024-01-01T00:00:00Z"),
        ];
        pool.choose(r).cloned().unwrap_or(Value::Null)
    }

    /// An event: scalars, short arrays, objects with the property names the schemas use.
    fn instance(r: &mut StdRng, depth: u32) -> Value {
        match r.random_range(0..if depth == 0 { 1 } else { 4 }) {
            0 => leaf(r),
            1 => Value::Array(
                (0..r.random_range(0..4))
                    .map(|_| instance(r, depth - 1))
                    .collect(),
            ),
            _ => {
                let mut m = Map::new();
                for k in ["a", "b", "c", "x1", "y"] {
                    if r.random_bool(0.5) {
                        m.insert(k.to_owned(), instance(r, depth - 1));
                    }
                }
                Value::Object(m)
            }
        }
    }

    /// A `type`: one name or a union.
    fn types(r: &mut StdRng) -> Value {
        let names = [
            "null", "boolean", "integer", "number", "string", "array", "object",
        ];
        if r.random_bool(0.7) {
            json!(names.choose(r).copied().unwrap_or("null"))
        } else {
            let mut v: Vec<&str> = names
                .iter()
                .copied()
                .filter(|_| r.random_bool(0.35))
                .collect();
            v.dedup();
            if v.is_empty() {
                v.push("string")
            }
            json!(v)
        }
    }

    /// A schema of up to three keywords from the whole vocabulary, nested `depth` deep.
    fn schema(r: &mut StdRng, depth: u32) -> Value {
        if r.random_bool(0.05) {
            return json!(r.random_bool(0.8));
        }
        let mut m = Map::new();
        let kws = r.random_range(0..4);
        for _ in 0..kws {
            let k = r.random_range(0..if depth == 0 { 16 } else { 45 });
            let (key, v) = match k {
                0..=2 => ("type", types(r)),
                3 => (
                    "enum",
                    json!(
                        (0..r.random_range(1..4))
                            .map(|_| leaf(r))
                            .collect::<Vec<_>>()
                    ),
                ),
                4 => ("const", leaf(r)),
                5 => ("minimum", json!(r.random_range(-1..3))),
                6 => ("maximum", json!(r.random_range(-1..3))),
                7 => ("exclusiveMinimum", json!(r.random_range(-1..3))),
                8 => (
                    "exclusiveMaximum",
                    [json!(0.5), json!(1), json!(2)][r.random_range(0..3)].clone(),
                ),
                9 => (
                    "multipleOf",
                    [json!(0.5), json!(1), json!(2)][r.random_range(0..3)].clone(),
                ),
                10 => ("minLength", json!(r.random_range(0..3))),
                11 => ("maxLength", json!(r.random_range(0..3))),
                12 => (
                    "pattern",
                    json!(["^a", "^[A-Z]+$", "b$"][r.random_range(0..3)]),
                ),
                13 => (
                    "format",
                    json!(["email", "date-time"][r.random_range(0..2)]),
                ),
                14 => ("minItems", json!(r.random_range(0..3))),
                15 => ("uniqueItems", json!(true)),
                16..=18 => {
                    let mut p = Map::new();
                    for k in ["a", "b", "c"] {
                        if r.random_bool(0.5) {
                            p.insert(k.to_owned(), schema(r, depth - 1));
                        }
                    }
                    ("properties", Value::Object(p))
                }
                19 => (
                    "required",
                    json!(
                        ["a", "b", "c"]
                            .iter()
                            .filter(|_| r.random_bool(0.4))
                            .collect::<Vec<_>>()
                    ),
                ),
                20 => (
                    "additionalProperties",
                    if r.random_bool(0.6) {
                        json!(false)
                    } else {
                        schema(r, depth - 1)
                    },
                ),
                21 => ("patternProperties", json!({"^x": schema(r, depth - 1)})),
                22 => ("items", schema(r, depth - 1)),
                23 => (
                    "prefixItems",
                    json!([schema(r, depth - 1), schema(r, depth - 1)]),
                ),
                24 => ("anyOf", json!([schema(r, depth - 1), schema(r, depth - 1)])),
                25 => ("oneOf", json!([schema(r, depth - 1), schema(r, depth - 1)])),
                26 => ("allOf", json!([schema(r, depth - 1)])),
                27 => ("not", schema(r, depth - 1)),
                28 => ("maxItems", json!(r.random_range(0..3))),
                29 => ("if", schema(r, depth - 1)),
                30 => ("then", schema(r, depth - 1)),
                31 => ("else", schema(r, depth - 1)),
                32 => ("contains", schema(r, depth - 1)),
                33 => ("propertyNames", json!({"maxLength": 1})),
                34 => ("dependentRequired", json!({"a": ["b"]})),
                35 => ("items", json!([schema(r, depth - 1)])),
                36 => ("additionalItems", schema(r, depth - 1)),
                37 => ("unevaluatedProperties", json!(false)),
                38 => ("unevaluatedItems", json!(false)),
                39 => ("dependentSchemas", json!({"a": schema(r, depth - 1)})),
                40 => ("minProperties", json!(r.random_range(0..3))),
                41 => ("maxProperties", json!(r.random_range(0..3))),
                42 => ("minContains", json!(r.random_range(0..3))),
                43 => ("$ref", json!("#")),
                _ => ("$ref", json!("#/$defs/d")),
            };
            m.insert(key.to_owned(), v);
        }
        Value::Object(m)
    }

    /// `b` is `a` with one change somewhere, so that many pairs are (nearly) compatible.
    fn mutate(r: &mut StdRng, a: &Value, depth: u32) -> Value {
        match a {
            Value::Object(m) if !m.is_empty() && r.random_bool(0.8) => {
                let mut m = m.clone();
                let keys: Vec<String> = m.keys().cloned().collect();
                let k = keys.choose(r).cloned().unwrap_or_default();
                match r.random_range(0..4) {
                    0 => {
                        m.remove(&k);
                    }
                    1 => {
                        let fresh = schema(r, depth);
                        if let Value::Object(f) = fresh {
                            m.extend(f);
                        }
                    }
                    _ => {
                        let v = m[&k].clone();
                        let v = match v {
                            Value::Object(_) | Value::Bool(_) => {
                                mutate(r, &v, depth.saturating_sub(1))
                            }
                            Value::Array(xs) if !xs.is_empty() && xs[0].is_object() => {
                                let mut xs = xs.clone();
                                let i = r.random_range(0..xs.len());
                                xs[i] = mutate(r, &xs[i], depth.saturating_sub(1));
                                Value::Array(xs)
                            }
                            _ => schema(r, depth).get(&k).cloned().unwrap_or(v),
                        };
                        m.insert(k, v);
                    }
                }
                Value::Object(m)
            }
            _ => schema(r, depth),
        }
    }

    /// A whole document: `body`, a `$defs` entry to refer to, and a random dialect.
    fn document(r: &mut StdRng, body: Value) -> Value {
        let mut doc = match body {
            Value::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("allOf".to_owned(), json!([other]));
                m
            }
        };
        let def = schema(r, 1);
        doc.insert("$defs".to_owned(), json!({ "d": def }));
        let dialects = [
            None,
            None,
            Some("http://json-schema.org/draft-04/schema#"),
            Some("http://json-schema.org/draft-07/schema#"),
            Some("https://json-schema.org/draft/2019-09/schema"),
        ];
        if let Some(d) = dialects.choose(r).copied().flatten() {
            doc.insert("$schema".to_owned(), json!(d));
        }
        Value::Object(doc)
    }

    /// Deterministic by default; `SEED=… ROUNDS=… cargo test --lib soundness -- --nocapture`
    /// searches further.
    #[test]
    fn random_pairs_never_pass_a_counterexample() {
        let env = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(default)
        };
        let mut r = StdRng::seed_from_u64(env("SEED", 7));
        let (mut checked, mut proven, mut distinct) = (0, 0, 0);
        let mut slowest = std::time::Duration::ZERO;
        for round in 0..env("ROUNDS", 1500) {
            let a_body = schema(&mut r, 2);
            let b_body = if round % 5 == 0 {
                schema(&mut r, 2)
            } else {
                mutate(&mut r, &a_body, 2)
            };
            let a = document(&mut r, a_body);
            let mut b = document(&mut r, b_body);
            if r.random_bool(0.5) {
                b["$defs"] = a["$defs"].clone();
            }
            let build = |s: &Value| jsonschema::options().should_validate_formats(true).build(s);
            // Schemas the validator refuses never reach the registry.
            let (Ok(va), Ok(vb)) = (build(&a), build(&b)) else {
                continue;
            };
            checked += 1;
            let started = std::time::Instant::now();
            let found = subschema(&a, &b);
            slowest = slowest.max(started.elapsed());
            if !found.is_empty() {
                continue;
            }
            proven += 1;
            distinct += usize::from(a != b);
            for _ in 0..300 {
                let x = instance(&mut r, 2);
                assert!(
                    !va.is_valid(&x) || vb.is_valid(&x),
                    "claimed ⊆ but {x} is valid under\n{a:#}\nand invalid under\n{b:#}"
                );
            }
        }
        println!(
            "{checked} pairs, {proven} proven compatible ({distinct} not identical), slowest {slowest:?}"
        );
        assert!(
            distinct > 300,
            "only {distinct} non-trivial proofs in {checked} pairs"
        );
    }
}
