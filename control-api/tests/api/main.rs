//! Integration tests of the control API: the real HTTPS listeners on port 0, a fresh PostgreSQL
//! database per test (`#[sqlx::test]`), real certificates.

mod admin;
mod audit;
mod console;
mod enroll;
mod fleet;
mod health;
mod helpers;
mod listeners;
mod openapi;
mod rate_limits;
mod renew;
