//! `POST /api/v1/enroll`: a device presents a one-time enrollment token and a CSR for a key it generated;
//! it gets a certificate for its identity. The token's use, the device and the certificate are recorded
//! in one transaction, so a refusal writes nothing.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use edgemesh_core::api::{EnrollRequest, ErrorBody, IssuedCertificate};
use edgemesh_core::id::DeviceId;
use sha2::{Digest, Sha256};

use super::extract::{Json, Peer, bearer};
use super::{ApiError, AppState, bounded_text};
use crate::audit::{Event, EventType};
use crate::csr::Csr;
use crate::db::tokens::{self, Standing};
use crate::db::{certificates, devices};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(enroll))
}

/// Enrolls a device: its first certificate, for a key it generated, with an enrollment token.
///
/// The token is checked before the CSR is parsed. A revoked device id enrolls again only with a token
/// of its owner (or after an admin transfers it), and starts as never reported. An address whose
/// enrollments keep being refused is answered 429 before anything is looked up.
#[utoipa::path(post, path = "/api/v1/enroll", tag = "enrollment",
    security(("enrollment_token" = [])),
    request_body = EnrollRequest,
    responses(
        (status = 201, description = "Enrolled: the device's certificate and the CA's.", body = IssuedCertificate),
        (status = 400, description = "`invalid_body`, `invalid_device_id`, `invalid_field` (device_type, os, os_version), `invalid_csr`.", body = ErrorBody),
        (status = 401, description = "`missing_token`, `invalid_token` (not known).", body = ErrorBody),
        (status = 403, description = "`token_revoked`, `token_expired`, `token_used_up`.", body = ErrorBody),
        (status = 409, description = "`device_exists` (enrolled and active), `device_owned` (revoked, another owner's).", body = ErrorBody),
        (status = 413, description = "`body_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many enrollments from this address or with this token (default: a burst of 100, then 10 per second, each), or too many refused ones from this address (a burst of 20, then one per 10 s).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
// The span names the device only once its id is valid: the body's text is the client's.
#[tracing::instrument(skip_all, fields(device_id = tracing::field::Empty))]
async fn enroll(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Json(body): Json<EnrollRequest>,
) -> Result<(StatusCode, axum::Json<IssuedCertificate>), ApiError> {
    let requested = DeviceId::parse(&body.device_id).ok();
    if let Some(device) = &requested {
        tracing::Span::current().record("device_id", device.as_str());
    }
    // An address whose enrolments keep being refused (a token being guessed, a broken script) is
    // answered 429 before anything is looked up, and not audited one by one: refusals cannot grow
    // the audit log without bound.
    let source = peer.map(|p| p.ip().to_string()).unwrap_or_default();
    let now = std::time::Instant::now();
    // Every enrolment, refused or not, also counts against its address and its token: a leaked
    // multi-use token or a runaway script cannot keep the CA signing.
    let token_key = bearer(&headers).map(|t| hex::encode(Sha256::digest(t.as_bytes())));
    let limited = state
        .enroll_refusals
        .exhausted(&source, now)
        .map(|wait| (wait, "too many refused enrollments from this address"))
        .or_else(|| {
            let per_address = state.enroll_per_address.take(&source, now).err();
            per_address
                .or_else(|| {
                    let key = token_key.as_deref()?;
                    state.enroll_per_token.take(key, now).err()
                })
                .map(|wait| {
                    (
                        wait,
                        "too many enrollments from this address or with this token",
                    )
                })
        });
    if let Some((retry_after, why)) = limited {
        state
            .metrics
            .enrollments
            .with_label_values(&["rate_limited"])
            .inc();
        return Err(ApiError::TooManyRequests {
            retry_after,
            detail: format!("{why}; try again later"),
        });
    }
    let result = admit(&state, peer, &headers, body).await;
    match &result {
        Ok(_) => state
            .metrics
            .enrollments
            .with_label_values(&["enrolled"])
            .inc(),
        Err(ApiError::Refused { code, detail, .. }) => {
            let _ = state
                .enroll_refusals
                .take(&source, std::time::Instant::now());
            state
                .metrics
                .enrollments
                .with_label_values(&["refused"])
                .inc();
            // A refusal changes nothing, so it is recorded on its own.
            let mut event = Event::new(EventType::Enrollment, "refused")
                .refused(vec![detail.clone()])
                .peer(peer)
                .details(serde_json::json!({ "error": code }));
            if let Some(device) = requested {
                event = event.device(device.as_str());
            }
            let recorded = match state.db.acquire().await {
                Ok(mut conn) => event.record(&mut conn).await,
                Err(e) => Err(e),
            };
            if let Err(e) = recorded {
                tracing::error!(error = %e, "failed to audit a refused enrollment");
            }
        }
        Err(_) => {}
    }
    result
}

/// Enrolls the device, or says why not.
async fn admit(
    state: &AppState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    body: EnrollRequest,
) -> Result<(StatusCode, axum::Json<IssuedCertificate>), ApiError> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError::unauthorized(
            "missing_token",
            "send the enrollment token as 'Authorization: Bearer <token>'",
        )
    })?;
    let device = DeviceId::parse(&body.device_id)
        .map_err(|e| ApiError::bad_request("invalid_device_id", format!("device_id {e}")))?;
    bounded_text("device_type", &body.device_type, 64)?;
    bounded_text("os", &body.os, 64)?;
    bounded_text("os_version", &body.os_version, 64)?;
    let token_hash = Sha256::digest(token.as_bytes()).to_vec();

    // Refuse an unusable token before anything costly (the CSR's signature), without taking a lock.
    let Some(owner) = tokens::usable_owner(&state.db, &token_hash).await? else {
        return Err(why_unusable(state, &token_hash).await);
    };
    let csr = Csr::from_pem(&body.csr_pem)
        .map_err(|e| ApiError::bad_request("invalid_csr", e.to_string()))?;
    // Signing is pure CPU: do it before the transaction so the token's row lock is held briefly.
    let issued = state
        .ca
        .issue_device(&device, &state.trust_domain, &csr, state.cert_validity)?;

    let mut tx = state.db.begin().await?;
    // A new device, or a revoked one enrolling again for the same owner; an active device keeps its
    // identity (409).
    let enrolment = devices::Enrolment {
        id: device.as_str(),
        owner: &owner,
        device_type: &body.device_type,
        os: &body.os,
        os_version: &body.os_version,
    };
    if !devices::admit(&mut *tx, &enrolment).await? {
        let holder = devices::lock(&mut *tx, device.as_str()).await?;
        tx.rollback().await?;
        return Err(match holder {
            Some(holder) if holder.status == "active" => ApiError::conflict(
                "device_exists",
                format!(
                    "device {device} is already enrolled and active; revoke it first to enroll it again"
                ),
            ),
            _ => ApiError::conflict(
                "device_owned",
                format!(
                    "device {device} was enrolled for another owner; only a token of that owner can \
                     enroll it again, unless an admin transfers it (POST /api/v1/admin/devices/{device}/transfer)"
                ),
            ),
        });
    }
    certificates::insert(&mut *tx, device.as_str(), &issued, None).await?;
    // Consuming a use comes last before commit: of concurrent enrolments with a one-use token
    // exactly one gets it; the others roll back their device and certificate.
    let consumed = tokens::consume(&mut *tx, &token_hash, &owner).await?;
    let Some(token_id) = consumed else {
        tx.rollback().await?;
        return Err(why_unusable(state, &token_hash).await);
    };
    Event::new(EventType::Enrollment, "created")
        .device(device.as_str())
        .user(&owner)
        .serial(&issued.info.serial)
        .peer(peer)
        .details(serde_json::json!({
            "token_id": token_id,
            "device_type": body.device_type,
            "os": body.os,
            "os_version": body.os_version,
        }))
        .record(&mut tx)
        .await?;
    tx.commit().await?;

    tracing::info!(%device, %owner, %token_id, serial = %issued.info.serial, "device enrolled");
    Ok((
        StatusCode::CREATED,
        axum::Json(IssuedCertificate {
            device_id: device.to_string(),
            certificate_pem: issued.pem,
            ca_pem: state.ca.cert_pem().to_owned(),
            not_after: issued.info.not_after,
        }),
    ))
}

/// Why a token could not be used, for a refusal the device operator can act on.
async fn why_unusable(state: &AppState, token_hash: &[u8]) -> ApiError {
    let standing = tokens::standing(&state.db, token_hash).await;
    match standing {
        Err(e) => e.into(),
        Ok(None) => ApiError::unauthorized("invalid_token", "the enrollment token is not known"),
        Ok(Some(Standing { revoked: true, .. })) => {
            ApiError::forbidden("token_revoked", "the enrollment token was revoked")
        }
        Ok(Some(Standing { expired: true, .. })) => {
            ApiError::forbidden("token_expired", "the enrollment token has expired")
        }
        Ok(Some(_)) => {
            ApiError::forbidden("token_used_up", "the enrollment token has no uses left")
        }
    }
}
