//! The control API's periodic jobs, done once for the fleet however many replicas run:
//!
//! - `partitions`: the audit's monthly partitions and the health history's daily ones are created ahead,
//!   and those past their retention dropped;
//! - `expiry_scan`: the active devices whose certificate in force (the newest not revoked or retired)
//!   expires within the warning window are counted into
//!   `edgemesh_control_api_certificates_expiring{within="<N>d"}` and logged, so an alert fires days
//!   before a device stops being able to renew (the console's fleet page counts with the same query).
//!
//! Every replica looks every minute (or every interval, if shorter); a job due (not run within the
//! interval, see `control_jobs`) is run by the replica that takes its advisory lock, inside the
//! transaction that holds the lock and records the run. The others skip it, and publish what the last
//! run found, so their metrics agree.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use sqlx::PgPool;
use time::{Date, OffsetDateTime};
use tokio::sync::watch;

use crate::audit::{self, Retention};
use crate::db::{certificates, jobs};
use crate::metrics::Metrics;

/// Devices named in the expiry scan's result and log line, at most.
const NAMED: i64 = 20;
/// Days of health partitions created ahead of today.
const HEALTH_DAYS_AHEAD: i64 = 2;
/// Replicas look for due jobs at least this often.
const LOOK_EVERY: Duration = Duration::from_secs(60);

/// What the jobs keep and how often they run.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub audit: Retention,
    /// Health reports are kept this many days (whole days dropped); `None` keeps everything.
    pub health_keep_days: Option<u32>,
    /// Certificates expiring within this are counted.
    pub expiry_warning: time::Duration,
    /// How often each job runs, fleet-wide.
    pub every: Duration,
}

/// What became of a job at one look.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// This replica ran it; what it found.
    Ran(serde_json::Value),
    /// It ran within the interval (here or elsewhere): when, and what it found.
    NotDue {
        ran_at: OffsetDateTime,
        result: serde_json::Value,
    },
    /// Another replica is running it now.
    Busy,
}

/// Runs `work` if the job `job` is due and no other replica runs it; records the run (time, this
/// replica, `work`'s result) in the transaction that holds the job's advisory lock. A failed `work`
/// records nothing: the job stays due.
pub async fn run_if_due(
    db: &PgPool,
    job: &str,
    every: Duration,
    replica: &str,
    work: impl Future<Output = anyhow::Result<serde_json::Value>>,
) -> anyhow::Result<Outcome> {
    let mut tx = db.begin().await?;
    if !jobs::try_lock(&mut *tx, job).await? {
        return Ok(Outcome::Busy);
    }
    let every = time::Duration::try_from(every).unwrap_or(time::Duration::MAX);
    if let Some(last) = jobs::last_run(&mut *tx, job).await?
        && OffsetDateTime::now_utc() - last.ran_at < every
    {
        return Ok(Outcome::NotDue {
            ran_at: last.ran_at,
            result: last.result,
        });
    }
    let result = work.await?;
    jobs::record_run(&mut *tx, job, replica, &result).await?;
    tx.commit().await?;
    Ok(Outcome::Ran(result))
}

/// Creates the health history's partitions of today and the next days, and drops the days wholly
/// older than the retention; answers the partitions created and dropped. `now` is a parameter for
/// tests.
pub async fn health_partitions(
    db: &PgPool,
    keep_days: Option<u32>,
    now: OffsetDateTime,
) -> anyhow::Result<audit::Maintenance> {
    let mut done = audit::Maintenance::default();
    for ahead in 0..=HEALTH_DAYS_AHEAD {
        let day = now.date() + time::Duration::days(ahead);
        if jobs::create_health_partition(db, day)
            .await
            .context("failed to create a health partition")?
        {
            done.created.push(health_partition_name(day));
        }
    }
    if let Some(keep_days) = keep_days {
        let cutoff = now - time::Duration::days(i64::from(keep_days));
        done.dropped = jobs::retain_health(db, cutoff)
            .await
            .context("failed to drop health partitions past the retention")?;
    }
    Ok(done)
}

