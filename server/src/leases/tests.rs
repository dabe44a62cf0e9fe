use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use konnq_shared::leases::{parse_labels, Labels};

use super::*;

/// Leases kept as kube-apiserver keeps them: a new resourceVersion at each
/// write, 409 for a stale one or an existing name, 404 for a missing one.
/// `failures` answer the next requests instead; every request is recorded.
#[derive(Default)]
struct Table {
    leases: Mutex<BTreeMap<String, Lease>>,
    version: Mutex<u64>,
    failures: Mutex<VecDeque<ApiError>>,
    calls: Mutex<Vec<String>>,
    /// Renewed by someone else right after each list (a race the GC must lose).
    renewed_after_list: Mutex<Option<String>>,
}

fn refusal(code: u16, reason: &str) -> ApiError {
    ApiError { status: Some((code, reason.to_owned())), text: format!("kube-apiserver answered {code}: {reason}") }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Table {
    fn call(&self, what: String) -> Result<(), ApiError> {
        lock(&self.calls).push(what);
        lock(&self.failures).pop_front().map_or(Ok(()), Err)
    }

    fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    fn stored(&self, name: &str) -> Option<Lease> {
        lock(&self.leases).get(name).cloned()
    }

    /// Stores `lease` under a new resourceVersion.
    fn put(&self, mut lease: Lease) -> Lease {
        let mut v = lock(&self.version);
        *v += 1;
        lease.metadata.resource_version = Some(v.to_string());
        lock(&self.leases).insert(name_of(&lease).to_owned(), lease.clone());
        lease
    }

    fn version_of(&self, name: &str) -> Option<String> {
        self.stored(name).and_then(|l| l.metadata.resource_version)
    }
}

impl LeaseApi for Table {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Lease, ApiError>> {
        let result = self.call(format!("get {name}")).and_then(|()| self.stored(name).ok_or(refusal(404, "NotFound")));
        Box::pin(async move { result })
    }

    fn create<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, ApiError>> {
        let name = name_of(lease);
        let result = self.call(format!("create {name}")).and_then(|()| match self.stored(name) {
            Some(_) => Err(refusal(409, "AlreadyExists")),
            None => Ok(self.put(lease.clone())),
        });
        Box::pin(async move { result })
    }

    fn replace<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, ApiError>> {
        let name = name_of(lease);
        let result = self.call(format!("replace {name}")).and_then(|()| match self.version_of(name) {
            None => Err(refusal(404, "NotFound")),
            Some(v) if Some(&v) != lease.metadata.resource_version.as_ref() => Err(refusal(409, "Conflict")),
            Some(_) => Ok(self.put(lease.clone())),
        });
        Box::pin(async move { result })
    }

    fn list<'a>(&'a self, label_selector: &'a str) -> BoxFuture<'a, Result<Vec<Lease>, ApiError>> {
        let result = self.call(format!("list {label_selector}")).map(|()| {
            let items: Vec<Lease> = lock(&self.leases).values().cloned().collect();
            if let Some(name) = lock(&self.renewed_after_list).take() {
                let lease = self.stored(&name).expect("a stored lease");
                self.put(lease);
            }
            items
        });
        Box::pin(async move { result })
    }

    fn delete<'a>(&'a self, name: &'a str, resource_version: Option<&'a str>) -> BoxFuture<'a, Result<(), ApiError>> {
        let result = self.call(format!("delete {name}")).and_then(|()| match self.version_of(name) {
            None => Err(refusal(404, "NotFound")),
            Some(v) if resource_version.is_some_and(|rv| rv != v) => Err(refusal(409, "Conflict")),
            Some(_) => {
                lock(&self.leases).remove(name);
                Ok(())
            }
        });
        Box::pin(async move { result })
    }
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn labels() -> Labels {
    parse_labels("k8s-app=konnectivity-server").unwrap()
}

fn ours() -> ServerLease {
    ServerLease::new("server-0", "kube-system", labels())
}

const NAME: &str = "konnectivity-proxy-server-server-0";

fn renew_time(lease: &Lease) -> Option<SystemTime> {
    lease.spec.as_ref()?.renew_time.as_ref().map(|t| SystemTime::from(t.0))
}

#[tokio::test]
async fn the_first_renewal_creates_and_later_ones_update_the_copy_written() {
    let table = Arc::new(Table::default());
    let mut r = Renewer::new(table.clone(), ours());
    assert_eq!(r.renew(at(0)).await, Ok(Renewal::Created));
    assert_eq!(table.calls(), [format!("get {NAME}"), format!("create {NAME}")]);
    let stored = table.stored(NAME).expect("created");
    assert_eq!(stored.metadata.labels, Some(labels()));
    assert_eq!(stored.spec.as_ref().and_then(|s| s.holder_identity.as_deref()), Some("server-0"));
    assert_eq!(stored.spec.as_ref().and_then(|s| s.lease_duration_seconds), Some(30));
    assert_eq!(renew_time(&stored), Some(at(0)));
    assert_eq!(r.renew(at(15)).await, Ok(Renewal::Renewed));
    assert_eq!(table.calls().len(), 3, "one request per renewal: {:?}", table.calls());
    assert_eq!(table.calls()[2], format!("replace {NAME}"));
    assert_eq!(renew_time(&table.stored(NAME).unwrap()), Some(at(15)));
}

