//! The device (mTLS) listener's endpoints. A device is who its verified client certificate says, as long
//! as that certificate and the device are on record and not revoked; never who a request body says.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use edgemesh_core::api::{DeviceStanding, ErrorBody, IssuedCertificate, RenewRequest};
use edgemesh_core::cert::CertInfo;
use edgemesh_core::id::DeviceId;
use time::OffsetDateTime;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Json, Peer};
use super::{ApiError, AppState};
use crate::audit::{Event, EventType};
use crate::csr::Csr;
use crate::db::{certificates, devices};
use crate::server::PeerCertificate;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(renew))
        .routes(routes!(standing))
}

/// The calling device's standing: answered while its certificate is on record, unrevoked and valid and
/// its device active; refused with the reason otherwise.
#[utoipa::path(get, path = "/api/v1/device", tag = "device",
    security(("device_certificate" = [])),
    responses(
        (status = 200, description = "The certificate and its device are in good standing.", body = DeviceStanding),
        (status = 401, description = CERTIFICATE_401, body = ErrorBody),
        (status = 403, description = CERTIFICATE_403, body = ErrorBody),
    ))]
async fn standing(caller: AuthenticatedDevice) -> axum::Json<DeviceStanding> {
    axum::Json(DeviceStanding {
        device_id: caller.device.to_string(),
        serial: caller.serial,
        status: "active".to_owned(),
    })
}

/// The refusals of [`AuthenticatedDevice`], for the document.
pub const CERTIFICATE_401: &str = "`client_certificate_required`, `bad_certificate`, \
    `certificate_expired`, `certificate_not_yet_valid`.";
pub const CERTIFICATE_403: &str =
    "`no_device_identity`, `unknown_certificate`, `certificate_revoked`, `device_revoked`.";

/// A device authenticated by its client certificate, checked against the database on every request.
#[derive(Debug, Clone)]
pub struct AuthenticatedDevice {
    pub device: DeviceId,
    pub serial: String,
    /// The device's type and the OS it was enrolled with (or last reported).
    pub device_type: String,
    pub os: String,
    pub os_version: String,
}

impl FromRequestParts<AppState> for AuthenticatedDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts.extensions.get::<PeerCertificate>().ok_or_else(|| {
            ApiError::unauthorized(
                "client_certificate_required",
                "this endpoint requires a device certificate",
            )
        })?;
        let info = CertInfo::from_der(&peer.0).map_err(|_| {
            ApiError::unauthorized("bad_certificate", "the client certificate does not parse")
        })?;
        // The handshake checked the validity period once; a kept-alive connection or a resumed
        // session outlives it, so every request checks it again.
        let now = OffsetDateTime::now_utc();
        if info.not_after <= now {
            return Err(ApiError::unauthorized(
                "certificate_expired",
                "the client certificate has expired; enroll the device again",
            ));
        }
        if info.not_before > now {
            return Err(ApiError::unauthorized(
                "certificate_not_yet_valid",
                "the client certificate is not valid yet",
            ));
        }
        let device = info.device_id(&state.trust_domain).ok_or_else(|| {
            ApiError::forbidden(
                "no_device_identity",
                "the client certificate names no device of this trust domain",
            )
        })?;
        let presented =
            certificates::presented(&state.db, &info.serial, &info.fingerprint.to_string()).await?;
        match presented {
            None => Err(ApiError::forbidden(
                "unknown_certificate",
                "the client certificate is not on record",
            )),
            Some(c) if c.device_id != device.as_str() => Err(ApiError::forbidden(
                "unknown_certificate",
                "the client certificate is not on record for its device",
            )),
            Some(c) if c.revoked => Err(ApiError::forbidden(
                "certificate_revoked",
                "the client certificate is revoked",
            )),
            Some(c) if c.device_status != "active" => Err(ApiError::forbidden(
                "device_revoked",
                "the device is revoked",
            )),
            Some(c) => Ok(Self {
                device,
                serial: info.serial,
                device_type: c.device_type,
                os: c.os,
                os_version: c.os_version,
            }),
        }
    }
}

/// How renewals are bounded.
#[derive(Debug, Clone, Copy)]
pub struct RenewalRules {
    /// How long a renewed certificate stays valid beside its successor.
    pub overlap: time::Duration,
    /// Renewals per device per hour.
    pub per_hour: i64,
}

