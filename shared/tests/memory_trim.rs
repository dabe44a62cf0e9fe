//! The trimmer gives a burst's freed memory back. In a test binary of its
//! own: it measures the RSS of the whole process. glibc only: elsewhere
//! `trim` does nothing.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use konnq_shared::memory::{rss_bytes, trim};

#[test]
fn trim_returns_memory_freed_inside_a_worker_arena() {
    // A worker thread (its own glibc arena) allocates 64 MiB in 1 KiB
    // pieces, as a burst of connections would, then frees all but every
    // 256th piece, which pins the arena's top so it cannot shrink by itself.
    let (kept, before_free, after_free) = std::thread::spawn(|| {
        let mut pieces: Vec<Vec<u8>> = (0..65_536).map(|i| vec![i as u8; 1024]).collect();
        let before_free = rss_bytes();
        let mut kept = Vec::new();
        for (i, p) in pieces.drain(..).enumerate() {
            if i % 256 == 255 {
                kept.push(p);
            }
        }
        let after_free = rss_bytes();
        (kept, before_free, after_free)
    })
    .join()
    .unwrap();
    assert!(before_free > 64 << 20, "the burst is resident: {before_free} bytes");
    assert!(
        after_free > before_free - (8 << 20),
        "freeing alone did not return the pages: {before_free} -> {after_free} bytes"
    );
    assert!(trim(), "malloc_trim released something");
    let after_trim = rss_bytes();
    println!("rss: burst {before_free}, freed {after_free}, trimmed {after_trim} bytes");
    assert!(
        after_trim + (32 << 20) < after_free,
        "trim released most of the freed 64 MiB: {after_free} -> {after_trim}"
    );
    assert_eq!(kept.len(), 256);
    assert!(kept.iter().all(|p| p.len() == 1024));
}
