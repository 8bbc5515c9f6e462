//! End-to-end tests: the real `edgemesh-control-api`, `edgemesh-agent`, `edgemesh-ext-authz` and Envoy
//! binaries, a real PostgreSQL database per test, real TLS. Build the binaries first (`make test` does).

mod audit;
mod console;
mod ctl;
mod edge;
mod enforcement;
mod enrollment;
mod exits;
mod health;
mod helpers;
mod identity;
mod integrity;
mod listener;
mod observability;
mod postgres;
mod privileges;
mod proxy;
mod remote;
mod replay;
mod replicas;
mod shadow;
mod simulator;
mod update;
