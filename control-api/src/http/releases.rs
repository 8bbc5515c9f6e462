//! Agent releases and their rollout. An operator publishes a release signed offline (the control API
//! holds no signing key and only checks that the binary is the one the manifest names) and sets each
//! channel's target version and percentage. Devices are offered their channel's version in the answer
//! to a health report, fetch the signed manifest and the binary from the device listener, check both
//! against the keys they pin, and report each step of the update here.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use base64::Engine;
use edgemesh_core::api::{ErrorBody, UpdateEvent, UpdateOffer};
use edgemesh_core::id::DeviceId;
use edgemesh_core::release::{self, Manifest, Signature, SignedManifest};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::admin::ADMIN_401;
use super::device::{AuthenticatedDevice, CERTIFICATE_401, CERTIFICATE_403};
use super::extract::{Json, Path, Peer};
use super::{ApiError, AppState, bounded_text};
use crate::audit::{Event, EventType};
use crate::db::devices;
use crate::db::releases::{self, NewRelease, Release, Rollout};

/// The largest agent binary a release may carry (the request body is its base64, a third larger).
const MAX_BINARY_BYTES: usize = 96 * 1024 * 1024;
/// How many failed devices a rollout's status lists.
const MAX_FAILURES_SHOWN: usize = 50;

/// Mounted under `/api/v1/admin` (behind the admin token).
pub fn admin_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(publish))
        .layer(DefaultBodyLimit::max(MAX_BINARY_BYTES / 3 * 4 + 64 * 1024))
        .routes(routes!(list_releases))
        .routes(routes!(list_rollouts))
        .routes(routes!(set_rollout))
        .routes(routes!(set_channel))
}

/// On the device (mTLS) listener.
pub fn device_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(manifest))
        .routes(routes!(binary))
        .routes(routes!(report_step))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PublishRelease {
    /// The manifest's text, byte for byte as signed (`edgemeshctl release sign` writes it).
    manifest: String,
    /// The signature file's text.
    signature: String,
    /// The binary, in base64.
    binary: String,
}

/// Publishes an agent release: a manifest signed offline, its signature and the binary it names.
///
/// The control API does not hold the signing key and does not need to trust it: each agent checks
/// the signature against the keys it pins. It refuses a release whose binary is not the one the
/// manifest names, and never replaces a published version.
#[utoipa::path(post, path = "/releases", tag = "admin",
    security(("admin_token" = [])),
    request_body = PublishRelease,
    responses(
        (status = 201, description = "Published.", body = Release),
        (status = 400, description = "`invalid_body`, `invalid_manifest`, `unsigned`, `bad_signature` (it does not parse), `invalid_binary` (not base64), `size_mismatch`, `hash_mismatch`, `expired`.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 409, description = "`release_exists`: this version is already published for this target.", body = ErrorBody),
        (status = 413, description = "`body_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
    ))]
async fn publish(
    State(state): State<AppState>,
    Peer(peer): Peer,
    Json(body): Json<PublishRelease>,
) -> Result<(StatusCode, axum::Json<Release>), ApiError> {
    let refused = |r: release::Refusal| ApiError::bad_request(r.code, r.detail);
    let manifest = Manifest::parse(&body.manifest).map_err(refused)?;
    if body.signature.trim().is_empty() {
        return Err(ApiError::bad_request(
            release::Refusal::UNSIGNED,
            "a release needs its signature (edgemeshctl release sign)",
        ));
    }
    let signature = Signature::parse(&body.signature).map_err(refused)?;
    let binary = base64::engine::general_purpose::STANDARD
        .decode(body.binary.trim())
        .map_err(|_| ApiError::bad_request("invalid_binary", "binary must be base64"))?;
    manifest.check_binary(&binary).map_err(refused)?;
    if manifest.expires_at <= OffsetDateTime::now_utc() {
        return Err(ApiError::bad_request(
            release::Refusal::EXPIRED,
            format!("the manifest expired at {}", manifest.expires_at),
        ));
    }
    let key_id = signature.key_id.to_string();
    let mut tx = state.db.begin().await?;
    let stored = releases::insert(
        &mut *tx,
        &NewRelease {
            version: &manifest.version,
            target: &manifest.target,
            manifest: &body.manifest,
            signature: &body.signature,
            key_id: &key_id,
            sha256: &manifest.sha256,
            size: i64::try_from(manifest.size).unwrap_or(i64::MAX),
            min_version: &manifest.min_version,
            expires_at: manifest.expires_at,
            binary: &binary,
        },
    )
    .await?
    .ok_or_else(|| {
        ApiError::conflict(
            "release_exists",
            format!(
                "{} is already published for {}; publish a new version",
                manifest.version, manifest.target
            ),
        )
    })?;
    Event::new(EventType::Release, "published")
        .peer(peer)
        .details(serde_json::json!({
            "version": stored.version, "target": stored.target, "sha256": stored.sha256,
            "size": stored.size, "key_id": stored.key_id,
        }))
        .record(&mut tx)
        .await?;
    tx.commit().await?;
    tracing::info!(version = %stored.version, target = %stored.target, key_id = %stored.key_id, "agent release published");
    Ok((StatusCode::CREATED, axum::Json(stored)))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Releases {
    releases: Vec<Release>,
}

/// The published agent releases, newest first.
#[utoipa::path(get, path = "/releases", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The releases.", body = Releases),
        (status = 401, description = ADMIN_401, body = ErrorBody),
    ))]
