//! Building the server (policies, directory, gRPC services: [`Server::build`]) and running it until
//! stopped ([`Server::run_until_stopped`]).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edgemesh_core::exit::{ConfigContext, ConfigError};
use edgemesh_core::policy::{PolicyStore, Reload, valid_timezone};
use edgemesh_core::serve::local_addr;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::ServingStatus;

use crate::audit::{self, WRITE_TIMEOUT};
use crate::check::{Authorizer, ShadowPolicies};
use crate::config::{Clock, Config, Settings};
use crate::db;
use crate::directory::{Directory, Heartbeat};
use crate::grpc::{self, AUTHORIZATION_SERVICE};
use crate::memo::Bounded;
use crate::metrics::{self, Metrics};

/// Decisions remembered by their facts. The facts hold the time to the second, so what matters is the
/// requests of one second from distinct devices and routes; a few kilobytes per hundred entries.
const DECISIONS: usize = 4096;
/// How often the decisions made are summed up in the log at info (each one is logged at debug).
const DECISION_SUMMARY: Duration = Duration::from_secs(60);

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

/// A built server: listeners bound, policies and CA loaded, not yet serving.
pub struct Server {
    listener: TcpListener,
    metrics_listener: TcpListener,
    authorizer: Arc<Authorizer>,
    policies: Arc<PolicyStore>,
    shadow: Option<Arc<PolicyStore>>,
    directory: Arc<Directory>,
    metrics: Arc<Metrics>,
    audit_done: tokio::task::JoinHandle<()>,
    db: PgPool,
    stop_tx: watch::Sender<bool>,
    policy_poll: Duration,
}

impl Server {
    /// Checks the configuration, loads the policies and the CA certificate, binds both listeners
    /// and opens the audit spool. Configuration errors are [`ConfigError`]s. PostgreSQL is connected
    /// lazily: the server starts (not serving) while it is away and becomes ready when it is back.
    pub async fn build(config: &Config, policy_dir: &Path) -> anyhow::Result<Self> {
        if !valid_timezone(&config.timezone) {
            return Err(ConfigError::new(format!(
                "unknown time zone {:?} (an IANA name such as Europe/Berlin)",
                config.timezone
            ))
            .into());
        }
        let policies = Arc::new(
            PolicyStore::load(policy_dir)
                .with_context(|| format!("failed to load the policies in {}", policy_dir.display()))
                .config_error()?,
        );
        tracing::info!(policy_version = %policies.current().version(), dir = %policy_dir.display(), "policies loaded");
        let shadow = match &config.shadow_policy_dir {
            Some(dir) => {
                let store = PolicyStore::load(dir)
                    .with_context(|| {
                        format!(
                            "failed to load the shadow policies in {} (EDGEMESH_SHADOW_POLICY_DIR)",
                            dir.display()
                        )
                    })
                    .config_error()?;
                tracing::info!(policy_version = %store.current().version(), dir = %dir.display(), "shadow policies loaded");
                Some(Arc::new(store))
            }
            None => None,
        };
        let ca_der: Arc<[u8]> = read_ca(&config.ca_cert).config_error()?.into();
        // No ping before each use (sqlx's default): with the database a few milliseconds away it would
        // double a cache miss's round trips. A connection found broken in use is dropped and the
        // lookup retried once on another (Directory::load).
        let db = PgPoolOptions::new()
            .max_connections(config.database_connections)
            .acquire_timeout(Duration::from_secs(2))
            .test_before_acquire(false)
            .connect_lazy_with(connect_options(&config.database_url).config_error()?);
        let metrics = Metrics::new()?;
        // Bound here, so a taken port is a start-up error.
        let metrics_listener = TcpListener::bind(config.metrics_listen)
            .await
            .with_context(|| format!("failed to listen on {}", config.metrics_listen))
            .config_error()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("failed to listen on {}", config.listen))
            .config_error()?;
        let directory = Directory::new(
            db.clone(),
            config.cache_capacity,
            Duration::from_secs(config.cache_ttl_secs),
            Heartbeat {
                every: Duration::from_millis(config.notify_heartbeat_ms),
                timeout: Duration::from_millis(3 * config.notify_heartbeat_ms),
            },
            Duration::from_secs(config.max_health_age_secs),
            Arc::clone(&metrics),
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let (audit, audit_done) = audit::start(
            db.clone(),
            &config.audit_spool_dir,
            config.audit_queue,
            Arc::clone(&metrics),
            stop_rx,
        )
        .with_context(|| {
            format!(
                "failed to open the audit spool {} (EDGEMESH_AUDIT_SPOOL_DIR)",
                config.audit_spool_dir.display()
            )
        })
        .config_error()?;
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
            shadow: shadow.as_ref().map(|policies| ShadowPolicies {
                policies: Arc::clone(policies),
                decisions: Bounded::new(DECISIONS),
            }),
            contexts: Bounded::new(usize::try_from(config.cache_capacity).unwrap_or(usize::MAX)),
        });
        if let Some(at) = config.clock {
            tracing::warn!(clock = %at, "deciding with a fixed clock");
        }
        Ok(Self {
            listener,
            metrics_listener,
            authorizer,
            policies,
            shadow,
            directory,
            metrics,
            audit_done,
            db,
            stop_tx,
            policy_poll: Duration::from_millis(config.policy_poll_ms),
        })
    }

    /// The gRPC listener's address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        local_addr(&self.listener)
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        local_addr(&self.metrics_listener)
    }

    /// The request path, for tests that decide without Envoy in between.
    pub fn authorizer(&self) -> Arc<Authorizer> {
        Arc::clone(&self.authorizer)
    }

    /// Serves until `shutdown` completes, then drains in-flight calls, stops every task and lets the
    /// audit writer ship what it can.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        tracing::info!(addr = %self.addr(), metrics = %self.metrics_addr(), "ext-authz listening");
        let stop_rx = self.stop_tx.subscribe();
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let listening = tokio::spawn(Arc::clone(&self.directory).listen(stop_rx.clone()));
        let reloads = Arc::clone(&self.metrics);
        let watcher = tokio::spawn(Arc::clone(&self.policies).watch(
            self.policy_poll,
            move |reload| {
                let outcome = match reload {
                    Reload::Replaced { .. } => "replaced",
                    Reload::Refused { .. } => "refused",
                    Reload::Unchanged => return,
                };
                reloads.policy_reloads.with_label_values(&[outcome]).inc();
            },
            stopped(stop_rx.clone()),
        ));
        let versions = tokio::spawn(store_policy_versions(
            self.db.clone(),
            std::iter::once(Arc::clone(&self.policies))
                .chain(self.shadow.clone())
                .collect(),
            stopped(stop_rx.clone()),
        ));
        // The shadow set is reloaded the same way (its outcomes are logged, not counted).
        let shadow_watcher = self.shadow.map(|shadow| {
            tokio::spawn(shadow.watch(self.policy_poll, |_| {}, stopped(stop_rx.clone())))
        });
        let metrics_server = tokio::spawn(metrics::serve(
            Arc::clone(&self.metrics),
            self.metrics_listener,
            stopped(stop_rx.clone()),
        ));
        let summary = tokio::spawn(metrics::summarise(
            Arc::clone(&self.metrics),
            DECISION_SUMMARY,
            stopped(stop_rx.clone()),
        ));
        let (reporter, health_service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(AUTHORIZATION_SERVICE, ServingStatus::NotServing)
            .await;
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let readiness = tokio::spawn(report_readiness(
            reporter,
            Arc::clone(&self.directory),
            Arc::clone(&self.metrics),
            stop_rx,
        ));
        let stop_tx = self.stop_tx;
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight checks");
            let _ = stop_tx.send(true);
        };
        grpc::serve(self.listener, self.authorizer, health_service, signal).await;
        for task in [
            listening,
            watcher,
            metrics_server,
            readiness,
            versions,
            summary,
        ]
        .into_iter()
        .chain(shadow_watcher)
        {
            let _ = task.await;
        }
        // Every decision made is in the spool already; what the writer ships before the process
        // ends is not shipped again at the next start.
        if tokio::time::timeout(WRITE_TIMEOUT * 5, self.audit_done)
            .await
            .is_err()
        {
            tracing::warn!(
                "the audit writer did not finish in time; the next start ships the rest from the spool"
            );
        }
        tracing::info!("stopped");
    }
}

