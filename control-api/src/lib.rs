//! EdgeMesh control API: the CA, enrollment by CSR, the device mTLS endpoints and administration.

pub mod ca;
pub mod config;
pub mod csr;
pub mod http;
pub mod server;
pub mod startup;

pub use config::Config;
pub use startup::Application;

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
