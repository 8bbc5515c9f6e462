//! EdgeMesh control API: the CA, enrollment by CSR, the device mTLS endpoints, the admin API and the
//! operator console, with the audit partitions and the certificate expiry scan kept beside them.

pub mod audit;
pub mod ca;
pub mod chain;
pub mod config;
pub mod console;
pub mod csr;
pub mod db;
pub mod expiry;
pub mod http;
pub mod metrics;
pub mod server;
pub mod startup;

pub use config::Config;
pub use startup::Application;
