//! `forkpool loadtest`: measures a running forkpool.

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct LoadtestArgs {
    /// Server to measure.
    #[arg(long, default_value = "http://127.0.0.1:3636")]
    pub url: String,
}

pub fn run(_args: LoadtestArgs) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
