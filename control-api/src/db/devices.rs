//! `devices`: enrolment, status, the latest health verdict, owners; and the fleet's counts.

use serde::Serialize;
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use time::OffsetDateTime;

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Device {
    pub id: String,
    #[sqlx(rename = "owner_id")]
    pub owner: String,
    /// The owner's role, which the policies decide on.
    pub role: String,
    pub device_type: String,
    pub os: String,
    pub os_version: String,
    pub status: String,
    #[serde(with = "time::serde::rfc3339")]
    pub enrolled_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// `unknown` (never reported), `healthy`, `unhealthy`, or `stale` (no report within the maximum
    /// health age, whatever the last one said).
    #[serde(rename = "health")]
    #[schema(rename = "health")]
    pub health_status: String,
    pub health_reasons: Vec<String>,
    /// When the latest health values were measured.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_health_at: Option<OffsetDateTime>,
    /// When the newest certificate not revoked or retired expires (`null`: none is in force).
    #[serde(with = "time::serde::rfc3339::option")]
    pub certificate_expires_at: Option<OffsetDateTime>,
    /// The agent version the device last reported running.
    pub agent_version: Option<String>,
    /// The channel whose agent rollout it follows.
    pub update_channel: String,
}

impl Device {
    /// The device with a report older than `max_age` shown as `stale`.
    pub fn with_staleness(mut self, now: OffsetDateTime, max_age: time::Duration) -> Self {
        if self.last_health_at.is_some_and(|at| now - at > max_age) {
            self.health_status = "stale".to_owned();
        }
        self
    }
}

/// Which devices [`list`] answers: every part that is set must hold.
#[derive(Debug, Default)]
pub struct Filter<'a> {
    pub id: Option<&'a str>,
    pub status: Option<&'static str>,
    pub owner: Option<&'a str>,
    /// The stored verdict.
    pub verdict: Option<&'static str>,
    /// Whether the latest report was measured before `oldest_fresh`.
    pub stale: Option<(bool, OffsetDateTime)>,
    pub id_prefix: Option<&'a str>,
    /// Keyset: only ids after this one.
    pub after: Option<&'a str>,
    pub limit: i64,
}

/// The devices that match, by id, each with its owner's role and the expiry of its newest certificate
/// still in force.
pub async fn list(
    db: impl PgExecutor<'_>,
    filter: &Filter<'_>,
) -> Result<Vec<Device>, sqlx::Error> {
    let mut sql = QueryBuilder::<Postgres>::new(
        "SELECT d.id, d.owner_id, u.role, d.device_type, d.os, d.os_version, d.status, d.enrolled_at,
                d.last_seen_at, d.revoked_at, d.health_status, d.health_reasons, d.last_health_at,
                d.agent_version, d.update_channel,
                (SELECT max(c.not_after) FROM certificates c WHERE c.device_id = d.id
                   AND (c.revoked_at IS NULL OR c.revoked_at > now())) AS certificate_expires_at
         FROM devices d JOIN users u ON u.id = d.owner_id WHERE true",
    );
    if let Some(id) = filter.id {
        sql.push(" AND d.id = ").push_bind(id);
    }
    if let Some(status) = filter.status {
        sql.push(" AND d.status = ").push_bind(status);
    }
    if let Some(owner) = filter.owner {
        sql.push(" AND d.owner_id = ").push_bind(owner);
    }
    if let Some(verdict) = filter.verdict {
        sql.push(" AND d.health_status = ").push_bind(verdict);
    }
    if let Some((stale, oldest_fresh)) = filter.stale {
        sql.push(" AND (d.last_health_at IS NOT NULL AND d.last_health_at < ")
            .push_bind(oldest_fresh)
            .push(") = ")
            .push_bind(stale);
    }
    if let Some(prefix) = filter.id_prefix {
        sql.push(" AND starts_with(d.id, ")
            .push_bind(prefix)
            .push(")");
    }
    if let Some(after) = filter.after {
        sql.push(" AND d.id > ").push_bind(after);
    }
    sql.push(" ORDER BY d.id LIMIT ").push_bind(filter.limit);
    sql.build_query_as().fetch_all(db).await
}

