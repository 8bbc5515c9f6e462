//! `certificates`: what the CA issued, to whom, and when each stops being valid.

use serde::Serialize;
use sqlx::PgExecutor;
use time::OffsetDateTime;

use crate::ca::Issued;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Certificate {
    pub serial: String,
    pub device_id: String,
    pub fingerprint: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// When it stops (or stopped) being valid before its expiry: revoked, or retired by a renewal.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    pub revocation_reason: Option<String>,
    /// The serial of the certificate this one was renewed from.
    pub renewed_from: Option<String>,
}

/// Stores a certificate the CA just issued to `device`, renewed from the certificate with serial
/// `renewed_from` if any.
pub async fn insert(
    db: impl PgExecutor<'_>,
    device: &str,
    issued: &Issued,
    renewed_from: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO certificates
             (serial, device_id, fingerprint, not_before, not_after, certificate_pem, renewed_from)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        issued.info.serial,
        device,
        issued.info.fingerprint.to_string(),
        issued.info.not_before,
        issued.info.not_after,
        issued.pem,
        renewed_from
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn find(
    db: impl PgExecutor<'_>,
    serial: &str,
) -> Result<Option<Certificate>, sqlx::Error> {
    sqlx::query_as!(
        Certificate,
        "SELECT serial, device_id, fingerprint, not_before, not_after, issued_at, revoked_at,
                revocation_reason, renewed_from
         FROM certificates WHERE serial = $1",
        serial
    )
    .fetch_optional(db)
    .await
}

/// A device's certificates, newest first.
pub async fn of_device(
    db: impl PgExecutor<'_>,
    device: &str,
) -> Result<Vec<Certificate>, sqlx::Error> {
    sqlx::query_as!(
        Certificate,
        "SELECT serial, device_id, fingerprint, not_before, not_after, issued_at, revoked_at,
                revocation_reason, renewed_from
         FROM certificates WHERE device_id = $1 ORDER BY issued_at DESC",
        device
    )
    .fetch_all(db)
    .await
}

/// What is on record of a presented certificate: whose it is, whether it is revoked (or retired)
/// now, and its device's status, type and OS (what its health is judged with).
pub struct Presented {
    pub device_id: String,
    pub revoked: bool,
    pub device_status: String,
    pub device_type: String,
    pub os: String,
    pub os_version: String,
}

/// The certificate with this serial and fingerprint, if one is on record.
pub async fn presented(
    db: impl PgExecutor<'_>,
    serial: &str,
    fingerprint: &str,
) -> Result<Option<Presented>, sqlx::Error> {
    sqlx::query_as!(
        Presented,
        r#"SELECT c.device_id, coalesce(c.revoked_at <= now(), false) AS "revoked!",
                  d.status AS device_status, d.device_type, d.os, d.os_version
           FROM certificates c JOIN devices d ON d.id = c.device_id
           WHERE c.serial = $1 AND c.fingerprint = $2"#,
        serial,
        fingerprint
    )
    .fetch_optional(db)
    .await
}

/// Whether the certificate is revoked (or retired) now, locking it until the transaction ends;
/// `None` when there is none.
pub async fn lock_revoked(
    db: impl PgExecutor<'_>,
    serial: &str,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT coalesce(revoked_at <= now(), false) AS "revoked!"
           FROM certificates WHERE serial = $1 FOR UPDATE"#,
        serial
    )
    .fetch_optional(db)
    .await
}

/// The device of the certificate, locking it until the transaction ends.
pub async fn lock_device(
    db: impl PgExecutor<'_>,
    serial: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT device_id FROM certificates WHERE serial = $1 FOR UPDATE",
        serial
    )
    .fetch_optional(db)
    .await
}

/// The certificate renewed from this one, if any: its PEM and expiry.
pub async fn successor(
    db: impl PgExecutor<'_>,
    serial: &str,
) -> Result<Option<(String, OffsetDateTime)>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT certificate_pem, not_after FROM certificates WHERE renewed_from = $1",
        serial
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| (row.certificate_pem, row.not_after)))
}

