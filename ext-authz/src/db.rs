//! Every query ext-authz makes, checked against the migrations at compile time (`sqlx::query!`; the
//! offline data is in `.sqlx/`): what a decision needs of a device when the cache misses, and the
//! listener's heartbeat. The decisions themselves go in by `COPY`, whose column list is the encoder's
//! (`audit::copy`).

use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;

/// A device with its owner's role.
pub struct DeviceRow {
    pub id: String,
    pub device_type: String,
    pub status: String,
    pub os: String,
    pub os_version: String,
    pub owner_id: String,
    pub role: String,
    pub enrolled_at: OffsetDateTime,
}

pub async fn device(db: impl PgExecutor<'_>, id: &str) -> Result<Option<DeviceRow>, sqlx::Error> {
    sqlx::query_as!(
        DeviceRow,
        "SELECT d.id, d.device_type, d.status, d.os, d.os_version, d.owner_id, u.role, d.enrolled_at
         FROM devices d JOIN users u ON u.id = d.owner_id
         WHERE d.id = $1",
        id
    )
    .fetch_optional(db)
    .await
}

/// A certificate of the device that has not expired (a revoked or retired one included, with when).
pub struct CertificateRow {
    pub serial: String,
    /// SHA-256 of the DER, hexadecimal.
    pub fingerprint: String,
    pub revoked_at: Option<OffsetDateTime>,
}

pub async fn unexpired_certificates(
    db: impl PgExecutor<'_>,
    device: &str,
) -> Result<Vec<CertificateRow>, sqlx::Error> {
    sqlx::query_as!(
        CertificateRow,
        "SELECT serial, fingerprint, revoked_at FROM certificates
         WHERE device_id = $1 AND not_after > now()",
        device
    )
    .fetch_all(db)
    .await
}

/// The facts of a health report that the policies read.
pub struct HealthRow {
    pub received_at: OffsetDateTime,
    pub collected_at: OffsetDateTime,
    pub cpu_usage: Option<f64>,
    pub memory_usage: Option<f64>,
    pub disk_usage: Option<f64>,
    pub disk_encrypted: Option<bool>,
    pub os_patches_current: Option<bool>,
    pub antivirus_enabled: Option<bool>,
    pub firewall_enabled: Option<bool>,
    pub status: String,
}

/// The device's latest report received since `since` (its enrolment: health belongs to an enrolment,
/// so a device id enrolled again starts as never reported).
pub async fn latest_health(
    db: impl PgExecutor<'_>,
    device: &str,
    since: OffsetDateTime,
) -> Result<Option<HealthRow>, sqlx::Error> {
    sqlx::query_as!(
        HealthRow,
        "SELECT received_at, collected_at, cpu_usage, memory_usage, disk_usage, disk_encrypted,
                os_patches_current, antivirus_enabled, firewall_enabled, status
         FROM health_reports WHERE device_id = $1 AND received_at >= $2
         ORDER BY id DESC LIMIT 1",
        device,
        since
    )
    .fetch_optional(db)
    .await
}

/// Sends `payload` on `channel`.
pub async fn notify(db: &PgPool, channel: &str, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query!("SELECT pg_notify($1, $2)", channel, payload)
        .execute(db)
        .await?;
    Ok(())
}

/// Stores the files of a policy version (a JSON array of [name, source] pairs), unless stored already.
pub async fn store_policy_version(
    db: impl PgExecutor<'_>,
    version: &str,
    files: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO policy_versions (version, files) VALUES ($1, CAST($2::text AS jsonb))
         ON CONFLICT DO NOTHING",
        version,
        files
    )
    .execute(db)
    .await?;
    Ok(())
}
