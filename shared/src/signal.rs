//! Process signals for the binaries.

use std::future::Future;

/// Resolves on SIGTERM or SIGINT: the start of a graceful shutdown. The
/// handlers are installed by this call (inside a runtime), not when the
/// future is first polled: a signal that arrives while the process is
/// still starting is kept for it, instead of killing the process with no
/// cleanup.
pub fn shutdown() -> impl Future<Output = ()> + Send {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                one.recv().await;
            }
            (Err(e), Err(_)) => {
                tracing::error!("cannot install the SIGTERM and SIGINT handlers: {e}");
                std::future::pending::<()>().await;
            }
        }
        tracing::info!("signal received: shutting down");
    }
}
