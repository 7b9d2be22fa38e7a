//! API keys: who may send which event types from which sources, who may operate postbox, and
//! how fast each key may send (a token bucket per key).
//!
//! Keys are configured as SHA-256 hashes (`sha256:<64 hex>`), never in plain text. A presented
//! key is hashed and looked up by its digest, so comparing it takes the same time whatever the
//! key; keys are random 256-bit strings (`postbox keygen`), so a fast hash is the right tool
//! (a slow password hash protects low-entropy secrets, which these are not).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// One key as written in configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Who holds the key; recorded with every event it sends.
    pub name: String,
    /// `sha256:` and the hex SHA-256 of the key (`postbox keygen` prints it).
    pub hash: String,
    /// Event types it may send; `*` matches any run of characters (`order.*`, `*`).
    #[serde(default)]
    pub types: Vec<String>,
    /// Sources it may send as (same patterns); empty means any source.
    #[serde(default)]
    pub sources: Vec<String>,
    /// May use the operator endpoints (dead-letter listing, redelivery) and read every event.
    #[serde(default)]
    pub admin: bool,
    /// Sustained events per second (token bucket refill); absent means no limit.
    pub rate_per_sec: Option<f64>,
    /// Events that may be sent at once before the rate applies. [default: rate_per_sec, at least 1]
    pub burst: Option<f64>,
}

/// A configured key, ready to check requests against.
#[derive(Debug)]
pub struct ApiKey {
    /// The key's name.
    pub name: String,
    /// Operator scope.
    pub admin: bool,
    types: Vec<String>,
    sources: Vec<String>,
    bucket: Option<Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl ApiKey {
    /// May this key send events of this type?
    pub fn may_send_type(&self, event_type: &str) -> bool {
        self.types.iter().any(|p| glob_match(p, event_type))
    }

    /// May this key send events with this source?
    pub fn may_use_source(&self, source: &str) -> bool {
        self.sources.is_empty() || self.sources.iter().any(|p| glob_match(p, source))
    }

    /// Take `events` tokens from the key's bucket. A request is let in while the bucket is not
    /// empty and may leave it in debt (so a batch larger than the burst still goes through,
    /// and the key then waits for the debt to refill); `Err` carries how long to wait.
    pub fn take(&self, events: usize, now: Instant) -> Result<(), Duration> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        let Ok(mut b) = bucket.lock() else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * b.rate).min(b.burst);
        b.at = now;
        if b.tokens < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - b.tokens) / b.rate));
        }
        b.tokens -= events as f64;
        Ok(())
    }
}

/// Who is calling, once an input has authenticated the request: what ingest and the operator
/// endpoints check permissions against.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Authentication is off (no key configured): everything is allowed.
    Open,
    /// A configured key.
    Key(Arc<ApiKey>),
}

impl Caller {
    /// The key's name, recorded with the events it sends.
    pub fn key_name(&self) -> Option<String> {
        match self {
            Caller::Open => None,
            Caller::Key(k) => Some(k.name.clone()),
        }
    }

    /// Whether the caller may read an event of this type (admins read everything; a key reads
    /// the types it may send).
    pub fn may_read(&self, event_type: &str) -> bool {
        match self {
            Caller::Open => true,
            Caller::Key(k) => k.admin || k.may_send_type(event_type),
        }
    }
}

/// Every configured key, by the digest of the key. Empty means authentication is off.
#[derive(Debug, Default)]
pub struct KeyRing {
    by_digest: HashMap<[u8; 32], Arc<ApiKey>>,
}

impl KeyRing {
    /// Check and load the configured keys.
    pub fn from_specs(specs: &[KeySpec]) -> anyhow::Result<KeyRing> {
        let mut by_digest = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for spec in specs {
            let name = &spec.name;
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                bail!("api key name must be 1-64 characters of [A-Za-z0-9._-] (got `{name}`)");
            }
            if !names.insert(name.clone()) {
                bail!("api key name `{name}` is configured twice");
            }
            let digest =
                parse_hash(&spec.hash).with_context(|| format!("api key `{name}`: bad `hash`"))?;
            for p in &spec.types {
                if p.is_empty()
                    || p.len() > 128
                    || !p.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'*')
                    })
                {
                    bail!(
                        "api key `{name}`: type pattern must be 1-128 characters of [A-Za-z0-9._-*] (got `{p}`)"
                    );
                }
            }
            for p in &spec.sources {
                if p.is_empty() || p.len() > 256 || p.chars().any(char::is_control) {
                    bail!("api key `{name}`: source pattern must be 1-256 printable characters");
                }
            }
            let bucket = match spec.rate_per_sec {
                None => None,
                Some(rate) if rate.is_finite() && rate > 0.0 => {
                    let burst = spec.burst.unwrap_or(rate).max(1.0);
                    if !burst.is_finite() {
                        bail!("api key `{name}`: burst must be a finite number");
                    }
                    Some(Mutex::new(Bucket {
                        rate,
                        burst,
                        tokens: burst,
                        at: Instant::now(),
                    }))
                }
                Some(_) => bail!("api key `{name}`: rate_per_sec must be a positive number"),
            };
            let key = Arc::new(ApiKey {
                name: name.clone(),
                admin: spec.admin,
                types: spec.types.clone(),
                sources: spec.sources.clone(),
                bucket,
            });
            if by_digest.insert(digest, key).is_some() {
                bail!("api key `{name}` has the same hash as another key");
            }
        }
        Ok(KeyRing { by_digest })
    }

    /// Whether any key is configured (then every `/v1/events` request needs one).
    pub fn is_enabled(&self) -> bool {
        !self.by_digest.is_empty()
    }

    /// Number of configured keys.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The key this secret belongs to, if any.
    pub fn authenticate(&self, secret: &str) -> Option<Arc<ApiKey>> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        self.by_digest.get(&digest).cloned()
    }
}

