//! Logging to stderr (stdout is the protocol channel of a worker), `RUST_LOG` honoured,
//! `info` by default, as text or one JSON object per line.
//!
//! Colours only when stderr is a terminal: a log captured by a supervisor (or a test) must stay
//! plain `key=value` text, and a worker's stderr is the server's, so both decide alike.

use std::io::IsTerminal;

use clap::ValueEnum;
use serde::Serialize;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `key=value` text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. Call once per process.
pub fn init(format: LogFormat) {
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter());
    match format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
}

/// `RUST_LOG`'s directives when it is set (`info` when they do not parse, as before), else
/// plain `info`. Plain `info` is a [`LevelFilter`], which filters exactly as the directive
/// `info` would, but without EnvFilter's directive parser: that compiles regexes, whose code
/// and heap would stay resident in the server and in every worker (issue 11: idle RSS), and
/// it checks each event against its directives where the level filter is one comparison.
fn filter() -> Box<dyn Layer<Registry> + Send + Sync> {
    match std::env::var_os(EnvFilter::DEFAULT_ENV) {
        None => Box::new(LevelFilter::INFO),
        Some(_) => {
            Box::new(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        }
    }
}
