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

/// An accepted report, judged, to be stored with others in one statement ([`write_batch`]).
#[derive(Clone)]
pub struct Judged {
    pub device: String,
    /// The certificate it came with.
    pub serial: String,
    pub report: HealthReport,
    /// The report's sequence (checked to fit).
    pub sequence: i64,
    pub status: &'static str,
    pub reasons: Vec<String>,
}

/// What became of one report of a batch, with what the device held before it.
pub struct Written {
    pub device_id: String,
    /// `None`: the device is gone.
    pub device_status: Option<String>,
    /// The sequence of the last report accepted before this one.
    pub health_sequence: Option<i64>,
    pub health_status: Option<String>,
    pub health_reasons: Option<Vec<String>>,
    /// Stored: the device is active and the sequence above its last.
    pub stored: bool,
    /// The rollout of the device's channel, when the report names a target it has a release for.
    pub rollout_channel: Option<String>,
    pub rollout_version: Option<String>,
    pub rollout_percent: Option<i16>,
    pub rollout_updated_at: Option<OffsetDateTime>,
}

/// Stores each report (one per device) whose device is active and whose sequence is above the last
/// accepted, with its facts and verdict on the device row, in one statement: the devices are locked
/// in id order (two batches never wait on each other in a cycle), and a report refused (revoked,
/// stale) leaves its device unchanged. Answers what each device held before, and its channel's
/// rollout for the update offer.
pub async fn write_batch(
    db: impl PgExecutor<'_>,
    batch: &[&Judged],
) -> Result<Vec<Written>, sqlx::Error> {
    let column = |f: fn(&Judged) -> Option<String>| batch.iter().map(|j| f(j)).collect::<Vec<_>>();
    let devices = column(|j| Some(j.device.clone()));
    let serials = column(|j| Some(j.serial.clone()));
    let collected: Vec<OffsetDateTime> = batch.iter().map(|j| j.report.collected_at).collect();
    let percent = |f: fn(&HealthReport) -> Option<f64>| {
        batch.iter().map(|j| f(&j.report)).collect::<Vec<_>>()
    };
    let flag = |f: fn(&HealthReport) -> Option<bool>| {
        batch.iter().map(|j| f(&j.report)).collect::<Vec<_>>()
    };
    let uptime: Vec<Option<i64>> = batch
        .iter()
        .map(|j| j.report.uptime_seconds.and_then(|u| i64::try_from(u).ok()))
        .collect();
    let statuses = column(|j| Some(j.status.to_owned()));
    let reasons: Vec<serde_json::Value> =
        batch.iter().map(|j| serde_json::json!(j.reasons)).collect();
    let sequences: Vec<i64> = batch.iter().map(|j| j.sequence).collect();
    sqlx::query_as!(
        Written,
        r#"WITH input AS (
               SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::float8[],
                   $5::float8[], $6::float8[], $7::text[], $8::text[], $9::text[], $10::int8[],
                   $11::bool[], $12::bool[], $13::bool[], $14::bool[], $15::text[], $16::text[],
                   $17::text[], $18::jsonb[], $19::int8[])
               AS i(device_id, serial, collected_at, cpu_usage, memory_usage, disk_usage, os,
                   os_version, kernel, uptime_seconds, disk_encrypted, os_patches_current,
                   antivirus_enabled, firewall_enabled, agent_version, agent_target, status,
                   reasons, sequence)
           ),
           old AS (
               SELECT d.id, d.status, d.health_sequence, d.health_status, d.health_reasons,
                      d.update_channel
               FROM devices d WHERE d.id IN (SELECT device_id FROM input)
               ORDER BY d.id FOR UPDATE
           ),
           upd AS (
               UPDATE devices d SET health_status = i.status,
                   health_reasons = ARRAY(SELECT jsonb_array_elements_text(i.reasons)),
                   last_health_at = LEAST(i.collected_at, now()), health_received_at = now(),
                   last_seen_at = now(), os = COALESCE(i.os, d.os),
                   os_version = COALESCE(i.os_version, d.os_version), health_sequence = i.sequence,
                   agent_version = i.agent_version,
                   agent_target = COALESCE(i.agent_target, d.agent_target),
                   cpu_usage = i.cpu_usage, memory_usage = i.memory_usage,
                   disk_usage = i.disk_usage, disk_encrypted = i.disk_encrypted,
                   os_patches_current = i.os_patches_current,
                   antivirus_enabled = i.antivirus_enabled, firewall_enabled = i.firewall_enabled
               FROM input i JOIN old o ON o.id = i.device_id
               WHERE d.id = i.device_id AND o.status = 'active'
                 AND (o.health_sequence IS NULL OR o.health_sequence < i.sequence)
               RETURNING d.id
           ),
           ins AS (
               INSERT INTO health_reports (device_id, certificate_serial, collected_at, cpu_usage,
                   memory_usage, disk_usage, os, os_version, kernel, uptime_seconds,
                   disk_encrypted, os_patches_current, antivirus_enabled, firewall_enabled,
                   agent_version, status, reasons, sequence)
               SELECT i.device_id, i.serial, i.collected_at, i.cpu_usage, i.memory_usage,
                   i.disk_usage, i.os, i.os_version, i.kernel, i.uptime_seconds, i.disk_encrypted,
                   i.os_patches_current, i.antivirus_enabled, i.firewall_enabled,
                   i.agent_version, i.status, ARRAY(SELECT jsonb_array_elements_text(i.reasons)),
                   i.sequence
               FROM input i JOIN upd u ON u.id = i.device_id
           )
           SELECT i.device_id AS "device_id!", o.status AS "device_status?",
                  o.health_sequence AS "health_sequence?", o.health_status AS "health_status?",
                  o.health_reasons AS "health_reasons?", u.id IS NOT NULL AS "stored!",
                  r.channel AS "rollout_channel?", r.version AS "rollout_version?",
                  r.percent AS "rollout_percent?", r.updated_at AS "rollout_updated_at?"
           FROM input i
           LEFT JOIN old o ON o.id = i.device_id
           LEFT JOIN upd u ON u.id = i.device_id
           LEFT JOIN LATERAL (
               SELECT ro.channel, ro.version, ro.percent, ro.updated_at FROM agent_rollouts ro
               WHERE ro.channel = o.update_channel AND i.agent_target IS NOT NULL
                 AND EXISTS (SELECT 1 FROM agent_releases rr
                             WHERE rr.version = ro.version AND rr.target = i.agent_target)
           ) r ON true"#,
        &devices as &[Option<String>],
        &serials as &[Option<String>],
        &collected,
        &percent(|r| r.cpu_usage) as &[Option<f64>],
        &percent(|r| r.memory_usage) as &[Option<f64>],
        &percent(|r| r.disk_usage) as &[Option<f64>],
        &column(|j| j.report.os.clone()) as &[Option<String>],
        &column(|j| j.report.os_version.clone()) as &[Option<String>],
        &column(|j| j.report.kernel.clone()) as &[Option<String>],
        &uptime as &[Option<i64>],
        &flag(|r| r.disk_encrypted) as &[Option<bool>],
        &flag(|r| r.os_patches_current) as &[Option<bool>],
        &flag(|r| r.antivirus_enabled) as &[Option<bool>],
        &flag(|r| r.firewall_enabled) as &[Option<bool>],
        &column(|j| Some(j.report.agent_version.clone())) as &[Option<String>],
        &column(|j| j.report.agent_target.clone()) as &[Option<String>],
        &statuses as &[Option<String>],
        &reasons,
        &sequences
    )
    .fetch_all(db)
    .await
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
