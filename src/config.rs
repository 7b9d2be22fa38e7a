//! Configuration: one settings tree layered as defaults < TOML file < `POSTBOX_*` env < flags,
//! validated once into a [`Config`] whose values cannot be invalid later.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::auth::{KeyRing, KeySpec};
use crate::relay::topology::{QueueSettings, Topology};

/// Every tunable setting, all optional so that layers can be merged.
///
/// The same struct is read from the TOML file (keys are the field names) and from the command
/// line / environment (clap merges `--flag` over `POSTBOX_*`).
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP API listens on. [default: 127.0.0.1:8080]
    #[arg(long, env = "POSTBOX_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Outbox database: `sqlite://path` (embedded, default) or `postgres://…` (shared by
    /// several instances). [default: sqlite://data/postbox.db]
    #[arg(long, env = "POSTBOX_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// RabbitMQ URL the relay publishes to. [default: amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long, env = "POSTBOX_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,

    /// Directory of JSON Schemas laid out as `{type}/{version}.json`. [default: ./schemas]
    #[arg(long, env = "POSTBOX_SCHEMAS_DIR")]
    pub schemas_dir: Option<PathBuf>,

    /// Durable topic exchange the relay publishes to (declared at start-up). [default: events]
    #[arg(long, env = "POSTBOX_EXCHANGE")]
    pub exchange: Option<String>,

    /// First word of every routing key: `{prefix}.{type}.{version}`. [default: events]
    #[arg(long, env = "POSTBOX_ROUTING_PREFIX")]
    pub routing_prefix: Option<String>,

    /// Base URL clients reach this server at; used for `dataschema` of native events.
    /// [default: http://{listen}]
    #[arg(long, env = "POSTBOX_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Publish attempts before an event becomes `dead`. [default: 10]
    #[arg(long, env = "POSTBOX_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,

    /// First retry delay in milliseconds; doubles per attempt, with jitter. [default: 1000]
    #[arg(long, env = "POSTBOX_RETRY_BASE_MS")]
    pub retry_base_ms: Option<u64>,

    /// Longest retry delay in milliseconds. [default: 300000]
    #[arg(long, env = "POSTBOX_RETRY_MAX_MS")]
    pub retry_max_ms: Option<u64>,

    /// Relay fallback poll interval in milliseconds (it also wakes on every commit). [default: 1000]
    #[arg(long, env = "POSTBOX_POLL_MS")]
    pub poll_ms: Option<u64>,

    /// Rows the relay claims and keeps in flight per round. [default: 1000]
    #[arg(long, env = "POSTBOX_RELAY_BATCH")]
    pub relay_batch: Option<u32>,

    /// Seconds to wait for RabbitMQ's confirms of one round before counting them as failed.
    /// [default: 30]
    #[arg(long, env = "POSTBOX_CONFIRM_TIMEOUT_SECS")]
    pub confirm_timeout_secs: Option<u64>,

    /// Largest request body in bytes, after decompression. [default: 1048576]
    #[arg(long, env = "POSTBOX_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,

    /// Most events in one batch request. [default: 1000]
    #[arg(long, env = "POSTBOX_MAX_BATCH_EVENTS")]
    pub max_batch_events: Option<usize>,

    /// Requests that may wait for the outbox writer; beyond it postbox answers 503. [default: 4096]
    #[arg(long, env = "POSTBOX_WRITER_QUEUE")]
    pub writer_queue: Option<usize>,

    /// Most events the writer commits in one transaction (group commit). [default: 2000]
    #[arg(long, env = "POSTBOX_WRITER_BATCH")]
    pub writer_batch: Option<usize>,

    /// Pending events at which new events are refused with 503 (0 = no limit). [default: 0]
    #[arg(long, env = "POSTBOX_MAX_BACKLOG")]
    pub max_backlog: Option<u64>,

    /// Hours published rows (and idempotency keys) are kept for deduplication before pruning.
    /// [default: 168]
    #[arg(long, env = "POSTBOX_RETENTION_HOURS")]
    pub retention_hours: Option<u64>,

    /// Run database migrations when serving starts. [default: true]
    #[arg(long, env = "POSTBOX_MIGRATE_ON_START")]
    pub migrate_on_start: Option<bool>,

    /// Seconds to finish in-flight work after SIGINT/SIGTERM. [default: 30]
    #[arg(long, env = "POSTBOX_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,

    /// Log format: `pretty` or `json`. [default: pretty]
    #[arg(long, env = "POSTBOX_LOG_FORMAT")]
    pub log_format: Option<String>,

    /// Milliseconds a client has to send a request's headers (also how long an idle keep-alive
    /// connection stays open); then the connection is closed. [default: 10000]
    #[arg(long, env = "POSTBOX_HEADER_TIMEOUT_MS")]
    pub header_timeout_ms: Option<u64>,

    /// Milliseconds a client has to send the whole request body; a slower (or stalled) client
    /// gets 408 and the connection is closed. [default: 30000]
    #[arg(long, env = "POSTBOX_BODY_TIMEOUT_MS")]
    pub body_timeout_ms: Option<u64>,

    /// Milliseconds a request may take in all; then 503 `request-timeout` with `Retry-After`.
    /// Events of a timed-out request may still have been committed: retry with the same id or
    /// `Idempotency-Key` and the answer is a replay. [default: 60000]
    #[arg(long, env = "POSTBOX_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,

    /// Requests handled at once (health, readiness and metrics excepted); beyond it postbox
    /// answers 503 `overloaded` with `Retry-After` at once. [default: 1024]
    #[arg(long, env = "POSTBOX_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,

    /// API keys as a JSON array of `{"name", "hash", "types", "sources", "admin",
    /// "rate_per_sec", "burst"}` objects (in the TOML file: `[[api_keys]]` tables). With no key
    /// configured, authentication is off and postbox only listens on a loopback address.
    #[arg(long, env = "POSTBOX_API_KEYS", hide_env_values = true, value_parser = parse_key_specs)]
    pub api_keys: Option<KeySpecs>,

    /// A TOML file of `[[api_keys]]` tables, added to the keys configured elsewhere.
    #[arg(long, env = "POSTBOX_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Serve without API keys on a non-loopback address (anyone who reaches the port may send
    /// events and use the operator endpoints). [default: false]
    #[arg(long, env = "POSTBOX_INSECURE_NO_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub insecure_no_auth: Option<bool>,

    /// OTLP/HTTP collector to export the relay's publish spans to, e.g. `http://127.0.0.1:4318`
    /// (spans are POSTed as JSON to `{endpoint}/v1/traces`). [default: off]
    #[arg(long, env = "POSTBOX_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Consumer queues the relay declares and binds (TOML `[[queues]]` only; see
    /// [`QueueSettings`]).
    #[arg(skip)]
    pub queues: Option<Vec<QueueSettings>>,
}

