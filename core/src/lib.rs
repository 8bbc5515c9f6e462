//! Shared by the EdgeMesh binaries: typed identifiers, certificate facts, exit statuses, TLS set-up, the control API's
//! request and response bodies, the enrollment client, the policy engine (feature `policy`), tracing
//! set-up and the shutdown signal.

pub mod api;
pub mod cert;
pub mod client;
pub mod exit;
pub mod files;
pub mod id;
#[cfg(feature = "policy")]
pub mod policy;
pub mod release;
#[cfg(feature = "serve")]
pub mod serve;
pub mod telemetry;
pub mod tls;

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
