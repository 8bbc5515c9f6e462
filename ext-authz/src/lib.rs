//! EdgeMesh's external authorization server for Envoy: device identity from the peer certificate, device
//! facts from a cache kept fresh by Postgres notifications, decisions by Rego policies in-process.

pub mod audit;
pub mod check;
pub mod config;
pub mod db;
pub mod directory;
pub mod grpc;
pub mod identity;
pub mod input;
pub mod memo;
pub mod metrics;
pub mod request;
pub mod startup;

pub use config::Config;