fn health_partition_name(day: Date) -> String {
    format!(
        "health_reports_p{:04}{:02}{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    )
}

/// One pass of the `partitions` job.
async fn partitions(db: &PgPool, settings: Settings) -> anyhow::Result<serde_json::Value> {
    let now = OffsetDateTime::now_utc();
    let audit = audit::maintain(db, settings.audit, now).await?;
    let health = health_partitions(db, settings.health_keep_days, now).await?;
    Ok(json!({
        "created": audit.created.iter().chain(&health.created).collect::<Vec<_>>(),
        "dropped": audit.dropped.iter().chain(&health.dropped).collect::<Vec<_>>(),
    }))
}

/// One pass of the `expiry_scan` job.
async fn expiry_scan(db: &PgPool, window: time::Duration) -> anyhow::Result<serde_json::Value> {
    let (total, devices) = certificates::expiring(db, window, NAMED).await?;
    Ok(json!({ "expiring": total, "devices": devices }))
}

/// The `within` label of a window: whole days.
pub fn label(window: time::Duration) -> String {
    format!("{}d", window.whole_days())
}

/// This process, as `control_jobs.ran_by` names it: host and process id.
pub fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{host}:{}", std::process::id())
}

/// The partitions before the first request is served: runs the `partitions` job if it is due, and
/// waits while another replica runs it.
pub async fn prepare(db: &PgPool, settings: Settings, replica: &str) -> anyhow::Result<()> {
    loop {
        match run_if_due(
            db,
            "partitions",
            settings.every,
            replica,
            partitions(db, settings),
        )
        .await?
        {
            Outcome::Busy => tokio::time::sleep(Duration::from_millis(200)).await,
            outcome => {
                log("partitions", &outcome);
                return Ok(());
            }
        }
    }
}

fn log(job: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Ran(result) => tracing::info!(job, %result, "ran a maintenance job"),
        Outcome::NotDue { ran_at, .. } => {
            tracing::debug!(job, %ran_at, "maintenance job not due");
        }
        Outcome::Busy => tracing::debug!(job, "another control API runs this job"),
    }
}

/// Looks for due jobs until `stop` turns true. A failed job is logged and stays due.
pub async fn run(
    db: PgPool,
    metrics: Arc<Metrics>,
    settings: Settings,
    replica: String,
    mut stop: watch::Receiver<bool>,
) {
    let within = label(settings.expiry_warning);
    loop {
        match run_if_due(
            &db,
            "partitions",
            settings.every,
            &replica,
            partitions(&db, settings),
        )
        .await
        {
            Ok(outcome) => log("partitions", &outcome),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "partition maintenance failed"),
        }
        let scan = expiry_scan(&db, settings.expiry_warning);
        match run_if_due(&db, "expiry_scan", settings.every, &replica, scan).await {
            Ok(outcome) => {
                log("expiry_scan", &outcome);
                let found = match &outcome {
                    Outcome::Ran(result) => Some((OffsetDateTime::now_utc(), result)),
                    Outcome::NotDue { ran_at, result } => Some((*ran_at, result)),
                    Outcome::Busy => None,
                };
                if let Some((ran_at, result)) = found {
                    let total = result["expiring"].as_i64().unwrap_or(0);
                    metrics
                        .certificates_expiring
                        .with_label_values(&[&within])
                        .set(total);
                    metrics.expiry_scanned.set(ran_at.unix_timestamp());
                    if matches!(outcome, Outcome::Ran(_)) && total > 0 {
                        tracing::warn!(
                            devices = total,
                            first = %result["devices"],
                            within_days = settings.expiry_warning.whole_days(),
                            "device certificates expire soon; their devices must renew"
                        );
                    }
                }
            }
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "the certificate expiry scan failed"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(settings.every.min(LOOK_EVERY)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    #[test]
    fn health_partitions_are_named_by_day() {
        assert_eq!(
            health_partition_name(date!(2026 - 12 - 03)),
            "health_reports_p20261203"
        );
        assert_eq!(label(time::Duration::days(7)), "7d");
    }
}
