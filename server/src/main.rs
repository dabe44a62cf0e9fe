//! konnq-server: parse flags, load and validate config, bind, run.

use anyhow::Context;
use konnq_server::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_go_style();
    if let Some(Command::Certs { dir, san }) = &cli.command {
        let out = konnq_shared::certs::generate(dir, san).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        println!(
            "wrote {} {} {} {} {} {}",
            out.ca_cert.display(),
            out.ca_key.display(),
            out.server_cert.display(),
            out.server_key.display(),
            out.agent_cert.display(),
            out.agent_key.display()
        );
        return Ok(());
    }
    let (cfg, warnings) = cli.into_config()?;
    konnq_shared::logging::init(&cfg.log);
    konnq_shared::logging::warn_each(&warnings);
    konnq_shared::runtime::start_process(cfg.worker_threads)?.block_on(async move {
        // Before anything is bound: a SIGTERM from then on is a graceful stop.
        let signal = konnq_shared::signal::shutdown();
        let listeners = konnq_server::Listeners::bind(&cfg).await?;
        konnq_server::run(cfg, listeners, signal).await.context("konnq-server")
    })
}
