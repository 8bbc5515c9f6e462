//! Building the server (policies, directory, gRPC services) and running it until stopped.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edgemesh_core::policy::{PolicyStore, Reload, valid_timezone};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::ServingStatus;

use crate::audit::{self, WRITE_TIMEOUT};
use crate::check::{Authorizer, Bounded, Clock, Settings};
use crate::config::Config;
use crate::directory::{Directory, Heartbeat};
use crate::grpc::{self, AUTHORIZATION_SERVICE};
use crate::metrics::{self, Metrics};

/// Decisions remembered by their facts. The facts hold the time to the second, so what matters is the
/// requests of one second from distinct devices and routes; a few kilobytes per hundred entries.
const DECISIONS: usize = 4096;

/// How ext-authz connects to PostgreSQL. Over TCP, the server probes each connection (TCP keepalive
/// after 10 s idle, every 5 s, 3 probes), so a connection whose ext-authz side vanished (a NAT drop, a
/// failover, a killed host) is closed within about 25 s instead of holding its slot and its LISTEN for
/// hours. sqlx offers no keepalive on its own socket: ext-authz's side is the listener's heartbeat
/// (`Heartbeat`), which also catches a connection that is up but stalled.
pub fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    let options: PgConnectOptions = url.parse().context("invalid database URL")?;
    Ok(options.options([
        ("tcp_keepalives_idle", "10"),
        ("tcp_keepalives_interval", "5"),
        ("tcp_keepalives_count", "3"),
    ]))
}

/// Runs the server until `shutdown` completes, then drains in-flight calls.
pub async fn serve(
    config: &Config,
    policy_dir: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        valid_timezone(&config.timezone),
        "unknown time zone {:?} (an IANA name such as Europe/Berlin)",
        config.timezone
    );
    let policies = Arc::new(
        PolicyStore::load(policy_dir)
            .with_context(|| format!("failed to load the policies in {}", policy_dir.display()))?,
    );
    tracing::info!(policy_version = %policies.current().version(), dir = %policy_dir.display(), "policies loaded");
    let ca_pem = std::fs::read_to_string(&config.ca_cert).with_context(|| {
        format!(
            "failed to read the EdgeMesh CA certificate {} (EDGEMESH_CA_CERT)",
            config.ca_cert.display()
        )
    })?;
    let ca_der: Arc<[u8]> = edgemesh_core::cert::first_pem_der(&ca_pem)
        .with_context(|| format!("{} holds no PEM certificate", config.ca_cert.display()))?
        .into();
    // Lazy: the server starts (not serving) while Postgres is away and becomes ready when it is back.
    let db = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(connect_options(&config.database_url)?);
    let metrics = Metrics::new()?;
    // Bound at start-up, so a taken port is a start-up error.
    let metrics_listener = TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.metrics_listen))?;
    let directory = Directory::new(
        db.clone(),
        config.cache_capacity,
        Duration::from_secs(config.cache_ttl_secs),
        Heartbeat {
            every: Duration::from_millis(config.notify_heartbeat_ms),
            timeout: Duration::from_millis(3 * config.notify_heartbeat_ms),
        },
        Arc::clone(&metrics),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let (audit, audit_done) = audit::start(
        db.clone(),
        &config.audit_spool_dir,
        config.audit_queue,
        Arc::clone(&metrics),
        stop_rx.clone(),
    )?;
    let authorizer = Arc::new(Authorizer {
        policies: Arc::clone(&policies),
        directory: Arc::clone(&directory),
        settings: Settings {
            trust_domain: config.trust_domain.clone(),
            ca_der,
            max_health_age_seconds: config.max_health_age_secs,
            timezone: config.timezone.clone(),
            clock: config.clock.map_or(Clock::System, Clock::Fixed),
        },
        metrics: Arc::clone(&metrics),
        audit,
        peers: Bounded::new(usize::try_from(config.cache_capacity).unwrap_or(usize::MAX)),
        decisions: Bounded::new(DECISIONS),
    });
    if let Some(at) = config.clock {
        tracing::warn!(clock = %at, "deciding with a fixed clock");
    }

    tokio::spawn(Arc::clone(&directory).listen(stop_rx.clone()));
    let reloads = Arc::clone(&metrics);
    tokio::spawn(Arc::clone(&policies).watch(
        Duration::from_millis(config.policy_poll_ms),
        move |reload| {
            match reload {
                Reload::Replaced { .. } => reloads
                    .policy_reloads
                    .with_label_values(&["replaced"])
                    .inc(),
                Reload::Refused { .. } => {
                    reloads.policy_reloads.with_label_values(&["refused"]).inc()
                }
                Reload::Unchanged => {}
            }
        },
    ));
    tokio::spawn(metrics::serve(Arc::clone(&metrics), metrics_listener));
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(AUTHORIZATION_SERVICE, ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    tokio::spawn(report_readiness(
        reporter,
        Arc::clone(&directory),
        Arc::clone(&metrics),
        stop_rx.clone(),
    ));

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    tracing::info!(addr = %config.listen, "ext-authz listening");
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight checks");
        let _ = stop_tx.send(true);
    };
    grpc::serve(listener, authorizer, health_service, signal).await;
    // Every decision made is in the spool already; what the writer ships before the process ends
    // is not shipped again at the next start.
    if tokio::time::timeout(WRITE_TIMEOUT * 5, audit_done)
        .await
        .is_err()
    {
        tracing::warn!(
            "the audit writer did not finish in time; the next start ships the rest from the spool"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// The gRPC health service says SERVING only while decisions can be trusted: policies loaded (always,
/// once started) and the directory listening for changes.
async fn report_readiness(
    reporter: tonic_health::server::HealthReporter,
    directory: Arc<Directory>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving = None;
    loop {
        metrics
            .cache_entries
            .set(i64::try_from(directory.cached_entries()).unwrap_or(i64::MAX));
        let now = directory.is_listening();
        if serving != Some(now) {
            let status = if now {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status(AUTHORIZATION_SERVICE, status)
                .await;
            serving = Some(now);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => {
                reporter.set_service_status("", ServingStatus::NotServing).await;
                return;
            }
        }
    }
}
