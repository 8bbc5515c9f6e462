//! Prometheus metrics of the control API, served on their own plain-HTTP listener at `/metrics`.
//! Counters move as requests are handled; the fleet gauges are read from Postgres at each scrape, so
//! every replica reports the same truth.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use sqlx::PgPool;

use crate::db::devices;

pub struct Metrics {
    registry: Registry,
    /// By result: `enrolled`, `refused`.
    pub enrollments: IntCounterVec,
    pub renewals: IntCounter,
    /// Accepted health reports by verdict: `healthy`, `unhealthy`.
    pub health_checks: IntCounterVec,
    /// Reports stored per statement of the health writer.
    pub health_batch: Histogram,
    devices: IntGaugeVec,
    unhealthy_devices: IntGauge,
    database_up: IntGauge,
    /// Active devices whose certificate in force expires within the scan's window (the expiry scan).
    pub certificates_expiring: IntGaugeVec,
    /// When the expiry scan last ran to the end (Unix seconds).
    pub expiry_scanned: IntGauge,
    /// 1 while this replica is the audit sequencer.
    pub audit_sequencer_leader: IntGauge,
    pub audit_sequenced: prometheus::IntCounter,
    pub audit_checkpoints: prometheus::IntCounter,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Arc<Self>> {
        let registry = Registry::new();
        let enrollments = IntCounterVec::new(
            Opts::new(
                "edgemesh_control_api_enrollments_total",
                "Enrollment attempts, by result (enrolled, refused, rate_limited: refused unseen after too many refusals from one address).",
            ),
            &["result"],
        )?;
        let renewals = IntCounter::new(
            "edgemesh_control_api_certificate_renewals_total",
            "Device certificates renewed.",
        )?;
        let health_checks = IntCounterVec::new(
            Opts::new(
                "edgemesh_control_api_health_reports_total",
                "Health reports accepted, by the compliance verdict (healthy, unhealthy).",
            ),
            &["status"],
        )?;
        let health_batch = Histogram::with_opts(
            HistogramOpts::new(
                "edgemesh_control_api_health_batch_reports",
                "Health reports stored by each statement of the health writer (the reports that arrived while the previous one ran).",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
        )?;
        let devices = IntGaugeVec::new(
            Opts::new(
                "edgemesh_control_api_devices",
                "Enrolled devices, by status (active, revoked).",
            ),
            &["status"],
        )?;
        let unhealthy_devices = IntGauge::new(
            "edgemesh_control_api_unhealthy_devices",
            "Active devices whose latest health is unhealthy or older than the maximum health age.",
        )?;
        let database_up = IntGauge::new(
            "edgemesh_control_api_database_up",
            "1 if the last scrape could read the fleet gauges from Postgres.",
        )?;
        let certificates_expiring = IntGaugeVec::new(
            Opts::new(
                "edgemesh_control_api_certificates_expiring",
                "Active devices whose certificate in force expires within the window (label within, in days), at the last daily expiry scan.",
            ),
            &["within"],
        )?;
        let expiry_scanned = IntGauge::new(
            "edgemesh_control_api_expiry_scan_timestamp_seconds",
            "When the certificate expiry scan last completed (Unix time).",
        )?;
        let audit_sequencer_leader = IntGauge::new(
            "edgemesh_control_api_audit_sequencer_leader",
            "1 while this control API holds the audit sequencer's lock (exactly one replica should).",
        )?;
        let audit_sequenced = prometheus::IntCounter::new(
            "edgemesh_control_api_audit_sequenced_total",
            "Audit records this control API gave a sequence number and a chained hash.",
        )?;
        let audit_checkpoints = prometheus::IntCounter::new(
            "edgemesh_control_api_audit_checkpoints_total",
            "Signed audit checkpoints this control API wrote.",
        )?;
        // Every metric of the process, registered in one list.
        for collector in [
            Box::new(audit_sequencer_leader.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(audit_sequenced.clone()),
            Box::new(audit_checkpoints.clone()),
            Box::new(certificates_expiring.clone()),
            Box::new(expiry_scanned.clone()),
            Box::new(enrollments.clone()),
            Box::new(renewals.clone()),
            Box::new(health_checks.clone()),
            Box::new(health_batch.clone()),
            Box::new(devices.clone()),
            Box::new(unhealthy_devices.clone()),
            Box::new(database_up.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry.register(collector)?;
        }
        // Known label values are exported from the start, so rates and ratios exist before the first
        // event.
        for result in ["enrolled", "refused", "rate_limited"] {
            enrollments.with_label_values(&[result]);
        }
        for status in ["healthy", "unhealthy"] {
            health_checks.with_label_values(&[status]);
        }
        for status in ["active", "revoked"] {
            devices.with_label_values(&[status]);
        }
        Ok(Arc::new(Self {
            registry,
            enrollments,
            renewals,
            health_checks,
            health_batch,
            devices,
            unhealthy_devices,
            database_up,
            certificates_expiring,
            expiry_scanned,
            audit_sequencer_leader,
            audit_sequenced,
            audit_checkpoints,
        }))
    }

    /// Refreshes the fleet gauges from Postgres and renders everything in the text format.
    pub async fn render(&self, db: &PgPool, max_health_age: time::Duration) -> String {
        let oldest_fresh = time::OffsetDateTime::now_utc() - max_health_age;
        match devices::count_by_verdict(db, oldest_fresh).await {
            Ok(counts) => {
                let (mut active, mut revoked, mut unhealthy) = (0, 0, 0);
                for c in &counts {
                    match (c.status.as_str(), c.verdict.as_str()) {
                        ("active", "unhealthy" | "stale") => {
                            active += c.devices;
                            unhealthy += c.devices;
                        }
                        ("active", _) => active += c.devices,
                        _ => revoked += c.devices,
                    }
                }
                self.devices.with_label_values(&["active"]).set(active);
                self.devices.with_label_values(&["revoked"]).set(revoked);
                self.unhealthy_devices.set(unhealthy);
                self.database_up.set(1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: could not count devices");
                self.database_up.set(0);
            }
        }
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

/// Serves `/metrics` on `listener` until `stop` completes.
pub async fn serve(
    metrics: Arc<Metrics>,
    db: PgPool,
    max_health_age: time::Duration,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = Arc::clone(&metrics);
            let db = db.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    metrics.render(&db, max_health_age).await,
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "metrics listener failed");
    }
}
