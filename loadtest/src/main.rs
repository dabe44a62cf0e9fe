//! konnq-loadtest: parse the command line and dispatch.

use std::time::Duration;

use clap::Parser;
use konnq_loadtest::cli::{Cli, Command};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    match Cli::parse().command {
        Command::BuiltinServer { args } => konnq_loadtest::builtin::server(args),
        Command::BuiltinAgent { args } => konnq_loadtest::builtin::agent(args),
        Command::Target { max_secs, bind } => {
            runtime()?.block_on(konnq_loadtest::target::serve(Duration::from_secs(max_secs), bind))
        }
        Command::Run(args) => {
            let settings = args.settings()?;
            runtime()?.block_on(konnq_loadtest::runner::main(settings, argv))
        }
        Command::Lab(args) => {
            let settings = args.settings()?;
            runtime()?.block_on(konnq_loadtest::lab::main(settings, argv))
        }
        Command::Roll(args) => {
            let settings = args.settings()?;
            runtime()?.block_on(konnq_loadtest::roll::main(settings, argv))
        }
        Command::Agents(args) => runtime()?.block_on(konnq_loadtest::agents::main(args)),
        Command::Fleet(args) => runtime()?.block_on(konnq_loadtest::fleet::main(*args)),
        Command::Smoke(args) => {
            let settings = args.settings()?;
            runtime()?.block_on(konnq_loadtest::runner::main(settings, argv))
        }
    }
}
