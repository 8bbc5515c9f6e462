//! `/api/v1/admin/*`: users, enrollment tokens, devices and revocation, for holders of the admin token.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use base64::Engine;
use edgemesh_core::api::{ErrorBody, Role};
use edgemesh_core::id::{DeviceId, UserId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::unique_violation;
use super::extract::{Json, Path, Peer, Query, bearer};
use super::{ApiError, AppState, bounded_text};
use crate::audit::{Event, EventType};
use crate::db::certificates::{self, Certificate};
use crate::db::devices::{self, Device};
use crate::db::tokens::{self, TokenRecord};
use crate::db::users::{self, User};

const MAX_TOKEN_TTL_SECS: i64 = 30 * 24 * 3600;
const MAX_TOKEN_USES: i32 = 100_000;
const MAX_PAGE: i64 = 1000;

/// The refusals of a request without the admin token, for the document.
pub const ADMIN_401: &str = "`missing_token`, `invalid_token`.";

pub fn router(state: AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_user, list_users))
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
        .routes(routes!(list_devices))
        .routes(routes!(fleet_summary))
        .routes(routes!(get_device))
        .routes(routes!(revoke_device))
        .routes(routes!(transfer_device))
        .routes(routes!(revoke_certificate))
        .merge(super::health::admin_router())
        .merge(super::audit::admin_router())
        .merge(super::releases::admin_router())
        .route_layer(middleware::from_fn_with_state(state, require_admin))
}

async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer(request.headers()).ok_or_else(|| {
        ApiError::unauthorized(
            "missing_token",
            "send the admin token as 'Authorization: Bearer <token>'",
        )
    })?;
    // Comparing digests keeps the comparison constant-time whatever the presented token's length.
    let presented = Sha256::digest(token.as_bytes());
    if let Err(retry_after) = state
        .admin_per_token
        .take(&hex::encode(presented), std::time::Instant::now())
    {
        return Err(ApiError::TooManyRequests {
            retry_after,
            detail: format!("too many admin requests with this token; retry in {retry_after} s"),
        });
    }
    if !bool::from(presented[..].ct_eq(&state.admin_token_sha256)) {
        return Err(ApiError::unauthorized(
            "invalid_token",
            "the admin token is not valid",
        ));
    }
    Ok(next.run(request).await)
}

// ---- users

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    id: UserId,
    /// `name@domain`: 3 to 254 bytes, no whitespace or control characters.
    #[schema(
        min_length = 3,
        max_length = 254,
        pattern = r"^[^\s\x00-\x1f\x7f]+@[^\s\x00-\x1f\x7f@]+$"
    )]
    email: String,
    role: Role,
}

/// Creates a user, who can then own devices.
#[utoipa::path(post, path = "/users", tag = "admin",
    security(("admin_token" = [])),
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created.", body = User),
        (status = 400, description = "`invalid_body`, `invalid_email`.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 409, description = "`user_exists`, `email_taken`.", body = ErrorBody),
        (status = 413, description = "`body_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
    ))]
async fn create_user(
    State(state): State<AppState>,
    Peer(peer): Peer,
    Json(body): Json<CreateUser>,
) -> Result<(StatusCode, axum::Json<User>), ApiError> {
    let email = body.email.as_str();
    if !valid_email(email) {
        return Err(ApiError::bad_request(
            "invalid_email",
            "email must look like name@domain",
        ));
    }
    let mut tx = state.db.begin().await?;
    let user = users::insert(&mut *tx, body.id.as_str(), email, body.role.as_str())
        .await
        .map_err(|e| match unique_violation(&e) {
            Some("users_pkey") => {
                ApiError::conflict("user_exists", format!("user {} already exists", body.id))
            }
            Some("users_email_key") => {
                ApiError::conflict("email_taken", "another user has this email")
            }
            _ => e.into(),
        })?;
    Event::new(EventType::User, "created")
        .user(&user.id)
        .role(&user.role)
        .peer(peer)
        .details(serde_json::json!({ "email": user.email }))
        .record(&mut tx)
        .await?;
    tx.commit().await?;
    tracing::info!(user = %user.id, role = %user.role, "user created");
    Ok((StatusCode::CREATED, axum::Json(user)))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UserList {
    pub(crate) users: Vec<User>,
}

/// `name@domain`: 3 to 254 bytes, something on each side of the last `@`, no whitespace or control
/// characters (the schema's pattern says the same).
fn valid_email(email: &str) -> bool {
    (3..=254).contains(&email.len())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email
            .rsplit_once('@')
            .is_some_and(|(name, domain)| !name.is_empty() && !domain.is_empty())
}

/// Every user, by id.
#[utoipa::path(get, path = "/users", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The users.", body = UserList),
        (status = 401, description = ADMIN_401, body = ErrorBody),
    ))]
