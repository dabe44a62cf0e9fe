//! konnq-agent: parse flags, load and validate config, bind, run.

use anyhow::Context;
use konnq_agent::cli::Cli;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cfg = Cli::parse_go_style().into_config()?;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(konnq_shared::logging::filter_for_verbosity(cfg.log.verbosity)));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    konnq_shared::runtime::start_process(cfg.worker_threads)?.block_on(async move {
        let listeners = konnq_agent::Listeners::bind(&cfg).await?;
        konnq_agent::run(cfg, listeners, konnq_shared::signal::shutdown()).await.context("konnq-agent")
    })
}
