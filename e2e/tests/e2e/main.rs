//! End-to-end tests: the real `edgemesh-control-api` and `edgemesh-agent` binaries, a real PostgreSQL
//! database per test, real TLS. Build the binaries first (`make test` does).

mod enrollment;
mod helpers;
