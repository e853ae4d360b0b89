//! Logging to stderr (stdout is the protocol channel of a worker), `RUST_LOG` honoured,
//! `info` by default, as text or one JSON object per line.
//!
//! Colours only when stderr is a terminal: a log captured by a supervisor (or a test) must stay
//! plain `key=value` text, and a worker's stderr is the server's, so both decide alike.

use std::io::IsTerminal;

use clap::ValueEnum;
use serde::Serialize;
use tracing_subscriber::EnvFilter;

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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
