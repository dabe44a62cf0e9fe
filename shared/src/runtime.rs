//! The tokio runtime a konnq process runs on.

/// A multi-thread runtime with `worker_threads` workers, or one per CPU
/// (tokio's default) when it is 0; I/O and timers enabled.
pub fn build(worker_threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if worker_threads > 0 {
        builder.worker_threads(usize::from(worker_threads));
    }
    builder.build()
}

/// What a konnq-server or konnq-agent process runs on, whichever
/// executable starts it: the memory trimmer
/// ([`crate::memory::start_trimmer`]) and a runtime from [`build`].
pub fn start_process(worker_threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let failed = |what: &str, e: std::io::Error| std::io::Error::new(e.kind(), format!("starting the {what}: {e}"));
    crate::memory::start_trimmer(crate::memory::TRIM_INTERVAL).map_err(|e| failed("memory trimmer", e))?;
    build(worker_threads).map_err(|e| failed("runtime", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_count_is_the_setting_or_one_per_cpu() {
        assert_eq!(build(1).unwrap().metrics().num_workers(), 1);
        assert_eq!(build(3).unwrap().metrics().num_workers(), 3);
        let per_cpu = match std::env::var("TOKIO_WORKER_THREADS").ok().and_then(|v| v.parse().ok()) {
            Some(n) => n,
            None => std::thread::available_parallelism().unwrap().get(),
        };
        assert_eq!(build(0).unwrap().metrics().num_workers(), per_cpu);
    }

    #[test]
    fn timers_and_io_work_on_one_worker() {
        let rt = build(1).unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (accepted, connected) = tokio::join!(listener.accept(), tokio::net::TcpStream::connect(addr));
            accepted.unwrap();
            connected.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        });
    }
}
