//! konnq-server and konnq-agent run from the libraries linked into this
//! executable (`konnq-loadtest builtin-server ARGS`), as their own mains do:
//! the same flags, config validation, listeners and graceful shutdown on
//! SIGTERM. The runner starts them as child processes, so /proc still gives
//! per-process figures, and a test of this crate always runs the konnq code
//! it was compiled with, without building other packages' binaries.

use std::ffi::OsString;

use anyhow::Context;

pub fn server(args: Vec<OsString>) -> anyhow::Result<()> {
    let argv = std::iter::once(OsString::from("konnq-server")).chain(args);
    let cli = konnq_server::cli::Cli::try_parse_go_style(argv).unwrap_or_else(|e| e.exit());
    let (cfg, warnings) = cli.into_config()?;
    konnq_shared::logging::init(&cfg.log);
    konnq_shared::logging::warn_each(&warnings);
    konnq_shared::runtime::start_process(cfg.worker_threads)?.block_on(async move {
        let signal = konnq_shared::signal::shutdown();
        let listeners = konnq_server::Listeners::bind(&cfg).await?;
        konnq_server::run(cfg, listeners, signal).await.context("konnq-server")
    })
}

pub fn agent(args: Vec<OsString>) -> anyhow::Result<()> {
    let argv = std::iter::once(OsString::from("konnq-agent")).chain(args);
    let (cfg, warnings) = konnq_agent::cli::Cli::try_parse_go_style(argv).unwrap_or_else(|e| e.exit()).into_config()?;
    konnq_shared::logging::init(&cfg.log);
    konnq_shared::logging::warn_each(&warnings);
    konnq_shared::runtime::start_process(cfg.worker_threads)?.block_on(async move {
        let listeners = konnq_agent::Listeners::bind(&cfg).await?;
        konnq_agent::run(cfg, listeners, konnq_shared::signal::shutdown).await.context("konnq-agent")
    })
}
