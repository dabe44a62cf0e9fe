//! konnq-agent: parse flags, load and validate config, bind, run.

use anyhow::Context;
use konnq_agent::cli::Cli;

fn main() -> anyhow::Result<()> {
    let (cfg, warnings) = Cli::parse_go_style().into_config()?;
    konnq_shared::logging::init(&cfg.log);
    konnq_shared::logging::warn_each(&warnings);
    konnq_shared::runtime::start_process(cfg.worker_threads)?.block_on(async move {
        let listeners = konnq_agent::Listeners::bind(&cfg).await?;
        konnq_agent::run(cfg, listeners, konnq_shared::signal::shutdown).await.context("konnq-agent")
    })
}
