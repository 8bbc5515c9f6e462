//! Device health: reports arrive on the device (mTLS) listener from the device their certificate names,
//! are validated, judged by the compliance policy, stored, and change the device's verdict. ext-authz
//! hears of it from the database triggers' notifications. Admins read the history.

use std::time::Instant;

use axum::extract::State;
use edgemesh_core::api::{ErrorBody, HealthReport, HealthVerdict};
use edgemesh_core::id::DeviceId;
use edgemesh_core::policy::{COMPLIANCE, Value, input};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::admin::ADMIN_401;
use super::device::{AuthenticatedDevice, CERTIFICATE_401};
use super::extract::{Json, Path, Peer, Query};
use super::{ApiError, AppState, bounded_text, releases};
use crate::db::devices;
use crate::db::health::{self, Judged, StoredReport};
use crate::health_writer::Outcome;

/// A report may be dated at most this far ahead of the server's clock.
const MAX_CLOCK_AHEAD: time::Duration = time::Duration::minutes(5);
const MAX_HISTORY: i64 = 1000;

pub fn device_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(report))
}

/// Mounted under `/api/v1/admin` (behind the admin token).
pub fn admin_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(history))
}

fn check_percent(field: &str, value: Option<f64>) -> Result<(), ApiError> {
    match value {
        Some(v) if !(v.is_finite() && (0.0..=100.0).contains(&v)) => Err(ApiError::bad_request(
            "invalid_field",
            format!("{field} must be a percentage between 0 and 100"),
        )),
        _ => Ok(()),
    }
}

fn check_text(field: &str, value: Option<&str>, max: usize) -> Result<(), ApiError> {
    value.map_or(Ok(()), |v| bounded_text(field, v, max))
}

/// Everything about a report that can be judged without the database.
fn validate(report: &HealthReport, caller: &DeviceId, now: OffsetDateTime) -> Result<(), ApiError> {
    if let Some(claimed) = &report.device_id
        && claimed != caller.as_str()
    {
        return Err(ApiError::forbidden(
            "device_mismatch",
            format!("this certificate reports for device {caller} only, not {claimed}"),
        ));
    }
    check_percent("cpu_usage", report.cpu_usage)?;
    check_percent("memory_usage", report.memory_usage)?;
    check_percent("disk_usage", report.disk_usage)?;
    check_text("os", report.os.as_deref(), 64)?;
    check_text("os_version", report.os_version.as_deref(), 64)?;
    check_text("kernel", report.kernel.as_deref(), 256)?;
    bounded_text("agent_version", &report.agent_version, 64)?;
    check_text("agent_target", report.agent_target.as_deref(), 64)?;
    if report.sequence == 0 || i64::try_from(report.sequence).is_err() {
        return Err(ApiError::bad_request(
            "invalid_sequence",
            "sequence must be between 1 and 2^63 - 1",
        ));
    }
    if report
        .uptime_seconds
        .is_some_and(|u| i64::try_from(u).is_err())
    {
        return Err(ApiError::bad_request(
            "invalid_field",
            "uptime_seconds is out of range",
        ));
    }
    if report.collected_at > now + MAX_CLOCK_AHEAD {
        return Err(ApiError::bad_request(
            "collected_in_future",
            format!(
                "collected_at is more than {} minutes ahead of the server's clock",
                MAX_CLOCK_AHEAD.whole_minutes()
            ),
        ));
    }
    Ok(())
}

