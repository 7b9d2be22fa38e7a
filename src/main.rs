//! The `postbox` binary: parse the command line, load configuration, run a subcommand.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postbox::{
    config::{Config, Settings},
    outbox::{OutboxStore, Store},
};

/// postbox — the durable HTTP front door to RabbitMQ and NATS JetStream.
///
/// Settings are layered: defaults < TOML file (--config) < POSTBOX_* environment < flags.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// TOML file with settings (keys are the flag names with `_`, e.g. `database_url`).
    #[arg(long, env = "POSTBOX_CONFIG", global = true)]
    config: Option<PathBuf>,

    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API and run the relay (the default).
    Serve {
        #[command(flatten)]
        settings: Settings,
    },
    /// Apply the outbox database migrations and exit.
    Migrate {
        #[command(flatten)]
        settings: Settings,
    },
    /// Print the OpenAPI document (as committed in openapi/openapi.json).
    Openapi,
    /// Make a new random API key: print it (once) and the `[[api_keys]]` entry with its hash.
    Keygen {
        /// Who holds the key; recorded with every event it sends.
        #[arg(long)]
        name: String,
        /// Event type the key may send (repeatable; `*` matches any characters).
        #[arg(long = "type", default_value = "*")]
        types: Vec<String>,
        /// Source the key may send as (repeatable; any source when absent).
        #[arg(long = "source")]
        sources: Vec<String>,
        /// Grant the admin scope (dead-letter listing, redelivery).
        #[arg(long)]
        admin: bool,
    },
    /// Print the `sha256:…` hash of an API key read from standard input (for keys you made
    /// yourself).
    HashKey,
    /// Check every schema under the schema directory compiles, and list them; `schemas check`
    /// runs the registry's compatibility checks (for producers' CI).
    Schemas {
        #[command(subcommand)]
        action: Option<SchemasAction>,
        #[command(flatten)]
        settings: Settings,
    },
    /// NATS: send again what a JetStream consumer gave up on (the messages named by the
    /// advisories in its dead-letter stream `{stream}_{consumer}_DLQ`), then remove those
    /// advisories. Needs `sink = nats`.
    NatsReplay {
        /// The durable consumer (a `[[nats_consumers]]` name).
        #[arg(long)]
        consumer: String,
        /// At most this many messages.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        settings: Settings,
    },
}

#[derive(Subcommand)]
enum SchemasAction {
    /// The registry's checks on a schema directory: one line per violation, exit status 1 on
    /// any. Each version must compile and keep its type's compatibility mode against the
    /// versions before it; with --against, a version the server has must be unchanged and a new
    /// one must keep the server's mode against what it serves.
    Check {
        /// The directory (default: the `schemas_dir` setting).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A running postbox's base URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        against: Option<String>,
        /// Check every type under this mode instead of the server's (or BACKWARD).
        #[arg(long)]
        mode: Option<String>,
        /// API key for --against, when the server wants one.
        #[arg(long, env = "POSTBOX_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
}

/// mimalloc instead of glibc's malloc: a profile under single-event load showed glibc's
/// allocator (malloc, free, consolidation) as the largest part of postbox's own CPU time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the chain of causes on one line, without a backtrace: these are
            // configuration and start-up errors meant for whoever runs postbox.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let file = match &cli.config {
        Some(path) => Settings::from_toml_file(path)?,
        None => Settings::default(),
    };
    let (command, sub) = match cli.command {
        None => (None, Settings::default()),
        Some(Command::Serve { settings }) => (None, settings),
        Some(Command::Migrate { settings }) => (Some("migrate"), settings),
        Some(Command::Schemas {
            action:
                Some(SchemasAction::Check {
                    dir,
                    against,
                    mode,
                    api_key,
                }),
            settings,
        }) => {
            let dir = match dir {
                Some(d) => d,
                None => file
                    .overlay(cli.settings)
                    .overlay(settings)
                    .schemas_dir
                    .unwrap_or_else(|| PathBuf::from("schemas")),
            };
            return schemas_check(
                &dir,
                against.as_deref(),
                mode.as_deref(),
                api_key.as_deref(),
            );
        }
        Some(Command::Schemas {
            action: None,
            settings,
        }) => (Some("schemas"), settings),
        Some(Command::NatsReplay {
            consumer,
            limit,
            settings,
        }) => {
            let config = Config::from_settings(file.overlay(cli.settings).overlay(settings))?;
            postbox::telemetry::init_logging(config.log_format);
            return nats_replay(&config, &consumer, limit);
        }
        Some(Command::Openapi) => {
            print!("{}", postbox::http::openapi_json());
            return Ok(());
        }
        Some(Command::Keygen {
            name,
            types,
            sources,
            admin,
        }) => return keygen(name, types, sources, admin),
        Some(Command::HashKey) => {
            let mut secret = String::new();
            std::io::stdin()
                .read_line(&mut secret)
                .context("reading the key from standard input")?;
            println!("{}", postbox::auth::hash_key(secret.trim()));
            return Ok(());
        }
    };
    let config = Config::from_settings(file.overlay(cli.settings).overlay(sub))?;
    postbox::telemetry::init_logging(config.log_format);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        match command {
            Some("migrate") => {
                let store = Store::open(&config.store).await?;
                store.migrate().await?;
                println!("migrations applied ({})", store.backend());
                Ok(())
            }
            Some(_) => {
                let registry = postbox::schema::Registry::load(&config.schemas_dir)?;
                let snapshot = registry.snapshot();
                for (t, versions) in snapshot.list() {
                    let v: Vec<&str> = versions.iter().map(|s| s.as_str()).collect();
                    println!("{t}: {}", v.join(", "));
                }
                println!("{} schemas OK", registry.len());
                Ok(())
            }
            None => postbox::serve(config).await,
        }
    })
}

