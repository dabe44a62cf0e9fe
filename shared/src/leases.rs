//! Server leases, as upstream apiserver-network-proxy (v0.36.0) keeps them:
//! the facts both sides share, with no I/O.
//!
//! Each server with `--enable-lease-controller` holds one
//! `coordination.k8s.io/v1` Lease in `--lease-namespace`, named
//! `konnectivity-proxy-server-<server-id>`, labelled with `--lease-label`,
//! `holderIdentity` = its server id, `leaseDurationSeconds` = 30, and
//! renews it every 15 s (a new `renewTime`); every 15 s it also deletes the
//! labelled Leases that have expired. An agent with `--count-server-leases`
//! counts the valid ones: that is how many servers are alive.
//!
//! A Lease is valid while `renewTime` (else `acquireTime`) plus
//! `leaseDurationSeconds` is after now, by the reader's clock
//! (upstream's `IsLeaseValid`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

/// `leaseDurationSeconds` of a server's Lease.
pub const LEASE_DURATION_SECONDS: i32 = 30;
/// How often a server renews its Lease.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(15);
/// How often a server looks for expired Leases to delete.
pub const GC_INTERVAL: Duration = Duration::from_secs(15);
/// A server's Lease is this followed by its server id.
pub const NAME_PREFIX: &str = "konnectivity-proxy-server-";

/// Label keys and values of `--lease-label`, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// The name of the Lease of server `server_id`.
pub fn lease_name(server_id: &str) -> String {
    format!("{NAME_PREFIX}{server_id}")
}

/// Parses `--lease-label` as upstream's `util.ParseLabels` does:
/// comma-separated `key=value` pairs, spaces around each trimmed, a later
/// pair with the same key winning. Errors are upstream's words. An empty
/// key is refused too (kube-apiserver would refuse the Lease later).
pub fn parse_labels(text: &str) -> Result<Labels, String> {
    if text.is_empty() {
        return Err("empty string provided".to_owned());
    }
    let mut labels = Labels::new();
    for pair in text.split(',') {
        let parts: Vec<&str> = pair.split('=').collect();
        let [key, value] = parts[..] else {
            return Err(format!("invalid label format: {pair}"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("invalid label format: {pair} (empty key)"));
        }
        labels.insert(key.to_owned(), value.trim().to_owned());
    }
    Ok(labels)
}

/// The label selector of `labels`: `k1=v1,k2=v2`, keys sorted (upstream's
/// `labels.FormatLabels`).
pub fn selector(labels: &Labels) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

/// When `lease` stops being valid: its last renewal (or acquisition) plus
/// its duration (none given: 0 s). `None` when it has neither time: such a
/// Lease is expired, as upstream treats it.
pub fn expiry(lease: &Lease) -> Option<SystemTime> {
    let spec = lease.spec.as_ref()?;
    let last = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    let seconds = u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0);
    Some(SystemTime::from(last.0) + Duration::from_secs(seconds))
}

/// Whether `lease` is valid at `now`: `renewTime + leaseDurationSeconds > now`.
pub fn is_valid(lease: &Lease, now: SystemTime) -> bool {
    expiry(lease).is_some_and(|end| end > now)
}

