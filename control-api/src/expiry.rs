//! The certificate expiry scan: at start and then daily, the active devices whose certificate in force
//! (the newest not revoked or retired) expires within the configured window are counted into
//! `edgemesh_control_api_certificates_expiring{within="<N>d"}` and logged, so an alert fires days before a device
//! stops being able to renew. The console's fleet page counts with the same query.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use crate::db::certificates;
use crate::metrics::Metrics;

const SCAN_EVERY: Duration = Duration::from_secs(24 * 3600);
/// Devices named in the scan's log line, at most.
const NAMED: i64 = 20;

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
        match certificates::expiring(&db, window, NAMED).await {
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
