//! Where a throughput cell's CPU goes (`konnq-loadtest run --perf DIR`):
//! `perf record` samples the server and agent (`cpu-clock`, call graphs kept
//! in the file for a closer look) over the measured window only; `perf
//! report` then gives each sample's process and the function it was in, and
//! every function is put into one component (crypto, copies, QUIC, HTTP/2,
//! the kernel's network stack, ...). A component's share of a process's
//! samples times that process's CPU seconds per GB is its cost per GB.
//!
//! Self time only: a copy made inside an HTTP/2 function counts as a copy,
//! and a function not matched by name counts in "other" of its side (user or
//! kernel), so the table never claims more than the names show.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

/// Sampling rate, per CPU: enough samples in a 5 s window (about 10,000 on
/// two busy CPUs) without perf itself taking a noticeable share.
const FREQUENCY: u32 = 999;
/// How long perf may take to write its file after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// What a function does, by its name and object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    /// AES-GCM, ChaCha20-Poly1305, GHASH, hashes (TLS record and QUIC packet protection).
    Crypto,
    /// memcpy / memmove in user space (Go's `runtime.memmove` too).
    UserCopy,
    /// quinn, quinn-proto, quinn-udp: QUIC packets, acks, streams, congestion control.
    Quic,
    /// HTTP/2 and gRPC framing: konnq's own h2 and HPACK, hyper's h2, tonic,
    /// prost; grpc-go and x/net/http2 for upstream.
    Http2,
    /// Konnectivity packets and konnq's tunnel wire format.
    Tunnel,
    /// malloc / free (and the release of shared `bytes` buffers), and Go's
    /// allocator and garbage collector.
    Alloc,
    /// The async runtime: tokio, or Go's scheduler.
    Runtime,
    /// Everything else in user space (konnq's own code, std, libc).
    UserOther,
    /// copy_to_user / copy_from_user and the kernel's memcpy.
    KernelCopy,
    /// The kernel's UDP, TCP, IP, socket and device code (veth, loopback, GRO/GSO).
    KernelNet,
    /// System call entry and exit, scheduling, wake-ups, epoll, futexes, timers.
    KernelSched,
    /// Everything else in the kernel (page faults, memory management, ...).
    KernelOther,
}

impl Component {
    pub const ALL: [Component; 12] = [
        Component::Crypto,
        Component::UserCopy,
        Component::Quic,
        Component::Http2,
        Component::Tunnel,
        Component::Alloc,
        Component::Runtime,
        Component::UserOther,
        Component::KernelCopy,
        Component::KernelNet,
        Component::KernelSched,
        Component::KernelOther,
    ];

    /// Short column heading.
    pub fn heading(self) -> &'static str {
        match self {
            Component::Crypto => "crypto",
            Component::UserCopy => "copies",
            Component::Quic => "QUIC",
            Component::Http2 => "HTTP/2",
            Component::Tunnel => "tunnel",
            Component::Alloc => "alloc/GC",
            Component::Runtime => "runtime",
            Component::UserOther => "other",
            Component::KernelCopy => "k:copies",
            Component::KernelNet => "k:net",
            Component::KernelSched => "k:sched",
            Component::KernelOther => "k:other",
        }
    }
}

