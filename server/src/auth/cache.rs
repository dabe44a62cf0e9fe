//! The memory of accepted tokens: token hash → username, each entry with
//! its own expiry, at most `capacity` entries (the oldest goes first).
//!
//! Keys are SHA-256 digests, so the cache never holds a token's text. No
//! I/O and no clock of its own: callers pass `now`.

use std::collections::{BTreeMap, HashMap};

use ring::digest::{digest, SHA256};
use tokio::time::Instant;

/// How many accepted tokens are remembered at most: a cluster's agents,
/// each with its current and its previous (rotated) token, many times over.
pub const MAX_ENTRIES: usize = 10_000;

/// SHA-256 of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key([u8; 32]);

impl Key {
    pub fn of(token: &str) -> Key {
        let mut key = [0u8; 32];
        key.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
        Key(key)
    }
}

struct Entry {
    username: String,
    until: Instant,
    /// Insertion order, the key of `ReviewCache::order`.
    seq: u64,
}

pub struct ReviewCache {
    capacity: usize,
    entries: HashMap<Key, Entry>,
    /// seq → key, oldest first.
    order: BTreeMap<u64, Key>,
    next_seq: u64,
}

impl ReviewCache {
    pub fn new(capacity: usize) -> Self {
        ReviewCache { capacity: capacity.max(1), entries: HashMap::new(), order: BTreeMap::new(), next_seq: 0 }
    }

    /// The username of a token accepted until after `now`; drops the entry
    /// once it has expired.
    pub fn get(&mut self, key: &Key, now: Instant) -> Option<String> {
        let entry = self.entries.get(key)?;
        if entry.until > now {
            return Some(entry.username.clone());
        }
        self.remove(key);
        None
    }

    /// Until when `key` is remembered, if it still is after `now`.
    pub fn until(&self, key: &Key, now: Instant) -> Option<Instant> {
        self.entries.get(key).map(|e| e.until).filter(|until| *until > now)
    }

    /// Remembers `key` until `until`, replacing an earlier entry for it and
    /// evicting the oldest entries beyond the capacity.
    pub fn insert(&mut self, key: Key, username: String, until: Instant) {
        self.remove(&key);
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.entries.remove(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, key);
        self.entries.insert(key, Entry { username, until, seq });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn remove(&mut self, key: &Key) {
        if let Some(old) = self.entries.remove(key) {
            self.order.remove(&old.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn keys_are_sha256_digests() {
        let key = Key::of("abc");
        // FIPS 180-2 test vector for "abc".
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let hex: String = key.0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
        assert_ne!(Key::of("abc"), Key::of("abd"));
    }

    #[test]
    fn entries_expire() {
        let now = Instant::now();
        let mut cache = ReviewCache::new(4);
        cache.insert(Key::of("t"), "u".into(), now + Duration::from_secs(10));
        assert_eq!(cache.get(&Key::of("t"), now + Duration::from_secs(9)), Some("u".into()));
        assert_eq!(cache.until(&Key::of("t"), now), Some(now + Duration::from_secs(10)));
        assert_eq!(cache.until(&Key::of("t"), now + Duration::from_secs(10)), None);
        assert_eq!(cache.get(&Key::of("t"), now + Duration::from_secs(10)), None, "expired at `until`");
        assert_eq!(cache.len(), 0, "the expired entry is gone");
        assert_eq!(cache.get(&Key::of("other"), now), None);
    }

    #[test]
    fn oldest_entry_is_evicted_at_capacity() {
        let until = Instant::now() + Duration::from_secs(60);
        let mut cache = ReviewCache::new(3);
        for t in ["a", "b", "c"] {
            cache.insert(Key::of(t), t.into(), until);
        }
        cache.insert(Key::of("a"), "a2".into(), until); // refreshed: now the newest
        cache.insert(Key::of("d"), "d".into(), until);
        assert_eq!(cache.len(), 3);
        let now = Instant::now();
        assert_eq!(cache.get(&Key::of("b"), now), None, "b was the oldest");
        for (t, user) in [("a", "a2"), ("c", "c"), ("d", "d")] {
            assert_eq!(cache.get(&Key::of(t), now).as_deref(), Some(user), "{t}");
        }
        for i in 0..100 {
            cache.insert(Key::of(&i.to_string()), String::new(), until);
        }
        assert_eq!(cache.len(), 3, "never more than the capacity");
        assert_eq!(cache.order.len(), 3, "order and entries stay in step");
    }
}
