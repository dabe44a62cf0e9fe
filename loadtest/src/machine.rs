//! What machine and when: CPU count and model, kernel, memory, UTC date.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::report::Machine;

/// The first `model name` of `/proc/cpuinfo` text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// `MemTotal` in KiB from `/proc/meminfo` text.
pub fn mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line["MemTotal:".len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// This machine.
pub fn describe() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        cpu_model: cpu_model(&read("/proc/cpuinfo")).unwrap_or_else(|| "unknown".to_owned()),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        mem_total_kib: mem_total_kib(&read("/proc/meminfo")).unwrap_or(0),
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Cumulative CPU time of the whole machine, from the first line of
/// `/proc/stat` (clock ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub total: u64,
    /// Time the hypervisor ran something else while this machine wanted a CPU.
    pub steal: u64,
}

/// Reads [`CpuTimes`] now; `None` where `/proc/stat` is missing or odd.
pub fn cpu_times() -> Option<CpuTimes> {
    parse_cpu_times(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]; the
    // guest times are already counted in user and nice.
    let v: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    (v.len() == 8).then(|| CpuTimes { total: v.iter().sum(), steal: v[7] })
}

/// Share of the machine's CPU time stolen by the hypervisor between two
/// readings, percent; `None` if either is missing or no time passed.
pub fn steal_pct(before: Option<CpuTimes>, after: Option<CpuTimes>) -> Option<f64> {
    let (b, a) = (before?, after?);
    let total = a.total.checked_sub(b.total).filter(|&t| t > 0)?;
    Some(a.steal.saturating_sub(b.steal) as f64 * 100.0 / total as f64)
}

/// `git describe --always --dirty` of the source tree (best effort).
pub fn revision() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Civil date (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's days-to-civil algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
pub fn utc(secs: u64) -> String {
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

pub fn now_utc() -> String {
    utc(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn proc_text() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: X\nmodel name\t: Some CPU @ 2.0GHz\nprocessor\t: 1\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("Some CPU @ 2.0GHz"));
        assert_eq!(cpu_model("nothing"), None);
        assert_eq!(mem_total_kib("MemTotal:       24576000 kB\nMemFree: 1 kB\n"), Some(24_576_000));
        assert_eq!(mem_total_kib(""), None);
    }

    #[test]
    fn describes_this_machine() {
        let m = describe();
        assert!(m.nproc >= 1 && !m.kernel.is_empty(), "{m:?}");
        assert_eq!(loadavg().split(' ').count(), 3);
        assert!(cpu_times().is_some_and(|t| t.total > 0));
    }

    #[test]
    fn steal_share_between_two_readings() {
        let before = parse_cpu_times("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3\n");
        let after = parse_cpu_times("cpu  160 0 70 900 10 0 0 100 7 0\n");
        assert_eq!(before, Some(CpuTimes { total: 1000, steal: 40 }));
        // 240 ticks passed, 60 of them stolen.
        assert_eq!(steal_pct(before, after), Some(25.0));
        assert_eq!(steal_pct(after, after), None);
        assert_eq!(parse_cpu_times("cpu  1 2 3\n"), None);
        assert_eq!(steal_pct(None, after), None);
    }
}
