//! The packet relay: one thread per direction reads packets from one TUN device,
//! runs them through that direction's [`Impairment`], and writes each survivor into
//! the other TUN device at its release time. A thread sleeps in `ppoll(2)` on its
//! input device and its wake-up eventfd, with the next release time as timeout
//! (nanosecond resolution, timer slack lowered to 1 µs). The impairment's queue
//! and `limit` bound the memory a direction holds.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use crate::impair::{DirectionStats, Impairment};
use crate::settings::DirectionSettings;
use crate::tun;

/// Packets read per wake-up before the thread checks its releases again.
const READ_BATCH: usize = 64;

/// State shared between a direction's thread and the lab.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    stats: Mutex<DirectionStats>,
    pending: Mutex<Option<DirectionSettings>>,
    write_errors: AtomicU64,
    failure: Mutex<Option<String>>,
}

/// One running direction.
pub(crate) struct Direction {
    shared: Arc<Shared>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Direction {
    /// Starts relaying `input` → `output` through `imp`.
    pub(crate) fn start(
        name: &str,
        input: Arc<OwnedFd>,
        output: Arc<OwnedFd>,
        imp: Impairment<Vec<u8>>,
    ) -> io::Result<Direction> {
        let wake = Arc::new(eventfd()?);
        let shared = Arc::new(Shared::default());
        let (s, w) = (shared.clone(), wake.clone());
        let thread = thread::Builder::new().name(name.into()).spawn(move || {
            // SAFETY: prctl(PR_SET_TIMERSLACK) only affects this thread's timers.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
            if let Err(e) = run(&input, &output, &w, &s, imp) {
                tracing::error!(error = %e, "netlab relay stopped");
                *s.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        })?;
        Ok(Direction { shared, wake, thread: Some(thread) })
    }

    /// Counters so far, with TUN write failures.
    pub(crate) fn stats(&self) -> (DirectionStats, u64) {
        let stats = *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        (stats, self.shared.write_errors.load(Ordering::Relaxed))
    }

    /// Why the relay thread stopped on its own, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.shared.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Hands new settings to the thread (already validated by the caller).
    pub(crate) fn update(&self, settings: DirectionSettings) {
        *self.shared.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(settings);
        wake(&self.wake);
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        wake(&self.wake);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        self.stop();
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd(2) call; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn wake(fd: &OwnedFd) {
    // SAFETY: eventfd_write only writes an 8-byte counter to a valid descriptor.
    unsafe { libc::eventfd_write(fd.as_raw_fd(), 1) };
}

/// The thread's loop: release what is due, publish counters, sleep until the next
/// release or an incoming packet, read a batch. Ends on `stop` or a read error.
fn run(
    input: &OwnedFd,
    output: &OwnedFd,
    wake_fd: &OwnedFd,
    shared: &Shared,
    mut imp: Impairment<Vec<u8>>,
) -> io::Result<()> {
    let mut buf = vec![0u8; tun::MAX_PACKET];
    loop {
        let now = Instant::now();
        while let Some(packet) = imp.poll_release(now) {
            if tun::write_packet(output, &packet).is_err() {
                shared.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        *shared.stats.lock().unwrap_or_else(|p| p.into_inner()) = imp.stats();
        let (input_ready, woken) = wait(input, wake_fd, imp.poll_timeout())?;
        if woken {
            let mut counter = 0u64;
            // SAFETY: reads the 8-byte counter to reset it; the fd is non-blocking.
            unsafe { libc::eventfd_read(wake_fd.as_raw_fd(), &mut counter) };
            if shared.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            if let Some(settings) = shared.pending.lock().unwrap_or_else(|p| p.into_inner()).take() {
                imp.set_settings(settings).map_err(io::Error::other)?;
            }
        }
        if input_ready {
            for _ in 0..READ_BATCH {
                match tun::read_packet(input, &mut buf) {
                    Ok(n) => {
                        imp.handle_packet(Instant::now(), n, buf[..n].to_vec());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// Sleeps in ppoll until `input` or `wake` is readable or `deadline` passes.
fn wait(input: &OwnedFd, wake: &OwnedFd, deadline: Option<Instant>) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd { fd: input.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    let timeout = deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos() as libc::c_long }
    });
    let timeout_ptr = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds` and `timeout` outlive the call; no signal mask is passed.
    let n = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ptr, std::ptr::null()) };
    if n < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted { Ok((false, false)) } else { Err(err) };
    }
    let bad = libc::POLLERR | libc::POLLNVAL;
    if fds[0].revents & bad != 0 {
        return Err(io::Error::other("TUN device failed (POLLERR/POLLNVAL)"));
    }
    Ok((fds[0].revents & libc::POLLIN != 0, fds[1].revents & libc::POLLIN != 0))
}