/// `sha256:<hex>` of a key, as configuration expects it.
pub fn hash_key(secret: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

/// A new random key: `pbk_` and 256 random bits in hex.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("pbk_{}", hex::encode(bytes))
}

fn parse_hash(raw: &str) -> anyhow::Result<[u8; 32]> {
    let Some(hexed) = raw.strip_prefix("sha256:") else {
        bail!("must be `sha256:` followed by 64 hex digits (run `postbox keygen`)");
    };
    let bytes = hex::decode(hexed).context("must be `sha256:` followed by 64 hex digits")?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("must be `sha256:` followed by 64 hex digits"))
}

/// `*` matches any run of characters (also none); everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, secret: &str) -> KeySpec {
        KeySpec {
            name: name.into(),
            hash: hash_key(secret),
            types: vec!["order.*".into()],
            sources: vec![],
            admin: false,
            rate_per_sec: None,
            burst: None,
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("order.*", "order.paid"));
        assert!(glob_match("order.*", "order.refund.created"));
        assert!(!glob_match("order.*", "order"));
        assert!(!glob_match("order.*", "orders.paid"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("*.created", "user.created"));
        assert!(!glob_match("*.created", "user.created.v2"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("/shop/*", "/shop/checkout"));
    }

    #[test]
    fn keys_are_found_by_their_secret_only() {
        let ring = KeyRing::from_specs(&[spec("checkout", "s3cret")]).unwrap();
        assert!(ring.is_enabled());
        let key = ring.authenticate("s3cret").unwrap();
        assert_eq!(key.name, "checkout");
        assert!(key.may_send_type("order.paid"));
        assert!(!key.may_send_type("user.signed_up"));
        assert!(key.may_use_source("/anything"));
        assert!(ring.authenticate("s3cre").is_none());
        assert!(ring.authenticate("").is_none());
        assert!(!KeyRing::default().is_enabled());
    }

    #[test]
    fn generated_keys_are_random_and_hash_to_the_configured_form() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert!(a.starts_with("pbk_") && a.len() == 68);
        let h = hash_key(&a);
        assert!(h.starts_with("sha256:") && h.len() == 71);
        assert!(parse_hash(&h).is_ok());
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut dup = spec("a", "x");
        dup.name = "b".into();
        assert!(
            KeyRing::from_specs(&[spec("a", "x"), dup]).is_err(),
            "same hash"
        );
        assert!(KeyRing::from_specs(&[spec("a", "x"), spec("a", "y")]).is_err());
        let mut plain = spec("a", "x");
        plain.hash = "my-plain-key".into();
        let err = KeyRing::from_specs(&[plain]).unwrap_err();
        assert!(!format!("{err:#}").contains("my-plain-key"));
        let mut bad_type = spec("a", "x");
        bad_type.types = vec!["order.#".into()];
        assert!(KeyRing::from_specs(&[bad_type]).is_err());
        let mut bad_rate = spec("a", "x");
        bad_rate.rate_per_sec = Some(0.0);
        assert!(KeyRing::from_specs(&[bad_rate]).is_err());
    }

    #[test]
    fn token_bucket_lets_bursts_in_then_paces() {
        let mut s = spec("a", "x");
        s.rate_per_sec = Some(10.0);
        s.burst = Some(5.0);
        let ring = KeyRing::from_specs(&[s]).unwrap();
        let key = ring.authenticate("x").unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(key.take(1, t0).is_ok());
        }
        let wait = key.take(1, t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        // 100 ms later one token is back.
        assert!(key.take(1, t0 + Duration::from_millis(100)).is_ok());
        // A batch larger than the burst goes through and leaves the key in debt.
        let later = t0 + Duration::from_secs(10);
        assert!(key.take(25, later).is_ok());
        let wait = key.take(1, later).unwrap_err();
        assert!(wait >= Duration::from_secs(2), "{wait:?}");
    }
}
