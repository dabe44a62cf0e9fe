//! `--enable-profiling`: the admin port serves `/debug/pprof/`, whose
//! `profile` is a CPU profile in the format `go tool pprof` reads (gzipped
//! profile.proto), one at a time; without the setting the paths do not exist,
//! as upstream's.
//!
//! Every test that takes a profile is in one function: the sampler is
//! process-wide, so two at once would meet the busy answer.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use konnq_shared::profiling::cpu_profile_running;
use pprof::protos::{Message, Profile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(": ")?;
            n.eq_ignore_ascii_case(name).then_some(v)
        })
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a text body")
    }
}

/// A GET as HTTP/1.0: the body ends with the connection.
async fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.expect("send request");
    let mut out = Vec::new();
    within(Duration::from_secs(60), s.read_to_end(&mut out)).await.expect("read response");
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8(out[..end].to_vec()).expect("an ASCII head");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    Reply { status, head, body: out[end + 4..].to_vec() }
}

fn decode(gzipped: &[u8]) -> Profile {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gzipped).read_to_end(&mut raw).expect("gzip");
    Profile::decode(raw.as_slice()).expect("profile.proto")
}

/// Burns CPU on this thread for `d`, so that the profile has samples here.
#[inline(never)]
fn spin_for(d: Duration) -> u64 {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < d {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_serves_cpu_profiles_that_decode_as_profile_proto() {
    let lab = Lab::with(|raw| raw.enable_profiling = Some(true)).await;
    let admin = lab.server.admin_addr;

    let index = get(admin, "/debug/pprof/").await;
    assert_eq!(index.status, 200);
    assert_eq!(index.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(index.text().contains("<a href='profile'>profile</a>"), "{}", index.text());
    let redirect = get(admin, "/debug/pprof").await;
    assert_eq!((redirect.status, redirect.header("location")), (301, Some("/debug/pprof/")));

    for query in ["seconds=0", "seconds=301", "seconds=ten", "seconds=-5"] {
        let r = get(admin, &format!("/debug/pprof/profile?{query}")).await;
        assert_eq!(r.status, 400, "{query}");
        assert!(r.text().starts_with("seconds must be a whole number from 1 to 300, got "), "{}", r.text());
        assert_eq!(r.header("x-go-pprof"), Some("1"), "go tool pprof prints the text");
    }
    assert!(!cpu_profile_running(), "a refused request starts nothing");

    // A profile with a busy thread in it; a second request meanwhile is
    // refused at once.
    let first = tokio::spawn(get(admin, "/debug/pprof/profile?seconds=2"));
    eventually("the first profile runs", Duration::from_secs(10), cpu_profile_running).await;
    let spinning = std::thread::spawn(|| spin_for(Duration::from_millis(1500)));
    let started = Instant::now();
    let second = get(admin, "/debug/pprof/profile?seconds=1").await;
    assert_eq!(second.status, 409, "{}", second.text());
    assert!(second.text().contains("a CPU profile is already being taken"), "{}", second.text());
    assert!(started.elapsed() < Duration::from_secs(1), "refused at once, not queued");
    spinning.join().expect("spinner");
    let first = first.await.expect("first request");
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!(first.header("content-type"), Some("application/octet-stream"));
    assert_eq!(first.header("content-disposition"), Some("attachment; filename=\"profile\""));
    assert_eq!(&first.body[..2], [0x1f, 0x8b], "gzip, as Go serves it");

    let p = decode(&first.body);
    let s = |i: i64| p.string_table[usize::try_from(i).expect("an index")].as_str();
    let types: Vec<(&str, &str)> = p.sample_type.iter().map(|t| (s(t.ty), s(t.unit))).collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")], "as Go's CPU profile");
    let period = p.period_type.as_ref().expect("a period type");
    assert_eq!((s(period.ty), s(period.unit)), ("cpu", "nanoseconds"));
    assert_eq!(p.period, 10_000_000, "100 Hz");
    assert!((2_000_000_000..30_000_000_000).contains(&p.duration_nanos), "{}", p.duration_nanos);
    assert!(p.time_nanos > 0);
    assert!(!p.sample.is_empty(), "1.5 s of CPU time and no sample");
    for sample in &p.sample {
        assert_eq!(sample.value.len(), 2);
        assert_eq!(sample.value[1], sample.value[0] * p.period);
    }
    let names: Vec<&str> = p.function.iter().map(|f| s(f.name)).collect();
    assert!(names.iter().any(|n| n.contains("spin_for")), "symbolised frames of the busy thread: {names:?}");

    // The slot is free again.
    assert!(!cpu_profile_running());
    let again = get(admin, "/debug/pprof/profile?seconds=1").await;
    assert_eq!(again.status, 200);
    assert!(!decode(&again.body).sample_type.is_empty());

    for (path, reason) in [
        ("heap", "konnq is not a Go program: no heap profile; use /debug/pprof/profile for a CPU profile\n"),
        ("goroutine", "konnq is not a Go program: no goroutines (konnq runs tokio tasks); use /debug/pprof/profile"),
        ("trace", "konnq is not a Go program: no Go execution trace; "),
        ("no-such-profile", "Unknown profile\n"),
    ] {
        let r = get(admin, &format!("/debug/pprof/{path}")).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(r.text().starts_with(reason), "{path}: {}", r.text());
        assert_eq!(r.header("x-go-pprof"), Some("1"), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_enable_profiling_there_is_no_debug_pprof() {
    let lab = Lab::new().await;
    let admin = lab.server.admin_addr;
    for path in ["/debug/pprof", "/debug/pprof/", "/debug/pprof/profile?seconds=1", "/debug/pprof/heap"] {
        let r = get(admin, path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.header("x-go-pprof"), None, "{path}: not pprof's own answer");
    }
    assert_eq!(get(admin, "/metrics").await.status, 200, "the admin port itself is up");
}
