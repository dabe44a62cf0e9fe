//! The HPACK static table (RFC 7541 Appendix A) and dynamic table (§2.3, §4).

use std::collections::VecDeque;

/// Size the RFC charges for each entry on top of its name and value (§4.1).
pub const ENTRY_OVERHEAD: usize = 32;

/// Entries 1..=61 of the index address space (RFC 7541 Appendix A).
#[rustfmt::skip]
const STATIC: [(&str, &str); 61] = [
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""), ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""), ("accept-ranges", ""), ("accept", ""), ("access-control-allow-origin", ""),
    ("age", ""), ("allow", ""), ("authorization", ""), ("cache-control", ""),
    ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""),
    ("from", ""), ("host", ""), ("if-match", ""), ("if-modified-since", ""),
    ("if-none-match", ""), ("if-range", ""), ("if-unmodified-since", ""), ("last-modified", ""),
    ("link", ""), ("location", ""), ("max-forwards", ""), ("proxy-authenticate", ""),
    ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""),
    ("retry-after", ""), ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""),
    ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""), ("via", ""),
    ("www-authenticate", ""),
];

/// The decoder's copy of the peer's dynamic table.
#[derive(Debug)]
pub struct DynamicTable {
    /// Newest first: `entries[0]` is index 62.
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes (name + value + 32 each).
    size: usize,
    /// Current maximum size, as last set by a size update.
    max_size: usize,
}

/// One field, name and value in one allocation.
#[derive(Debug)]
struct Entry {
    field: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn name(&self) -> &[u8] {
        &self.field[..self.name_len]
    }

    fn value(&self) -> &[u8] {
        &self.field[self.name_len..]
    }

    fn size(&self) -> usize {
        self.field.len() + ENTRY_OVERHEAD
    }
}

impl DynamicTable {
    pub fn new(max_size: usize) -> DynamicTable {
        DynamicTable { entries: VecDeque::new(), size: 0, max_size }
    }

    /// The field at `index` of the combined address space (§2.3.3): 1..=61
    /// static, then the dynamic entries newest first. `None` if out of range.
    pub fn get(&self, index: usize) -> Option<(&[u8], &[u8])> {
        match index {
            0 => None,
            1..=61 => STATIC.get(index - 1).map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            _ => self.entries.get(index - STATIC.len() - 1).map(|e| (e.name(), e.value())),
        }
    }

    /// Adds a field as the newest entry, evicting the oldest ones to make
    /// room. A field larger than the whole table empties it (§4.4).
    pub fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - size);
        let mut field = Vec::with_capacity(name.len() + value.len());
        field.extend_from_slice(name);
        field.extend_from_slice(value);
        self.entries.push_front(Entry { field: field.into_boxed_slice(), name_len: name.len() });
        self.size += size;
    }

    /// Applies a dynamic table size update (§4.3); the caller checks it
    /// against the protocol's limit.
    pub fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    /// Sum of the entries' sizes as §4.1 counts them.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Number of dynamic entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.entries.pop_back() {
                Some(entry) => self.size -= entry.size(),
                None => break,
            }
        }
    }
}
