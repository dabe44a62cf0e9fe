//! Server lease counting (`--count-server-leases`): how many servers are
//! alive, from the Leases they renew (see [`konnq_shared::leases`]), and
//! the server count the agent aims for ([`target_server_count`]).
//!
//! ```text
//! list Leases (--lease-namespace, --lease-label) ──▶ LeaseCache ──▶ count valid ones at now ──▶ watch::Sender<Option<usize>>
//! watch from its resourceVersion ──events──▶ LeaseCache          (at every event and every sync-interval)
//! ```
//!
//! As upstream's agent does with an informer, one list fills a cache that a
//! watch then keeps current; counting reads only the cache, so it costs
//! kube-apiserver nothing. The count is taken at every change and every
//! `sync-interval` (Leases expire with time alone), and published only
//! when it changes (INFO "server leases counted: N"). It is `None` until
//! the first list succeeded; after that a failure keeps the cache, and the
//! count follows the cached Leases' expiry, as upstream's does. Failures
//! are logged at WARN and retried with the reconnect backoff
//! (`sync-interval` doubling up to `sync-interval-cap`).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use konnq_shared::config::{AgentConfig, LeaseCountConfig, ServerCountSource};
use konnq_shared::kube::{api_status, describe};
use konnq_shared::leases::{expiry, selector};
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::Api;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::AgentError;

/// Server-side limit of one watch request; the next one resumes from the
/// last resourceVersion seen.
const WATCH_TIMEOUT_SECS: u32 = 290;

/// The server count to aim for, by upstream's rules
/// (`aggregateServerCounter`): with `default`, the lease count when leases
/// are counted, else the count the servers reported; with `max`, the larger
/// of the two. A count of 0 (no valid lease, or a server that reported 0)
/// counts as 1, as upstream falls back to 1.
///
/// `leases`: `None` when not counting, or before the first count; then the
/// servers' count is used. `None` only when neither number is known yet
/// (no server answered and no lease counted): upstream then assumes 1.
pub fn target_server_count(
    source: ServerCountSource,
    reported_by_server: Option<u32>,
    leases: Option<usize>,
) -> Option<u32> {
    let reported = reported_by_server.map(|n| n.max(1));
    let Some(leases) = leases.map(|n| u32::try_from(n).unwrap_or(u32::MAX).max(1)) else {
        return reported;
    };
    match source {
        ServerCountSource::Default => Some(leases),
        ServerCountSource::Max => Some(leases.max(reported.unwrap_or(1))),
    }
}

/// The labelled Leases as last listed and watched: each one's expiry, and
/// the resourceVersion to watch from. No I/O.
#[derive(Debug, Default)]
pub struct LeaseCache {
    /// Name → when it stops being valid (`None`: never valid).
    expiries: HashMap<String, Option<SystemTime>>,
    resource_version: String,
}

/// Why a watch must end and the Leases be listed again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relist {
    /// 410 Gone: the resourceVersion is too old (expected now and then).
    Expired,
    /// Any other error event, in kube-apiserver's words.
    Error(String),
}

impl LeaseCache {
    /// Starts over from a list's items and resourceVersion.
    pub fn replace(&mut self, items: &[Lease], resource_version: String) {
        self.expiries = items.iter().map(|l| (name(l), expiry(l))).collect();
        self.resource_version = resource_version;
    }

    /// Applies one watch event.
    pub fn apply(&mut self, event: WatchEvent<Lease>) -> Result<(), Relist> {
        let (lease, deleted) = match event {
            WatchEvent::Added(l) | WatchEvent::Modified(l) => (l, false),
            WatchEvent::Deleted(l) => (l, true),
            WatchEvent::Bookmark(b) => {
                self.resource_version = b.metadata.resource_version;
                return Ok(());
            }
            WatchEvent::Error(status) if status.code == 410 => return Err(Relist::Expired),
            WatchEvent::Error(status) => {
                return Err(Relist::Error(format!("kube-apiserver answered {}: {}", status.code, status.message)))
            }
        };
        if let Some(rv) = &lease.metadata.resource_version {
            self.resource_version.clone_from(rv);
        }
        if deleted {
            self.expiries.remove(&name(&lease));
        } else {
            self.expiries.insert(name(&lease), expiry(&lease));
        }
        Ok(())
    }

    /// The Leases valid at `now`.
    pub fn count_valid(&self, now: SystemTime) -> usize {
        self.expiries.values().filter(|end| end.is_some_and(|end| end > now)).count()
    }

    pub fn resource_version(&self) -> &str {
        &self.resource_version
    }
}

fn name(lease: &Lease) -> String {
    lease.metadata.name.clone().unwrap_or_default()
}

