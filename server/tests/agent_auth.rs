//! Agent authentication by ServiceAccount token, through the real kube
//! client against a stand-in TokenReview endpoint (`common::kube_api`):
//! who is admitted, what a refused agent is told (Reject message and QUIC
//! close reason), that refused agents keep retrying, that a storm of
//! connections with one token costs one review, that client certificates
//! and tokens combine, and that connected agents stay checked: a revoked
//! token disconnects its agent, a rotated one takes over, and two agents
//! with one ID are told apart from one agent reconnecting.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::kube_api::{write_kubeconfig, FakeApiserver, Tokens, AGENT_ACCOUNT, AUDIENCE};
use common::*;
use konnq_protocol::wire::{Control, Hello};
use konnq_shared::config::RawServerConfig;
use konnq_shared::quic::codes;

const LIMIT: Duration = Duration::from_secs(15);

fn tokens() -> Tokens {
    let aud = vec![AUDIENCE.to_owned()];
    Tokens::from([
        ("good".to_owned(), (AGENT_ACCOUNT.to_owned(), aud.clone())),
        ("good-rotated".to_owned(), (AGENT_ACCOUNT.to_owned(), aud.clone())),
        ("other-account".to_owned(), ("system:serviceaccount:default:default".to_owned(), aud)),
        ("for-the-apiserver".to_owned(), (AGENT_ACCOUNT.to_owned(), vec!["https://kubernetes.default.svc".to_owned()])),
    ])
}

/// Token authentication as upstream's manifests set it, with `kubeconfig`;
/// client certificates also required when `mtls`.
fn token_auth(raw: &mut RawServerConfig, kubeconfig: std::path::PathBuf, mtls: bool) {
    raw.agent_namespace = Some("kube-system".into());
    raw.agent_service_account = Some("konnectivity-agent".into());
    raw.authentication_audience = Some(AUDIENCE.into());
    raw.kubeconfig = Some(kubeconfig);
    if !mtls {
        raw.cluster_ca_cert = None;
    }
}

/// A lab whose server checks tokens with a fake apiserver (which has a CA
/// of its own, trusted through the kubeconfig).
async fn lab(mtls: bool) -> (Lab, FakeApiserver) {
    lab_with(mtls, None).await
}

/// [`lab`] with `token-review-cache-ttl` set to `ttl`.
async fn lab_with(mtls: bool, ttl: Option<Duration>) -> (Lab, FakeApiserver) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = konnq_shared::certs::generate(&dir.path().join("pki"), &[]).expect("certs");
    let api = FakeApiserver::start(&pki, tokens()).await;
    let kubeconfig = write_kubeconfig(dir.path(), &format!("https://{}", api.addr), &pki.ca_cert);
    let lab = Lab::with(|raw| {
        token_auth(raw, kubeconfig, mtls);
        raw.token_review_cache_ttl = ttl;
    })
    .await;
    drop(dir); // the kubeconfig was read at start-up
    (lab, api)
}

/// Starts an agent that sends `token` (none when `None`).
async fn agent(lab: &Lab, token: Option<&str>, client_cert: bool) -> konnq_agent::AgentHandle {
    agent_reading(lab, token.map(|t| token_file(lab, t)), client_cert).await
}

/// A new token file holding `token`.
fn token_file(lab: &Lab, token: &str) -> std::path::PathBuf {
    let path = lab.dir.path().join(format!("token-{}", fastrand::u64(..)));
    std::fs::write(&path, format!("{token}\n")).expect("write token");
    path
}

/// Starts an agent that reads its token from `path`.
async fn agent_reading(lab: &Lab, path: Option<std::path::PathBuf>, client_cert: bool) -> konnq_agent::AgentHandle {
    lab.agent_with(|raw| {
        raw.service_account_token_path = path;
        if !client_cert {
            raw.agent_cert = None;
            raw.agent_key = None;
        }
    })
    .await
}

/// Connects like an agent, sends a Hello with `token` and returns the
/// server's answer and the connection.
async fn hello(lab: &Lab, token: &str) -> (Control, quinn::Connection) {
    let hello = Hello { agent_id: "raw".into(), identifiers: Vec::new(), token: token.into() };
    let raw = raw_agent(lab, hello, false).await;
    (raw.answer, raw.conn)
}