/// The component of a function, from `perf report`'s object and symbol columns.
pub fn classify(dso: &str, symbol: &str) -> Component {
    let kernel = symbol.starts_with("[k]") || dso.contains("kernel.kallsyms") || dso.starts_with("[kernel");
    let sym = symbol.trim_start_matches("[k]").trim_start_matches("[.]").trim();
    let has = |needles: &[&str]| needles.iter().any(|n| sym.contains(n));
    if kernel {
        if has(&[
            "copy_user",
            "copy_to_iter",
            "copy_from_iter",
            "rep_movs",
            "memcpy",
            "memmove",
            "copy_page",
            "check_object_size",
        ]) || sym.starts_with("copyin")
            || sym.starts_with("copyout")
        {
            return Component::KernelCopy;
        }
        if has(&[
            "udp",
            "tcp",
            "ip_",
            "ipv4",
            "ip6",
            "skb",
            "sock",
            "net_",
            "netif",
            "napi",
            "gro",
            "gso",
            "veth",
            "dev_",
            "csum",
            "inet",
            "sendmsg",
            "recvmsg",
            "sendto",
            "recvfrom",
            "__sys_send",
            "__sys_recv",
            "nf_",
            "neigh",
            "fib_",
            "dst_",
            "loopback",
            "xmit",
            "qdisc",
            "unix_",
            "ipt_",
            "__x64_sys_send",
            "__x64_sys_recv",
            "softirq",
            "cmsg",
        ]) {
            return Component::KernelNet;
        }
        if has(&[
            "syscall",
            "entry_",
            "schedule",
            "switch",
            "futex",
            "wake",
            "ep_",
            "epoll",
            "poll",
            "timer",
            "hrtimer",
            "sched",
            "task",
            "irq",
            "idle",
            "enqueue",
            "dequeue",
            "select_",
            "update_curr",
            "cpuacct",
            "rcu",
            "pv_native_safe_halt",
            "_raw_spin",
            "clock",
            "eventfd",
            "do_sys",
            "tsc",
            "fdget",
            "fdput",
            "msr",
        ]) {
            return Component::KernelSched;
        }
        return Component::KernelOther;
    }
    if has(&[
        "aes",
        "gcm",
        "ghash",
        "gfmul",
        "chacha",
        "poly1305",
        "sha256",
        "sha512",
        "sha2",
        "GFp_",
        "aws_lc",
        "ring_core",
        "crypto/",
        "x25519",
        "p256",
        "ecp_nistz256",
        "ring::",
        "aead",
        "rustls::crypto",
        "PacketKey",
    ]) {
        return Component::Crypto;
    }
    if has(&["memcpy", "memmove", "memset"]) || sym == "runtime.memmove" || sym == "runtime.memclrNoHeapPointers" {
        return Component::UserCopy;
    }
    if has(&["quinn"]) {
        return Component::Quic;
    }
    if has(&[
        "konnq_protocol::h2",
        "konnq_protocol::hpack",
        "h2::",
        "tonic::",
        "prost::",
        "hyper::",
        "golang.org/x/net/http2",
        "google.golang.org/grpc",
        "google.golang.org/protobuf",
    ]) {
        return Component::Http2;
    }
    if has(&[
        "konnq_protocol::",
        "konnq_shared::codec",
        "konnq_shared::client",
        "konnectivity",
        "apiserver-network-proxy",
    ]) {
        return Component::Tunnel;
    }
    if has(&[
        "malloc",
        "_int_free",
        "cfree",
        "__libc_free",
        "realloc",
        "calloc",
        "__rust_alloc",
        "__rust_dealloc",
        "__rdl_",
        "runtime.mallocgc",
        "runtime.gc",
        "runtime.scanobject",
        "runtime.greyobject",
        "runtime.findObject",
        "runtime.markBits",
        "runtime.sweep",
        "runtime.(*mspan)",
        "runtime.(*mheap)",
        "runtime.(*mcache)",
        "runtime.(*gcWork)",
        "runtime.heapBits",
        "runtime.wbBuf",
        "runtime.bulkBarrier",
        "runtime.typePointers",
        "runtime.scanblock",
        "runtime.nextFreeFast",
        "runtime.(*mcentral)",
        "bytes::bytes::",
        "bytes::bytes_mut::release",
        "unlink_chunk",
    ]) || sym == "free"
    {
        return Component::Alloc;
    }
    if sym.contains("tokio::") || sym.starts_with("runtime.") || sym.starts_with("runtime/") {
        return Component::Runtime;
    }
    Component::UserOther
}

/// One process's samples by component.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessProfile {
    pub samples: u64,
    pub by_component: BTreeMap<Component, u64>,
}

