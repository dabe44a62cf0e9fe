//! Body of the `config` fuzz target in `fuzz/` (cargo-fuzz, nightly), a
//! plain function so `tests/fuzz_corpora.rs` replays its committed corpus
//! on stable. The protocol targets live in `konnq_protocol::fuzzing`.

use crate::config::{AgentConfig, ServerConfig};

/// Any UTF-8 text as the server's and the agent's TOML configuration: `Ok`
/// or `Err`, never a panic. Both results are formatted, so the masking
/// `Debug` impls and the problem lists run too.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ServerConfig::from_toml_str(text) {
        Ok(config) => drop(format!("{config:?}")),
        Err(e) => drop(e.to_string()),
    }
    match AgentConfig::from_toml_str(text) {
        Ok(config) => drop(format!("{config:?}")),
        Err(e) => drop(e.to_string()),
    }
}
