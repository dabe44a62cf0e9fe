//! The kube-apiserver client of both binaries, and how its failures are told.
//!
//! Credentials come from `--kubeconfig` (upstream's manifests embed a client
//! certificate, often with an RSA PKCS#1 key, plus `certificate-authority-data`)
//! or, when it is empty, from the pod's in-cluster ServiceAccount. TLS is
//! rustls with ring, like the rest of konnq. Requests are JSON and the
//! client does not retry on its own: each caller paces its retries (the
//! server's TokenReview rate limit, the lease loops' periods).

use std::path::{Path, PathBuf};

use kube::config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Client, Config};

/// Why the kube client could not be set up (at start-up). The display
/// carries the whole cause, so no source chain is kept.
#[derive(Debug, thiserror::Error)]
pub enum KubeSetupError {
    #[error("kubeconfig {}: {error}", path.display())]
    Kubeconfig { path: PathBuf, error: KubeconfigError },
    #[error("no --kubeconfig and no in-cluster config: {0}")]
    InCluster(InClusterError),
    #[error("kube client: {0}")]
    Client(kube::Error),
}

/// Loads the credentials of `kubeconfig` (`None`: in-cluster) and builds
/// the client; no request is made.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeSetupError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let err = |error| KubeSetupError::Kubeconfig { path: path.to_owned(), error };
            let file = Kubeconfig::read_from(path).map_err(err)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await.map_err(err)?
        }
        None => Config::incluster().map_err(KubeSetupError::InCluster)?,
    };
    config.default_retry = false;
    // kube's TLS takes the process-wide rustls provider: make it ring,
    // konnq's only one, whatever else the dependency tree enables.
    let _already_set = rustls::crypto::ring::default_provider().install_default();
    Client::try_from(config).map_err(KubeSetupError::Client)
}

/// kube-apiserver's answer to a failed request, when it answered: the HTTP
/// status code and the status reason (`NotFound`, `Forbidden`, `Conflict`;
/// empty when it gave none). Upstream's metric labels `http_status_code`
/// and `reason` are these.
pub fn api_status(e: &kube::Error) -> Option<(u16, &str)> {
    match e {
        kube::Error::Api(status) => Some((status.code, status.reason.as_str())),
        _ => None,
    }
}

/// A failed request in words: kube-apiserver's own when it answered
/// (`kube-apiserver answered 403: Forbidden: ...`), else the error and its
/// causes (connection refused, TLS, timeout).
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            let words = [status.reason.as_str(), status.message.as_str()].into_iter().filter(|w| !w.is_empty());
            let words: Vec<&str> = words.collect();
            format!("kube-apiserver answered {}: {}", status.code, words.join(": "))
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    #[test]
    fn answers_are_told_with_code_and_reason() {
        let status = Status::failure("leases.coordination.k8s.io \"x\" is forbidden", "Forbidden").with_code(403);
        let e = kube::Error::Api(Box::new(status));
        assert_eq!(api_status(&e), Some((403, "Forbidden")));
        assert_eq!(
            describe(&e),
            "kube-apiserver answered 403: Forbidden: leases.coordination.k8s.io \"x\" is forbidden"
        );
        let e = kube::Error::LinesCodecMaxLineLengthExceeded;
        assert_eq!(api_status(&e), None, "no answer, no status");
    }
}
