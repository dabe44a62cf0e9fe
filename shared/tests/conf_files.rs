//! Every example in the repository's `conf/` directory parses and validates.

use std::path::{Path, PathBuf};

use konnq_shared::config::{AgentConfig, ServerConfig};

fn conf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf")
}

#[test]
fn every_conf_file_is_valid() {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(conf_dir()).expect("conf/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
    found.sort();

    let mut checked = 0;
    let mut failures = Vec::new();
    for path in &found {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let result = if name.starts_with("server") {
            ServerConfig::from_file(path).map(|_| ())
        } else if name.starts_with("agent") {
            AgentConfig::from_file(path).map(|_| ())
        } else {
            failures.push(format!("{name}: neither server*.toml nor agent*.toml"));
            continue;
        };
        match result {
            Ok(()) => checked += 1,
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(checked, found.len());
    assert!(checked >= 2, "expected at least conf/server.toml and conf/agent.toml, found {found:?}");
}

#[test]
fn examples_set_non_default_values_that_matter() {
    let server = ServerConfig::from_file(&conf_dir().join("server.toml")).expect("valid");
    assert!(server.uds_name.is_some());
    assert!(server.cluster_tls.ca.is_some(), "example requires agent client certs");
    let agent = AgentConfig::from_file(&conf_dir().join("agent.toml")).expect("valid");
    assert!(agent.agent_tls.is_some());
    assert!(agent.agent_identifiers.default_route);
}
