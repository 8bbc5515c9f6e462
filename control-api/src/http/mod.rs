//! The HTTP API. Each resource module owns its routes; they are merged here into the two listeners'
//! routers: the API listener (enrollment, administration, CA bundle) and the device listener (mTLS).

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
pub mod openapi;
pub mod releases;

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
    pub trust_domain: Arc<edgemesh_core::cert::TrustDomain>,
    pub cert_validity: time::Duration,
    pub renewal: device::RenewalRules,
    /// The policies; control-api evaluates the compliance rules on every health report.
    pub policies: Arc<PolicyStore>,
    pub health_limiter: Arc<limit::RateLimiter>,
    /// Stores accepted health reports, in batches.
    pub health_writer: crate::health_writer::HealthWriter,
    /// Refused enrolments per source address: beyond it, refusals are neither processed nor audited.
    pub enroll_refusals: Arc<limit::RateLimiter>,
    /// Enrolment requests per source address, and per token (by its SHA-256).
    pub enroll_per_address: Arc<limit::RateLimiter>,
    pub enroll_per_token: Arc<limit::RateLimiter>,
    /// Admin API requests per presented token (by its SHA-256).
    pub admin_per_token: Arc<limit::RateLimiter>,
    /// Failed console sign-ins per source address.
    pub console_sign_in_refusals: Arc<limit::RateLimiter>,
    /// Certificates expiring within this are warned of (the expiry scan, the fleet page).
    pub expiry_warning: time::Duration,
    /// How long a console session lasts.
    pub console_session_lifetime: time::Duration,
    /// A device whose health is older than this is shown as stale.
    pub max_health_age: time::Duration,
    pub metrics: Arc<crate::metrics::Metrics>,
}

// Routes are added only with `routes!`, which takes each handler's path and method from its
// `#[utoipa::path]`, so the document describes every route (`tests/api/openapi.rs` holds to it).

/// The API listener's routes.
fn api_routes(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(ca_pem))
        .merge(enroll::router())
        .nest("/api/v1/admin", admin::router(state.clone()))
}

/// The device listener's routes.
fn device_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(device::router())
        .merge(health::device_router())
        .merge(releases::device_router())
}

/// The API listener's routes, with `beside` (the console's pages) served on the same listener.
pub fn api_router(state: AppState, beside: Router<AppState>) -> Router {
    let (api, mut api_doc) = api_routes(&state).split_for_parts();
    let (_, device_doc) = device_routes().split_for_parts();
    let (meta, meta_doc) = openapi::routes().split_for_parts();
    api_doc.merge(meta_doc);
    let published = openapi::Published::new(&openapi::document(api_doc, device_doc));
    api.merge(beside)
        .with_state(state)
        .merge(meta.with_state(Arc::new(published)))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

pub fn device_router(state: AppState) -> Router {
    let (device, _) = device_routes().split_for_parts();
    device
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Liveness {
    /// `ok`, or `database unreachable`.
    status: &'static str,
    /// The control API's version.
    version: &'static str,
    /// PostgreSQL's version (`server_version`), when it answers.
    database_version: Option<String>,
}

/// Whether the control API is up and reaches its database, and their versions.
#[utoipa::path(get, path = "/healthz", tag = "meta", responses(
    (status = 200, description = "Up, and the database answers.", body = Liveness),
    (status = 503, description = "Up, but the database does not answer.", body = Liveness),
))]
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let version = env!("CARGO_PKG_VERSION");
    match crate::db::server_version(&state.db).await {
        Ok(database_version) => (
            StatusCode::OK,
            axum::Json(Liveness {
                status: "ok",
                version,
                database_version: Some(database_version),
            }),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(Liveness {
                    status: "database unreachable",
                    version,
                    database_version: None,
                }),
            )
        }
    }
}

/// The CA certificate devices and clients trust (verify its fingerprint out of band).
#[utoipa::path(get, path = "/api/v1/ca.pem", tag = "meta", responses(
    (status = 200, description = "The CA certificate, PEM.", content_type = "application/x-pem-file", body = String),
))]
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
