//! The device (mTLS) listener's endpoints. A device is who its verified client certificate says, as long
//! as that certificate and the device are on record and not revoked; never who a request body says.

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::post;
use edgemesh_core::api::{IssuedCertificate, RenewRequest};
use edgemesh_core::cert::CertInfo;
use edgemesh_core::id::DeviceId;
use sqlx::{PgConnection, Postgres, Transaction};

use super::extract::{Json, Peer};
use super::{ApiError, AppState};
use crate::audit::{Event, EventType};
use crate::ca::Issued;
use crate::csr::Csr;
use crate::server::PeerCertificate;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/renew", post(renew))
}

/// A device authenticated by its client certificate, checked against the database on every request.
#[derive(Debug, Clone)]
pub struct AuthenticatedDevice {
    pub device: DeviceId,
    pub serial: String,
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
        let device = info.device_id(&state.trust_domain).ok_or_else(|| {
            ApiError::forbidden(
                "no_device_identity",
                "the client certificate names no device of this trust domain",
            )
        })?;
        let row: Option<(String, bool, String)> = sqlx::query_as(
            "SELECT c.device_id, c.revoked_at IS NOT NULL, d.status
             FROM certificates c JOIN devices d ON d.id = c.device_id
             WHERE c.serial = $1 AND c.fingerprint = $2",
        )
        .bind(&info.serial)
        .bind(&info.fingerprint)
        .fetch_optional(&state.db)
        .await?;
        match row {
            None => Err(ApiError::forbidden(
                "unknown_certificate",
                "the client certificate is not on record",
            )),
            Some((owner, _, _)) if owner != device.as_str() => Err(ApiError::forbidden(
                "unknown_certificate",
                "the client certificate is not on record for its device",
            )),
            Some((_, true, _)) => Err(ApiError::forbidden(
                "certificate_revoked",
                "the client certificate is revoked",
            )),
            Some((_, _, status)) if status != "active" => Err(ApiError::forbidden(
                "device_revoked",
                "the device is revoked",
            )),
            Some(_) => Ok(Self {
                device,
                serial: info.serial,
            }),
        }
    }
}

/// Stores a newly issued certificate.
pub async fn record_certificate(
    tx: &mut Transaction<'static, Postgres>,
    device: &DeviceId,
    issued: &Issued,
) -> Result<(), sqlx::Error> {
    let conn: &mut PgConnection = tx;
    sqlx::query(
        "INSERT INTO certificates (serial, device_id, fingerprint, not_before, not_after, certificate_pem)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&issued.info.serial)
    .bind(device.as_str())
    .bind(&issued.info.fingerprint)
    .bind(issued.info.not_before)
    .bind(issued.info.not_after)
    .bind(&issued.pem)
    .execute(conn)
    .await?;
    Ok(())
}

/// `POST /api/v1/renew`: a new certificate for the same device, for a key the device sends a CSR for.
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
    // Lock the device so a revocation racing this renewal either precedes it (refused) or follows it
    // (and revokes the new certificate too).
    let status: Option<(String,)> =
        sqlx::query_as("SELECT status FROM devices WHERE id = $1 FOR UPDATE")
            .bind(caller.device.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    if !matches!(status, Some((ref s,)) if s == "active") {
        return Err(ApiError::forbidden(
            "device_revoked",
            "the device is revoked",
        ));
    }
    let issued = state.ca.issue_device(
        &caller.device,
        &state.trust_domain,
        &csr,
        state.cert_validity,
    )?;
    record_certificate(&mut tx, &caller.device, &issued).await?;
    Event::new(EventType::Renewal, "created")
        .device(caller.device.as_str())
        .serial(&issued.info.serial)
        .peer(peer)
        .details(serde_json::json!({ "previous_serial": caller.serial }))
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
