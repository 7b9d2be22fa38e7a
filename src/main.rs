//! The `postbox` binary: parse the command line, load configuration, run a subcommand.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postbox::{
    config::{Config, Settings},
    outbox::{OutboxStore, Store},
};

/// postbox — the durable HTTP front door to RabbitMQ.
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
    /// Check every schema under the schema directory compiles, and list them.
    Schemas {
        #[command(flatten)]
        settings: Settings,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let file = match &cli.config {
        Some(path) => Settings::from_toml_file(path)?,
        None => Settings::default(),
    };
    let (command, sub) = match cli.command {
        None => (None, Settings::default()),
        Some(Command::Serve { settings }) => (None, settings),
        Some(Command::Migrate { settings }) => (Some("migrate"), settings),
        Some(Command::Schemas { settings }) => (Some("schemas"), settings),
        Some(Command::Openapi) => {
            print!("{}", postbox::http::openapi_json());
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
                for (t, versions) in registry.list() {
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