impl ProcessProfile {
    /// The share of this process's samples in `c` (0 when it has none).
    pub fn share(&self, c: Component) -> f64 {
        match self.samples {
            0 => 0.0,
            n => *self.by_component.get(&c).unwrap_or(&0) as f64 / n as f64,
        }
    }
}

/// Parses `perf report --stdio --no-children -F sample,dso,sym -g none -t
/// '\t'` of one process's recording.
pub fn parse_report(text: &str) -> ProcessProfile {
    let mut p = ProcessProfile::default();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').map(str::trim).collect();
        let [samples, dso, sym] = cols[..] else { continue };
        let Ok(samples) = samples.parse::<u64>() else { continue };
        p.samples += samples;
        *p.by_component.entry(classify(dso, sym)).or_default() += samples;
    }
    p
}

/// A `perf record` of one process (all its threads), running until
/// [`Recording::stop`]. One recording per process: perf's report names
/// threads, not the process they belong to.
pub struct Recording {
    child: Child,
    pub path: PathBuf,
}

impl Recording {
    /// Starts sampling process `pid` (with call graphs) into `path`.
    pub fn start(pid: u32, path: &Path) -> anyhow::Result<Recording> {
        let list = pid.to_string();
        let log = std::fs::File::create(path.with_extension("log"))
            .with_context(|| format!("creating {}", path.with_extension("log").display()))?;
        let child = Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", &FREQUENCY.to_string(), "-g", "-p", &list, "-o"])
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting `perf record` (is perf installed? Debian: linux-perf)")?;
        Ok(Recording { child, path: path.to_owned() })
    }

    /// Stops sampling (SIGINT, as perf expects) and waits for the file.
    pub async fn stop(mut self) -> anyhow::Result<PathBuf> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) of our own child, which has not been reaped.
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
        }
        let status =
            tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await.context("perf record did not stop")??;
        // perf exits 0 or with the signal's code after SIGINT; the file is what counts.
        let written = std::fs::metadata(&self.path).map(|m| m.len() > 0).unwrap_or(false);
        if !written {
            bail!("perf record ({status}) wrote no data; see {}", self.path.with_extension("log").display());
        }
        Ok(self.path)
    }
}

