//! `control_jobs` and the health history's partitions: the periodic jobs' advisory locks and runs,
//! and the functions (running as the tables' owner) that make and drop the history's days.

use sqlx::PgExecutor;
use time::{Date, OffsetDateTime};

/// Takes the job's advisory lock for the transaction, if no other session holds it.
pub async fn try_lock(db: impl PgExecutor<'_>, job: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_xact_lock(hashtext('edgemesh_job:' || $1)) AS "locked!""#,
        job
    )
    .fetch_one(db)
    .await
}

/// When the job last ran, and what it found.
pub struct LastRun {
    pub ran_at: OffsetDateTime,
    pub result: serde_json::Value,
}

pub async fn last_run(db: impl PgExecutor<'_>, job: &str) -> Result<Option<LastRun>, sqlx::Error> {
    sqlx::query_as!(
        LastRun,
        "SELECT ran_at, result FROM control_jobs WHERE job = $1",
        job
    )
    .fetch_optional(db)
    .await
}

pub async fn record_run(
    db: impl PgExecutor<'_>,
    job: &str,
    replica: &str,
    result: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO control_jobs (job, ran_at, ran_by, result) VALUES ($1, now(), $2, $3)
         ON CONFLICT (job) DO UPDATE SET ran_at = excluded.ran_at, ran_by = excluded.ran_by,
             result = excluded.result",
        job,
        replica,
        result
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Creates the health history's partition of `day`; `false` when it existed.
pub async fn create_health_partition(
    db: impl PgExecutor<'_>,
    day: Date,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT edgemesh_health_partition($1) AS "created!""#, day)
        .fetch_one(db)
        .await
}

/// Drops the history's days wholly before `cutoff` (and the default partition's rows before it);
/// answers the partitions dropped.
pub async fn retain_health(
    db: impl PgExecutor<'_>,
    cutoff: OffsetDateTime,
) -> Result<Vec<String>, sqlx::Error> {
    let dropped = sqlx::query_scalar!("SELECT edgemesh_health_retain($1)", cutoff)
        .fetch_all(db)
        .await?;
    Ok(dropped.into_iter().flatten().collect())
}