/// `postbox schemas check`: one line per violation; an error (exit status 1) if there is any.
fn schemas_check(
    dir: &std::path::Path,
    against: Option<&str>,
    mode: Option<&str>,
    api_key: Option<&str>,
) -> anyhow::Result<()> {
    let mode = mode
        .map(|m| m.trim().to_ascii_uppercase().parse())
        .transpose()
        .context("--mode")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let lines = runtime.block_on(postbox::schema::check::run(dir, against, mode, api_key))?;
    for l in &lines {
        println!("{l}");
    }
    if lines.is_empty() {
        println!("{}: every schema passes", dir.display());
        Ok(())
    } else {
        anyhow::bail!("{} schema problem(s) in {}", lines.len(), dir.display())
    }
}

/// `postbox nats-replay`: one line per message sent again.
fn nats_replay(config: &Config, consumer: &str, limit: usize) -> anyhow::Result<()> {
    let postbox::config::SinkConfig::Nats(nats) = &config.sink else {
        anyhow::bail!("nats-replay needs the NATS sink (sink = \"nats\")");
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let replayed = runtime.block_on(postbox::sink::nats::replay_dead(nats, consumer, limit))?;
    for r in &replayed {
        println!(
            "replayed {} (stream seq {}, {} deliveries) as seq {}",
            r.subject, r.stream_seq, r.deliveries, r.new_seq
        );
    }
    println!(
        "{} messages replayed for consumer `{consumer}`",
        replayed.len()
    );
    Ok(())
}

/// `postbox keygen`: a new key and its configuration entry (checked like configured keys).
fn keygen(
    name: String,
    types: Vec<String>,
    sources: Vec<String>,
    admin: bool,
) -> anyhow::Result<()> {
    let secret = postbox::auth::generate_key();
    let spec = postbox::auth::KeySpec {
        name,
        hash: postbox::auth::hash_key(&secret),
        types,
        sources,
        admin,
        rate_per_sec: None,
        burst: None,
    };
    postbox::auth::KeyRing::from_specs(std::slice::from_ref(&spec))?;
    let list = |v: &[String]| -> anyhow::Result<String> { Ok(serde_json::to_string(v)?) };
    println!(
        "# API key `{}`: hand it to its service now; postbox keeps only the hash.",
        spec.name
    );
    println!("{secret}");
    println!();
    println!("# Configuration entry (TOML config file or --api-keys-file):");
    println!("[[api_keys]]");
    println!("name = {}", serde_json::to_string(&spec.name)?);
    println!("hash = \"{}\"", spec.hash);
    println!("types = {}", list(&spec.types)?);
    if !spec.sources.is_empty() {
        println!("sources = {}", list(&spec.sources)?);
    }
    if spec.admin {
        println!("admin = true");
    }
    println!("# rate_per_sec = 1000   # optional token bucket, with burst = …");
    Ok(())
}
