//! Every query ext-authz makes, checked against the migrations at compile time (`sqlx::query!`; the
//! offline data is in `.sqlx/`): what a decision needs of a device when the cache misses, and the
//! listener's heartbeat. The decisions themselves go in by `COPY`, whose column list is the encoder's
//! (`audit::copy`).

use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;

/// A device with its owner's role, its latest health report's facts (`health_received_at` is `None`
/// while its enrolment has not reported), and its certificates that have not expired (a revoked or
/// retired one included, with when): one round trip, one snapshot.
pub struct DeviceRow {
    pub id: String,
    pub device_type: String,
    pub status: String,
    pub os: String,
    pub os_version: String,
    pub owner_id: String,
    pub role: String,
    pub health_status: String,
    pub health_received_at: Option<OffsetDateTime>,
    pub last_health_at: Option<OffsetDateTime>,
    pub cpu_usage: Option<f64>,
    pub memory_usage: Option<f64>,
    pub disk_usage: Option<f64>,
    pub disk_encrypted: Option<bool>,
    pub os_patches_current: Option<bool>,
    pub antivirus_enabled: Option<bool>,
    pub firewall_enabled: Option<bool>,
    /// The certificates' serials, fingerprints (SHA-256 of the DER, hexadecimal) and revocation
    /// times, in one order.
    pub serials: Vec<String>,
    pub fingerprints: Vec<String>,
    pub revoked_at: Vec<Option<OffsetDateTime>>,
}

pub async fn device(db: impl PgExecutor<'_>, id: &str) -> Result<Option<DeviceRow>, sqlx::Error> {
    sqlx::query_as!(
        DeviceRow,
        r#"SELECT d.id, d.device_type, d.status, d.os, d.os_version, d.owner_id, u.role,
                d.health_status, d.health_received_at, d.last_health_at, d.cpu_usage,
                d.memory_usage, d.disk_usage, d.disk_encrypted, d.os_patches_current,
                d.antivirus_enabled, d.firewall_enabled,
                coalesce(c.serials, '{}') AS "serials!",
                coalesce(c.fingerprints, '{}') AS "fingerprints!",
                coalesce(c.revoked_at, '{}') AS "revoked_at!: Vec<Option<OffsetDateTime>>"
         FROM devices d JOIN users u ON u.id = d.owner_id
         LEFT JOIN LATERAL (
             SELECT array_agg(serial) AS serials, array_agg(fingerprint) AS fingerprints,
                    array_agg(revoked_at) AS revoked_at
             FROM certificates WHERE device_id = d.id AND not_after > now()
         ) c ON true
         WHERE d.id = $1"#,
        id
    )
    .fetch_optional(db)
    .await
}

/// Whether `error` says only that the connection it came on is gone (its socket broke, or the server
/// ended the session: `admin_shutdown`, `crash_shutdown`), so the same query on another connection may
/// well succeed. The pool does not ping a connection before lending it, so after a server restart
/// every idle one fails once like this, and is then dropped.
pub fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(e) => matches!(e.code().as_deref(), Some("57P01" | "57P02")),
        _ => false,
    }
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
