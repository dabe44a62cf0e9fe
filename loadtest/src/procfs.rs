//! Per-process figures from `/proc/<pid>`: CPU time (user + system),
//! resident memory and open file descriptors. Parsing is pure; [`sample`]
//! reads the files.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcSample {
    /// User + system CPU seconds since the process started.
    pub cpu_secs: f64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub fds: u64,
    pub threads: u64,
}

/// utime + stime (clock ticks) from the text of `/proc/<pid>/stat`. The
/// command name (field 2) may contain spaces and parentheses, so fields are
/// counted after the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of the full line, utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (VmRSS in bytes, Threads) from the text of `/proc/<pid>/status`.
pub fn parse_status(status: &str) -> Option<(u64, u64)> {
    let mut rss = None;
    let mut threads = None;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
            rss = Some(kb * 1024);
        } else if let Some(v) = line.strip_prefix("Threads:") {
            threads = Some(v.trim().parse().ok()?);
        }
    }
    Some((rss?, threads.unwrap_or(0)))
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Reads the current figures of process `pid`.
pub fn sample(pid: u32) -> std::io::Result<ProcSample> {
    let dir = Path::new("/proc").join(pid.to_string());
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unreadable {what} of {pid}"));
    let ticks = parse_stat_ticks(&std::fs::read_to_string(dir.join("stat"))?).ok_or_else(|| bad("stat"))?;
    let (rss_bytes, threads) =
        parse_status(&std::fs::read_to_string(dir.join("status"))?).ok_or_else(|| bad("status"))?;
    let fds = std::fs::read_dir(dir.join("fd"))?.count() as u64;
    Ok(ProcSample { cpu_secs: ticks as f64 / clock_ticks(), rss_bytes, fds, threads })
}

/// Raises this process's soft open-file limit to the hard limit (children
/// inherit it): 10,000 proxied connections need more than the usual 1024.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for getrlimit/setrlimit to read and write.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_tricky_command_name() {
        let stat = "4242 (konnq (a) b) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0 100 \
                    1000000 500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(325));
    }

    #[test]
    fn stat_garbage() {
        assert_eq!(parse_stat_ticks("no parens here"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2 3 4 5 6 7 8 9 x y"), None);
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tkonnq-server\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t7\n";
        assert_eq!(parse_status(status), Some((12345 * 1024, 7)));
        assert_eq!(parse_status("Name: x\n"), None);
        assert_eq!(parse_status("VmRSS: lots\n"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0 && s.fds > 0 && s.threads > 0, "{s:?}");
        assert!(s.cpu_secs >= 0.0);
    }
}
