//! `/debug/pprof/` on the admin port (`--enable-profiling`), for
//! `go tool pprof`.
//!
//! Upstream registers Go's `net/http/pprof` handlers on the admin server of
//! both binaries: `/debug/pprof` (a redirect to `/debug/pprof/`),
//! `/debug/pprof/` (an index, and below it each Go runtime profile by
//! name), `/debug/pprof/profile`, `/debug/pprof/symbol` and
//! `/debug/pprof/trace`. konnq serves what a Rust program has:
//!
//! - `/debug/pprof/profile?seconds=N`: a CPU profile of the whole process,
//!   sampled at 100 Hz (Go's rate) by SIGPROF, as gzipped profile.proto,
//!   the format Go serves there: `go tool pprof
//!   http://127.0.0.1:8095/debug/pprof/profile?seconds=30` reads it, with
//!   function names, files and lines already resolved. N is 30 when absent
//!   or empty, as in Go, and must be 1 to 300 otherwise (Go falls back to 30
//!   on a value it cannot read; konnq answers 400 rather than profile for a
//!   duration nobody asked for).
//! - `/debug/pprof/`: an index of the above.
//! - The Go runtime's profiles (heap, goroutine, block, ...), `symbol` and
//!   `trace` have no counterpart: 404 with the reason, in Go's error form
//!   (plain text, `X-Go-Pprof: 1`) so that `go tool pprof` prints it.
//!
//! The sampling timer is process-wide, so one CPU profile runs at a time (as
//! in Go): a request meanwhile gets 409 at once. A profile ends early when
//! its request goes away (the client disconnected).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{header, HeaderName, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use pprof::protos::Message;

/// Profile length when `seconds` is not given (Go's).
pub const DEFAULT_SECONDS: u64 = 30;
/// Longest profile a request may ask for.
pub const MAX_SECONDS: u64 = 300;
/// Samples per second of CPU time (Go's runtime rate).
pub const SAMPLE_HZ: i32 = 100;
/// Shared objects whose frames the sampler does not unwind through: unwinding
/// from a signal that landed inside them can deadlock or crash (pprof-rs's
/// advice).
const UNWIND_BLOCKLIST: [&str; 4] = ["libc", "libgcc", "pthread", "vdso"];

/// Why a CPU profile could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("a CPU profile is already being taken (one at a time); try again when it has ended")]
    Busy,
    #[error("could not enable CPU profiling: {0}")]
    Start(#[source] pprof::Error),
    #[error("could not build the CPU profile: {0}")]
    Report(#[source] pprof::Error),
    #[error("could not compress the CPU profile: {0}")]
    Compress(#[source] std::io::Error),
    #[error("the CPU profile's encoder failed: {0}")]
    Encoder(#[source] tokio::task::JoinError),
}

/// The paths Go's `net/http/pprof` serves that konnq has no counterpart for,
/// each with what is missing.
const NOT_SERVED: [(&str, &str); 9] = [
    ("allocs", "no allocation profile"),
    ("block", "no block (contention) profile"),
    ("cmdline", "no Go command line endpoint"),
    ("goroutine", "no goroutines (konnq runs tokio tasks)"),
    ("heap", "no heap profile"),
    ("mutex", "no mutex profile"),
    ("symbol", "no symbol lookup (the CPU profile comes with its symbols)"),
    ("threadcreate", "no thread creation profile"),
    ("trace", "no Go execution trace"),
];

/// The `/debug/pprof` routes, to merge into an admin router.
/// Serves an admin port as both binaries have it: `/metrics` (the text
/// `render` returns), `/healthz` and, with `profiling`, [`routes`], as
/// upstream's `--enable-profiling` does.
pub async fn serve_admin<F>(listener: tokio::net::TcpListener, render: F, profiling: bool) -> std::io::Result<()>
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    let metrics = move || {
        let render = render.clone();
        async move { ([(header::CONTENT_TYPE, crate::prom::CONTENT_TYPE)], render()) }
    };
    let mut app = Router::new().route("/metrics", get(metrics)).route("/healthz", get(|| async { "ok" }));
    if profiling {
        app = app.merge(routes());
    }
    axum::serve(listener, app).await
}

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/debug/pprof", get(|| async { (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, "/debug/pprof/")]) }))
        .route("/debug/pprof/", get(|| async { Html(index()) }))
        .route("/debug/pprof/profile", get(profile))
        .route("/debug/pprof/{*name}", get(|uri: Uri| async move { not_served(uri.path()) }))
}

/// Whether a CPU profile is being taken in this process now.
pub fn cpu_profile_running() -> bool {
    RUNNING.load(Ordering::Acquire)
}

/// Takes a CPU profile of the whole process for `duration` and returns it as
/// gzipped profile.proto. Dropping the future stops the profile.
pub async fn cpu_profile(duration: Duration) -> Result<Vec<u8>, ProfileError> {
    let turn = Turn::take().ok_or(ProfileError::Busy)?;
    let sampler = start_sampler()?;
    tokio::time::sleep(duration).await;
    // Resolving symbols reads the binary's debug info: not on the runtime.
    tokio::task::spawn_blocking(move || {
        let profile = encode(&sampler);
        drop((sampler, turn));
        profile
    })
    .await
    .map_err(ProfileError::Encoder)?
}

/// Starts SIGPROF sampling of the process; it stops when the guard drops.
fn start_sampler() -> Result<pprof::ProfilerGuard<'static>, ProfileError> {
    let builder = pprof::ProfilerGuardBuilder::default().frequency(SAMPLE_HZ).blocklist(&UNWIND_BLOCKLIST);
    builder.build().map_err(|e| match e {
        pprof::Error::Running => ProfileError::Busy,
        e => ProfileError::Start(e),
    })
}

