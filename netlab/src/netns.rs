//! Network namespaces: create and delete them with iproute2 (`ip netns`), enter one
//! from a dedicated thread with `setns(2)`, and clean up — on drop, on SIGINT or
//! SIGTERM once [`install_signal_cleanup`] ran, and after a crash with
//! [`cleanup_stale`].
//!
//! Namespace names are `{prefix}-{pid}-{n}{a|b}`: the pid of the creating process
//! lets [`cleanup_stale`] tell a crashed run's leftovers from a live run's lab.

use std::any::Any;
use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Output};
use std::sync::{mpsc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};

use crate::error::LabError;

/// Namespaces this process created and has not deleted yet.
static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Runs `ip ARGS…` and returns its stdout.
pub(crate) fn ip(args: &[&str]) -> Result<String, LabError> {
    let command = format!("ip {}", args.join(" "));
    let output: Output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| LabError::Command { command: command.clone(), detail: format!("cannot run ip: {e}") })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
        return Err(LabError::NeedsRoot);
    }
    Err(LabError::Command { command, detail: format!("{}: {stderr}", output.status) })
}

/// The names of all named network namespaces (`ip netns list`).
pub fn list() -> Result<Vec<String>, LabError> {
    let out = ip(&["netns", "list"])?;
    Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
}

/// Makes `cmd`'s child enter the namespace `ns` between fork and exec
/// (like `ip netns exec`, keeping the command's stdio, env and directory).
/// The command holds `ns` open until it is dropped.
pub fn enter_on_exec(cmd: &mut std::process::Command, ns: std::sync::Arc<OwnedFd>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child and only makes the
    // async-signal-safe setns(2) call on a descriptor the closure owns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

/// Creates namespace `name` and records it for clean-up.
pub(crate) fn add(name: &str) -> Result<(), LabError> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string());
    ip(&["netns", "add", name]).inspect_err(|_| forget(name))?;
    Ok(())
}

fn forget(name: &str) {
    LIVE.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
}

/// Opens the namespace's handle (`/run/netns/NAME`) for `setns`.
pub(crate) fn open(name: &str) -> Result<OwnedFd, LabError> {
    let path = format!("/run/netns/{name}");
    File::open(&path).map(OwnedFd::from).map_err(LabError::io(format!("open {path}")))
}

/// Moves the calling thread into the namespace behind `fd`.
pub(crate) fn enter(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor; the result is checked.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens a TCP socket (IPv4, non-blocking, close-on-exec, not yet connected)
/// in the namespace behind `ns`, from a short thread that enters it: the socket
/// stays in that namespace wherever it is used, so a caller in another
/// namespace can connect from there (e.g. `std::net::TcpStream::from` it, then
/// `tokio::net::TcpSocket::from_std_stream(..).connect(..)`).
pub fn tcp_socket_in(ns: &OwnedFd) -> io::Result<OwnedFd> {
    let fd = ns.try_clone()?;
    thread::Builder::new()
        .name("netlab-socket".into())
        .spawn(move || {
            enter(&fd)?;
            // SAFETY: plain socket(2); the result is checked before it is owned.
            let raw =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a new descriptor nothing else owns.
            Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
        })?
        .join()
        .map_err(|_| io::Error::other("socket thread panicked"))?
}

/// Kills every process inside namespace `name` (never this one), then deletes it.
pub(crate) fn remove(name: &str) -> Result<(), LabError> {
    let me = std::process::id() as i32;
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()).filter(|p| *p != me && *p > 1) {
            // SAFETY: plain kill(2) of a process found inside our own namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let result = ip(&["netns", "del", name]).map(|_| ());
    forget(name);
    result
}

/// Deletes the namespaces named `{prefix}-{pid}-…` whose creating process is gone
/// (leftovers of a crashed or killed run) and returns their names. Namespaces of
/// other live processes, and this process's live labs, are left alone.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>, LabError> {
    let mut removed = Vec::new();
    for name in list()? {
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        let ours = pid == std::process::id() as i32;
        if (ours && is_live(&name)) || (!ours && process_alive(pid)) {
            continue;
        }
        remove(&name)?;
        removed.push(name);
    }
    Ok(removed)
}

fn is_live(name: &str) -> bool {
    LIVE.lock().unwrap_or_else(|p| p.into_inner()).contains(name)
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

/// Deletes every namespace this process created and still has.
pub fn cleanup_all() {
    let names: Vec<String> = LIVE.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
    for name in names {
        if let Err(e) = remove(&name) {
            tracing::warn!(namespace = %name, error = %e, "lab clean-up failed");
        }
    }
}

/// On the first SIGINT or SIGTERM, deletes every lab namespace of this process and
/// exits with 130 or 143. Opt-in because it takes over those signals for the whole
/// process; calling it again does nothing. Runs on its own thread and runtime.
pub fn install_signal_cleanup() -> io::Result<()> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::sync_channel::<io::Result<()>>(1);
    thread::Builder::new().name("netlab-signals".into()).spawn(move || {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return drop(tx.send(Err(e))),
        };
        let code = rt.block_on(async {
            let (mut int, mut term) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
                (Ok(i), Ok(t)) => (i, t),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = tx.send(Err(e));
                    return None;
                }
            };
            let _ = tx.send(Ok(()));
            tokio::select! {
                _ = int.recv() => Some(130),
                _ = term.recv() => Some(143),
            }
        });
        if let Some(code) = code {
            cleanup_all();
            std::process::exit(code);
        }
    })?;
    rx.recv().map_err(|_| io::Error::other("signal thread died"))??;
    let _ = INSTALLED.set(());
    Ok(())
}

/// A thread running inside a lab namespace (see `Lab::spawn_in`).
#[derive(Debug)]
pub struct NsThread<T> {
    handle: JoinHandle<Option<T>>,
}

impl<T> NsThread<T> {
    /// Waits for the thread; `Err` carries its panic.
    pub fn join(self) -> thread::Result<T> {
        self.handle.join().and_then(|v| v.ok_or_else(|| Box::new("namespace setup failed") as Box<dyn Any + Send>))
    }

    /// Whether the thread has finished.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// Spawns a thread that enters the namespace behind `ns`, runs `setup` there and,
/// once both succeeded (reported before this returns), runs `body` with its result.
pub(crate) fn spawn_entered<R, T>(
    ns: &OwnedFd,
    name: String,
    setup: impl FnOnce() -> io::Result<R> + Send + 'static,
    body: impl FnOnce(R) -> T + Send + 'static,
) -> Result<NsThread<T>, LabError>
where
    T: Send + 'static,
{
    let fd = ns.try_clone().map_err(LabError::io("dup namespace handle"))?;
    let (tx, rx) = mpsc::sync_channel::<io::Result<()>>(1);
    let handle = thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let ready = enter(&fd).and_then(|()| setup());
            drop(fd);
            match ready {
                Ok(r) => {
                    let _ = tx.send(Ok(()));
                    Some(body(r))
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    None
                }
            }
        })
        .map_err(LabError::io(format!("spawn thread {name}")))?;
    match rx.recv() {
        Ok(Ok(())) => Ok(NsThread { handle }),
        Ok(Err(e)) => Err(LabError::Io { context: format!("thread {name}: enter namespace and set up"), source: e }),
        Err(_) => Err(LabError::Io { context: format!("thread {name}"), source: io::Error::other("died") }),
    }
}