async fn list_releases(State(state): State<AppState>) -> Result<axum::Json<Releases>, ApiError> {
    Ok(axum::Json(Releases {
        releases: releases::list(&state.db).await?,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetRollout {
    /// A published version.
    version: String,
    /// 0 to 100: the share of the channel's devices offered it.
    #[schema(minimum = 0, maximum = 100)]
    percent: u8,
}

fn check_channel(channel: &str) -> Result<(), ApiError> {
    let ok = (1..=32).contains(&channel.len())
        && channel
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !channel.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_channel",
            "a channel is 1 to 32 of [a-z0-9-], not starting with '-'",
        ))
    }
}

/// Sets the version a channel's devices are offered, and to what share of them.
///
/// Which devices are in the share is decided by a stable hash of the device id: raising the
/// percentage keeps every device already offered it, and the first percent (the canaries) are the same
/// devices for every release.
#[utoipa::path(put, path = "/rollouts/{channel}", tag = "admin",
    security(("admin_token" = [])),
    params(("channel" = String, Path, description = "The channel, `stable` by default.")),
    request_body = SetRollout,
    responses(
        (status = 200, description = "Set.", body = Rollout),
        (status = 400, description = "`invalid_body`, `invalid_channel`, `invalid_version`, `invalid_percent`.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 404, description = "`unknown_release`: no build of this version is published.", body = ErrorBody),
        (status = 413, description = "`body_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
    ))]
async fn set_rollout(
    State(state): State<AppState>,
    Peer(peer): Peer,
    Path(channel): Path<String>,
    Json(body): Json<SetRollout>,
) -> Result<axum::Json<Rollout>, ApiError> {
    check_channel(&channel)?;
    release::parse_version(&body.version)
        .map_err(|e| ApiError::bad_request("invalid_version", e))?;
    if body.percent > 100 {
        return Err(ApiError::bad_request(
            "invalid_percent",
            "percent must be 0 to 100",
        ));
    }
    let mut tx = state.db.begin().await?;
    if !releases::version_exists(&mut *tx, &body.version).await? {
        return Err(ApiError::not_found(
            "unknown_release",
            format!("no build of {} is published", body.version),
        ));
    }
    let rollout =
        releases::set_rollout(&mut *tx, &channel, &body.version, i16::from(body.percent)).await?;
    Event::new(EventType::Release, "rolled_out")
        .peer(peer)
        .details(serde_json::json!({
            "channel": channel, "version": body.version, "percent": body.percent,
        }))
        .record(&mut tx)
        .await?;
    tx.commit().await?;
    tracing::info!(%channel, version = %body.version, percent = body.percent, "rollout set");
    Ok(axum::Json(rollout))
}

/// A device's failed step of an update (a refusal, a rollback), as it reported it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Failure {
    device_id: String,
    version: String,
    /// `refused` or `rolled_back`.
    step: String,
    /// `bad_signature`, `hash_mismatch`, `downgrade`, `expired`, `probation_failed`, ...
    reason: String,
    detail: String,
    #[serde(with = "time::serde::rfc3339")]
    occurred_at: OffsetDateTime,
}

/// A rollout and how far it has come.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct RolloutStatus {
    #[serde(flatten)]
    rollout: Rollout,
    /// Active devices in the channel.
    devices: usize,
    /// Of them, those in the rollout's share.
    offered: usize,
    /// Devices that report running the rollout's version.
    updated: usize,
    /// Devices whose last reported step for this version is a refusal or a rollback (at most 50).
    failures: Vec<Failure>,
    /// How many devices report each version (`unknown`: none reported yet).
    running: std::collections::BTreeMap<String, usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Rollouts {
    rollouts: Vec<RolloutStatus>,
}

