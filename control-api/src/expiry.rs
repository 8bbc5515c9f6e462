//! The certificate expiry scan: at start and then daily, the active devices whose certificate in force
//! (the newest not revoked or retired) expires within the configured window are counted into
//! `edgemesh_certificates_expiring{within="<N>d"}` and logged, so an alert fires days before a device
//! stops being able to renew. The console's fleet page counts with the same query.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use crate::metrics::Metrics;

const SCAN_EVERY: Duration = Duration::from_secs(24 * 3600);
/// Devices named in the scan's log line, at most.
const NAMED: i64 = 20;

/// The active devices whose certificate in force expires within `window` (an expired one included:
/// it can no longer renew), soonest first, at most `limit`, and how many there are in all.
pub async fn expiring(
    db: &PgPool,
    window: time::Duration,
    limit: i64,
) -> Result<(i64, Vec<String>), sqlx::Error> {
    // From the certificates not revoked or retired that expire within the window (a partial index
    // holds just those), the ones no later certificate of their device succeeds: at 100,000 devices
    // this reads the few that expire, where grouping every certificate by device took 200 ms.
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.device_id, count(*) OVER ()
         FROM certificates c JOIN devices d ON d.id = c.device_id
         WHERE d.status = 'active' AND c.revoked_at IS NULL
           AND c.not_after < now() + make_interval(secs => $1)
           AND NOT EXISTS (
               SELECT 1 FROM certificates later
               WHERE later.device_id = c.device_id
                 AND (later.not_after, later.serial) > (c.not_after, c.serial)
                 AND (later.revoked_at IS NULL OR later.revoked_at > now()))
         ORDER BY c.not_after, c.device_id LIMIT $2",
    )
    .bind(window.as_seconds_f64())
    .bind(limit)
    .fetch_all(db)
    .await?;
    let total = rows.first().map_or(0, |(_, n)| *n);
    Ok((total, rows.into_iter().map(|(id, _)| id).collect()))
}

/// The `within` label of a window: whole days.
pub fn label(window: time::Duration) -> String {
    format!("{}d", window.whole_days())
}

/// Scans once now and then every day, until `stop`.
pub async fn scan_daily(
    db: PgPool,
    metrics: Arc<Metrics>,
    window: time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match expiring(&db, window, NAMED).await {
            Ok((total, devices)) => {
                metrics
                    .certificates_expiring
                    .with_label_values(&[&label(window)])
                    .set(total);
                metrics
                    .expiry_scanned
                    .set(time::OffsetDateTime::now_utc().unix_timestamp());
                if total > 0 {
                    tracing::warn!(
                        devices = total,
                        first = ?devices,
                        within_days = window.whole_days(),
                        "device certificates expire soon; their devices must renew"
                    );
                } else {
                    tracing::info!(
                        within_days = window.whole_days(),
                        "no device certificate expires soon"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "the certificate expiry scan failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(SCAN_EVERY) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}