pub(crate) async fn list_users(
    State(state): State<AppState>,
) -> Result<axum::Json<UserList>, ApiError> {
    let users = users::all(&state.db).await?;
    Ok(axum::Json(UserList { users }))
}

// ---- enrollment tokens

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateToken {
    /// The user whose devices it enrolls.
    pub(crate) owner: UserId,
    /// 60 seconds to 30 days.
    #[schema(minimum = 60, maximum = 2592000)]
    pub(crate) ttl_seconds: i64,
    #[schema(minimum = 1, maximum = 100000)]
    pub(crate) max_uses: i32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedToken {
    pub(crate) id: Uuid,
    /// Shown once: only its hash is stored.
    pub(crate) token: String,
    pub(crate) owner: String,
    pub(crate) ca_fingerprint: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) expires_at: OffsetDateTime,
    pub(crate) max_uses: i32,
}

/// Creates an enrollment token, shown once in the answer (only its hash is stored).
#[utoipa::path(post, path = "/tokens", tag = "admin",
    security(("admin_token" = [])),
    request_body = CreateToken,
    responses(
        (status = 201, description = "Created: the token, and the CA fingerprint a device pins.", body = CreatedToken),
        (status = 400, description = "`invalid_body`, `invalid_ttl`, `invalid_max_uses`, `unknown_owner`.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 413, description = "`body_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
    ))]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    Peer(peer): Peer,
    Json(body): Json<CreateToken>,
) -> Result<(StatusCode, axum::Json<CreatedToken>), ApiError> {
    if !(60..=MAX_TOKEN_TTL_SECS).contains(&body.ttl_seconds) {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            format!("ttl_seconds must be between 60 and {MAX_TOKEN_TTL_SECS}"),
        ));
    }
    if !(1..=MAX_TOKEN_USES).contains(&body.max_uses) {
        return Err(ApiError::bad_request(
            "invalid_max_uses",
            format!("max_uses must be between 1 and {MAX_TOKEN_USES}"),
        ));
    }
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!(
        "emt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let id = Uuid::new_v4();
    let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(body.ttl_seconds);
    let mut tx = state.db.begin().await?;
    let token_sha256 = Sha256::digest(token.as_bytes());
    let created = tokens::insert(
        &mut *tx,
        id,
        &token_sha256,
        body.owner.as_str(),
        expires_at,
        body.max_uses,
    )
    .await?;
    if !created {
        return Err(ApiError::bad_request(
            "unknown_owner",
            format!("no user {}", body.owner),
        ));
    }
    Event::new(EventType::Token, "created")
        .user(body.owner.as_str())
        .peer(peer)
        .details(serde_json::json!({
            "token_id": id,
            "max_uses": body.max_uses,
            "expires_at": expires_at.format(&time::format_description::well_known::Rfc3339).ok(),
        }))
        .record(&mut tx)
        .await?;
    tx.commit().await?;
    tracing::info!(token_id = %id, owner = %body.owner, max_uses = body.max_uses, "enrollment token created");
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedToken {
            id,
            token,
            owner: body.owner.to_string(),
            ca_fingerprint: state.ca.fingerprint().to_owned(),
            expires_at,
            max_uses: body.max_uses,
        }),
    ))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TokenList {
    pub(crate) tokens: Vec<TokenRecord>,
}

/// Every enrollment token, newest first.
#[utoipa::path(get, path = "/tokens", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tokens.", body = TokenList),
        (status = 401, description = ADMIN_401, body = ErrorBody),
    ))]
pub(crate) async fn list_tokens(
    State(state): State<AppState>,
) -> Result<axum::Json<TokenList>, ApiError> {
    let tokens = tokens::all(&state.db).await?;
    Ok(axum::Json(TokenList { tokens }))
}

/// Revokes an enrollment token (again: no change).
#[utoipa::path(post, path = "/tokens/{id}/revoke", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The token's id.")),
    responses(
        (status = 200, description = "Revoked.", body = TokenRecord),
        (status = 400, description = "`invalid_path`.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 404, description = "`unknown_token`.", body = ErrorBody),
    ))]
async fn revoke_token(
    State(state): State<AppState>,
    Peer(peer): Peer,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<TokenRecord>, ApiError> {
    let mut tx = state.db.begin().await?;
    let token = tokens::revoke(&mut *tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_token", format!("no enrollment token {id}")))?;
    Event::new(EventType::Token, "revoked")
        .user(&token.owner)
        .peer(peer)
        .details(serde_json::json!({ "token_id": id }))
        .record(&mut tx)
        .await?;
    tx.commit().await?;
    tracing::info!(token_id = %id, "enrollment token revoked");
    Ok(axum::Json(token))
}

// ---- devices and certificates

/// A device's health verdict, as listed: `stale` is a report older than the maximum health age.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verdict {
    Unknown,
    Healthy,
    Unhealthy,
    Stale,
}

#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DeviceStatus {
    Active,
    Revoked,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeviceListQuery {
    #[param(inline)]
    pub(crate) status: Option<DeviceStatus>,
    /// The health verdict.
    #[param(inline)]
    pub(crate) health: Option<Verdict>,
    pub(crate) owner: Option<UserId>,
    /// Only the devices whose id starts with this.
    pub(crate) id_prefix: Option<DeviceId>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<i64>,
    /// Keyset cursor: the previous page's `next_cursor` (the audit's convention).
    pub(crate) cursor: Option<DeviceId>,
    /// The earlier name of `cursor`, still accepted.
    pub(crate) after: Option<DeviceId>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DevicePage {
    pub(crate) devices: Vec<Device>,
    /// The `cursor` of the next page; `null` on the last.
    pub(crate) next_cursor: Option<String>,
    /// The earlier name of `next_cursor`, still sent.
    #[schema(deprecated)]
    pub(crate) next_after: Option<String>,
}

/// The devices, by id, a page at a time.
#[utoipa::path(get, path = "/devices", tag = "admin",
    security(("admin_token" = [])),
    params(DeviceListQuery),
    responses(
        (status = 200, description = "A page of devices.", body = DevicePage),
        (status = 400, description = "`invalid_query`, `invalid_limit`, `invalid_cursor`.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
    ))]
pub(crate) async fn list_devices(
    State(state): State<AppState>,
    Query(query): Query<DeviceListQuery>,
) -> Result<axum::Json<DevicePage>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let cursor = match (query.cursor, query.after) {
        (Some(cursor), Some(after)) if cursor != after => {
            return Err(ApiError::bad_request(
                "invalid_cursor",
                "cursor and after (its earlier name) differ; give one",
            ));
        }
        (cursor, after) => cursor.or(after),
    };
    let status = query.status.map(|s| match s {
        DeviceStatus::Active => "active",
        DeviceStatus::Revoked => "revoked",
    });
    // A verdict other than `stale` is the stored one within the maximum health age; `unknown` is
    // never stale (no report).
    let (verdict, stale) = match query.health {
        None => (None, None),
        Some(Verdict::Stale) => (None, Some(true)),
        Some(Verdict::Unknown) => (Some("unknown"), None),
        Some(Verdict::Healthy) => (Some("healthy"), Some(false)),
        Some(Verdict::Unhealthy) => (Some("unhealthy"), Some(false)),
    };
    let oldest_fresh = OffsetDateTime::now_utc() - state.max_health_age;
    let filter = devices::Filter {
        status,
        owner: query.owner.as_ref().map(UserId::as_str),
        verdict,
        stale: stale.map(|stale| (stale, oldest_fresh)),
        id_prefix: query.id_prefix.as_ref().map(DeviceId::as_str),
        after: cursor.as_ref().map(DeviceId::as_str),
        limit,
        ..devices::Filter::default()
    };
    let devices = devices::list(&state.db, &filter).await?;
    let now = OffsetDateTime::now_utc();
    let devices: Vec<Device> = devices
        .into_iter()
        .map(|d| d.with_staleness(now, state.max_health_age))
        .collect();
    let next_cursor = (devices.len() as i64 == limit)
        .then(|| devices.last().map(|d| d.id.clone()))
        .flatten();
    Ok(axum::Json(DevicePage {
        devices,
        next_after: next_cursor.clone(),
        next_cursor,
    }))
}

/// The fleet in numbers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct FleetSummary {
    pub(crate) devices: i64,
    pub(crate) active: i64,
    pub(crate) revoked: i64,
    /// Active devices by health verdict.
    pub(crate) verdicts: VerdictCounts,
    /// Active devices whose certificate in force expires within the warning window (the expiry
    /// scan's, `EDGEMESH_CERT_EXPIRY_WARNING_DAYS`), soonest first, at most 20.
    pub(crate) certificates_expiring: i64,
    pub(crate) expiring_devices: Vec<String>,
    /// The warning window, in days.
    pub(crate) expiry_warning_days: i64,
}

/// Active devices by health verdict (`stale`: no report within the maximum health age).
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub(crate) struct VerdictCounts {
    pub(crate) healthy: i64,
    pub(crate) unhealthy: i64,
    pub(crate) stale: i64,
    pub(crate) unknown: i64,
}

/// How many devices there are, by status and by health verdict, and which certificates expire soon.
#[utoipa::path(get, path = "/fleet", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The counts.", body = FleetSummary),
        (status = 401, description = ADMIN_401, body = ErrorBody),
    ))]
pub(crate) async fn fleet_summary(
    State(state): State<AppState>,
) -> Result<axum::Json<FleetSummary>, ApiError> {
    let oldest_fresh = OffsetDateTime::now_utc() - state.max_health_age;
    let counts = devices::count_by_verdict(&state.db, oldest_fresh).await?;
    let (expiring, expiring_devices) =
        certificates::expiring(&state.db, state.expiry_warning, 20).await?;
    let count = |status: &str| -> i64 {
        counts
            .iter()
            .filter(|c| c.status == status)
            .map(|c| c.devices)
            .sum()
    };
    let mut verdicts = VerdictCounts::default();
    for c in &counts {
        let count = match (c.status.as_str(), c.verdict.as_str()) {
            ("active", "healthy") => &mut verdicts.healthy,
            ("active", "unhealthy") => &mut verdicts.unhealthy,
            ("active", "stale") => &mut verdicts.stale,
            ("active", _) => &mut verdicts.unknown,
            _ => continue,
        };
        *count += c.devices;
    }
    Ok(axum::Json(FleetSummary {
        devices: counts.iter().map(|c| c.devices).sum(),
        active: count("active"),
        revoked: count("revoked"),
        verdicts,
        certificates_expiring: expiring,
        expiring_devices,
        expiry_warning_days: state.expiry_warning.whole_days(),
    }))
}

/// A device with its certificates, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DeviceDetail {
    #[serde(flatten)]
    pub(crate) device: Device,
    pub(crate) certificates: Vec<Certificate>,
}

async fn device_detail(state: &AppState, id: &DeviceId) -> Result<DeviceDetail, ApiError> {
    let device = devices::find(&state.db, id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_device", format!("no device {id}")))?
        .with_staleness(OffsetDateTime::now_utc(), state.max_health_age);
    let certificates = certificates::of_device(&state.db, id.as_str()).await?;
    Ok(DeviceDetail {
        device,
        certificates,
    })
}

/// A device, its health verdict and its certificates.
#[utoipa::path(get, path = "/devices/{id}", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = DeviceId, Path, description = "The device.")),
    responses(
        (status = 200, description = "The device.", body = DeviceDetail),
        (status = 400, description = "`invalid_path`.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 404, description = "`unknown_device`.", body = ErrorBody),
    ))]
pub(crate) async fn get_device(
    State(state): State<AppState>,
    Path(id): Path<DeviceId>,
) -> Result<axum::Json<DeviceDetail>, ApiError> {
    Ok(axum::Json(device_detail(&state, &id).await?))
}

/// An optional body: without one, the reason is "revoked by administrator".
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    /// 1 to 256 characters without control characters.
    #[schema(min_length = 1, max_length = 256)]
    reason: Option<String>,
}

/// The revocation reason from an optional JSON body `{ "reason": … }`.
fn revocation_reason(body: &Bytes) -> Result<String, ApiError> {
    let request: RevokeRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RevokeRequest::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?
    };
    let reason = request
        .reason
        .unwrap_or_else(|| "revoked by administrator".to_owned());
    bounded_text("reason", &reason, 256)?;
    Ok(reason)
}

/// Revokes the device and every certificate it holds, in one transaction (again: no change).
#[utoipa::path(post, path = "/devices/{id}/revoke", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = DeviceId, Path, description = "The device.")),
    request_body(content = Option<RevokeRequest>, content_type = "application/json", description = "Optional."),
    responses(
        (status = 200, description = "Revoked: the device now.", body = DeviceDetail),
        (status = 400, description = "`invalid_path`, `invalid_body`, `invalid_field` (the reason).", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 404, description = "`unknown_device`.", body = ErrorBody),
        (status = 413, description = "`body_too_large`.", body = ErrorBody),
    ))]
pub(crate) async fn revoke_device(
    State(state): State<AppState>,
    Peer(peer): Peer,
    Path(id): Path<DeviceId>,
    body: Bytes,
) -> Result<axum::Json<DeviceDetail>, ApiError> {
    let reason = revocation_reason(&body)?;
    let mut tx = state.db.begin().await?;
    if !devices::revoke(&mut *tx, id.as_str()).await? {
        return Err(ApiError::not_found(
            "unknown_device",
            format!("no device {id}"),
        ));
    }
    // Retired certificates still in their overlap are revoked now, too.
    let revoked = certificates::revoke_of_device(&mut *tx, id.as_str(), &reason).await?;
    Event::new(EventType::Revocation, "revoked")
        .device(id.as_str())
        .peer(peer)
        .reasons(vec![reason.clone()])
        .details(serde_json::json!({ "scope": "device", "certificates_revoked": revoked }))
        .record(&mut tx)
        .await?;
    tx.commit().await?;
    tracing::info!(device = %id, certificates = revoked, "device revoked");
    Ok(axum::Json(device_detail(&state, &id).await?))
}

/// Revokes a certificate and every certificate renewed from it, at once (a retired one in its overlap
/// included): a key stolen before a renewal cannot outlive the revocation of the certificate stolen.
#[utoipa::path(post, path = "/certificates/{serial}/revoke", tag = "admin",
    security(("admin_token" = [])),
    params(("serial" = String, Path, description = "The certificate's serial, hexadecimal (any case).", max_length = 64)),
    request_body(content = Option<RevokeRequest>, content_type = "application/json", description = "Optional."),
    responses(
        (status = 200, description = "Revoked: the certificate now.", body = Certificate),
        (status = 400, description = "`invalid_path`, `invalid_body`, `invalid_field` (the reason).", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 404, description = "`unknown_certificate`.", body = ErrorBody),
        (status = 413, description = "`body_too_large`.", body = ErrorBody),
    ))]
pub(crate) async fn revoke_certificate(
    State(state): State<AppState>,
    Peer(peer): Peer,
    Path(serial): Path<String>,
    body: Bytes,
) -> Result<axum::Json<Certificate>, ApiError> {
    let reason = revocation_reason(&body)?;
    let serial = serial.to_ascii_lowercase();
    let mut tx = state.db.begin().await?;
    // The row lock first: a renewal of this certificate in flight has then either committed (and its
    // successor is found below, in a statement that sees it) or waits and finds it revoked.
    let Some(device_id) = certificates::lock_device(&mut *tx, &serial).await? else {
        return Err(ApiError::not_found(
            "unknown_certificate",
            format!("no certificate with serial {serial}"),
        ));
    };
    let lineage = certificates::revoke_lineage(&mut *tx, &serial, &reason).await?;
    let descendants: Vec<String> = lineage.into_iter().filter(|s| *s != serial).collect();
    Event::new(EventType::Revocation, "revoked")
        .device(&device_id)
        .serial(&serial)
        .peer(peer)
        .reasons(vec![reason.clone()])
        .details(serde_json::json!({ "scope": "certificate", "descendants_revoked": descendants }))
        .record(&mut tx)
        .await?;
    let certificate = certificates::find(&mut *tx, &serial)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    tx.commit().await?;
    tracing::info!(%serial, descendants = descendants.len(), "certificate revoked");
    Ok(axum::Json(certificate))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TransferRequest {
    owner: UserId,
}

/// Gives a revoked device's id to another owner, whose token may then enroll it. Audited: upstreams
/// key data on device ids, so an id changes hands only by an explicit act.
#[utoipa::path(post, path = "/devices/{id}/transfer", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = DeviceId, Path, description = "The device.")),
    request_body = TransferRequest,
    responses(
        (status = 200, description = "Transferred: the device now.", body = DeviceDetail),
        (status = 400, description = "`invalid_path`, `invalid_body`, `unknown_owner`.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 404, description = "`unknown_device`.", body = ErrorBody),
        (status = 409, description = "`device_active`: revoke it first.", body = ErrorBody),
        (status = 413, description = "`body_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
    ))]
