//! Configuration: one settings tree layered as defaults < TOML file < `POSTBOX_*` env < flags,
//! validated once into a [`Config`] whose values cannot be invalid later.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::auth::{KeyRing, KeySpec};
pub use crate::relay::RelayConfig;
use crate::sink::{
    amqp::{AmqpConfig, QueueSettings},
    nats::{ConsumerSettings, NatsConfig},
};

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

    /// Broker the relay publishes to: `amqp` (RabbitMQ) or `nats` (NATS JetStream).
    /// [default: amqp]
    #[arg(long, env = "POSTBOX_SINK")]
    pub sink: Option<String>,

    /// NATS server URL(s), comma-separated; user/password or token may be in the URL, and
    /// `tls://` asks for TLS (with `sink = nats`). [default: nats://127.0.0.1:4222]
    #[arg(long, env = "POSTBOX_NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,

    /// JetStream stream events are published to; created (subjects `{routing_prefix}.>`, file
    /// storage) when no stream captures them, never changed. [default: EVENTS]
    #[arg(long, env = "POSTBOX_NATS_STREAM")]
    pub nats_stream: Option<String>,

    /// Duplicate window of the stream postbox creates, in seconds: a republish with the same
    /// `Nats-Msg-Id` inside it is dropped by JetStream. [default: 120]
    #[arg(long, env = "POSTBOX_NATS_DUPLICATE_WINDOW_SECS")]
    pub nats_duplicate_window_secs: Option<u64>,

    /// Replicas of the stream postbox creates (1 on a single server). [default: 1]
    #[arg(long, env = "POSTBOX_NATS_REPLICAS")]
    pub nats_replicas: Option<usize>,

    /// CloudEvents attributes copied into `ce-*` AMQP headers: `all`, `none` (body and AMQP
    /// properties only), or a comma-separated list such as `type,source`. [default: all]
    #[arg(long, env = "POSTBOX_AMQP_CE_HEADERS")]
    pub amqp_ce_headers: Option<String>,

    /// RabbitMQ URL the relay publishes to; for a cluster, its nodes' full URLs separated by
    /// commas (tried in turn; postbox fails over when its node goes down).
    /// [default: amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long, env = "POSTBOX_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,

    /// Directory of JSON Schemas laid out as `{type}/{version}.json`. [default: ./schemas]
    #[arg(long, env = "POSTBOX_SCHEMAS_DIR")]
    pub schemas_dir: Option<PathBuf>,

    /// Compatibility mode a type's new schema versions must keep when the type has none set
    /// (`PUT /v1/schemas/{type}`): BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE,
    /// FULL, FULL_TRANSITIVE or NONE. [default: BACKWARD]
    #[arg(long, env = "POSTBOX_SCHEMA_COMPATIBILITY")]
    pub schema_compatibility: Option<String>,

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

    /// After a round of fewer than 64 rows, how long the relay waits in milliseconds before it
    /// claims again, so that events committed meanwhile go out together (fewer, larger claims
    /// and settlements); 0 claims at once. Not used while a backlog drains, nor for the next
    /// event of a key whose previous event was just settled. [default: 5]
    #[arg(long, env = "POSTBOX_RELAY_LINGER_MS")]
    pub relay_linger_ms: Option<u64>,

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

    /// Hours the body of a published event is kept (for redelivery and `GET /v1/events/{id}`);
    /// then only its row stays, as the idempotency record, until `retention_hours`. At most
    /// `retention_hours`. [default: 24]
    #[arg(long, env = "POSTBOX_PAYLOAD_RETENTION_HOURS")]
    pub payload_retention_hours: Option<u64>,

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

    /// Milliseconds between two samples of the figures `GET /v1/stats` and the console's
    /// overview show (1000-60000; 15 minutes of samples are kept). [default: 5000]
    #[arg(long, env = "POSTBOX_STATS_INTERVAL_MS")]
    pub stats_interval_ms: Option<u64>,

    /// Consumer queues the relay declares and binds (TOML `[[queues]]` only; see
    /// [`QueueSettings`]).
    #[arg(skip)]
    pub queues: Option<Vec<QueueSettings>>,

    /// JetStream consumers (and dead-letter streams) the relay declares (TOML
    /// `[[nats_consumers]]` only; see [`ConsumerSettings`]).
    #[arg(skip)]
    pub nats_consumers: Option<Vec<ConsumerSettings>>,
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
            sink,
            nats_url,
            nats_stream,
            nats_duplicate_window_secs,
            nats_replicas,
            nats_consumers,
            amqp_ce_headers,
            amqp_url,
            schemas_dir,
            schema_compatibility,
            exchange,
            routing_prefix,
            public_url,
            max_attempts,
            retry_base_ms,
            retry_max_ms,
            poll_ms,
            relay_batch,
            relay_linger_ms,
            confirm_timeout_secs,
            max_body_bytes,
            max_batch_events,
            writer_queue,
            writer_batch,
            max_backlog,
            retention_hours,
            payload_retention_hours,
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
            stats_interval_ms,
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
    /// The broker the relay publishes to, and its own settings.
    pub sink: SinkConfig,
    /// Schema directory.
    pub schemas_dir: PathBuf,
    /// Default compatibility mode of new schema versions.
    pub schema_compatibility: crate::schema::compat::Mode,
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
    pub retention: crate::outbox::housekeeping::Retention,
    /// Migrate at start.
    pub migrate_on_start: bool,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// API keys (empty: authentication off, loopback only unless `insecure_no_auth`).
    pub keys: std::sync::Arc<KeyRing>,
    /// OTLP/HTTP traces URL (`…/v1/traces`), when export is on.
    pub otlp_traces_url: Option<String>,
    /// How often `GET /v1/stats` figures are sampled.
    pub stats_interval: Duration,
}