/// The samples so far as gzipped profile.proto.
fn encode(sampler: &pprof::ProfilerGuard<'_>) -> Result<Vec<u8>, ProfileError> {
    let report = sampler.report().build().map_err(ProfileError::Report)?;
    let profile = report.pprof().map_err(ProfileError::Report)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&profile.encode_to_vec()).map_err(ProfileError::Compress)?;
    gz.finish().map_err(ProfileError::Compress)
}

/// The process's one CPU profile slot; released on drop.
struct Turn;

static RUNNING: AtomicBool = AtomicBool::new(false);

impl Turn {
    fn take() -> Option<Turn> {
        RUNNING.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| Turn)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

/// The profile length a `/debug/pprof/profile` query asks for.
pub fn profile_seconds(query: Option<&str>) -> Result<u64, String> {
    let given = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| match pair.split_once('=') {
            Some(("seconds", value)) => Some(value),
            None if pair == "seconds" => Some(""),
            _ => None,
        })
        .unwrap_or("");
    if given.is_empty() {
        return Ok(DEFAULT_SECONDS);
    }
    match given.parse::<u64>() {
        Ok(n) if (1..=MAX_SECONDS).contains(&n) => Ok(n),
        _ => Err(format!("seconds must be a whole number from 1 to {MAX_SECONDS}, got {given:?}")),
    }
}

async fn profile(uri: Uri) -> Response {
    let seconds = match profile_seconds(uri.query()) {
        Ok(n) => n,
        Err(e) => return go_error(StatusCode::BAD_REQUEST, &e),
    };
    match cpu_profile(Duration::from_secs(seconds)).await {
        Ok(body) => {
            let headers = [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"profile\""),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ];
            (headers, body).into_response()
        }
        Err(e @ ProfileError::Busy) => go_error(StatusCode::CONFLICT, &e.to_string()),
        Err(e) => go_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// What a path below `/debug/pprof/` other than `profile` answers.
fn not_served(path: &str) -> Response {
    let name = path.trim_start_matches("/debug/pprof/");
    match NOT_SERVED.iter().find(|(n, _)| *n == name) {
        Some((_, missing)) => go_error(
            StatusCode::NOT_FOUND,
            &format!("konnq is not a Go program: {missing}; use /debug/pprof/profile for a CPU profile"),
        ),
        None => go_error(StatusCode::NOT_FOUND, "Unknown profile"),
    }
}

/// An error as Go's `net/http/pprof` writes it; `go tool pprof` shows the
/// text of a response marked `X-Go-Pprof`.
fn go_error(status: StatusCode, text: &str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (HeaderName::from_static("x-go-pprof"), "1"),
    ];
    (status, headers, format!("{text}\n")).into_response()
}

/// The index page: what is served, and what is not.
fn index() -> String {
    let missing: Vec<&str> = NOT_SERVED.iter().map(|(name, _)| *name).collect();
    format!(
        "<html>\n<head>\n<title>/debug/pprof/</title>\n</head>\n<body>\n/debug/pprof/\n<br>\n\
         <p>Types of profiles available:</p>\n<table>\n<thead><td>Profile</td><td>Description</td></thead>\n\
         <tr><td><a href='profile'>profile</a></td><td>CPU profile of the whole process, sampled at {SAMPLE_HZ} Hz. \
         The seconds GET parameter sets its length (1 to {MAX_SECONDS}, default {DEFAULT_SECONDS}). \
         Read it with the go tool pprof command.</td></tr>\n</table>\n\
         <p>konnq is not a Go program: Go's {} answer 404 with the reason.</p>\n</body>\n</html>\n",
        missing.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_default_bounds_and_garbage() {
        assert_eq!(profile_seconds(None), Ok(30));
        assert_eq!(profile_seconds(Some("")), Ok(30));
        assert_eq!(profile_seconds(Some("seconds=")), Ok(30), "empty is unset, as Go reads it");
        assert_eq!(profile_seconds(Some("debug=1&seconds=5")), Ok(5));
        assert_eq!(profile_seconds(Some("seconds=1")), Ok(1));
        assert_eq!(profile_seconds(Some("seconds=300")), Ok(300));
        assert_eq!(profile_seconds(Some("seconds=7&seconds=9")), Ok(7), "the first value, as Go's FormValue");
        for bad in ["0", "301", "-1", "1.5", "ten", "99999999999999999999999"] {
            let err = profile_seconds(Some(&format!("seconds={bad}"))).unwrap_err();
            assert_eq!(err, format!("seconds must be a whole number from 1 to 300, got {bad:?}"));
        }
    }

    #[test]
    fn one_turn_at_a_time() {
        let first = Turn::take().expect("free");
        assert!(cpu_profile_running());
        assert!(Turn::take().is_none(), "taken");
        drop(first);
        assert!(!cpu_profile_running());
        assert!(Turn::take().is_some(), "free again");
    }

    #[test]
    fn go_only_paths_say_why() {
        for (name, missing) in NOT_SERVED {
            let r = not_served(&format!("/debug/pprof/{name}"));
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{name}");
            assert_eq!(r.headers()["x-go-pprof"], "1");
            assert!(!missing.is_empty() && index().contains(name), "{name}");
        }
        assert_eq!(not_served("/debug/pprof/nosuch").status(), StatusCode::NOT_FOUND);
    }
}