async fn transfer_device(
    State(state): State<AppState>,
    Peer(peer): Peer,
    Path(id): Path<DeviceId>,
    Json(request): Json<TransferRequest>,
) -> Result<axum::Json<DeviceDetail>, ApiError> {
    let mut tx = state.db.begin().await?;
    let Some(devices::Holder {
        status,
        owner: previous,
    }) = devices::lock(&mut *tx, id.as_str()).await?
    else {
        return Err(ApiError::not_found(
            "unknown_device",
            format!("no device {id}"),
        ));
    };
    if status != "revoked" {
        return Err(ApiError::conflict(
            "device_active",
            format!("device {id} is active; revoke it before transferring it"),
        ));
    }
    if !users::exists(&mut *tx, request.owner.as_str()).await? {
        return Err(ApiError::bad_request(
            "unknown_owner",
            format!("no user {}", request.owner),
        ));
    }
    devices::transfer(&mut *tx, id.as_str(), request.owner.as_str()).await?;
    Event::new(EventType::Enrollment, "transferred")
        .device(id.as_str())
        .user(request.owner.as_str())
        .peer(peer)
        .details(serde_json::json!({ "previous_owner": previous }))
        .record(&mut tx)
        .await?;
    tx.commit().await?;
    tracing::info!(device = %id, owner = %request.owner, "device transferred");
    Ok(axum::Json(device_detail(&state, &id).await?))
}
