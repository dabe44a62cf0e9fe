//! The lease controller (`--enable-lease-controller`): this server's Lease,
//! renewed, and expired server Leases deleted, as upstream's
//! pkg/server/leases does it (facts in [`konnq_shared::leases`]).
//!
//! ```text
//! renew loop (every 15 s ± 4 %): replace our Lease (renewTime = now)
//!                                  └ 404/409 or no copy: get, then replace or create
//! GC loop   (every 15 s):          list Leases with our labels; delete each expired one
//!                                  (resourceVersion precondition: a renewed one stays)
//! stop (graceful shutdown):        delete our Lease, so agents stop counting us at once
//! ```
//!
//! Requests go through [`LeaseApi`] ([`KubeLeases`] in the binary, a table
//! in the tests), each bounded by [`REQUEST_TIMEOUT`]. A failure is logged at
//! WARN with kube-apiserver's reason and retried at the next period; nothing
//! here touches the data path, and no failure stops the server.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::Lease;
use konnq_shared::config::LeaseControllerConfig;
use konnq_shared::kube::{api_status, describe, KubeSetupError};
use konnq_shared::leases::{is_valid, selector, ServerLease, GC_INTERVAL, RENEW_INTERVAL};
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::Api;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// How long one request to kube-apiserver may take: well inside a renewal
/// period, so a hung request never costs the Lease.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A request that failed: kube-apiserver's status code and reason when it
/// answered (`None`: no answer), and the whole story in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct ApiError {
    pub status: Option<(u16, String)>,
    pub text: String,
}

impl ApiError {
    pub fn from_kube(e: &kube::Error) -> ApiError {
        ApiError { status: api_status(e).map(|(c, r)| (c, r.to_owned())), text: describe(e) }
    }

    fn code(&self) -> Option<u16> {
        self.status.as_ref().map(|(code, _)| *code)
    }
}

/// The Lease requests of the controller, in one namespace. Object safe, so
/// the controller holds any implementation.
pub trait LeaseApi: Send + Sync + 'static {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Lease, ApiError>>;
    fn create<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, ApiError>>;
    /// An update; kube-apiserver refuses it (409) unless the
    /// `resourceVersion` is the stored one.
    fn replace<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, ApiError>>;
    fn list<'a>(&'a self, label_selector: &'a str) -> BoxFuture<'a, Result<Vec<Lease>, ApiError>>;
    /// Deletes `name`, only if still at `resource_version` when given.
    fn delete<'a>(&'a self, name: &'a str, resource_version: Option<&'a str>) -> BoxFuture<'a, Result<(), ApiError>>;
}

/// [`LeaseApi`] through the `kube` client.
pub struct KubeLeases(Api<Lease>);

impl KubeLeases {
    pub async fn new(cfg: &LeaseControllerConfig) -> Result<KubeLeases, KubeSetupError> {
        let client = konnq_shared::kube::client(cfg.kubeconfig.as_deref()).await?;
        Ok(KubeLeases(Api::namespaced(client, &cfg.namespace)))
    }
}

fn name_of(lease: &Lease) -> &str {
    lease.metadata.name.as_deref().unwrap_or_default()
}

impl LeaseApi for KubeLeases {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Lease, ApiError>> {
        Box::pin(async move { self.0.get(name).await.map_err(|e| ApiError::from_kube(&e)) })
    }

    fn create<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, ApiError>> {
        Box::pin(async move { self.0.create(&PostParams::default(), lease).await.map_err(|e| ApiError::from_kube(&e)) })
    }

    fn replace<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, ApiError>> {
        Box::pin(async move {
            self.0.replace(name_of(lease), &PostParams::default(), lease).await.map_err(|e| ApiError::from_kube(&e))
        })
    }

    fn list<'a>(&'a self, label_selector: &'a str) -> BoxFuture<'a, Result<Vec<Lease>, ApiError>> {
        Box::pin(async move {
            let params = ListParams::default().labels(label_selector);
            Ok(self.0.list(&params).await.map_err(|e| ApiError::from_kube(&e))?.items)
        })
    }

