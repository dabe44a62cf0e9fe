//! Hands memory freed after a burst back to the operating system.
//!
//! glibc's allocator keeps what a thread frees in that thread's arena, and
//! returns an arena's pages only from its top. After a burst of connections
//! (a few hundred at once while the machine stalled), the freed per-connection
//! buffers are scattered through the arenas of the runtime's worker threads,
//! so the process keeps the burst's peak RSS for the rest of its life. A
//! steady service then looks as if it leaked. `malloc_trim` walks every arena
//! and releases the whole free pages inside it as well.

use std::time::{Duration, Instant};

/// How often the trimmer runs. In a soak at 300 dials/s a trim took
/// 0.15-1 ms of one thread's time (7 ms once, right after a burst).
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Releases free pages of every allocator arena to the OS. Returns whether
/// anything was released (always false where the allocator is not glibc's).
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only takes the arenas' own locks and has no
        // preconditions; 0 asks it to keep no padding at the heap's top.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Resident set size of this process in bytes (0 where unknown).
/// Reads into a stack buffer: the trimmer thread should not allocate.
pub fn rss_bytes() -> u64 {
    use std::io::Read;
    let mut buf = [0u8; 128];
    let n = std::fs::File::open("/proc/self/statm").and_then(|mut f| f.read(&mut buf)).unwrap_or(0);
    let statm = std::str::from_utf8(&buf[..n]).unwrap_or("");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * page_size()
}

fn page_size() -> u64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if n > 0 {
            return n as u64;
        }
    }
    4096
}

/// Starts a thread that trims every `every`. It runs until the process
/// exits. Its loop allocates nothing unless debug logging is on, so glibc
/// gives it no arena of its own.
pub fn start_trimmer(every: Duration) -> std::io::Result<()> {
    std::thread::Builder::new().name("konnq-trim".into()).stack_size(64 * 1024).spawn(move || loop {
        std::thread::sleep(every);
        let (before, started) = (rss_bytes(), Instant::now());
        if trim() {
            let after = rss_bytes();
            tracing::debug!(
                released_kib = before.saturating_sub(after) / 1024,
                rss_kib = after / 1024,
                took_us = started.elapsed().as_micros() as u64,
                "returned freed memory to the OS"
            );
        }
    })?;
    Ok(())
}
