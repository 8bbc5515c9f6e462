//! `agent_releases` and `agent_rollouts`: the signed agent builds an operator published, and the
//! version each channel is rolling out to which percentage of its devices.

use serde::Serialize;
use sqlx::PgExecutor;
use time::OffsetDateTime;

/// A published release, without its binary.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Release {
    pub version: String,
    pub target: String,
    pub sha256: String,
    pub size: i64,
    pub min_version: String,
    /// The signing key's id (the first 8 bytes of its SHA-256).
    pub key_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub published_at: OffsetDateTime,
}

/// What [`insert`] stores.
pub struct NewRelease<'a> {
    pub version: &'a str,
    pub target: &'a str,
    pub manifest: &'a str,
    pub signature: &'a str,
    pub key_id: &'a str,
    pub sha256: &'a str,
    pub size: i64,
    pub min_version: &'a str,
    pub expires_at: OffsetDateTime,
    pub binary: &'a [u8],
}

/// Stores a release; `None` if this version and target are already published (a release is never
/// replaced: a device that checked one binary under a version must never get another).
pub async fn insert(
    db: impl PgExecutor<'_>,
    r: &NewRelease<'_>,
) -> Result<Option<Release>, sqlx::Error> {
    sqlx::query_as!(
        Release,
        "INSERT INTO agent_releases (version, target, manifest, signature, key_id, sha256, size,
             min_version, expires_at, content)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (version, target) DO NOTHING
         RETURNING version, target, sha256, size, min_version, key_id, expires_at, published_at",
        r.version,
        r.target,
        r.manifest,
        r.signature,
        r.key_id,
        r.sha256,
        r.size,
        r.min_version,
        r.expires_at,
        r.binary
    )
    .fetch_optional(db)
    .await
}

/// Every release, newest published first.
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<Release>, sqlx::Error> {
    sqlx::query_as!(
        Release,
        "SELECT version, target, sha256, size, min_version, key_id, expires_at, published_at
         FROM agent_releases ORDER BY published_at DESC, version, target"
    )
    .fetch_all(db)
    .await
}

/// Whether any build of `version` is published.
pub async fn version_exists(db: impl PgExecutor<'_>, version: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM agent_releases WHERE version = $1) AS "exists!""#,
        version
    )
    .fetch_one(db)
    .await
}

/// The stored manifest and signature of one build.
pub async fn manifest(
    db: impl PgExecutor<'_>,
    version: &str,
    target: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT manifest, signature FROM agent_releases WHERE version = $1 AND target = $2",
        version,
        target
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.manifest, r.signature)))
}

/// The binary of one build.
pub async fn binary(
    db: impl PgExecutor<'_>,
    version: &str,
    target: &str,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT content FROM agent_releases WHERE version = $1 AND target = $2",
        version,
        target
    )
    .fetch_optional(db)
    .await
}

/// A channel's rollout.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Rollout {
    pub channel: String,
    pub version: String,
    /// The share of the channel's devices offered the version, 0 to 100 (by a stable hash of the
    /// device id: raising it keeps the devices already in).
    pub percent: i16,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

pub async fn set_rollout(
    db: impl PgExecutor<'_>,
    channel: &str,
    version: &str,
    percent: i16,
) -> Result<Rollout, sqlx::Error> {
    sqlx::query_as!(
        Rollout,
        "INSERT INTO agent_rollouts (channel, version, percent) VALUES ($1, $2, $3)
         ON CONFLICT (channel) DO UPDATE SET version = $2, percent = $3, updated_at = now()
         RETURNING channel, version, percent, updated_at",
        channel,
        version,
        percent
    )
    .fetch_one(db)
    .await
}

pub async fn rollouts(db: impl PgExecutor<'_>) -> Result<Vec<Rollout>, sqlx::Error> {
    sqlx::query_as!(
        Rollout,
        "SELECT channel, version, percent, updated_at FROM agent_rollouts ORDER BY channel"
    )
    .fetch_all(db)
    .await
}

/// An active device of a channel, with the version it last reported and its last update step.
pub struct Member {
    pub id: String,
    pub agent_version: Option<String>,
    pub last_update: Option<serde_json::Value>,
}

pub async fn members(db: impl PgExecutor<'_>, channel: &str) -> Result<Vec<Member>, sqlx::Error> {
    sqlx::query_as!(
        Member,
        "SELECT id, agent_version, last_update FROM devices
         WHERE update_channel = $1 AND status = 'active' ORDER BY id",
        channel
    )
    .fetch_all(db)
    .await
}

/// Keeps a device's last update step (`{version, running_version, step, reason, detail, at}`).
pub async fn record_step(
    db: impl PgExecutor<'_>,
    id: &str,
    step: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE devices SET last_update = $2 WHERE id = $1",
        id,
        step
    )
    .execute(db)
    .await?;
    Ok(())
}
