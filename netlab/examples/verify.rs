//! Builds a lab with the link spec given as the first argument, measures it and
//! prints measured against expected figures. Needs root.
//!
//! `cargo run -p konnq-netlab --example verify -- "delay=25ms,loss=1%,rate=100mbit"`

use std::time::Duration;

use anyhow::{Context, Result};
use konnq_netlab::{cleanup_stale, install_signal_cleanup, Lab, LinkSettings, VerifyConfig};

fn main() -> Result<()> {
    let spec = std::env::args().nth(1).unwrap_or_else(|| "delay=25ms".into());
    let link: LinkSettings = spec.parse().context("link spec")?;
    install_signal_cleanup()?;
    cleanup_stale("kqverify")?;
    let lab = Lab::create("kqverify", link)?;
    println!("A→B {}\nB→A {}", lab.link().a_to_b, lab.link().b_to_a);
    let cfg = VerifyConfig { goodput_duration: Duration::from_secs(3), ..VerifyConfig::default() };
    println!("{}", lab.verify(&cfg)?);
    println!("{:?}", lab.stats());
    Ok(())
}