/// Which broker the relay publishes to; each sink owns its section.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// RabbitMQ (`sink = "amqp"`, the default).
    Amqp(AmqpConfig),
    /// NATS JetStream (`sink = "nats"`).
    Nats(NatsConfig),
}

impl SinkConfig {
    /// The broker's name in logs and `/readyz`.
    pub fn name(&self) -> &'static str {
        match self {
            SinkConfig::Amqp(_) => "RabbitMQ",
            SinkConfig::Nats(_) => "NATS JetStream",
        }
    }

    /// Where events go, safe to log.
    pub fn describe(&self) -> String {
        match self {
            SinkConfig::Amqp(c) => {
                format!("RabbitMQ {} exchange `{}`", c.describe_nodes(), c.exchange)
            }
            SinkConfig::Nats(c) => format!("NATS JetStream {} stream `{}`", c.url, c.stream),
        }
    }
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
        let routing_prefix = s.routing_prefix.unwrap_or_else(|| "events".to_owned());
        crate::sink::amqp::check_name("routing_prefix", &routing_prefix)?;
        let sink = match s.sink.as_deref().unwrap_or("amqp") {
            "amqp" => SinkConfig::Amqp(
                AmqpConfig::new(
                    s.amqp_url.clone(),
                    s.exchange.clone(),
                    s.queues.as_deref().unwrap_or_default(),
                )?
                .with_ce_headers(s.amqp_ce_headers.as_deref().unwrap_or("all").parse()?),
            ),
            "nats" => SinkConfig::Nats(NatsConfig::new(
                s.nats_url.clone(),
                s.nats_stream.clone(),
                &routing_prefix,
                s.nats_duplicate_window_secs.map(Duration::from_secs),
                s.nats_replicas,
                s.nats_consumers.as_deref().unwrap_or_default(),
            )?),
            other => bail!("sink must be `amqp` or `nats` (got `{other}`)"),
        };
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
        let otlp_traces_url = match s.otlp_endpoint.as_deref() {
            None | Some("") => None,
            Some(endpoint) => Some(crate::trace::otlp::traces_url(endpoint)?),
        };
        Ok(Config {
            keys: std::sync::Arc::new(keys),
            listen,
            store,
            sink,
            schemas_dir: s.schemas_dir.unwrap_or_else(|| PathBuf::from("schemas")),
            schema_compatibility: match s.schema_compatibility.as_deref() {
                None | Some("") => crate::schema::compat::Mode::Backward,
                Some(m) => m
                    .trim()
                    .to_ascii_uppercase()
                    .parse()
                    .context("schema_compatibility")?,
            },
            routing_prefix,
            public_url,
            relay: RelayConfig {
                max_attempts,
                retry_base: Duration::from_millis(s.retry_base_ms.unwrap_or(1000)),
                retry_max: Duration::from_millis(s.retry_max_ms.unwrap_or(300_000)),
                poll: Duration::from_millis(s.poll_ms.unwrap_or(1000).max(10)),
                batch: relay_batch,
                linger: Duration::from_millis(s.relay_linger_ms.unwrap_or(5).min(1000)),
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
            retention: {
                let rows = s.retention_hours.unwrap_or(168);
                crate::outbox::housekeeping::Retention {
                    rows: Duration::from_secs(rows * 3600),
                    payloads: Duration::from_secs(
                        s.payload_retention_hours.unwrap_or(24).min(rows) * 3600,
                    ),
                }
            },
            migrate_on_start: s.migrate_on_start.unwrap_or(true),
            shutdown_grace: Duration::from_secs(s.shutdown_grace_secs.unwrap_or(30)),
            log_format,
            otlp_traces_url,
            // Kept within 1-60 s by `stats::Series::new`.
            stats_interval: Duration::from_millis(s.stats_interval_ms.unwrap_or(5000)),
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

/// Replace the password of a URL with `***` so that it can be logged or shown.
pub use crate::secret::redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    fn amqp(c: &Config) -> &AmqpConfig {
        match &c.sink {
            SinkConfig::Amqp(a) => a,
            SinkConfig::Nats(_) => panic!("expected the AMQP sink"),
        }
    }

    #[test]
    fn nats_is_chosen_by_sink() {
        let c = Config::from_settings(Settings {
            sink: Some("nats".into()),
            nats_url: Some("nats://u:secret@127.0.0.1:4222".into()),
            ..Settings::default()
        })
        .unwrap();
        let SinkConfig::Nats(n) = &c.sink else {
            panic!("expected the NATS sink")
        };
        assert_eq!(n.stream, "EVENTS");
        assert_eq!(n.subjects, "events.>");
        assert_eq!(n.duplicate_window.as_secs(), 120);
        assert!(!c.sink.describe().contains("secret"));
        let bad = |s: Settings| Config::from_settings(s).is_err();
        assert!(bad(Settings {
            sink: Some("kafka".into()),
            ..Settings::default()
        }));
        assert!(bad(Settings {
            sink: Some("nats".into()),
            nats_url: Some("http://x".into()),
            ..Settings::default()
        }));
        assert!(bad(Settings {
            sink: Some("nats".into()),
            nats_stream: Some("a.b".into()),
            ..Settings::default()
        }));
    }

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
        assert_eq!(amqp(&c).exchange, "events");
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
        assert_eq!(amqp(&c).topology.queues.len(), 1);
        assert_eq!(amqp(&c).topology.queues[0].delivery_limit, Some(5));
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
            (c.listen, &c.store, &amqp(&c).exchange),
            (d.listen, &d.store, &amqp(&d).exchange)
        );
        assert_eq!(c.relay.max_attempts, d.relay.max_attempts);
        assert_eq!(c.relay.linger, d.relay.linger);
        assert_eq!(d.relay.linger, Duration::from_millis(5));
        let none = Settings {
            relay_linger_ms: Some(0),
            ..Settings::default()
        };
        assert!(Config::from_settings(none).unwrap().relay.linger.is_zero());
        assert_eq!(amqp(&c).topology.queues.len(), 2);
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
