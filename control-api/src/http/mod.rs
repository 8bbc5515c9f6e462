//! The HTTP API. Each resource module owns its routes; they are merged here into the two listeners'
//! routers: the API listener (enrollment, administration, CA bundle) and the device listener (mTLS).

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use sqlx::PgPool;

use edgemesh_core::policy::PolicyStore;

use crate::ca::CertificateAuthority;

pub mod admin;
pub mod audit;
pub mod device;
pub mod enroll;
pub mod error;
pub mod extract;
pub mod health;
pub mod limit;

pub use error::ApiError;

/// Bodies larger than this are refused with 413 before they are parsed.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub ca: Arc<CertificateAuthority>,
    /// SHA-256 of the admin token; the token itself is not kept.
    pub admin_token_sha256: [u8; 32],
    pub trust_domain: Arc<str>,
    pub cert_validity: time::Duration,
    pub renewal: device::RenewalRules,
    /// The policies; control-api evaluates the compliance rules on every health report.
    pub policies: Arc<PolicyStore>,
    pub health_limiter: Arc<limit::RateLimiter>,
    /// Refused enrolments per source address: beyond it, refusals are neither processed nor audited.
    pub enroll_refusals: Arc<limit::RateLimiter>,
    /// A device whose health is older than this is shown as stale.
    pub max_health_age: time::Duration,
    pub metrics: Arc<crate::metrics::Metrics>,
}

pub fn api_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/ca.pem", get(ca_pem))
        .merge(enroll::router())
        .nest("/api/v1/admin", admin::router(state.clone()))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

pub fn device_router(state: AppState) -> Router {
    Router::new()
        .merge(device::router())
        .merge(health::device_router())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match sqlx::query("SELECT 1").execute(&state.db).await {
        Ok(_) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok"})),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"status": "database unreachable"})),
            )
        }
    }
}

async fn ca_pem(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.ca.cert_pem().to_owned(),
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint")
}

/// A free-text field stored as given: 1 to `max` characters, no control characters.
pub fn bounded_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    let len = value.chars().count();
    if len == 0 || len > max || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{field} must be 1 to {max} characters without control characters"),
        ));
    }
    Ok(())
}