/// A list of API keys (a newtype so that clap reads it as one JSON value).
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct KeySpecs(pub Vec<KeySpec>);

fn parse_key_specs(raw: &str) -> Result<KeySpecs, String> {
    serde_json::from_str(raw).map_err(|e| format!("expected a JSON array of API keys: {e}"))
}

/// The file named by `api_keys_file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    api_keys: Vec<KeySpec>,
}

impl Settings {
    /// Overlay `over` on `self`: every value set in `over` wins.
    pub fn overlay(self, over: Settings) -> Settings {
        macro_rules! pick {
            ($($f:ident),* $(,)?) => { Settings { $($f: over.$f.or(self.$f)),* } };
        }
        pick!(
            listen,
            database_url,
            amqp_url,
            schemas_dir,
            exchange,
            routing_prefix,
            public_url,
            max_attempts,
            retry_base_ms,
            retry_max_ms,
            poll_ms,
            relay_batch,
            confirm_timeout_secs,
            max_body_bytes,
            max_batch_events,
            writer_queue,
            writer_batch,
            max_backlog,
            retention_hours,
            migrate_on_start,
            shutdown_grace_secs,
            log_format,
            header_timeout_ms,
            body_timeout_ms,
            request_timeout_ms,
            max_in_flight,
            api_keys,
            api_keys_file,
            insecure_no_auth,
            otlp_endpoint,
            queues,
        )
    }

    /// Read a TOML settings file.
    pub fn from_toml_file(path: &std::path::Path) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }
}