    fn delete<'a>(&'a self, name: &'a str, resource_version: Option<&'a str>) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let preconditions =
                resource_version.map(|rv| Preconditions { resource_version: Some(rv.to_owned()), uid: None });
            let params = DeleteParams { preconditions, ..DeleteParams::default() };
            self.0.delete(name, &params).await.map(drop).map_err(|e| ApiError::from_kube(&e))
        })
    }
}

/// `request`, or a "no answer" error after [`REQUEST_TIMEOUT`].
async fn bounded<T>(request: BoxFuture<'_, Result<T, ApiError>>) -> Result<T, ApiError> {
    tokio::time::timeout(REQUEST_TIMEOUT, request).await.unwrap_or_else(|_| {
        Err(ApiError { status: None, text: format!("no answer from kube-apiserver within {REQUEST_TIMEOUT:?}") })
    })
}

/// What a successful renewal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Created,
    Renewed,
}

/// Keeps this server's Lease: one renewal per call. Like upstream's
/// controller it updates from the copy it last wrote (one request), and
/// reads the Lease first only when it has none or that update was refused.
pub struct Renewer {
    api: Arc<dyn LeaseApi>,
    lease: ServerLease,
    latest: Option<Lease>,
}

impl Renewer {
    pub fn new(api: Arc<dyn LeaseApi>, lease: ServerLease) -> Renewer {
        Renewer { api, lease, latest: None }
    }

    /// Renews (or creates) the Lease with `renewTime` = `now`.
    pub async fn renew(&mut self, now: SystemTime) -> Result<Renewal, ApiError> {
        if let Some(base) = self.latest.take() {
            match bounded(self.api.replace(&self.lease.renew(base, now))).await {
                Ok(written) => {
                    self.latest = Some(written);
                    return Ok(Renewal::Renewed);
                }
                // Deleted (an expired copy collected) or changed by someone else.
                Err(e) if matches!(e.code(), Some(404 | 409)) => {
                    debug!(lease = %self.lease.name, "{e}; reading it again")
                }
                Err(e) => return Err(e),
            }
        }
        let (written, renewal) = match bounded(self.api.get(&self.lease.name)).await {
            Ok(current) => (bounded(self.api.replace(&self.lease.renew(current, now))).await?, Renewal::Renewed),
            Err(e) if e.code() == Some(404) => {
                (bounded(self.api.create(&self.lease.create(now))).await?, Renewal::Created)
            }
            Err(e) => return Err(e),
        };
        self.latest = Some(written);
        Ok(renewal)
    }
}

/// One garbage collection: lists the Leases with `label_selector` and
/// deletes those expired at `now`, each only if unchanged since the list
/// (a Lease renewed meanwhile stays). Counts upstream's metrics; returns
/// how many it deleted, or why the list failed.
pub async fn collect(
    api: &dyn LeaseApi,
    label_selector: &str,
    now: SystemTime,
    m: &Metrics,
) -> Result<usize, ApiError> {
    let started = Instant::now();
    let listed = bounded(api.list(label_selector)).await;
    observe(&listed, started, |code, reason, took| m.lease_listed(code, reason, took));
    let mut deleted = 0;
    for lease in listed?.iter().filter(|l| !is_valid(l, now)) {
        let name = name_of(lease);
        let started = Instant::now();
        let result = bounded(api.delete(name, lease.metadata.resource_version.as_deref())).await;
        observe(&result, started, |code, reason, took| m.lease_deleted(code, reason, took));
        match result {
            Ok(()) => {
                deleted += 1;
                m.culled_leases.inc();
                let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()).unwrap_or("");
                info!(lease = name, holder, "deleted an expired server lease");
            }
            Err(e) if e.code() == Some(404) => debug!(lease = name, "expired server lease already deleted"),
            Err(e) if e.code() == Some(409) => debug!(lease = name, "expired server lease renewed meanwhile: kept"),
            Err(e) => warn!(lease = name, "deleting an expired server lease: {e}"),
        }
    }
    Ok(deleted)
}