/// A new certificate for the calling device, for a key it sends a CSR for.
///
/// A certificate renews once. Its successor records where it came from, the certificate renewed is
/// retired after a short overlap, and revoking any certificate revokes what was renewed from it: a
/// stolen key cannot renew itself into a certificate that outlives the stolen one's revocation. A
/// repeated request for the same key (a retry after a lost answer) gets the successor again.
#[utoipa::path(post, path = "/api/v1/renew", tag = "device",
    security(("device_certificate" = [])),
    request_body = RenewRequest,
    responses(
        (status = 200, description = "The successor certificate (the same one again for a repeated request for the same key).", body = IssuedCertificate),
        (status = 400, description = "`invalid_body`, `invalid_csr`.", body = ErrorBody),
        (status = 401, description = CERTIFICATE_401, body = ErrorBody),
        (status = 403, description = CERTIFICATE_403, body = ErrorBody),
        (status = 409, description = "`already_renewed`: this certificate was renewed for another key.", body = ErrorBody),
        (status = 413, description = "`body_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many renewals for this device this hour.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
#[tracing::instrument(skip_all, fields(device_id = %caller.device))]
async fn renew(
    State(state): State<AppState>,
    Peer(peer): Peer,
    caller: AuthenticatedDevice,
    Json(body): Json<RenewRequest>,
) -> Result<axum::Json<IssuedCertificate>, ApiError> {
    let csr = Csr::from_pem(&body.csr_pem)
        .map_err(|e| ApiError::bad_request("invalid_csr", e.to_string()))?;
    let mut tx = state.db.begin().await?;
    // Lock the device, then the certificate: a revocation of either racing this renewal either
    // precedes it (and the renewal is refused) or waits for it (and then revokes the successor too).
    let holder = devices::lock(&mut *tx, caller.device.as_str()).await?;
    if holder.is_none_or(|h| h.status != "active") {
        return Err(ApiError::forbidden(
            "device_revoked",
            "the device is revoked",
        ));
    }
    let revoked = certificates::lock_revoked(&mut *tx, &caller.serial)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    if revoked {
        return Err(ApiError::forbidden(
            "certificate_revoked",
            "the client certificate is revoked",
        ));
    }
    if let Some((pem, not_after)) = certificates::successor(&mut *tx, &caller.serial).await? {
        return if certifies_key(&pem, csr.public_key_raw()) {
            Ok(axum::Json(IssuedCertificate {
                device_id: caller.device.to_string(),
                certificate_pem: pem,
                ca_pem: state.ca.cert_pem().to_owned(),
                not_after,
            }))
        } else {
            Err(ApiError::conflict(
                "already_renewed",
                format!(
                    "certificate {} was already renewed for another key; a certificate renews once",
                    caller.serial
                ),
            ))
        };
    }
    if let (count, Some(oldest)) =
        certificates::renewals_last_hour(&mut *tx, caller.device.as_str()).await?
        && count >= state.renewal.per_hour
    {
        let wait = (oldest + time::Duration::HOUR - OffsetDateTime::now_utc()).whole_seconds();
        return Err(ApiError::TooManyRequests {
            retry_after: u64::try_from(wait.max(1)).unwrap_or(1),
            detail: format!(
                "device {} renewed {count} times in the last hour (at most {})",
                caller.device, state.renewal.per_hour
            ),
        });
    }
    let issued = state.ca.issue_device(
        &caller.device,
        &state.trust_domain,
        &csr,
        state.cert_validity,
    )?;
    certificates::insert(
        &mut *tx,
        caller.device.as_str(),
        &issued,
        Some(&caller.serial),
    )
    .await?;
    let retires_at = OffsetDateTime::now_utc() + state.renewal.overlap;
    let superseded = format!("superseded by {}", issued.info.serial);
    certificates::retire(&mut *tx, &caller.serial, retires_at, &superseded).await?;
    Event::new(EventType::Renewal, "created")
        .device(caller.device.as_str())
        .serial(&issued.info.serial)
        .peer(peer)
        .details(serde_json::json!({
            "previous_serial": caller.serial,
            "previous_retires_at": retires_at.format(&time::format_description::well_known::Rfc3339).ok(),
        }))
        .record(&mut tx)
        .await?;
    tx.commit().await?;
    state.metrics.renewals.inc();
    tracing::info!(device = %caller.device, old_serial = %caller.serial, serial = %issued.info.serial, "certificate renewed");
    Ok(axum::Json(IssuedCertificate {
        device_id: caller.device.to_string(),
        certificate_pem: issued.pem,
        ca_pem: state.ca.cert_pem().to_owned(),
        not_after: issued.info.not_after,
    }))
}

/// Whether the certificate `pem` certifies the public key `key` (subjectPublicKey bits).
fn certifies_key(pem: &str, key: &[u8]) -> bool {
    edgemesh_core::cert::first_pem_der(pem)
        .ok()
        .and_then(|der| {
            x509_parser::parse_x509_certificate(&der)
                .ok()
                .map(|(_, cert)| cert.public_key().subject_public_key.data.as_ref() == key)
        })
        .unwrap_or(false)
}
