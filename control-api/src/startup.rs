//! Building the application (database, CA, admin token, TLS, listeners) and running it until stopped.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, ensure};
use rand::RngCore;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

use edgemesh_core::exit::{ConfigContext, ConfigError};
use edgemesh_core::files::write_atomic;
use edgemesh_core::policy::PolicyStore;
use edgemesh_core::serve::local_addr;

use crate::audit::Retention;
use crate::ca::CertificateAuthority;
use crate::config::Config;
use crate::http::limit::RateLimiter;
use crate::http::{self, AppState};
use crate::maintenance;
use crate::metrics::Metrics;
use crate::server::{Limits, serve_tls};

/// Validity of the control API's own TLS certificate, issued afresh at every start.
const SERVER_CERT_VALIDITY: time::Duration = time::Duration::days(90);

pub struct Application {
    api_listener: TcpListener,
    device_listener: TcpListener,
    metrics_listener: TcpListener,
    api_tls: Arc<ServerConfig>,
    device_tls: Arc<ServerConfig>,
    state: AppState,
    maintenance: maintenance::Settings,
    signer: Arc<crate::chain::sequencer::Signer>,
    limits: Limits,
}

impl Application {
    /// Connects to the database (applying migrations if configured) and builds.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let db = connect(config).await?;
        if config.migrate {
            let (applied, all) = crate::db::migrate(&db)
                .await
                .context("failed to apply migrations")?;
            tracing::info!(applied, all, "migrations applied");
        }
        Self::build_with_pool(config, db).await
    }

    /// Builds on an existing pool whose schema is already migrated (tests use this).
    pub async fn build_with_pool(config: &Config, db: PgPool) -> anyhow::Result<Self> {
        edgemesh_core::tls::install_crypto_provider();
        let ca =
            CertificateAuthority::load_or_create(&config.ca_cert_path(), &config.ca_key_path())
                .context("failed to load or create the CA")
                .config_error()?;
        let admin_token = load_or_create_admin_token(&config.admin_token_path()).config_error()?;
        for (rate, what) in [
            (config.health_rate, "health report"),
            (config.enroll_refusal_rate, "refused enrolment"),
            (config.enroll_rate, "enrolment"),
            (config.admin_rate, "admin request"),
            (config.console_sign_in_rate, "failed console sign-in"),
        ] {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ConfigError::new(format!(
                    "the {what} rate must be a positive number per second"
                ))
                .into());
            }
        }
        let policies = Arc::new(
            PolicyStore::load(&config.policy_dir)
                .with_context(|| {
                    format!(
                        "failed to load the policies in {}",
                        config.policy_dir.display()
                    )
                })
                .config_error()?,
        );

        let (server_cert, server_key) = ca
            .issue_server(&config.server_names, SERVER_CERT_VALIDITY)
            .context("bad --server-names")
            .config_error()?;
        let certs = edgemesh_core::tls::certs_from_pem(&server_cert)?;
        let key = edgemesh_core::tls::key_from_pem(&server_key)?;
        let api_tls = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key.clone_key())?;
        let verifier =
            WebPkiClientVerifier::builder(Arc::new(edgemesh_core::tls::root_store(ca.cert_pem())?))
                .build()
                .context("failed to build the client certificate verifier")?;
        let device_tls = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?;

        let api_listener = TcpListener::bind(config.api_listen)
            .await
            .with_context(|| format!("failed to listen on {}", config.api_listen))
            .config_error()?;
        let device_listener = TcpListener::bind(config.device_listen)
            .await
            .with_context(|| format!("failed to listen on {}", config.device_listen))
            .config_error()?;
        let metrics_listener = TcpListener::bind(config.metrics_listen)
            .await
            .with_context(|| format!("failed to listen on {}", config.metrics_listen))
            .config_error()?;
        let maintenance = maintenance::Settings {
            audit: Retention {
                months_ahead: config.audit_months_ahead,
                keep_days: (config.audit_retention_days > 0).then_some(config.audit_retention_days),
            },
            health_keep_days: (config.health_retention_days > 0)
                .then_some(config.health_retention_days),
            expiry_warning: time::Duration::days(i64::from(config.cert_expiry_warning_days)),
            every: std::time::Duration::from_secs(config.maintenance_interval_secs),
        };
        // The partitions exist before the first request is served.
        maintenance::prepare(&db, maintenance, &maintenance::replica_name())
            .await
            .context("failed to prepare the audit and health partitions")?;

        let metrics = Metrics::new()?;
        let state = AppState {
            health_writer: crate::health_writer::HealthWriter::start(
                db.clone(),
                metrics.health_batch.clone(),
            ),
            db,
            ca: Arc::new(ca),
            admin_token_sha256: Sha256::digest(admin_token.as_bytes()).into(),
            trust_domain: Arc::new(config.trust_domain.clone()),
            cert_validity: time::Duration::seconds(i64::from(config.cert_validity_secs)),
            renewal: crate::http::device::RenewalRules {
                overlap: time::Duration::seconds(i64::from(config.renewal_overlap_secs)),
                per_hour: i64::from(config.renewals_per_hour),
            },
            policies,
            health_limiter: Arc::new(RateLimiter::new(config.health_burst, config.health_rate)),
            enroll_refusals: Arc::new(RateLimiter::new(
                config.enroll_refusal_burst,
                config.enroll_refusal_rate,
            )),
            enroll_per_address: Arc::new(RateLimiter::new(config.enroll_burst, config.enroll_rate)),
            enroll_per_token: Arc::new(RateLimiter::new(config.enroll_burst, config.enroll_rate)),
            admin_per_token: Arc::new(RateLimiter::new(config.admin_burst, config.admin_rate)),
            console_sign_in_refusals: Arc::new(RateLimiter::new(
                config.console_sign_in_burst,
                config.console_sign_in_rate,
            )),
            expiry_warning: maintenance.expiry_warning,
            console_session_lifetime: time::Duration::hours(i64::from(
                config.console_session_hours,
            )),
            max_health_age: time::Duration::seconds(
                i64::try_from(config.max_health_age_secs).unwrap_or(i64::MAX),
            ),
            metrics,
        };
        // Sessions opened with an earlier admin token end with it.
        let ended = crate::console::session::end_other_tokens(&state)
            .await
            .context("failed to end the console sessions of an earlier admin token")?;
        if ended > 0 {
            tracing::info!(
                sessions = ended,
                "ended console sessions that expired or belong to an earlier admin token"
            );
        }
        let signer = crate::chain::sequencer::Signer::load_or_create(
            &config.audit_signing_key_path(),
            &config.audit_checkpoint_dir(),
        )
        .context("failed to load the audit signing key (EDGEMESH_AUDIT_SIGNING_KEY) or prepare the checkpoint directory (EDGEMESH_AUDIT_CHECKPOINT_DIR)")
        .config_error()?;
        Ok(Self {
            api_listener,
            device_listener,
            metrics_listener,
            maintenance,
            signer: Arc::new(signer),
            limits: Limits {
                max_connections: config.max_connections,
                header_read_timeout: std::time::Duration::from_secs(
                    config.header_read_timeout_secs,
                ),
                idle_timeout: std::time::Duration::from_secs(config.idle_timeout_secs),
            },
            api_tls: Arc::new(api_tls),
            device_tls: Arc::new(device_tls),
            state,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        local_addr(&self.api_listener)
    }

    pub fn device_addr(&self) -> SocketAddr {
        local_addr(&self.device_listener)
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        local_addr(&self.metrics_listener)
    }

    pub fn ca_fingerprint(&self) -> &str {
        self.state.ca.fingerprint()
    }

    pub fn db(&self) -> &PgPool {
        &self.state.db
    }

    /// Serves both listeners until `shutdown` completes, then drains them.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        tracing::info!(
            api = %self.api_addr(),
            device = %self.device_addr(),
            metrics = %self.metrics_addr(),
            ca_fingerprint = %self.state.ca.fingerprint(),
            "control API listening"
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut watcher_stop = stop_rx.clone();
        let watcher = tokio::spawn(Arc::clone(&self.state.policies).watch(
            std::time::Duration::from_secs(1),
            |_| {},
            async move {
                let _ = watcher_stop.wait_for(|stop| *stop).await;
            },
        ));
        let maintenance = tokio::spawn(maintenance::run(
            self.state.db.clone(),
            Arc::clone(&self.state.metrics),
            self.maintenance,
            maintenance::replica_name(),
            stop_rx.clone(),
        ));
        let sequencer = tokio::spawn(crate::chain::sequencer::run(
            self.state.db.clone(),
            Arc::clone(&self.signer),
            Arc::clone(&self.state.metrics),
            stop_rx.clone(),
        ));
        let mut metrics_stop = stop_rx.clone();
        let metrics = crate::metrics::serve(
            Arc::clone(&self.state.metrics),
            self.state.db.clone(),
            self.state.max_health_age,
            self.metrics_listener,
            async move {
                let _ = metrics_stop.wait_for(|stop| *stop).await;
            },
        );
        let api = serve_tls(
            self.api_listener,
            self.api_tls,
            http::api_router(
                self.state.clone(),
                crate::console::router(self.state.clone()),
            ),
            self.limits,
            stop_rx.clone(),
        );
        let device = serve_tls(
            self.device_listener,
            self.device_tls,
            http::device_router(self.state),
            self.limits,
            stop_rx,
        );
        let stop = async move {
            shutdown.await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        };
        tokio::join!(api, device, metrics, stop);
        let _ = watcher.await;
        let _ = maintenance.await;
        let _ = sequencer.await;
    }
}

pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = config
        .database_url
        .parse()
        .context("invalid database URL (EDGEMESH_DATABASE_URL)")
        .config_error()?;
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("failed to connect to PostgreSQL")
}

/// `edgemesh-control-api migrate`: applies the migrations, says what it did, and returns.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    match crate::db::migrate(&connect(config).await?)
        .await
        .context("failed to apply migrations")?
    {
        (0, all) => println!("the database is up to date ({all} migrations)"),
        (1, all) => println!("applied 1 migration ({all} in all)"),
        (n, all) => println!("applied {n} migrations ({all} in all)"),
    }
    Ok(())
}

/// Reads the admin token from `path`, or generates one into it (mode 0600) if it does not exist.
fn load_or_create_admin_token(path: &Path) -> anyhow::Result<String> {
    if path.exists() {
        let mode = std::fs::metadata(path)
            .with_context(|| format!("failed to read admin token file {}", path.display()))?
            .permissions()
            .mode();
        ensure!(
            mode & 0o077 == 0,
            "admin token file {} is readable by others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        );
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read admin token file {}", path.display()))?;
        let token = token.trim().to_owned();
        ensure!(
            token.len() >= 32,
            "admin token in {} is shorter than 32 characters",
            path.display()
        );
        return Ok(token);
    }
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = hex::encode(secret);
    write_atomic(path, format!("{token}\n").as_bytes(), 0o600)?;
    tracing::info!(path = %path.display(), "generated an admin token");
    Ok(token)
}