/// The device, as [`list`] shows it.
pub async fn find(db: impl PgExecutor<'_>, id: &str) -> Result<Option<Device>, sqlx::Error> {
    let filter = Filter {
        id: Some(id),
        limit: 1,
        ..Filter::default()
    };
    Ok(list(db, &filter).await?.pop())
}

pub async fn exists(db: impl PgExecutor<'_>, id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM devices WHERE id = $1) AS "exists!""#,
        id
    )
    .fetch_one(db)
    .await
}

/// What the device was enrolled with.
pub struct Enrolment<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub device_type: &'a str,
    pub os: &'a str,
    pub os_version: &'a str,
}

/// Admits a new device, or a revoked one enrolling again for the same owner (upstreams key data on
/// the device id: another owner's token must not inherit it). An active device keeps its identity.
/// A new enrolment starts as never reported: health belongs to an enrolment, not to the id. Answers
/// whether it was admitted.
pub async fn admit(db: impl PgExecutor<'_>, device: &Enrolment<'_>) -> Result<bool, sqlx::Error> {
    let admitted = sqlx::query_scalar!(
        "INSERT INTO devices (id, owner_id, device_type, os, os_version)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET
             device_type = excluded.device_type, os = excluded.os,
             os_version = excluded.os_version, status = 'active', enrolled_at = now(),
             last_seen_at = NULL, revoked_at = NULL, health_status = 'unknown',
             health_reasons = '{}', last_health_at = NULL, health_sequence = NULL,
             health_received_at = NULL, cpu_usage = NULL, memory_usage = NULL, disk_usage = NULL,
             disk_encrypted = NULL, os_patches_current = NULL, antivirus_enabled = NULL,
             firewall_enabled = NULL
         WHERE devices.status = 'revoked' AND devices.owner_id = excluded.owner_id
         RETURNING id",
        device.id,
        device.owner,
        device.device_type,
        device.os,
        device.os_version
    )
    .fetch_optional(db)
    .await?;
    Ok(admitted.is_some())
}

/// A device's status and owner, locked until the transaction ends.
pub struct Holder {
    pub status: String,
    pub owner: String,
}

pub async fn lock(db: impl PgExecutor<'_>, id: &str) -> Result<Option<Holder>, sqlx::Error> {
    sqlx::query_as!(
        Holder,
        "SELECT status, owner_id AS owner FROM devices WHERE id = $1 FOR UPDATE",
        id
    )
    .fetch_optional(db)
    .await
}

/// Revokes the device (a revoked one keeps its first revocation); `false` when there is none.
pub async fn revoke(db: impl PgExecutor<'_>, id: &str) -> Result<bool, sqlx::Error> {
    let found = sqlx::query_scalar!(
        "UPDATE devices SET status = 'revoked', revoked_at = coalesce(revoked_at, now())
         WHERE id = $1 RETURNING id",
        id
    )
    .fetch_optional(db)
    .await?;
    Ok(found.is_some())
}

/// Moves a device to another update channel; `false` if there is no such device.
pub async fn set_channel(
    db: impl PgExecutor<'_>,
    id: &str,
    channel: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        "UPDATE devices SET update_channel = $2 WHERE id = $1",
        id,
        channel
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn transfer(db: impl PgExecutor<'_>, id: &str, owner: &str) -> Result<(), sqlx::Error> {
    sqlx::query!("UPDATE devices SET owner_id = $2 WHERE id = $1", id, owner)
        .execute(db)
        .await?;
    Ok(())
}

/// The devices by status and health verdict, `stale` for a report measured before `oldest_fresh`.
pub struct Count {
    pub status: String,
    pub verdict: String,
    pub devices: i64,
}

pub async fn count_by_verdict(
    db: impl PgExecutor<'_>,
    oldest_fresh: OffsetDateTime,
) -> Result<Vec<Count>, sqlx::Error> {
    sqlx::query_as!(
        Count,
        r#"SELECT status,
                  CASE WHEN last_health_at IS NOT NULL AND last_health_at < $1 THEN 'stale'
                       ELSE health_status END AS "verdict!",
                  count(*) AS "devices!"
           FROM devices GROUP BY 1, 2"#,
        oldest_fresh
    )
    .fetch_all(db)
    .await
}