/// Stores the files of every policy version in force (enforced and shadow) in `policy_versions`, once
/// each, for a decision to be explained under the version that made it; a version PostgreSQL did not
/// take is tried again every second.
async fn store_policy_versions(
    db: PgPool,
    stores: Vec<Arc<PolicyStore>>,
    stop: impl Future<Output = ()>,
) {
    let mut stored = std::collections::HashSet::new();
    tokio::pin!(stop);
    loop {
        for store in &stores {
            let set = store.current();
            if stored.contains(set.version()) {
                continue;
            }
            let files = match serde_json::to_string(set.sources()) {
                Ok(files) => files,
                Err(e) => {
                    tracing::error!(error = %e, "policy files that do not serialise");
                    continue;
                }
            };
            match db::store_policy_version(&db, set.version(), &files).await {
                Ok(()) => {
                    stored.insert(set.version().to_owned());
                }
                Err(e) => {
                    tracing::debug!(error = %e, policy_version = set.version(), "the policy version is not stored yet")
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = &mut stop => return,
        }
    }
}

/// The DER of the CA certificate in the PEM file `path`.
fn read_ca(path: &Path) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read_to_string(path).with_context(|| {
        format!(
            "failed to read the EdgeMesh CA certificate {} (EDGEMESH_CA_CERT)",
            path.display()
        )
    })?;
    edgemesh_core::cert::first_pem_der(&pem)
        .with_context(|| format!("{} holds no PEM certificate", path.display()))
}

/// The gRPC health service says SERVING only while decisions can be trusted: policies loaded (always,
/// once started) and the directory listening for changes; the first time, only once the pool's
/// connections are open too.
async fn report_readiness(
    reporter: tonic_health::server::HealthReporter,
    directory: Arc<Directory>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving = None;
    let mut warmed = false;
    loop {
        metrics
            .cache_entries
            .set(i64::try_from(directory.cached_entries()).unwrap_or(i64::MAX));
        let now = directory.is_listening();
        if now && !warmed {
            // Before the first Serving: the Checks a load balancer then sends are all misses.
            directory.warm_pool().await;
            warmed = true;
        }
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
