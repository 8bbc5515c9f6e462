//! EdgeMesh control API: the CA, enrollment by CSR, the device mTLS endpoints, the admin API and the
//! operator console, with the audit and health partitions and the certificate expiry scan kept beside them (once for
//! the fleet, by whichever replica takes the job's lock).

pub mod audit;
pub mod ca;
pub mod chain;
pub mod config;
pub mod console;
pub mod csr;
pub mod db;
pub mod health_writer;
pub mod http;
pub mod maintenance;
pub mod metrics;
pub mod server;
pub mod startup;

pub use config::Config;
pub use startup::Application;
