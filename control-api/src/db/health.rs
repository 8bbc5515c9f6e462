//! `health_reports`: every accepted report with the verdict it got.

use edgemesh_core::api::HealthReport;
use serde::Serialize;
use sqlx::PgExecutor;
use time::OffsetDateTime;

/// A stored health report with the verdict it got.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StoredReport {
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub collected_at: OffsetDateTime,
    pub certificate_serial: String,
    pub cpu_usage: Option<f64>,
    pub memory_usage: Option<f64>,
    pub disk_usage: Option<f64>,
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub kernel: Option<String>,
    pub uptime_seconds: Option<i64>,
    pub disk_encrypted: Option<bool>,
    pub os_patches_current: Option<bool>,
    pub antivirus_enabled: Option<bool>,
    pub firewall_enabled: Option<bool>,
    pub agent_version: String,
    pub status: String,
    pub reasons: Vec<String>,
}

/// Stores a report the device `device` sent with the certificate `serial`, its sequence (checked to
/// fit), and its verdict.
pub async fn insert(
    db: impl PgExecutor<'_>,
    device: &str,
    serial: &str,
    report: &HealthReport,
    sequence: i64,
    status: &str,
    reasons: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO health_reports (device_id, certificate_serial, collected_at, cpu_usage,
             memory_usage, disk_usage, os, os_version, kernel, uptime_seconds, disk_encrypted,
             os_patches_current, antivirus_enabled, firewall_enabled, agent_version, status, reasons,
             sequence)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
        device,
        serial,
        report.collected_at,
        report.cpu_usage,
        report.memory_usage,
        report.disk_usage,
        report.os.as_deref(),
        report.os_version.as_deref(),
        report.kernel.as_deref(),
        report.uptime_seconds.and_then(|u| i64::try_from(u).ok()),
        report.disk_encrypted,
        report.os_patches_current,
        report.antivirus_enabled,
        report.firewall_enabled,
        report.agent_version,
        status,
        reasons,
        sequence
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A device's latest reports, newest first.
pub async fn history(
    db: impl PgExecutor<'_>,
    device: &str,
    limit: i64,
) -> Result<Vec<StoredReport>, sqlx::Error> {
    sqlx::query_as!(
        StoredReport,
        "SELECT received_at, collected_at, certificate_serial, cpu_usage, memory_usage, disk_usage,
                os, os_version, kernel, uptime_seconds, disk_encrypted, os_patches_current,
                antivirus_enabled, firewall_enabled, agent_version, status, reasons
         FROM health_reports WHERE device_id = $1 ORDER BY received_at DESC, id DESC LIMIT $2",
        device,
        limit
    )
    .fetch_all(db)
    .await
}