/// `now` as a Lease time (microseconds; a clock before 1970 reads as 1970).
fn micro_time(now: SystemTime) -> MicroTime {
    MicroTime(Timestamp::try_from(now).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// One server's Lease: what its controller writes at every renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLease {
    pub name: String,
    pub namespace: String,
    /// `holderIdentity`: the server id.
    pub holder: String,
    pub labels: Labels,
}

impl ServerLease {
    pub fn new(server_id: &str, namespace: &str, labels: Labels) -> ServerLease {
        ServerLease {
            name: lease_name(server_id),
            namespace: namespace.to_owned(),
            holder: server_id.to_owned(),
            labels,
        }
    }

    /// A new Lease object, renewed at `now` (upstream sets no `acquireTime`).
    pub fn create(&self, now: SystemTime) -> Lease {
        let meta =
            ObjectMeta { name: Some(self.name.clone()), namespace: Some(self.namespace.clone()), ..Default::default() };
        self.renew(Lease { metadata: meta, spec: None }, now)
    }

    /// `base` (as last read or written, its `resourceVersion` kept for the
    /// update's optimistic concurrency) renewed at `now`: holder, duration
    /// and renew time set, and the labels replaced by ours, as upstream's
    /// controller does at every write.
    pub fn renew(&self, mut base: Lease, now: SystemTime) -> Lease {
        let spec = base.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(self.holder.clone());
        spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
        spec.renew_time = Some(micro_time(now));
        base.metadata.labels = Some(self.labels.clone());
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn lease(renew: Option<u64>, acquire: Option<u64>, duration: Option<i32>) -> Lease {
        let spec = LeaseSpec {
            renew_time: renew.map(|s| micro_time(at(s))),
            acquire_time: acquire.map(|s| micro_time(at(s))),
            lease_duration_seconds: duration,
            ..Default::default()
        };
        Lease { metadata: ObjectMeta::default(), spec: Some(spec) }
    }

    #[test]
    fn valid_until_renew_time_plus_duration() {
        let l = lease(Some(100), None, Some(30));
        assert!(is_valid(&l, at(100)));
        assert!(is_valid(&l, at(129)));
        assert!(!is_valid(&l, at(130)), "renewTime + duration > now, strictly");
        assert!(!is_valid(&l, at(500)));
        assert_eq!(expiry(&l), Some(at(130)));
    }

    #[test]
    fn acquire_time_stands_in_for_renew_time_and_nothing_is_expired() {
        assert!(is_valid(&lease(None, Some(100), Some(30)), at(120)));
        assert!(is_valid(&lease(Some(200), Some(100), Some(30)), at(220)), "renewTime first");
        assert!(!is_valid(&lease(None, None, Some(30)), at(0)), "neither time: expired");
        assert!(!is_valid(&Lease::default(), at(0)), "no spec: expired");
        assert!(!is_valid(&lease(Some(100), None, None), at(100)), "no duration: 0 s");
        assert!(!is_valid(&lease(Some(100), None, Some(-5)), at(100)), "a negative duration is 0 s");
    }

    #[test]
    fn labels_parse_as_upstream_parses_them() {
        let l = parse_labels("k8s-app=konnectivity-server").unwrap();
        assert_eq!(l, Labels::from([("k8s-app".into(), "konnectivity-server".into())]));
        let l = parse_labels(" b = 2,a=1,b=3").unwrap();
        assert_eq!(selector(&l), "a=1,b=3", "trimmed, the last of a key wins, sorted");
        assert_eq!(parse_labels("a="), Ok(Labels::from([("a".into(), String::new())])));
        assert_eq!(parse_labels(""), Err("empty string provided".into()));
        assert_eq!(parse_labels("a=1,b"), Err("invalid label format: b".into()));
        assert_eq!(parse_labels("a=1,"), Err("invalid label format: ".into()));
        assert_eq!(parse_labels("a=b=c"), Err("invalid label format: a=b=c".into()));
        assert!(parse_labels("=x").unwrap_err().contains("empty key"));
    }

    #[test]
    fn a_new_lease_carries_name_labels_holder_duration_and_renew_time() {
        let labels = parse_labels("k8s-app=konnectivity-server").unwrap();
        let s = ServerLease::new("server-0", "kube-system", labels.clone());
        let l = s.create(at(7));
        assert_eq!(l.metadata.name.as_deref(), Some("konnectivity-proxy-server-server-0"));
        assert_eq!(l.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(l.metadata.labels.as_ref(), Some(&labels));
        let spec = l.spec.as_ref().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("server-0"));
        assert_eq!(spec.lease_duration_seconds, Some(30));
        assert_eq!(spec.renew_time, Some(micro_time(at(7))));
        assert_eq!(spec.acquire_time, None);
        assert!(is_valid(&l, at(36)) && !is_valid(&l, at(37)));
    }

    #[test]
    fn renewal_keeps_the_version_and_sets_our_labels_and_holder() {
        let s = ServerLease::new("b", "ns", parse_labels("app=x").unwrap());
        let mut base = lease(Some(0), Some(0), Some(10));
        base.metadata.resource_version = Some("42".into());
        base.metadata.labels = Some(Labels::from([("other".into(), "y".into())]));
        base.spec.as_mut().unwrap().holder_identity = Some("a".into());
        let r = s.renew(base, at(50));
        assert_eq!(r.metadata.resource_version.as_deref(), Some("42"), "optimistic concurrency");
        assert_eq!(r.metadata.labels, Some(Labels::from([("app".into(), "x".into())])), "replaced, as upstream");
        let spec = r.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!((spec.lease_duration_seconds, spec.renew_time), (Some(30), Some(micro_time(at(50)))));
        assert_eq!(spec.acquire_time, Some(micro_time(at(0))), "left as it was");
    }

    #[test]
    fn names_and_times() {
        assert_eq!(lease_name("3f2a"), "konnectivity-proxy-server-3f2a");
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(SystemTime::from(micro_time(t).0), t, "microseconds survive");
    }
}