/// Records an answered request in upstream's metrics: 200 and no reason
/// when it succeeded, kube-apiserver's code and reason when it refused.
fn observe<T>(result: &Result<T, ApiError>, started: Instant, record: impl FnOnce(u16, &str, Duration)) {
    let took = started.elapsed();
    match result {
        Ok(_) => record(200, "", took),
        Err(ApiError { status: Some((code, reason)), .. }) => record(*code, reason, took),
        Err(_) => {}
    }
}

/// The running controller: the renew and GC loops.
pub struct LeaseController {
    api: Arc<dyn LeaseApi>,
    lease: ServerLease,
    tasks: JoinSet<()>,
}

impl LeaseController {
    /// Starts both loops; the first renewal and the first collection run at once.
    pub fn start(api: Arc<dyn LeaseApi>, lease: ServerLease, metrics: Metrics) -> LeaseController {
        info!(lease = %lease.name, namespace = %lease.namespace, labels = %selector(&lease.labels), "lease controller started");
        let mut tasks = JoinSet::new();
        tasks.spawn(renew_loop(Renewer::new(Arc::clone(&api), lease.clone())));
        tasks.spawn(gc_loop(Arc::clone(&api), selector(&lease.labels), metrics));
        LeaseController { api, lease, tasks }
    }

    /// Stops both loops and deletes this server's Lease, so that agents
    /// stop counting this server at once (upstream deletes it too, once
    /// its servers have stopped). A failure is logged: the Lease then
    /// expires within 30 s, and another server's GC deletes it.
    pub async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        match bounded(self.api.delete(&self.lease.name, None)).await {
            Ok(()) => info!(lease = %self.lease.name, "deleted this server's lease"),
            Err(e) if e.code() == Some(404) => info!(lease = %self.lease.name, "this server's lease was already gone"),
            Err(e) => warn!(lease = %self.lease.name, "deleting this server's lease: {e}; it expires within 30 s"),
        }
    }
}

/// Upstream's jitter of the renewal period: up to 4 % longer.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(1.0 + 0.04 * fastrand::f64())
}

async fn renew_loop(mut renewer: Renewer) {
    let name = renewer.lease.name.clone();
    let mut failing = false;
    loop {
        let result = renewer.renew(SystemTime::now()).await;
        match &result {
            Ok(Renewal::Created) => info!(lease = %name, "server lease created"),
            Ok(Renewal::Renewed) if failing => info!(lease = %name, "server lease renewed again"),
            Ok(Renewal::Renewed) => debug!(lease = %name, "server lease renewed"),
            Err(e) => warn!(lease = %name, "renewing this server's lease: {e}; retrying in {RENEW_INTERVAL:?}"),
        }
        failing = result.is_err();
        tokio::time::sleep(jittered(RENEW_INTERVAL)).await;
    }
}

async fn gc_loop(api: Arc<dyn LeaseApi>, label_selector: String, metrics: Metrics) {
    loop {
        if let Err(e) = collect(api.as_ref(), &label_selector, SystemTime::now(), &metrics).await {
            warn!(selector = %label_selector, "listing server leases to delete expired ones: {e}; retrying in {GC_INTERVAL:?}");
        }
        tokio::time::sleep(GC_INTERVAL).await;
    }
}

/// Builds the kube client of `cfg` and starts the controller for server `server_id`.
pub async fn from_config(
    cfg: &LeaseControllerConfig,
    server_id: &str,
    metrics: &Metrics,
) -> Result<LeaseController, KubeSetupError> {
    let api = Arc::new(KubeLeases::new(cfg).await?);
    let lease = ServerLease::new(server_id, &cfg.namespace, cfg.labels.clone());
    Ok(LeaseController::start(api, lease, metrics.clone()))
}

#[cfg(test)]
mod tests;
