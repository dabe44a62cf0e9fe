//! A stand-in for kube-apiserver's TokenReview endpoint, over TLS with a
//! required client certificate, and the kubeconfig that reaches it the way
//! upstream's manifests do: client certificate and RSA PKCS#1 key
//! (`BEGIN RSA PRIVATE KEY`) and the CA embedded as base64 `*-data`.
//!
//! `fixtures/kube-rsa/` holds that identity: `ca.crt` (RSA CA) and
//! `client.crt` / `client.key` (CN `system:konnectivity-server`, key in
//! PKCS#1), made with `openssl req -x509 -newkey rsa:2048`, `openssl genrsa
//! -traditional` and `openssl x509 -req`. They are test data only.
//!
//! Like kube-apiserver, a token is authenticated only for the intersection
//! of its audiences and `spec.audiences`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use konnq_shared::certs::GeneratedCerts;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const AUDIENCE: &str = "system:konnectivity-server";
pub const AGENT_ACCOUNT: &str = "system:serviceaccount:kube-system:konnectivity-agent";

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube-rsa").join(name)
}

/// Tokens the fake knows: token → (username, the token's audiences).
pub type Tokens = HashMap<String, (String, Vec<String>)>;

pub struct FakeApiserver {
    pub addr: SocketAddr,
    /// TokenReviews answered.
    pub reviews: Arc<AtomicUsize>,
    /// `spec.audiences` of every review, in order.
    pub audiences: Arc<Mutex<Vec<Value>>>,
    /// `spec.token` of every review, in order.
    pub reviewed: Arc<Mutex<Vec<String>>>,
    /// The tokens it knows; remove one to revoke it.
    pub tokens: Arc<Mutex<Tokens>>,
    _task: tokio::task::JoinHandle<()>,
}

impl FakeApiserver {
    /// Serves on 127.0.0.1 with `certs`' server certificate, requiring a
    /// client certificate signed by the fixture CA.
    pub async fn start(certs: &GeneratedCerts, tokens: Tokens) -> FakeApiserver {
        let tls = konnq_shared::tls::server_config(
            &certs.server_cert,
            &certs.server_key,
            Some(&fixture("ca.crt")),
            &[b"http/1.1"],
        )
        .expect("fake apiserver TLS");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (reviews, audiences) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
        let (reviewed, tokens) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(tokens)));
        let state = Arc::new(State {
            tokens: Arc::clone(&tokens),
            reviews: Arc::clone(&reviews),
            audiences: Arc::clone(&audiences),
            reviewed: Arc::clone(&reviewed),
        });
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), Arc::clone(&state));
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls, &state).await;
                    }
                });
            }
        });
        FakeApiserver { addr, reviews, audiences, reviewed, tokens, _task: task }
    }

    pub fn reviews(&self) -> usize {
        self.reviews.load(Ordering::SeqCst)
    }

    /// How many reviews asked about `token`.
    pub fn reviews_of(&self, token: &str) -> usize {
        self.reviewed.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|t| *t == token).count()
    }

    /// From now on `token` is not authenticated (its account was deleted).
    pub fn revoke(&self, token: &str) {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).remove(token);
    }
}

/// Writes a kubeconfig for `server` (an `https://` URL) with the fixture
/// client identity and `ca` as the trusted CA, upstream's layout.
pub fn write_kubeconfig(dir: &Path, server: &str, ca: &Path) -> PathBuf {
    let data = |p: &Path| STANDARD.encode(std::fs::read(p).expect("read fixture"));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {}\ncontexts:\n- name: system:konnectivity-server@kubernetes\n  context:\n    \
         cluster: kubernetes\n    user: system:konnectivity-server\ncurrent-context: \
         system:konnectivity-server@kubernetes\nusers:\n- name: system:konnectivity-server\n  user:\n    \
         client-certificate-data: {}\n    client-key-data: {}\n",
        data(ca),
        data(&fixture("client.crt")),
        data(&fixture("client.key")),
    );
    let path = dir.join("konnectivity-server.conf");
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

struct State {
    tokens: Arc<Mutex<Tokens>>,
    reviews: Arc<AtomicUsize>,
    audiences: Arc<Mutex<Vec<Value>>>,
    reviewed: Arc<Mutex<Vec<String>>>,
}

/// HTTP/1.1 with keep-alive, Content-Length bodies only.
async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut io: S, state: &State) {
    let mut buf = Vec::new();
    loop {
        let Some((head, path, length)) = read_head(&mut io, &mut buf).await else { return };
        while buf.len() < head + length {
            let mut chunk = [0u8; 8192];
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..head + length).skip(head).collect();
        let (status, answer) = if path.split('?').next() == Some("/apis/authentication.k8s.io/v1/tokenreviews") {
            ("201 Created", review(state, &body))
        } else {
            ("404 Not Found", json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}))
        };
        let text = answer.to_string();
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if io.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// (head length, path, Content-Length) of the next request in `buf`.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> Option<(usize, String, usize)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = req.parse(buf) {
            let length = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            return Some((head, req.path.unwrap_or_default().to_owned(), length));
        }
        let mut chunk = [0u8; 8192];
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn review(state: &State, body: &[u8]) -> Value {
    state.reviews.fetch_add(1, Ordering::SeqCst);
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let spec = &request["spec"];
    state.audiences.lock().unwrap_or_else(|p| p.into_inner()).push(spec["audiences"].clone());
    let token = spec["token"].as_str().unwrap_or_default();
    state.reviewed.lock().unwrap_or_else(|p| p.into_inner()).push(token.to_owned());
    let wanted: Vec<&str> = spec["audiences"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let known = state.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(token).cloned();
    let status = match known {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some((username, auds)) => {
            let both: Vec<&String> = auds.iter().filter(|a| wanted.contains(&a.as_str())).collect();
            if both.is_empty() {
                json!({"authenticated": false, "error": format!("token audiences {auds:?} is invalid for the target audiences {wanted:?}")})
            } else {
                json!({"authenticated": true, "audiences": both, "user": {"username": username, "uid": "1"}})
            }
        }
    };
    json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    })
}
