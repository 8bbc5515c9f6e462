//! The end-to-end test crate: the real binaries, Envoy, PostgreSQL and a browser, driven from
//! `tests/e2e/` (this library is empty; the crate exists for those tests and their dependencies).
