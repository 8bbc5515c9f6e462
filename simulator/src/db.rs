//! The benches' writes straight into the database (checked against the migrations at compile time,
//! like the services' queries): a synthetic audit trail, and a fleet issued in bulk.

use edgemesh_core::cert::CertInfo;
use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;

/// The synthetic decisions already stored (their policy version is `bench`).
pub async fn bench_records(db: &PgPool, since: OffsetDateTime) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM audit_log
           WHERE event_type = 'authorization' AND policy_version = 'bench' AND occurred_at >= $1"#,
        since
    )
    .fetch_one(db)
    .await
}

/// The audit's size: (records, bytes of every partition with its indexes), and the records of the
/// partition that today's decisions go to.
pub async fn audit_size(db: &PgPool) -> Result<(i64, i64, i64), sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT (SELECT count(*) FROM audit_log) AS "records!",
                  (SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0)::bigint
                   FROM pg_inherits i WHERE i.inhparent = 'audit_log'::regclass) AS "bytes!",
                  (SELECT count(*) FROM audit_log
                   WHERE occurred_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
                   AS "current!""#
    )
    .fetch_one(db)
    .await?;
    Ok((row.records, row.bytes, row.current))
}

/// Records the audit sequencer has chained.
pub async fn sequenced(db: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!("SELECT seq FROM audit_sequencer")
        .fetch_one(db)
        .await
}

/// VACUUM ANALYZE of the audit, as autovacuum leaves a table that has been filled over weeks.
pub async fn vacuum_audit(db: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("VACUUM (ANALYZE) audit_log")
        .execute(db)
        .await?;
    Ok(())
}

/// The partitions of this month and the three before it, as production would have them.
pub async fn recent_partitions(db: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "SELECT edgemesh_audit_partition(((now() AT TIME ZONE 'UTC') - make_interval(months => m))::date)
         FROM generate_series(0, 3) AS m"
    )
    .fetch_all(db)
    .await?;
    Ok(())
}

/// `count` synthetic decisions numbered from `first`, spread over `devices` devices, 500 owners, four
/// services and the time from `since` to now; one in five a deny.
pub async fn insert_bench_records(
    db: &PgPool,
    first: i64,
    devices: i64,
    count: i64,
    since: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO audit_log (id, occurred_at, event_type, action, device_id, user_id, role,
             service, method, path, decision, reasons, policy_version, latency_us)
         SELECT gen_random_uuid(), $4::timestamptz + random() * (now() - $4::timestamptz),
             'authorization', 'check',
             'bench-' || (i % $2), 'owner-' || (i % 500), 'developer',
             (ARRAY['api', 'database', 'storage', 'analytics'])[1 + i % 4], 'GET',
             '/api/items/' || i, CASE WHEN i % 5 = 0 THEN 'deny' ELSE 'allow' END,
             CASE WHEN i % 5 = 0 THEN ARRAY['antivirus is not enabled'] ELSE '{}'::text[] END,
             'bench', 80
         FROM generate_series($1::bigint, $1::bigint + $3::bigint - 1) AS i",
        first,
        devices,
        count,
        since
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Fresh planner statistics after a bulk insert.
pub async fn analyze_audit(db: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query!("ANALYZE audit_log").execute(db).await?;
    Ok(())
}

/// The owner of the bulk fleet, an admin.
pub async fn bench_admin(db: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO users (id, email, role) VALUES ('bench-admin', 'bench-admin@bench.invalid', 'admin')
         ON CONFLICT DO NOTHING"
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A device of the bulk fleet: its id, its certificate and what was read from it.
pub struct Seeded {
    pub id: String,
    pub cert_pem: String,
    pub info: CertInfo,
}

/// Enrols `devices` for `bench-admin`, each with its certificate and a healthy report, in one
/// transaction.
pub async fn insert_fleet(db: &PgPool, devices: &[Seeded]) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
    let serials: Vec<&str> = devices.iter().map(|d| d.info.serial.as_str()).collect();
    let fingerprints: Vec<String> = devices
        .iter()
        .map(|d| d.info.fingerprint.to_string())
        .collect();
    let not_before: Vec<_> = devices.iter().map(|d| d.info.not_before).collect();
    let not_after: Vec<_> = devices.iter().map(|d| d.info.not_after).collect();
    let pems: Vec<&str> = devices.iter().map(|d| d.cert_pem.as_str()).collect();
    let mut tx = db.begin().await?;
    insert_devices(&mut *tx, &ids).await?;
    sqlx::query!(
        "INSERT INTO certificates (serial, device_id, fingerprint, not_before, not_after, certificate_pem)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::text[])",
        &serials as &[&str],
        &ids as &[&str],
        &fingerprints,
        &not_before,
        &not_after,
        &pems as &[&str]
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

async fn insert_devices(db: impl PgExecutor<'_>, ids: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO devices (id, owner_id, device_type, os, os_version, health_status, last_health_at,
             health_received_at, cpu_usage, memory_usage, disk_usage, disk_encrypted,
             os_patches_current, antivirus_enabled, firewall_enabled)
         SELECT id, 'bench-admin', 'bench', 'debian', '12', 'healthy', now(), now(), 20, 40, 50, true,
                true, true, true
         FROM UNNEST($1::text[]) AS id",
        ids as &[&str]
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Stores decision contexts (id, text), skipping stored ones.
pub async fn insert_contexts(
    db: &PgPool,
    ids: &[Vec<u8>],
    bodies: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO decision_contexts (id, body)
         SELECT * FROM unnest($1::bytea[], $2::text[]) ON CONFLICT DO NOTHING",
        ids,
        bodies
    )
    .execute(db)
    .await?;
    Ok(())
}

/// `count` decisions numbered from `first` of `total`, evenly spread from `from` over `span_secs`,
/// each made on one of `contexts` (the device `bench-<n>` of context n, its owner's role the
/// context's), one in five a deny.
pub async fn insert_replayable_records(
    db: &PgPool,
    contexts: &[Vec<u8>],
    from: time::OffsetDateTime,
    span_secs: f64,
    first: i64,
    count: i64,
    total: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO audit_log (id, occurred_at, event_type, action, device_id, user_id, role,
             service, method, path, decision, reasons, policy_version, latency_us, context)
         SELECT gen_random_uuid(), $2::timestamptz + make_interval(secs => $3::float8 * i / $6::float8), 'authorization',
             'check', 'bench-' || (i % cardinality($1::bytea[])),
             'owner-' || (i % cardinality($1::bytea[])), 'developer',
             (ARRAY['api', 'database', 'storage', 'analytics'])[1 + i % 4], 'GET',
             '/api/items/' || i, CASE WHEN i % 5 = 0 THEN 'deny' ELSE 'allow' END,
             CASE WHEN i % 5 = 0 THEN ARRAY['antivirus is not enabled'] ELSE '{}'::text[] END,
             'bench', 80, ($1::bytea[])[1 + i % cardinality($1::bytea[])]
         FROM generate_series($4::bigint, $4::bigint + $5::bigint - 1) AS i",
        contexts,
        from,
        span_secs,
        first,
        count,
        total as f64
    )
    .execute(db)
    .await?;
    Ok(())
}