/// Runs `perf report` on one process's recording.
pub async fn profile(path: &Path) -> anyhow::Result<ProcessProfile> {
    let out = Command::new("perf")
        .args(["report", "--stdio", "--no-children", "-F", "sample,dso,sym", "-g", "none"])
        .args(["--percent-limit", "0", "-t", "\t", "-i"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running perf report")?;
    if !out.status.success() {
        bail!("perf report failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(parse_report(&String::from_utf8_lossy(&out.stdout)))
}

/// Cost of each component, CPU seconds per 10⁹ bytes, for one process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComponentCosts {
    pub samples: u64,
    /// Component → CPU seconds per GB (the process's s/GB times its share).
    pub secs_per_gb: BTreeMap<Component, f64>,
}

impl ComponentCosts {
    /// Splits `secs_per_gb` of one process by its profile.
    pub fn new(profile: &ProcessProfile, secs_per_gb: f64) -> ComponentCosts {
        let secs_per_gb =
            Component::ALL.iter().map(|&c| (c, profile.share(c) * secs_per_gb)).filter(|(_, v)| *v > 0.0).collect();
        ComponentCosts { samples: profile.samples, secs_per_gb }
    }

    pub fn get(&self, c: Component) -> f64 {
        *self.secs_per_gb.get(&c).unwrap_or(&0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_fall_into_components() {
        let k = "[kernel.kallsyms]";
        let cases = [
            (k, "[k] _copy_to_iter", Component::KernelCopy),
            (k, "[k] rep_movs_alternative", Component::KernelCopy),
            (k, "[k] udp_sendmsg", Component::KernelNet),
            (k, "[k] __dev_queue_xmit", Component::KernelNet),
            (k, "[k] veth_xmit", Component::KernelNet),
            (k, "[k] tcp_ack", Component::KernelNet),
            (k, "[k] entry_SYSCALL_64", Component::KernelSched),
            (k, "[k] futex_wake", Component::KernelSched),
            (k, "[k] __schedule", Component::KernelSched),
            (k, "[k] clear_page_erms", Component::KernelOther),
            (k, "[k] handle_softirqs", Component::KernelNet),
            (k, "[k] __check_object_size", Component::KernelCopy),
            ("konnq-server", "[.] ring::aead::aes_gcm::open", Component::Crypto),
            ("konnq-server", "[.] bytes::bytes_mut::release_shared", Component::Alloc),
            ("konnq-server", "[.] aes_gcm_enc_update_vaes_avx2", Component::Crypto),
            ("konnq-agent", "[.] aws_lc_0_32_0_gcm_ghash_avx", Component::Crypto),
            ("proxy-server", "[.] crypto/internal/fips140/aes/gcm.gcmAesEnc", Component::Crypto),
            ("libc.so.6", "[.] __memmove_avx_unaligned_erms", Component::UserCopy),
            ("proxy-agent", "[.] runtime.memmove", Component::UserCopy),
            ("konnq-agent", "[.] quinn_proto::connection::Connection::poll_transmit", Component::Quic),
            ("konnq-agent", "[.] <quinn_udp::imp::UdpSocketState>::recv", Component::Quic),
            ("konnq-server", "[.] konnq_protocol::h2::conn::Conn::on_frame", Component::Http2),
            ("konnq-server", "[.] konnq_protocol::hpack::Decoder::decode", Component::Http2),
            ("proxy-server", "[.] golang.org/x/net/http2.(*Framer).ReadFrame", Component::Http2),
            (
                "proxy-server",
                "[.] google.golang.org/grpc/internal/transport.(*http2Server).operateHeaders",
                Component::Http2,
            ),
            ("konnq-server", "[.] konnq_protocol::konnectivity::Packet::decode", Component::Tunnel),
            ("libc.so.6", "[.] _int_malloc", Component::Alloc),
            ("libc.so.6", "[.] cfree@GLIBC_2.2.5", Component::Alloc),
            ("proxy-agent", "[.] runtime.mallocgc", Component::Alloc),
            ("proxy-agent", "[.] runtime.scanobject", Component::Alloc),
            ("konnq-agent", "[.] tokio::runtime::scheduler::current_thread::Context::park", Component::Runtime),
            ("proxy-agent", "[.] runtime.findRunnable", Component::Runtime),
            ("konnq-server", "[.] konnq_server::backend::tunnel::from_agent", Component::UserOther),
        ];
        for (dso, sym, want) in cases {
            assert_eq!(classify(dso, sym), want, "{dso} {sym}");
        }
    }

    #[test]
    fn a_report_adds_up_per_process() {
        let text = "#      Samples\tShared Object\tSymbol\n\
                    # comment\n \
                    120        \tkonnq-server       \t[.] aes_gcm_enc_update_vaes_avx2\n \
                    30         \t[kernel.kallsyms]  \t[k] udp_sendmsg\n\
                    garbage line\n \
                    x\tz\tw\n";
        let server = parse_report(text);
        assert_eq!(server.samples, 150);
        assert!((server.share(Component::Crypto) - 0.8).abs() < 1e-9);
        assert!((server.share(Component::KernelNet) - 0.2).abs() < 1e-9);
        let agent = parse_report(" 50 \tlibc.so.6\t[.] __memmove_avx_unaligned_erms\n");
        assert_eq!(agent.share(Component::UserCopy), 1.0);
        let costs = ComponentCosts::new(&server, 2.0);
        assert!((costs.get(Component::Crypto) - 1.6).abs() < 1e-9);
        assert!((costs.get(Component::KernelNet) - 0.4).abs() < 1e-9);
        assert_eq!(costs.get(Component::Quic), 0.0);
        assert_eq!(ProcessProfile::default().share(Component::Quic), 0.0);
    }
}
