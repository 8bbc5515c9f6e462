//! Prometheus metrics of the ext-authz server, served on their own listener at `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub decisions: IntCounterVec,
    pub latency: Histogram,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_invalidations: IntCounter,
    pub cache_entries: IntGauge,
    pub notify_heartbeat_age: prometheus::Gauge,
    pub policy_reloads: IntCounterVec,
    pub audit_queue_depth: IntGauge,
    pub audit_written: IntCounter,
    pub audit_write_failures: IntCounter,
    pub audit_torn: IntCounter,
    pub audit_replayed: IntCounter,
    pub audit_duplicates: IntCounter,
    pub audit_lost: IntCounter,
    pub audit_spool_bytes: IntGauge,
}

/// Check handling takes tens of microseconds when the cache is warm; the buckets resolve that.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

impl Metrics {
    pub fn new() -> anyhow::Result<Arc<Self>> {
        let registry = Registry::new();
        let decisions = IntCounterVec::new(
            Opts::new(
                "edgemesh_ext_authz_decisions_total",
                "Authorization decisions, by decision, service and (for denies) the main reason.",
            ),
            &["decision", "service", "reason"],
        )?;
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "edgemesh_ext_authz_decision_latency_seconds",
                "Time to handle one Check call, from arrival to answer.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let cache_hits = IntCounter::new(
            "edgemesh_ext_authz_cache_hits_total",
            "Device lookups answered from the cache.",
        )?;
        let cache_misses = IntCounter::new(
            "edgemesh_ext_authz_cache_misses_total",
            "Device lookups that read Postgres.",
        )?;
        let cache_invalidations = IntCounter::new(
            "edgemesh_ext_authz_cache_invalidations_total",
            "Change notifications applied to the cache.",
        )?;
        let cache_entries = IntGauge::new(
            "edgemesh_ext_authz_cache_entries",
            "Devices currently cached.",
        )?;
        let notify_heartbeat_age = prometheus::Gauge::new(
            "edgemesh_ext_authz_notify_heartbeat_age_seconds",
            "Seconds since the change listener last heard its own heartbeat notification; beyond the \
             timeout the cache is bypassed and the listener reconnected.",
        )?;
        let policy_reloads = IntCounterVec::new(
            Opts::new(
                "edgemesh_ext_authz_policy_reloads_total",
                "Policy reloads after a change of the files, by result (replaced, refused).",
            ),
            &["result"],
        )?;
        let audit_queue_depth = IntGauge::new(
            "edgemesh_ext_authz_audit_queue_depth",
            "Decisions queued for the audit writer.",
        )?;
        let audit_written = IntCounter::new(
            "edgemesh_ext_authz_audit_records_written_total",
            "Decision records written to Postgres from the queue.",
        )?;
        let audit_write_failures = IntCounter::new(
            "edgemesh_ext_authz_audit_write_failures_total",
            "Audit batches Postgres did not take in time (shipped from the spool instead).",
        )?;
        let audit_torn = IntCounter::new(
            "edgemesh_ext_authz_audit_spool_torn_total",
            "Torn records cut off the audit spool's end at start (a crash mid-append: their answers \
             never left).",
        )?;
        let audit_replayed = IntCounter::new(
            "edgemesh_ext_authz_audit_records_replayed_total",
            "Decision records written to Postgres from the spool instead of the queue (after an outage \
             or a slow write, a full queue, or at start after a crash).",
        )?;
        let audit_duplicates = IntCounter::new(
            "edgemesh_ext_authz_audit_records_duplicate_total",
            "Replayed records Postgres already had (a write that timed out after committing).",
        )?;
        let audit_lost = IntCounter::new(
            "edgemesh_ext_authz_audit_records_lost_total",
            "Decision records neither written nor journaled, or unreadable in the spool. Anything above 0 \
             needs an operator.",
        )?;
        let audit_spool_bytes = IntGauge::new(
            "edgemesh_ext_authz_audit_spool_bytes",
            "Bytes of the audit spool the writer is behind on, shipping from the spool (0 while it \
             ships the queue).",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "edgemesh_ext_authz_build_info",
                "Always 1; the running ext-authz's version in its label.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Every metric of the process, registered in one list.
        for collector in [
            Box::new(decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(cache_hits.clone()),
            Box::new(cache_misses.clone()),
            Box::new(cache_invalidations.clone()),
            Box::new(cache_entries.clone()),
            Box::new(notify_heartbeat_age.clone()),
            Box::new(policy_reloads.clone()),
            Box::new(audit_queue_depth.clone()),
            Box::new(audit_written.clone()),
            Box::new(audit_write_failures.clone()),
            Box::new(audit_torn.clone()),
            Box::new(audit_replayed.clone()),
            Box::new(audit_duplicates.clone()),
            Box::new(audit_lost.clone()),
            Box::new(audit_spool_bytes.clone()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry.register(collector)?;
        }
        for result in ["replaced", "refused"] {
            policy_reloads.with_label_values(&[result]);
        }
        Ok(Arc::new(Self {
            registry,
            decisions,
            latency,
            cache_hits,
            cache_misses,
            cache_invalidations,
            cache_entries,
            notify_heartbeat_age,
            policy_reloads,
            audit_queue_depth,
            audit_written,
            audit_write_failures,
            audit_torn,
            audit_replayed,
            audit_duplicates,
            audit_lost,
            audit_spool_bytes,
        }))
    }

    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

/// The bounded reason label of a deny: the first of its reasons, by this order, that matches.
pub fn reason_label(allow: bool, reasons: &[String]) -> &'static str {
    if allow {
        return "none";
    }
    const LABELS: [(&str, &str); 18] = [
        ("no client certificate", "no_identity"),
        ("not issued by the EdgeMesh CA", "no_identity"),
        ("has expired", "expired"),
        ("names no device", "no_identity"),
        ("no usable device identity", "no_identity"),
        ("does not parse", "no_identity"),
        ("not enrolled", "not_enrolled"),
        ("not on record", "unknown_certificate"),
        ("revoked", "revoked"),
        ("is not active", "revoked"),
        ("directory is unavailable", "directory_unavailable"),
        ("never reported", "never_reported"),
        ("stale", "stale_health"),
        ("not supported", "unsupported_os"),
        ("may not use service", "role"),
        ("unknown service", "unknown_service"),
        ("business hours", "business_hours"),
        ("policy evaluation failed", "policy_error"),
    ];
    for (needle, label) in LABELS {
        if reasons.iter().any(|r| r.contains(needle)) {
            return label;
        }
    }
    if reasons.iter().any(|r| {
        r.contains("patches")
            || r.contains("antivirus")
            || r.contains("encryption")
            || r.contains("usage")
    }) {
        return "unhealthy";
    }
    "other"
}

/// Serves `/metrics` on `listen` until the task is dropped.
pub async fn serve(
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    metrics.render(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_map_to_a_bounded_set_of_labels() {
        let label = |r: &[&str]| {
            reason_label(
                false,
                &r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(reason_label(true, &[]), "none");
        assert_eq!(label(&["antivirus is not enabled"]), "unhealthy");
        assert_eq!(
            label(&[
                "antivirus is not enabled",
                "the client certificate is revoked"
            ]),
            "revoked",
            "the more fundamental reason wins"
        );
        assert_eq!(
            label(&["role analyst may not use service database"]),
            "role"
        );
        assert_eq!(label(&["device pi-9 is not enrolled"]), "not_enrolled");
        assert_eq!(label(&["the client certificate has expired"]), "expired");
        assert_eq!(
            label(&["the client certificate is not issued by the EdgeMesh CA"]),
            "no_identity"
        );
        assert_eq!(label(&["something new"]), "other");
    }
}