/// Which outbox backend, decided from the database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// Embedded SQLite file.
    Sqlite {
        /// Path of the database file.
        path: PathBuf,
    },
    /// PostgreSQL server.
    Postgres {
        /// Connection URL (contains credentials: never log it, use [`redact_url`]).
        url: String,
    },
}

impl StoreKind {
    /// Where the outbox is, safe to log: the SQLite path or the URL with its password redacted.
    pub fn describe(&self) -> String {
        match self {
            StoreKind::Sqlite { path } => format!("sqlite://{}", path.display()),
            StoreKind::Postgres { url } => redact_url(url),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Outbox backend.
    pub store: StoreKind,
    /// AMQP URL (contains credentials).
    pub amqp_url: String,
    /// Schema directory.
    pub schemas_dir: PathBuf,
    /// Exchange name.
    pub exchange: String,
    /// Routing key prefix.
    pub routing_prefix: String,
    /// Public base URL, without trailing slash.
    pub public_url: String,
    /// Relay tuning.
    pub relay: RelayConfig,
    /// HTTP limits.
    pub limits: Limits,
    /// Writer queue capacity (requests).
    pub writer_queue: usize,
    /// Max events per group commit.
    pub writer_batch: usize,
    /// Retention of published rows.
    pub retention: Duration,
    /// Migrate at start.
    pub migrate_on_start: bool,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// API keys (empty: authentication off, loopback only unless `insecure_no_auth`).
    pub keys: std::sync::Arc<KeyRing>,
    /// Consumer queues to declare at every relay (re)connect.
    pub topology: Topology,
    /// OTLP/HTTP traces URL (`…/v1/traces`), when export is on.
    pub otlp_traces_url: Option<String>,
}

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Attempts before `dead`.
    pub max_attempts: u32,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Fallback poll interval.
    pub poll: Duration,
    /// Rows per round.
    pub batch: u32,
    /// Confirm wait per round.
    pub confirm_timeout: Duration,
}

/// HTTP input limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Max body bytes after decompression.
    pub max_body_bytes: usize,
    /// Max events per batch.
    pub max_batch_events: usize,
    /// Max pending events before 503 (0 = unlimited).
    pub max_backlog: u64,
    /// Time to receive a request's headers.
    pub header_timeout: Duration,
    /// Time to receive a request's body.
    pub body_timeout: Duration,
    /// Time for the whole request.
    pub request_timeout: Duration,
    /// Requests handled at once.
    pub max_in_flight: usize,
}

