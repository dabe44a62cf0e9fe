//! Log setup shared by the binaries: upstream's `-v` levels mapped onto
//! tracing filters; `RUST_LOG`, when set, wins.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the process's log subscriber on stderr at klog verbosity `v`.
/// Colour codes only when stderr is a terminal: a log file or a container
/// runtime's log pipe gets plain text.
pub fn init(v: u8) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter_for_verbosity(v)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Logs each start-up warning of the configuration (e.g. upstream flags that
/// have no effect) at WARN; call it after [`init`].
pub fn warn_each(warnings: &[String]) {
    for w in warnings {
        tracing::warn!(target: "konnq_shared::config", "{w}");
    }
}

/// The filter for a klog-style verbosity: 0 → info, 1–4 → debug for konnq
/// crates, 5 and above → trace for konnq crates.
pub fn filter_for_verbosity(v: u8) -> String {
    match v {
        0 => "info".to_owned(),
        1..=4 => "info,konnq_server=debug,konnq_agent=debug,konnq_shared=debug".to_owned(),
        _ => "debug,konnq_server=trace,konnq_agent=trace,konnq_shared=trace".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_levels() {
        assert_eq!(filter_for_verbosity(0), "info");
        assert!(filter_for_verbosity(4).contains("konnq_server=debug"));
        assert!(filter_for_verbosity(9).contains("konnq_agent=trace"));
    }
}
