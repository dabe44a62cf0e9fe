use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use konnq_shared::leases::{parse_labels, ServerLease};
use kube::core::watch::{Bookmark, BookmarkMeta};
use kube::core::{Status, TypeMeta};

use super::*;
use ServerCountSource::{Default as D, Max};

#[test]
fn default_takes_the_lease_count_when_counting_else_the_servers_count() {
    // Upstream's TestAggregateServerCounter cases, then konnq's "not yet" ones.
    assert_eq!(target_server_count(D, Some(6), Some(3)), Some(3), "leases preferred");
    assert_eq!(target_server_count(D, Some(6), Some(0)), Some(1), "no valid lease: 1");
    assert_eq!(target_server_count(D, Some(3), None), Some(3), "not counting leases");
    assert_eq!(target_server_count(D, Some(0), None), Some(1), "a reported 0 falls back to 1");
    assert_eq!(target_server_count(D, None, Some(2)), Some(2));
    assert_eq!(target_server_count(D, None, None), None, "nothing known yet");
}

#[test]
fn max_takes_the_larger() {
    assert_eq!(target_server_count(Max, Some(42), Some(24)), Some(42));
    assert_eq!(target_server_count(Max, Some(3), Some(6)), Some(6));
    assert_eq!(target_server_count(Max, Some(0), Some(0)), Some(1), "both zero: 1");
    assert_eq!(target_server_count(Max, None, Some(4)), Some(4), "no server answered yet");
    assert_eq!(target_server_count(Max, Some(5), None), Some(5), "not counted yet");
    assert_eq!(target_server_count(Max, None, Some(usize::MAX)), Some(u32::MAX));
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

/// Server `id`'s Lease renewed at `renewed`, at resourceVersion `rv`.
fn lease(id: &str, renewed: u64, rv: &str) -> Lease {
    let mut l =
        ServerLease::new(id, "kube-system", parse_labels("k8s-app=konnectivity-server").unwrap()).create(at(renewed));
    l.metadata.resource_version = Some(rv.to_owned());
    l
}

#[test]
fn the_cache_counts_the_leases_valid_at_now() {
    let mut c = LeaseCache::default();
    assert_eq!(c.count_valid(at(0)), 0);
    c.replace(
        &[lease("a", 0, "1"), lease("b", 20, "2"), Lease { metadata: ObjectMeta::default(), spec: None }],
        "7".into(),
    );
    assert_eq!(c.resource_version(), "7");
    assert_eq!(c.count_valid(at(10)), 2, "a and b; the one without times is never valid");
    assert_eq!(c.count_valid(at(30)), 1, "a expired at 30");
    assert_eq!(c.count_valid(at(50)), 0);
    c.replace(&[lease("c", 40, "9")], "9".into());
    assert_eq!(c.count_valid(at(50)), 1, "a list replaces everything");
}

#[test]
fn watch_events_keep_the_cache_current() {
    let mut c = LeaseCache::default();
    c.replace(&[lease("a", 0, "1")], "1".into());
    assert_eq!(c.apply(WatchEvent::Added(lease("b", 10, "2"))), Ok(()));
    assert_eq!((c.count_valid(at(20)), c.resource_version()), (2, "2"));
    assert_eq!(c.apply(WatchEvent::Modified(lease("a", 25, "3"))), Ok(()));
    assert_eq!(c.count_valid(at(50)), 1, "a renewed at 25 is valid until 55, b expired at 40");
    assert_eq!(c.apply(WatchEvent::Deleted(lease("a", 25, "4"))), Ok(()));
    assert_eq!((c.count_valid(at(20)), c.resource_version()), (1, "4"));
    let bookmark = Bookmark {
        types: TypeMeta::default(),
        metadata: BookmarkMeta { resource_version: "10".into(), annotations: Default::default() },
    };
    assert_eq!(c.apply(WatchEvent::Bookmark(bookmark)), Ok(()));
    assert_eq!(c.resource_version(), "10");
}

#[test]
fn an_expired_watch_asks_for_a_new_list_and_other_errors_say_why() {
    let mut c = LeaseCache::default();
    let gone = Status::failure("too old resource version: 1 (5)", "Expired").with_code(410);
    assert_eq!(c.apply(WatchEvent::Error(Box::new(gone))), Err(Relist::Expired));
    let forbidden = Status::failure("leases is forbidden", "Forbidden").with_code(403);
    let err = c.apply(WatchEvent::Error(Box::new(forbidden))).unwrap_err();
    assert_eq!(err, Relist::Error("kube-apiserver answered 403: leases is forbidden".into()));
}