/// The server's Reject text and the close code and reason that follow it.
async fn refusal(lab: &Lab, token: &str) -> (String, u64, String) {
    let (answer, conn) = within(LIMIT, hello(lab, token)).await;
    let Control::Reject { reason } = answer else { panic!("{token:?}: expected a Reject, got {answer:?}") };
    match within(LIMIT, conn.closed()).await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            (reason, close.error_code.into_inner(), String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => panic!("{token:?}: expected an application close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_setup_admits_only_the_agent_service_account() {
    let (lab, api) = lab(false).await;
    let good = agent(&lab, Some("good"), false).await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    let refused = [
        agent(&lab, Some("other-account"), false).await,
        agent(&lab, Some("for-the-apiserver"), false).await,
        agent(&lab, Some("forged"), false).await,
        agent(&lab, None, false).await,
    ];
    let failures = |a: &konnq_agent::AgentHandle| a.metrics.connect_failures.get();
    eventually("every refused agent retried", LIMIT, || refused.iter().all(|a| failures(a) >= 3)).await;
    assert!(good.is_connected());
    assert_eq!(lab.server.backend.agent_count(), 1, "only the good agent is registered");
    let m = &lab.server.metrics;
    assert!(m.agent_auth_failures("wrong_account") >= 3);
    assert!(m.agent_auth_failures("invalid_token") >= 6, "forged and wrong-audience tokens");
    assert!(m.agent_auth_failures("no_token") >= 3);
    assert_eq!(m.agent_auth_failures("unreachable"), 0);
    let audiences = api.audiences.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(!audiences.is_empty());
    assert!(audiences.iter().all(|a| *a == serde_json::json!([AUDIENCE])), "{audiences:?}");
    assert_eq!(m.token_reviews("authenticated"), 2, "good and other-account once each, then from the cache");
    assert!(m.token_reviews("rejected") >= 6, "rejections are asked again every time");
    let text = m.render();
    for line in [
        "konnq_server_agent_auth_failures_total{reason=\"wrong_account\"}",
        "konnq_server_token_reviews_total{result=\"rejected\"}",
        "konnq_server_token_review_queue 0\n",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_agent_is_told_why_and_a_storm_costs_one_review() {
    let (lab, api) = lab(false).await;
    let lab = Arc::new(lab);
    let (reason, code, close_reason) = refusal(&lab, "other-account").await;
    assert!(reason.contains("system:serviceaccount:default:default"), "names the account: {reason}");
    assert_eq!((code, close_reason.as_str()), (u64::from(codes::UNAUTHENTICATED), reason.as_str()));
    let (reason, code, _) = refusal(&lab, "").await;
    assert!(reason.contains("no ServiceAccount token"), "{reason}");
    assert_eq!(code, u64::from(codes::UNAUTHENTICATED));

    let before = api.reviews();
    let storm: Vec<_> = (0..40)
        .map(|_| {
            let lab = Arc::clone(&lab);
            tokio::spawn(async move { within(LIMIT, hello(&lab, "good")).await })
        })
        .collect();
    for task in storm {
        let (answer, _conn) = task.await.expect("task");
        assert!(matches!(answer, Control::Welcome { .. }), "{answer:?}");
    }
    assert_eq!(api.reviews() - before, 1, "40 connections with one token: one TokenReview");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_apiserver_refuses_with_a_retryable_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let ca = common::kube_api::fixture("ca.crt");
    let kubeconfig = write_kubeconfig(dir.path(), &format!("https://{closed}"), &ca);
    let lab = Lab::with(|raw| token_auth(raw, kubeconfig, false)).await;
    let (reason, code, _) = refusal(&lab, "good").await;
    assert!(reason.contains("cannot check the token"), "{reason}");
    assert_eq!(code, u64::from(codes::AUTH_UNAVAILABLE));
    assert_eq!(lab.server.metrics.agent_auth_failures("unreachable"), 1);
    assert_eq!(lab.server.metrics.token_reviews("error"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_and_tokens_are_both_required_when_both_are_set() {
    let (lab, _api) = lab(true).await;
    let no_token = agent(&lab, None, true).await;
    let no_cert = agent(&lab, Some("good"), false).await;
    let failures = |a: &konnq_agent::AgentHandle| a.metrics.connect_failures.get();
    eventually("both refused, twice", LIMIT, || failures(&no_token) >= 2 && failures(&no_cert) >= 2).await;
    assert_eq!(lab.server.backend.agent_count(), 0);
    assert!(lab.server.metrics.agent_auth_failures("no_token") >= 2);
    assert_eq!(lab.server.metrics.token_reviews("authenticated"), 0, "no certificate: no review");
    let both = agent(&lab, Some("good"), true).await;
    within(LIMIT, both.wait_connected(true)).await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
}

/// Long enough for a connected agent's token to be checked again
/// (`token-review-cache-ttl` is 1 s in these tests, so the floor applies).
const RECHECK_LIMIT: Duration = Duration::from_secs(konnq_server::auth::MIN_RECHECK.as_secs() + 15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_disconnects_its_connected_agent() {
    let (lab, api) = lab_with(false, Some(Duration::from_secs(1))).await;
    let agent = agent(&lab, Some("good"), false).await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    let m = &lab.server.metrics;
    assert_eq!(m.agent_auth_failures("invalid_token"), 0);
    api.revoke("good"); // the ServiceAccount was deleted
    eventually("the agent is disconnected and its reconnects refused", RECHECK_LIMIT, || {
        m.agent_auth_failures("invalid_token") >= 2 && agent.metrics.connect_failures.get() >= 1
    })
    .await;
    assert_eq!(lab.server.backend.agent_count(), 0);
    assert!(!agent.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_is_sent_and_checked_from_then_on() {
    let (lab, api) = lab_with(false, Some(Duration::from_secs(1))).await;
    let path = token_file(&lab, "good");
    let agent = agent_reading(&lab, Some(path.clone()), false).await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    std::fs::write(&path, "good-rotated\n").expect("rotate the token");
    eventually("the server reviewed the new token", RECHECK_LIMIT, || api.reviews_of("good-rotated") >= 1).await;
    api.revoke("good"); // the old token no longer matters
    let before = api.reviews_of("good-rotated");
    eventually("the new token is checked again", RECHECK_LIMIT, || api.reviews_of("good-rotated") > before).await;
    assert!(agent.is_connected());
    assert_eq!(lab.server.backend.agent_count(), 1);
    assert_eq!(lab.server.metrics.agent_auth_failures("invalid_token"), 0);
    assert_eq!(agent.metrics.connect_failures.get(), 0, "never disconnected");
}
