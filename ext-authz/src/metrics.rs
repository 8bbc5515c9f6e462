//! Prometheus metrics of the ext-authz server, served on their own listener at `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use edgemesh_core::policy::Decision;
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
    pub cache_stale_rereads: IntCounter,
    pub cache_invalidations: IntCounter,
    pub cache_entries: IntGauge,
    pub notify_heartbeat_age: prometheus::Gauge,
    pub policy_reloads: IntCounterVec,
    pub shadow_decisions: IntCounterVec,
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
        let cache_stale_rereads = IntCounter::new(
            "edgemesh_ext_authz_cache_stale_rereads_total",
            "Cached devices read again because their health measurement turned stale (reports that \
             measure the same facts again notify nobody); counted in the misses too.",
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
        let shadow_decisions = IntCounterVec::new(
            Opts::new(
                "edgemesh_shadow_decisions_total",
                "Decisions of routes with a shadow policy, by service, the enforced decision and what the \
                 shadow (candidate) policies would have decided.",
            ),
            &["service", "enforced", "shadow"],
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
            Box::new(cache_stale_rereads.clone()),
            Box::new(cache_invalidations.clone()),
            Box::new(cache_entries.clone()),
            Box::new(notify_heartbeat_age.clone()),
            Box::new(policy_reloads.clone()),
            Box::new(shadow_decisions.clone()),
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
            cache_stale_rereads,
            cache_invalidations,
            cache_entries,
            notify_heartbeat_age,
            policy_reloads,
            shadow_decisions,
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

/// The codes of deny reasons, the most fundamental first: a deny's `reason` label is the first of its
/// codes in this order (a revoked device is counted as revoked, not as also outside business hours).
/// A code a policy adds of its own comes after these, in alphabetical order.
const REASON_PRECEDENCE: [&str; 25] = [
    "no_identity",
    "expired",
    "not_enrolled",
    "unknown_certificate",
    "revoked",
    "device_inactive",
    "directory_unavailable",
    "policy_error",
    "never_reported",
    "stale_health",
    "no_health_age",
    "unsupported_os",
    "os_patches",
    "antivirus",
    "disk_encryption",
    "cpu_usage",
    "memory_usage",
    "disk_usage",
    "firewall",
    "no_role",
    "no_service",
    "unknown_service",
    "role",
    "business_hours",
    "unspecified",
];

impl Metrics {
    /// Decisions so far: (allowed, denied).
    fn decision_totals(&self) -> (u64, u64) {
        let (mut allowed, mut denied) = (0, 0);
        for family in prometheus::core::Collector::collect(&self.decisions) {
            for metric in family.get_metric() {
                let count = metric.get_counter().get_value() as u64;
                let allow = metric
                    .get_label()
                    .iter()
                    .any(|l| l.name() == "decision" && l.value() == "allow");
                if allow {
                    allowed += count;
                } else {
                    denied += count;
                }
            }
        }
        (allowed, denied)
    }
}

/// Logs, at info, how many decisions were made in each `every` that had any: each decision is logged
/// at debug only (it is audited, and a line per decision at info cost about 4% of the throughput
/// through Envoy).
pub async fn summarise(
    metrics: Arc<Metrics>,
    every: std::time::Duration,
    stop: impl Future<Output = ()>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut last = metrics.decision_totals();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = ticks.tick() => {}
        }
        let now = metrics.decision_totals();
        let (allowed, denied) = (now.0 - last.0, now.1 - last.1);
        if allowed + denied > 0 {
            tracing::info!(allowed, denied, seconds = every.as_secs(), "decisions");
        }
        last = now;
    }
}

/// The `reason` label of a decision: `none` for an allow, else the code of its main reason (see
/// [`REASON_PRECEDENCE`]). Codes are what the policies emit, never matched from their text.
pub fn reason_label(decision: &Decision) -> &str {
    if decision.allow {
        return "none";
    }
    let rank = |code: &str| {
        REASON_PRECEDENCE
            .iter()
            .position(|known| *known == code)
            .unwrap_or(REASON_PRECEDENCE.len())
    };
    decision
        .reasons
        .iter()
        .map(|r| r.code.as_str())
        .min_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)))
        .unwrap_or("unspecified")
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
    use edgemesh_core::policy::Reason;

    use super::*;

    #[test]
    fn the_label_is_the_code_of_the_most_fundamental_reason() {
        let denied = |codes: &[&str]| Decision {
            allow: false,
            reasons: codes
                .iter()
                .map(|code| Reason::new(code, "text that decides nothing"))
                .collect(),
            policy_version: String::new(),
        };
        let allowed = Decision {
            allow: true,
            reasons: Vec::new(),
            policy_version: String::new(),
        };
        assert_eq!(reason_label(&allowed), "none");
        assert_eq!(reason_label(&denied(&["antivirus"])), "antivirus");
        assert_eq!(
            reason_label(&denied(&["business_hours", "antivirus", "revoked"])),
            "revoked",
            "the more fundamental reason wins"
        );
        assert_eq!(
            reason_label(&denied(&["role", "site_closed", "aardvark"])),
            "role",
            "a known code comes before a policy's own"
        );
        assert_eq!(
            reason_label(&denied(&["site_closed", "aardvark"])),
            "aardvark",
            "a policy's own codes, alphabetically"
        );
    }

    #[test]
    fn the_summary_sums_allows_and_denies_over_services_and_reasons() {
        let metrics = Metrics::new().expect("metrics");
        assert_eq!(metrics.decision_totals(), (0, 0));
        for (labels, n) in [
            (["allow", "api", "none"], 3),
            (["allow", "database", "none"], 2),
            (["deny", "api", "role"], 4),
            (["deny", "storage", "antivirus"], 1),
        ] {
            metrics.decisions.with_label_values(&labels).inc_by(n);
        }
        assert_eq!(metrics.decision_totals(), (5, 5));
    }
}