/// Stores a health report of the calling device and answers its compliance verdict.
#[utoipa::path(post, path = "/api/v1/health", tag = "device",
    security(("device_certificate" = [])),
    request_body = HealthReport,
    responses(
        (status = 200, description = "Stored; the device's verdict.", body = HealthVerdict),
        (status = 400, description = "`invalid_body`, `invalid_field` (a percentage out of 0..100, a text too long or with control characters, uptime out of range), `invalid_sequence`, `collected_in_future`.", body = ErrorBody),
        (status = 401, description = CERTIFICATE_401, body = ErrorBody),
        (status = 403, description = "`device_mismatch` (the body names another device), and the certificate's: `no_device_identity`, `unknown_certificate`, `certificate_revoked`, `device_revoked`.", body = ErrorBody),
        (status = 409, description = "`stale_sequence`: the report's sequence is not above the last one accepted from this enrolment (a report sent again).", body = ErrorBody),
        (status = 413, description = "`body_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
        (status = 429, description = "`rate_limited`: reports are limited per device.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
#[tracing::instrument(skip_all, fields(device_id = %caller.device))]
async fn report(
    State(state): State<AppState>,
    Peer(peer): Peer,
    caller: AuthenticatedDevice,
    Json(report): Json<HealthReport>,
) -> Result<axum::Json<HealthVerdict>, ApiError> {
    if let Err(retry_after) = state
        .health_limiter
        .take(caller.device.as_str(), Instant::now())
    {
        return Err(ApiError::TooManyRequests {
            retry_after,
            detail: format!("health reports are limited per device; retry in {retry_after} s"),
        });
    }
    let now = OffsetDateTime::now_utc();
    validate(&report, &caller.device, now)?;

    let sequence = i64::try_from(report.sequence).unwrap_or(i64::MAX);
    // The compliance rules read the same device and health objects as every decision does.
    let input = input::compliance(
        input::device(input::Device {
            id: Value::from(caller.device.as_str()),
            device_type: Value::from(caller.device_type.as_str()),
            status: Value::from("active"),
            os: Value::from(report.os.as_deref().unwrap_or(&caller.os)),
            os_version: Value::from(report.os_version.as_deref().unwrap_or(&caller.os_version)),
        }),
        input::health(input::Health {
            age_seconds: (now - report.collected_at).whole_seconds().max(0),
            cpu_usage: report.cpu_usage,
            memory_usage: report.memory_usage,
            disk_usage: report.disk_usage,
            os_patches_current: report.os_patches_current,
            antivirus_enabled: report.antivirus_enabled,
            disk_encrypted: report.disk_encrypted,
            firewall_enabled: report.firewall_enabled,
            collected_at: report.collected_at,
            // The verdict is what is being decided.
            status: Value::Null,
        }),
    );
    let decision = state
        .policies
        .current()
        .evaluate_value(COMPLIANCE, input)
        .unwrap_or_else(|failed| {
            tracing::warn!(error = %failed.error, "compliance evaluation failed; unhealthy");
            failed.deny
        });
    let status = if decision.allow {
        "healthy"
    } else {
        "unhealthy"
    };
    let reasons = if decision.allow {
        Vec::new()
    } else {
        decision.messages()
    };
    // Stored with the reports that arrive meanwhile, in one transaction; the history keeps every
    // report, the audit trail every change of verdict (the first report of an enrolment included),
    // not the fleet's every report.
    let judged = Judged {
        device: caller.device.to_string(),
        serial: caller.serial,
        report,
        sequence,
        status,
        reasons,
    };
    let outcome = state.health_writer.write(judged.clone(), peer).await?;
    let (previous, changed, rollout) = match outcome {
        Outcome::Stored {
            previous_status,
            changed,
            rollout,
        } => (previous_status, changed, rollout),
        Outcome::Revoked => {
            return Err(ApiError::forbidden(
                "device_revoked",
                "the device is revoked",
            ));
        }
        // One report per sequence number, in increasing order: one sent again (recorded on the way,
        // say) is refused, whoever sends it.
        Outcome::Stale { last } => {
            return Err(ApiError::conflict(
                "stale_sequence",
                format!(
                    "report sequence {sequence} is not above {last}, the last one accepted from this device"
                ),
            ));
        }
    };
    state
        .metrics
        .health_checks
        .with_label_values(&[status])
        .inc();
    if changed {
        tracing::info!(device = %caller.device, status, previous, reasons = ?judged.reasons, "health verdict changed");
    } else {
        tracing::debug!(device = %caller.device, status, "health report");
    }
    let update = releases::offer_for(
        rollout,
        &caller.device,
        &judged.report.agent_version,
        judged.report.agent_target.as_deref(),
    );
    Ok(axum::Json(HealthVerdict {
        status: status.to_owned(),
        reasons: judged.reasons,
        update,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryQuery {
    /// How many reports, newest first: 1 to 1000 (default 20).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct HealthHistory {
    device_id: DeviceId,
    pub(crate) reports: Vec<StoredReport>,
}

/// A device's latest health reports, newest first.
#[utoipa::path(get, path = "/devices/{id}/health", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = DeviceId, Path, description = "The device."), HistoryQuery),
    responses(
        (status = 200, description = "The reports.", body = HealthHistory),
        (status = 400, description = "`invalid_path` (the device id), `invalid_query`, `invalid_limit`.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 404, description = "`unknown_device`.", body = ErrorBody),
    ))]
pub(crate) async fn history(
    State(state): State<AppState>,
    Path(id): Path<DeviceId>,
    Query(query): Query<HistoryQuery>,
) -> Result<axum::Json<HealthHistory>, ApiError> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=MAX_HISTORY).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_HISTORY}"),
        ));
    }
    if !devices::exists(&state.db, id.as_str()).await? {
        return Err(ApiError::not_found(
            "unknown_device",
            format!("no device {id}"),
        ));
    }
    let reports = health::history(&state.db, id.as_str(), limit).await?;
    Ok(axum::Json(HealthHistory {
        device_id: id,
        reports,
    }))
}
