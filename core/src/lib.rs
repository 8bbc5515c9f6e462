//! Shared by the EdgeMesh binaries: typed identifiers, certificate facts, TLS set-up, the control API's
//! request and response bodies, the enrollment client and tracing set-up.

pub mod api;
pub mod cert;
pub mod client;
pub mod files;
pub mod id;
pub mod telemetry;
pub mod tls;