/// Each channel's rollout with its progress: devices offered the version, updated, and failed.
#[utoipa::path(get, path = "/rollouts", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The rollouts.", body = Rollouts),
        (status = 401, description = ADMIN_401, body = ErrorBody),
    ))]
async fn list_rollouts(State(state): State<AppState>) -> Result<axum::Json<Rollouts>, ApiError> {
    let mut out = Vec::new();
    for rollout in releases::rollouts(&state.db).await? {
        let members = releases::members(&state.db, &rollout.channel).await?;
        let percent = u8::try_from(rollout.percent).unwrap_or(0);
        let mut running = std::collections::BTreeMap::new();
        let mut failures = Vec::new();
        for m in &members {
            *running
                .entry(m.agent_version.clone().unwrap_or_else(|| "unknown".into()))
                .or_insert(0) += 1;
            if let Some(step) = &m.last_update
                && step["version"] == rollout.version.as_str()
                && matches!(step["step"].as_str(), Some("refused" | "rolled_back"))
                && failures.len() < MAX_FAILURES_SHOWN
            {
                let text = |k: &str| step[k].as_str().unwrap_or_default().to_owned();
                failures.push(Failure {
                    device_id: m.id.clone(),
                    version: rollout.version.clone(),
                    step: text("step"),
                    reason: text("reason"),
                    detail: text("detail"),
                    occurred_at: step["at"]
                        .as_str()
                        .and_then(|at| {
                            OffsetDateTime::parse(
                                at,
                                &time::format_description::well_known::Rfc3339,
                            )
                            .ok()
                        })
                        .unwrap_or(rollout.updated_at),
                });
            }
        }
        out.push(RolloutStatus {
            devices: members.len(),
            offered: members
                .iter()
                .filter(|m| release::in_rollout(&m.id, percent))
                .count(),
            updated: members
                .iter()
                .filter(|m| m.agent_version.as_deref() == Some(rollout.version.as_str()))
                .count(),
            failures,
            running,
            rollout,
        });
    }
    Ok(axum::Json(Rollouts { rollouts: out }))
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Channel {
    /// 1 to 32 of [a-z0-9-].
    channel: String,
}

/// Moves a device to another update channel (every device starts in `stable`).
#[utoipa::path(put, path = "/devices/{id}/channel", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = DeviceId, Path, description = "The device.")),
    request_body = Channel,
    responses(
        (status = 200, description = "Moved.", body = Channel),
        (status = 400, description = "`invalid_body`, `invalid_path`, `invalid_channel`.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 404, description = "`unknown_device`.", body = ErrorBody),
        (status = 413, description = "`body_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
    ))]
async fn set_channel(
    State(state): State<AppState>,
    Peer(peer): Peer,
    Path(id): Path<DeviceId>,
    Json(body): Json<Channel>,
) -> Result<axum::Json<Channel>, ApiError> {
    check_channel(&body.channel)?;
    let mut tx = state.db.begin().await?;
    if !devices::set_channel(&mut *tx, id.as_str(), &body.channel).await? {
        return Err(ApiError::not_found(
            "unknown_device",
            format!("no device {id}"),
        ));
    }
    Event::new(EventType::Release, "channel_set")
        .device(id.as_str())
        .peer(peer)
        .details(serde_json::json!({ "channel": body.channel }))
        .record(&mut tx)
        .await?;
    tx.commit().await?;
    Ok(axum::Json(body))
}

/// The update a device is offered: its channel's `rollout` (of a version with a build for its
/// target), if the device is in the rollout's share and runs another (lower) version.
pub fn offer_for(
    rollout: Option<Rollout>,
    device: &DeviceId,
    running: &str,
    target: Option<&str>,
) -> Option<UpdateOffer> {
    let (rollout, target) = (rollout?, target?);
    let percent = u8::try_from(rollout.percent).unwrap_or(0);
    if !release::in_rollout(device.as_str(), percent)
        || !release::is_newer(&rollout.version, running)
    {
        return None;
    }
    let path = format!("/api/v1/releases/{}/{target}", rollout.version);
    Some(UpdateOffer {
        binary_path: format!("{path}/binary"),
        manifest_path: path,
        version: rollout.version,
        target: target.to_owned(),
        channel: rollout.channel,
    })
}

/// A release's signed manifest, as the operator signed it.
#[utoipa::path(get, path = "/api/v1/releases/{version}/{target}", tag = "device",
    security(("device_certificate" = [])),
    params(("version" = String, Path), ("target" = String, Path)),
    responses(
        (status = 200, description = "The manifest and its signature, verbatim.", body = SignedManifest),
        (status = 401, description = CERTIFICATE_401, body = ErrorBody),
        (status = 403, description = CERTIFICATE_403, body = ErrorBody),
        (status = 404, description = "`unknown_release`.", body = ErrorBody),
    ))]
