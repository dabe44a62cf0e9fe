//! The `upstream` peer: proxy-server and proxy-agent of
//! sigs.k8s.io/apiserver-network-proxy, built by `go build` from our Go
//! module `loadtest/upstream/` (which only `require`s the published module;
//! nothing of theirs is vendored or committed) into a directory outside the
//! source tree. When Go or the build is unavailable the run goes on without
//! upstream and says why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::child::Program;
use crate::peers::Binaries;

pub const MODULE: &str = "sigs.k8s.io/apiserver-network-proxy";
pub const VERSION: &str = "v0.36.0";
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Our Go module that requires upstream (in the source tree).
pub fn module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("upstream")
}

/// Where the upstream binaries are built: `$CARGO_TARGET_DIR/upstream`, else `target/upstream` of the workspace.
pub fn default_build_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    target.join("upstream")
}

fn binaries(dir: &Path) -> Result<Binaries, String> {
    let server = dir.join("proxy-server");
    let agent = dir.join("proxy-agent");
    for b in [&server, &agent] {
        if !b.is_file() {
            return Err(format!("{} does not exist", b.display()));
        }
    }
    Ok(Binaries {
        server: Program::plain(server),
        agent: Program::plain(agent),
        server_flags: Vec::new(),
        agent_flags: Vec::new(),
    })
}

/// Uses prebuilt binaries from `prebuilt`, or builds them with Go. `Err` says why upstream is unavailable.
pub async fn prepare(prebuilt: Option<&Path>, module: &Path, build_dir: &Path) -> Result<Binaries, String> {
    if let Some(dir) = prebuilt {
        return binaries(dir);
    }
    if !module.join("go.mod").is_file() {
        return Err(format!(
            "{} has no go.mod (--upstream-module: our Go module requiring upstream)",
            module.display()
        ));
    }
    let go = run_go(module, &["version"]).await.map_err(|e| format!("Go toolchain unavailable: {e}"))?;
    for (cmd, out) in [("server", "proxy-server"), ("agent", "proxy-agent")] {
        let out = build_dir.join(out);
        let out = out.to_string_lossy();
        let pkg = format!("{MODULE}/cmd/{cmd}");
        run_go(module, &["build", "-o", &out, &pkg]).await.map_err(|e| format!("go build {pkg} failed: {e}"))?;
    }
    binaries(build_dir).map_err(|e| format!("{e} after go build ({})", go.trim()))
}

/// Builds `konnq-dialclient` (the dial scenario's Go client, package
/// `dialclient` of our module) into `build_dir`.
pub async fn prepare_dial_client(module: &Path, build_dir: &Path) -> Result<PathBuf, String> {
    let out = build_dir.join("konnq-dialclient");
    let out_str = out.to_string_lossy();
    run_go(module, &["build", "-o", &out_str, "./dialclient"])
        .await
        .map_err(|e| format!("go build ./dialclient failed: {e}"))?;
    Ok(out)
}

/// Runs `go args..` in `dir`; stdout on success, the tail of stderr on failure.
async fn run_go(dir: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("go");
    // Never fetch a different Go toolchain: use the one installed.
    cmd.args(args).current_dir(dir).env("GOTOOLCHAIN", "local").kill_on_drop(true);
    let out = tokio::time::timeout(BUILD_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("timed out after {BUILD_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
        Err(format!("{}: {}", out.status, tail.join(" | ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_requires_the_pinned_version() {
        let go_mod = std::fs::read_to_string(module_dir().join("go.mod")).expect("loadtest/upstream/go.mod");
        assert!(go_mod.contains(&format!("{MODULE} {VERSION}")), "go.mod pins {MODULE} {VERSION}");
        for cmd in ["server", "agent"] {
            assert!(
                go_mod.contains(&format!("tool {MODULE}/cmd/{cmd}")) || go_mod.contains(&format!("{MODULE}/cmd/{cmd}"))
            );
        }
    }

    #[tokio::test]
    async fn missing_module_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let err = prepare(None, dir.path(), dir.path()).await.unwrap_err();
        assert!(err.contains("has no go.mod"), "{err}");
    }

    #[test]
    fn missing_prebuilt_binaries_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let err = binaries(dir.path()).unwrap_err();
        assert!(err.contains("proxy-server does not exist"), "{err}");
    }
}