impl Config {
    /// Apply defaults and validate.
    pub fn from_settings(s: Settings) -> anyhow::Result<Config> {
        let listen = s
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let database_url = s
            .database_url
            .unwrap_or_else(|| "sqlite://data/postbox.db".to_owned());
        let store = parse_store(&database_url)?;
        let amqp_url = s
            .amqp_url
            .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        if !(amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://")) {
            bail!(
                "amqp_url must start with amqp:// or amqps:// (got {})",
                redact_url(&amqp_url)
            );
        }
        let exchange = s.exchange.unwrap_or_else(|| "events".to_owned());
        check_amqp_name("exchange", &exchange)?;
        let routing_prefix = s.routing_prefix.unwrap_or_else(|| "events".to_owned());
        check_amqp_name("routing_prefix", &routing_prefix)?;
        let public_url = s
            .public_url
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_owned();
        let max_attempts = s.max_attempts.unwrap_or(10);
        if max_attempts == 0 {
            bail!("max_attempts must be at least 1");
        }
        let relay_batch = s.relay_batch.unwrap_or(1000);
        if relay_batch == 0 {
            bail!("relay_batch must be at least 1");
        }
        let writer_batch = s.writer_batch.unwrap_or(2000);
        let writer_queue = s.writer_queue.unwrap_or(4096);
        if writer_batch == 0 || writer_queue == 0 {
            bail!("writer_batch and writer_queue must be at least 1");
        }
        let log_format = match s.log_format.as_deref().unwrap_or("pretty") {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => bail!("log_format must be `pretty` or `json` (got `{other}`)"),
        };
        let mut specs = s.api_keys.map(|k| k.0).unwrap_or_default();
        if let Some(path) = &s.api_keys_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading api_keys_file {}", path.display()))?;
            let file: KeysFile = toml::from_str(&text)
                .with_context(|| format!("parsing api_keys_file {}", path.display()))?;
            specs.extend(file.api_keys);
        }
        let keys = KeyRing::from_specs(&specs)?;
        if keys.is_empty() && !listen.ip().is_loopback() && !s.insecure_no_auth.unwrap_or(false) {
            bail!(
                "postbox would listen on {listen} with no API keys configured, so anyone who can \
                 reach it could send events and redeliver dead ones. Configure API keys \
                 (api_keys, POSTBOX_API_KEYS or --api-keys-file; `postbox keygen` makes one), \
                 listen on a loopback address, or pass --insecure-no-auth if a proxy in front \
                 authenticates"
            );
        }
        let topology = Topology::from_settings(s.queues.as_deref().unwrap_or_default(), &exchange)?;
        let otlp_traces_url = match s.otlp_endpoint.as_deref() {
            None | Some("") => None,
            Some(endpoint) => Some(crate::trace::otlp::traces_url(endpoint)?),
        };
        Ok(Config {
            keys: std::sync::Arc::new(keys),
            listen,
            store,
            amqp_url,
            schemas_dir: s.schemas_dir.unwrap_or_else(|| PathBuf::from("schemas")),
            exchange,
            routing_prefix,
            public_url,
            relay: RelayConfig {
                max_attempts,
                retry_base: Duration::from_millis(s.retry_base_ms.unwrap_or(1000)),
                retry_max: Duration::from_millis(s.retry_max_ms.unwrap_or(300_000)),
                poll: Duration::from_millis(s.poll_ms.unwrap_or(1000).max(10)),
                batch: relay_batch,
                confirm_timeout: Duration::from_secs(s.confirm_timeout_secs.unwrap_or(30).max(1)),
            },
            limits: Limits {
                max_body_bytes: s.max_body_bytes.unwrap_or(1024 * 1024),
                max_batch_events: s.max_batch_events.unwrap_or(1000).max(1),
                max_backlog: s.max_backlog.unwrap_or(0),
                header_timeout: Duration::from_millis(s.header_timeout_ms.unwrap_or(10_000).max(1)),
                body_timeout: Duration::from_millis(s.body_timeout_ms.unwrap_or(30_000).max(1)),
                request_timeout: Duration::from_millis(
                    s.request_timeout_ms.unwrap_or(60_000).max(1),
                ),
                max_in_flight: s.max_in_flight.unwrap_or(1024).max(1),
            },
            writer_queue,
            writer_batch,
            retention: Duration::from_secs(s.retention_hours.unwrap_or(168) * 3600),
            migrate_on_start: s.migrate_on_start.unwrap_or(true),
            shutdown_grace: Duration::from_secs(s.shutdown_grace_secs.unwrap_or(30)),
            log_format,
            topology,
            otlp_traces_url,
        })
    }
}

fn parse_store(url: &str) -> anyhow::Result<StoreKind> {
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or(url.strip_prefix("sqlite:"))
    {
        let path = rest.split('?').next().unwrap_or(rest);
        if path.is_empty() || path == ":memory:" {
            bail!(
                "database_url: SQLite needs a file path (an in-memory database would lose events)"
            );
        }
        return Ok(StoreKind::Sqlite {
            path: PathBuf::from(path),
        });
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(StoreKind::Postgres {
            url: url.to_owned(),
        });
    }
    bail!(
        "database_url must start with sqlite:// or postgres:// (got {})",
        redact_url(url)
    )
}

/// AMQP short strings are at most 255 bytes (prefix 100 + type 128 + version fit a routing
/// key); keep names to a safe character set so that no
/// wildcard (`*`, `#`) can reach a routing key.
fn check_amqp_name(what: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !ok {
        bail!("{what} must be 1-100 characters of [A-Za-z0-9._:-] (got `{name}`)");
    }
    Ok(())
}