async fn manifest(
    State(state): State<AppState>,
    _caller: AuthenticatedDevice,
    Path((version, target)): Path<(String, String)>,
) -> Result<axum::Json<SignedManifest>, ApiError> {
    let (manifest, signature) = releases::manifest(&state.db, &version, &target)
        .await?
        .ok_or_else(|| unknown_release(&version, &target))?;
    Ok(axum::Json(SignedManifest {
        manifest,
        signature,
    }))
}

/// A release's binary.
#[utoipa::path(get, path = "/api/v1/releases/{version}/{target}/binary", tag = "device",
    security(("device_certificate" = [])),
    params(("version" = String, Path), ("target" = String, Path)),
    responses(
        (status = 200, description = "The binary the manifest names.", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, description = CERTIFICATE_401, body = ErrorBody),
        (status = 403, description = CERTIFICATE_403, body = ErrorBody),
        (status = 404, description = "`unknown_release`.", body = ErrorBody),
        (status = 429, description = "`rate_limited`: shares the device's health report budget.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
async fn binary(
    State(state): State<AppState>,
    caller: AuthenticatedDevice,
    Path((version, target)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    // A binary is tens of megabytes: downloads share the device's health report budget.
    limit(&state, &caller)?;
    let binary = releases::binary(&state.db, &version, &target)
        .await?
        .ok_or_else(|| unknown_release(&version, &target))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], binary))
}

/// Takes one of the device's health report budget.
fn limit(state: &AppState, caller: &AuthenticatedDevice) -> Result<(), ApiError> {
    state
        .health_limiter
        .take(caller.device.as_str(), std::time::Instant::now())
        .map_err(|retry_after| ApiError::TooManyRequests {
            retry_after,
            detail: format!("requests are limited per device; retry in {retry_after} s"),
        })
}

fn unknown_release(version: &str, target: &str) -> ApiError {
    ApiError::not_found(
        "unknown_release",
        format!("no release {version} for {target}"),
    )
}

/// Records a step of the calling device's update: installed, completed, refused (with the reason)
/// or rolled back. Each is an `agent_update` audit event, and the last one shows in the rollout's
/// status.
#[utoipa::path(post, path = "/api/v1/update-events", tag = "device",
    security(("device_certificate" = [])),
    request_body = UpdateEvent,
    responses(
        (status = 204, description = "Recorded."),
        (status = 400, description = "`invalid_body`, `invalid_field`, `invalid_version`.", body = ErrorBody),
        (status = 401, description = CERTIFICATE_401, body = ErrorBody),
        (status = 403, description = CERTIFICATE_403, body = ErrorBody),
        (status = 413, description = "`body_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
        (status = 429, description = "`rate_limited`: shares the device's health report budget.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
async fn report_step(
    State(state): State<AppState>,
    Peer(peer): Peer,
    caller: AuthenticatedDevice,
    Json(event): Json<UpdateEvent>,
) -> Result<StatusCode, ApiError> {
    limit(&state, &caller)?;
    bounded_text("version", &event.version, 64)?;
    bounded_text("running_version", &event.running_version, 64)?;
    if let Some(reason) = &event.reason {
        bounded_text("reason", reason, 64)?;
    }
    if event.detail.chars().count() > 512 {
        return Err(ApiError::bad_request(
            "invalid_field",
            "detail must be at most 512 characters",
        ));
    }
    release::parse_version(&event.version)
        .map_err(|e| ApiError::bad_request("invalid_version", e))?;
    let at = OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let step = serde_json::json!({
        "version": event.version,
        "running_version": event.running_version,
        "step": event.step.as_str(),
        "reason": event.reason,
        "detail": event.detail,
        "at": at,
    });
    let mut tx = state.db.begin().await?;
    releases::record_step(&mut *tx, caller.device.as_str(), &step).await?;
    Event::new(EventType::AgentUpdate, event.step.as_str())
        .device(caller.device.as_str())
        .serial(&caller.serial)
        .peer(peer)
        .reasons(event.reason.iter().cloned().collect())
        .details(step)
        .record(&mut tx)
        .await?;
    tx.commit().await?;
    tracing::info!(device = %caller.device, version = %event.version, step = event.step.as_str(), reason = ?event.reason, "agent update step");
    Ok(StatusCode::NO_CONTENT)
}
