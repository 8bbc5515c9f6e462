//! The accept loop both services serve their listeners with: every connection accepted (with
//! `TCP_NODELAY`: their answers are small and must not wait for Nagle's algorithm) until `shutdown`
//! completes, then a drain of the connections still open, bounded in time.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

/// Accepts on `listener` until `shutdown` completes, handing each connection to `connection` with the
/// drain it must register with (`GracefulShutdown::watch` or `watcher`); then stops accepting and
/// waits at most `drain` for the registered connections to finish.
pub async fn accept_until(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    mut connection: impl FnMut(TcpStream, SocketAddr, &GracefulShutdown),
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "failed to set TCP_NODELAY");
        }
        connection(stream, peer, &graceful);
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain limit; closing them");
    }
}

/// The local address a listener is bound to, for logs and tests that bind port 0.
pub fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}