/// Replace the password of a URL with `***` so that it can be logged or shown.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_on_a_laptop() {
        let c = Config::from_settings(Settings::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.store,
            StoreKind::Sqlite {
                path: PathBuf::from("data/postbox.db")
            }
        );
        assert_eq!(c.exchange, "events");
        assert_eq!(c.public_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn later_layers_win() {
        let file: Settings = toml::from_str("exchange = \"file\"\nmax_attempts = 3").unwrap();
        let cli = Settings {
            exchange: Some("cli".into()),
            ..Settings::default()
        };
        let merged = file.overlay(cli);
        assert_eq!(merged.exchange.as_deref(), Some("cli"));
        assert_eq!(merged.max_attempts, Some(3));
    }

    #[test]
    fn queues_and_otlp_come_from_the_file() {
        let file: Settings = toml::from_str(
            "otlp_endpoint = \"http://127.0.0.1:4318\"\n\
             [[queues]]\nname = \"billing\"\nbindings = [\"events.order.paid.#\"]\n\
             delivery_limit = 5\ndead_letter = true\n",
        )
        .unwrap();
        let c = Config::from_settings(file).unwrap();
        assert_eq!(c.topology.queues.len(), 1);
        assert_eq!(c.topology.queues[0].delivery_limit, Some(5));
        assert_eq!(
            c.otlp_traces_url.as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert!(
            Config::from_settings(Settings::default())
                .unwrap()
                .otlp_traces_url
                .is_none()
        );
    }

    #[test]
    fn the_example_file_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/postbox.toml");
        let c = Config::from_settings(Settings::from_toml_file(&path).unwrap()).unwrap();
        let d = Config::from_settings(Settings::default()).unwrap();
        assert_eq!(
            (c.listen, &c.store, &c.exchange),
            (d.listen, &d.store, &d.exchange)
        );
        assert_eq!(c.relay.max_attempts, d.relay.max_attempts);
        assert_eq!(c.topology.queues.len(), 2);
        assert_eq!(
            c.keys
                .authenticate("abc")
                .map(|k| k.name.clone())
                .as_deref(),
            Some("checkout")
        );
    }

    #[test]
    fn postgres_url_selects_postgres_and_is_redacted() {
        let s = Settings {
            database_url: Some("postgres://u:secret@localhost/db".into()),
            ..Settings::default()
        };
        let c = Config::from_settings(s).unwrap();
        assert!(matches!(c.store, StoreKind::Postgres { .. }));
        assert_eq!(
            redact_url("postgres://u:secret@localhost/db"),
            "postgres://u:***@localhost/db"
        );
    }

    #[test]
    fn invalid_values_are_refused() {
        for s in [
            Settings {
                database_url: Some("mysql://x".into()),
                ..Settings::default()
            },
            Settings {
                exchange: Some("ev#".into()),
                ..Settings::default()
            },
            Settings {
                max_attempts: Some(0),
                ..Settings::default()
            },
            Settings {
                database_url: Some("sqlite::memory:".into()),
                ..Settings::default()
            },
        ] {
            assert!(Config::from_settings(s).is_err());
        }
    }

    #[test]
    fn api_keys_come_from_toml_json_or_a_keys_file() {
        let hash = crate::auth::hash_key("k1");
        let toml_text =
            format!("[[api_keys]]\nname = \"a\"\nhash = \"{hash}\"\ntypes = [\"order.*\"]\n");
        let file: Settings = toml::from_str(&toml_text).unwrap();
        let json = parse_key_specs(&format!(
            r#"[{{"name":"b","hash":"{}","admin":true}}]"#,
            crate::auth::hash_key("k2")
        ))
        .unwrap();
        assert_eq!(json.0[0].name, "b");
        assert!(json.0[0].admin);
        assert!(parse_key_specs("{not json").is_err());
        let dir = tempfile::tempdir().unwrap();
        let keys_file = dir.path().join("keys.toml");
        let third = toml_text
            .replace("\"a\"", "\"c\"")
            .replace(&hash, &crate::auth::hash_key("k3"));
        std::fs::write(&keys_file, third).unwrap();
        let c = Config::from_settings(file.overlay(Settings {
            api_keys_file: Some(keys_file),
            ..Settings::default()
        }))
        .unwrap();
        assert_eq!(c.keys.len(), 2);
        assert_eq!(c.keys.authenticate("k1").unwrap().name, "a");
        assert_eq!(c.keys.authenticate("k3").unwrap().name, "c");
        assert!(c.keys.authenticate("k2").is_none());
    }
}
