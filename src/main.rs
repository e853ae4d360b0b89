//! The `forkpool` binary: parses the command line and dispatches to the server, the hidden
//! worker mode, or the load test. Nothing else lives here.

use anyhow::{bail, Context};
use forkpool::config::{Cli, Command, Config};
use forkpool::pool::protocol::Job;
use forkpool::pool::worker;
use forkpool::routes::isprime::IsPrimeJob;
use forkpool::{loadtest, logging, server};

fn main() -> anyhow::Result<()> {
    let cli = Cli::load();
    match cli.command {
        None => serve(cli.config),
        Some(Command::Worker(args)) => {
            logging::init(args.log_format);
            match args.kind.as_str() {
                IsPrimeJob::KIND => worker::serve::<IsPrimeJob>(&args)?,
                other => bail!("unknown job kind `{other}`"),
            }
            Ok(())
        }
        Some(Command::Loadtest(args)) => loadtest::run(args),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    logging::init(config.log_format);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the Tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        println!("listening on http://{}", listener.local_addr()?);
        server::run(listener, config, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