/// The device's renewals in the last hour: how many, and when the first of them was.
pub async fn renewals_last_hour(
    db: impl PgExecutor<'_>,
    device: &str,
) -> Result<(i64, Option<OffsetDateTime>), sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT count(*) AS "count!", min(issued_at) AS oldest FROM certificates
           WHERE device_id = $1 AND renewed_from IS NOT NULL AND issued_at > now() - interval '1 hour'"#,
        device
    )
    .fetch_one(db)
    .await?;
    Ok((row.count, row.oldest))
}

/// Retires a renewed certificate at `at` (it stays valid beside its successor until then).
pub async fn retire(
    db: impl PgExecutor<'_>,
    serial: &str,
    at: OffsetDateTime,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE certificates SET revoked_at = $2, revocation_reason = $3
         WHERE serial = $1 AND revoked_at IS NULL",
        serial,
        at,
        reason
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Revokes every certificate of the device still valid now (a retired one in its overlap included);
/// answers how many.
pub async fn revoke_of_device(
    db: impl PgExecutor<'_>,
    device: &str,
    reason: &str,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "UPDATE certificates SET revoked_at = now(), revocation_reason = $2
         WHERE device_id = $1 AND (revoked_at IS NULL OR revoked_at > now())",
        device,
        reason
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Revokes the certificate and every certificate renewed from it, at once; answers their serials.
/// One revoked before for a reason of its own keeps it; one retired by a renewal is revoked now.
pub async fn revoke_lineage(
    db: impl PgExecutor<'_>,
    serial: &str,
    reason: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"WITH RECURSIVE lineage AS (
               SELECT serial FROM certificates WHERE serial = $1
               UNION
               SELECT c.serial FROM certificates c JOIN lineage l ON c.renewed_from = l.serial
           )
           UPDATE certificates
           SET revocation_reason = CASE
                   WHEN revoked_at <= now() AND revocation_reason NOT LIKE 'superseded by %'
                       THEN revocation_reason
                   WHEN serial = $1 THEN $2
                   ELSE 'renewed from revoked certificate ' || $1
               END,
               revoked_at = least(coalesce(revoked_at, now()), now())
           WHERE serial IN (SELECT serial FROM lineage)
           RETURNING serial"#,
        serial,
        reason
    )
    .fetch_all(db)
    .await
}

/// The active devices whose certificate in force expires within `window`, soonest first, at most
/// `limit`; and how many there are in all.
pub async fn expiring(
    db: impl PgExecutor<'_>,
    window: time::Duration,
    limit: i64,
) -> Result<(i64, Vec<String>), sqlx::Error> {
    // From the certificates not revoked or retired that expire within the window (a partial index
    // holds just those), the ones no later certificate of their device succeeds: at 100,000 devices
    // this reads the few that expire, where grouping every certificate by device took 200 ms.
    let rows = sqlx::query!(
        r#"SELECT c.device_id, count(*) OVER () AS "total!"
           FROM certificates c JOIN devices d ON d.id = c.device_id
           WHERE d.status = 'active' AND c.revoked_at IS NULL
             AND c.not_after < now() + make_interval(secs => $1)
             AND NOT EXISTS (
                 SELECT 1 FROM certificates later
                 WHERE later.device_id = c.device_id
                   AND (later.not_after, later.serial) > (c.not_after, c.serial)
                   AND (later.revoked_at IS NULL OR later.revoked_at > now()))
           ORDER BY c.not_after, c.device_id LIMIT $2"#,
        window.as_seconds_f64(),
        limit
    )
    .fetch_all(db)
    .await?;
    let total = rows.first().map_or(0, |row| row.total);
    Ok((total, rows.into_iter().map(|row| row.device_id).collect()))
}