/// With `count-server-leases`: builds the kube client (from `kubeconfig`,
/// or in-cluster), spawns the counter on `tasks` and returns the count it
/// publishes (`None` until the first list). Without: `Ok(None)`.
pub async fn spawn(
    cfg: &AgentConfig,
    metrics: &Metrics,
    tasks: &mut JoinSet<()>,
) -> Result<Option<watch::Receiver<Option<usize>>>, AgentError> {
    let Some(counting) = &cfg.lease_counting else {
        return Ok(None);
    };
    let client = konnq_shared::kube::client(counting.kubeconfig.as_deref()).await?;
    let (tx, rx) = watch::channel(None);
    let counter = Counter {
        api: Api::namespaced(client, &counting.namespace),
        selector: selector(&counting.labels),
        cache: LeaseCache::default(),
        published: tx,
        metrics: metrics.clone(),
        recount: cfg.sync_interval,
        backoff: (cfg.sync_interval, cfg.sync_interval_cap),
    };
    log_start(counting, cfg.server_count_source);
    tasks.spawn(counter.run());
    Ok(Some(rx))
}

fn log_start(counting: &LeaseCountConfig, source: ServerCountSource) {
    let kubeconfig = counting.kubeconfig.as_deref().map_or("(in-cluster)".into(), |p| p.display().to_string());
    info!(
        namespace = %counting.namespace,
        labels = %selector(&counting.labels),
        server_count_source = source.name(),
        %kubeconfig,
        "counting server leases"
    );
}

/// The list-and-watch loop.
struct Counter {
    api: Api<Lease>,
    selector: String,
    cache: LeaseCache,
    published: watch::Sender<Option<usize>>,
    metrics: Metrics,
    /// How often the count is taken again without events.
    recount: Duration,
    /// Retry delay after a failure: first, and cap (doubling between).
    backoff: (Duration, Duration),
}

impl Counter {
    async fn run(mut self) {
        let mut delay = self.backoff.0;
        loop {
            let trouble = match self.list().await {
                Err(e) => format!("listing server leases: {e}"),
                Ok(()) => {
                    delay = self.backoff.0;
                    match self.watch().await {
                        Ok(Relist::Expired) => {
                            debug!("server lease watch expired; listing again");
                            continue;
                        }
                        Ok(Relist::Error(e)) | Err(e) => format!("watching server leases: {e}"),
                    }
                }
            };
            warn!("{trouble}; retrying in {delay:?}");
            self.wait(delay).await;
            delay = (delay * 2).min(self.backoff.1);
        }
    }

    /// Lists the Leases into the cache, counting upstream's list metrics.
    async fn list(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let listed = self.api.list(&ListParams::default().labels(&self.selector)).await;
        let answer = match &listed {
            Ok(_) => Some((200, "")),
            Err(e) => api_status(e),
        };
        if let Some((code, reason)) = answer {
            self.metrics.lease_listed(code, reason, started.elapsed());
        }
        let list = listed.map_err(|e| describe(&e))?;
        let version = list.metadata.resource_version.clone().unwrap_or_default();
        self.cache.replace(&list.items, version);
        self.publish();
        Ok(())
    }

    /// Watches from the cache's resourceVersion, one request after the
    /// other, until the Leases must be listed again (`Ok`) or a request
    /// fails (`Err`).
    async fn watch(&mut self) -> Result<Relist, String> {
        let params = WatchParams::default().labels(&self.selector).timeout(WATCH_TIMEOUT_SECS);
        let mut tick = tokio::time::interval_at(Instant::now() + self.recount, self.recount);
        loop {
            let opened = Instant::now();
            let started = self.api.watch(&params, self.cache.resource_version()).await;
            let answer = match &started {
                Ok(_) => Some((200, "")),
                Err(e) => api_status(e),
            };
            if let Some((code, reason)) = answer {
                self.metrics.lease_watched(code, reason);
            }
            let events = started.map_err(|e| describe(&e))?;
            futures::pin_mut!(events);
            loop {
                tokio::select! {
                    event = events.try_next() => match event.map_err(|e| describe(&e))? {
                        Some(event) => {
                            if let Err(relist) = self.cache.apply(event) {
                                return Ok(relist);
                            }
                            self.publish();
                        }
                        // The request's timeout: watch again from here (after a
                        // pause if it came at once, so a broken proxy cannot spin us).
                        None if opened.elapsed() < Duration::from_secs(1) => {
                            return Err("kube-apiserver ended the watch at once".to_owned())
                        }
                        None => break,
                    },
                    _ = tick.tick() => self.publish(),
                }
            }
        }
    }

    /// Sleeps `delay`, taking the count every `recount` meanwhile.
    async fn wait(&self, delay: Duration) {
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline {
            tokio::time::sleep_until(deadline.min(Instant::now() + self.recount)).await;
            if self.cache_filled() {
                self.publish();
            }
        }
    }

    fn cache_filled(&self) -> bool {
        self.published.borrow().is_some()
    }

    /// Takes the count at now and publishes it if it changed.
    fn publish(&self) {
        let n = self.cache.count_valid(SystemTime::now());
        self.published.send_if_modified(|current| {
            if *current == Some(n) {
                return false;
            }
            info!("server leases counted: {n}");
            *current = Some(n);
            true
        });
    }
}

#[cfg(test)]
mod tests;