#[tokio::test]
async fn a_refused_update_reads_the_lease_again() {
    let table = Arc::new(Table::default());
    let mut r = Renewer::new(table.clone(), ours());
    r.renew(at(0)).await.unwrap();
    // Someone else wrote it: our copy is stale (409).
    table.put(table.stored(NAME).unwrap());
    assert_eq!(r.renew(at(15)).await, Ok(Renewal::Renewed));
    assert_eq!(table.calls()[2..], [format!("replace {NAME}"), format!("get {NAME}"), format!("replace {NAME}")]);
    // Deleted meanwhile (another server's GC after an outage): created again.
    lock(&table.leases).clear();
    assert_eq!(r.renew(at(30)).await, Ok(Renewal::Created));
    assert_eq!(renew_time(&table.stored(NAME).unwrap()), Some(at(30)));
}

#[tokio::test]
async fn a_failed_renewal_reports_why_and_the_next_one_recovers() {
    let table = Arc::new(Table::default());
    let mut r = Renewer::new(table.clone(), ours());
    r.renew(at(0)).await.unwrap();
    lock(&table.failures).push_back(ApiError { status: None, text: "connection refused".into() });
    assert_eq!(r.renew(at(15)).await.unwrap_err().text, "connection refused");
    lock(&table.failures).push_back(refusal(403, "Forbidden"));
    let err = r.renew(at(30)).await.unwrap_err();
    assert_eq!(err.status, Some((403, "Forbidden".into())), "{err}");
    assert_eq!(r.renew(at(45)).await, Ok(Renewal::Renewed));
    assert_eq!(renew_time(&table.stored(NAME).unwrap()), Some(at(45)));
}

/// A lease of another server, renewed at `renewed`.
fn other(table: &Table, id: &str, renewed: u64) -> String {
    let lease = ServerLease::new(id, "kube-system", labels()).create(at(renewed));
    table.put(lease);
    konnq_shared::leases::lease_name(id)
}

#[tokio::test]
async fn collection_deletes_expired_leases_unless_renewed_since_the_list() {
    let table = Table::default();
    let fresh = other(&table, "fresh", 90);
    let expired = other(&table, "expired", 0);
    let racing = other(&table, "racing", 10);
    *lock(&table.renewed_after_list) = Some(racing.clone());
    let m = Metrics::new();
    assert_eq!(collect(&table, "k8s-app=konnectivity-server", at(100), &m).await, Ok(1));
    assert_eq!(table.calls()[0], "list k8s-app=konnectivity-server");
    assert!(table.stored(&fresh).is_some() && table.stored(&racing).is_some());
    assert!(table.stored(&expired).is_none());
    assert_eq!((m.culled_leases.get(), m.lease_lists(200, "")), (1, 1));
    assert_eq!((m.lease_deletes(200, ""), m.lease_deletes(409, "Conflict")), (1, 1));
}

#[tokio::test]
async fn a_refused_list_is_counted_and_one_without_answer_is_not() {
    let table = Table::default();
    other(&table, "expired", 0);
    let m = Metrics::new();
    lock(&table.failures).push_back(refusal(403, "Forbidden"));
    let err = collect(&table, "a=b", at(100), &m).await.unwrap_err();
    assert_eq!(err.code(), Some(403));
    lock(&table.failures).push_back(ApiError { status: None, text: "timeout".into() });
    assert!(collect(&table, "a=b", at(100), &m).await.is_err());
    assert_eq!((m.lease_lists(403, "Forbidden"), m.lease_lists(200, "")), (1, 0));
    assert!(!m.render().contains("http_status_code=\"0\""), "no code for no answer");
    assert_eq!((collect(&table, "a=b", at(100), &m).await, m.culled_leases.get()), (Ok(1), 1));
}

#[tokio::test(start_paused = true)]
async fn the_controller_renews_every_15_s_and_deletes_its_lease_when_stopped() {
    let table = Arc::new(Table::default());
    let expired = other(&table, "gone", 0);
    let c = LeaseController::start(table.clone(), ours(), Metrics::new());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(table.stored(NAME).is_some(), "created at once: {:?}", table.calls());
    assert!(table.stored(&expired).is_none(), "collected at once");
    let count = |what: &str| table.calls().iter().filter(|c| c.starts_with(what)).count();
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(count("replace"), 2, "renewed at 15 s and 30 s (+ up to 4 %): {:?}", table.calls());
    assert_eq!(count("list"), 3, "collected at 0, 15 and 30 s");
    c.stop().await;
    assert!(table.stored(NAME).is_none(), "deleted on stop: {:?}", table.calls());
    let calls = table.calls().len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(table.calls().len(), calls, "both loops stopped");
}
