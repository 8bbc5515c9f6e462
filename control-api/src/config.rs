//! Configuration: flags with `EDGEMESH_` environment variables; secrets come from files.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(name = "edgemesh-control-api", version, about = "EdgeMesh control API")]
pub struct Config {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "EDGEMESH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:54329/edgemesh",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Enrollment, administration and the CA bundle (HTTPS, no client certificate).
    #[arg(long, env = "EDGEMESH_API_LISTEN", default_value = "127.0.0.1:8444")]
    pub api_listen: SocketAddr,

    /// Device endpoints: renewal and health (HTTPS, client certificate required).
    #[arg(long, env = "EDGEMESH_DEVICE_LISTEN", default_value = "127.0.0.1:8443")]
    pub device_listen: SocketAddr,

    /// Directory for generated state (CA, admin token) when their paths are not given.
    #[arg(long, env = "EDGEMESH_STATE_DIR", default_value = ".edgemesh")]
    pub state_dir: PathBuf,

    /// CA certificate (PEM). Created with the key on first start if neither exists.
    #[arg(long, env = "EDGEMESH_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// CA private key (PEM, mode 0600).
    #[arg(long, env = "EDGEMESH_CA_KEY")]
    pub ca_key: Option<PathBuf>,

    /// The ed25519 key that signs the audit's checkpoints (a file, mode 0600; generated with its public
    /// key beside it, `.pub`, if it does not exist). Replicas share it, like the CA key; only the one
    /// holding the sequencer lock signs. Keep the public key where `audit verify` runs.
    #[arg(long, env = "EDGEMESH_AUDIT_SIGNING_KEY")]
    pub audit_signing_key: Option<PathBuf>,

    /// Directory the signed audit checkpoints are appended to (a file a day), outside the database:
    /// ship it elsewhere (object storage with retention lock, another host). Without a copy outside,
    /// deleting the newest records with their checkpoints cannot be detected.
    #[arg(long, env = "EDGEMESH_AUDIT_CHECKPOINT_DIR")]
    pub audit_checkpoint_dir: Option<PathBuf>,

    /// File holding the admin bearer token; generated (mode 0600) if it does not exist.
    #[arg(long, env = "EDGEMESH_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// SPIFFE trust domain of device identities.
    #[arg(long, env = "EDGEMESH_TRUST_DOMAIN", default_value = "edgemesh.local")]
    pub trust_domain: edgemesh_core::cert::TrustDomain,

    /// Validity of issued device certificates, in seconds.
    #[arg(long, env = "EDGEMESH_CERT_VALIDITY_SECS", default_value_t = 30 * 24 * 3600,
          value_parser = clap::value_parser!(u32).range(60..=(398 * 24 * 3600)))]
    pub cert_validity_secs: u32,

    /// After a renewal, the certificate it replaced stays valid this long (for connections in flight),
    /// then it is retired. 0 retires it at once.
    #[arg(long, env = "EDGEMESH_RENEWAL_OVERLAP_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub renewal_overlap_secs: u32,

    /// Renewals a device may make in an hour; beyond it, 429 with Retry-After.
    #[arg(long, env = "EDGEMESH_RENEWALS_PER_HOUR", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub renewals_per_hour: u32,

    /// DNS names and IP addresses the control API's server certificate is valid for.
    #[arg(
        long,
        env = "EDGEMESH_SERVER_NAMES",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    pub server_names: Vec<String>,

    /// Directory of the Rego policies (compliance of health reports: `policies/compliance.rego`).
    #[arg(long, env = "EDGEMESH_POLICY_DIR", default_value = "policies")]
    pub policy_dir: PathBuf,

    /// Health reports a device may send at once before the sustained rate applies.
    #[arg(long, env = "EDGEMESH_HEALTH_BURST", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub health_burst: u32,

    /// Sustained health reports per second per device; beyond it, 429 with Retry-After.
    #[arg(long, env = "EDGEMESH_HEALTH_RATE", default_value_t = 1.0)]
    pub health_rate: f64,

    /// Refused enrolments one source address may cause at once before the sustained rate applies;
    /// beyond it, its enrolments get 429 without being processed or audited one by one.
    #[arg(long, env = "EDGEMESH_ENROLL_REFUSAL_BURST", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub enroll_refusal_burst: u32,

    /// Sustained refused enrolments per second per source address.
    #[arg(long, env = "EDGEMESH_ENROLL_REFUSAL_RATE", default_value_t = 0.1)]
    pub enroll_refusal_rate: f64,

    /// Enrolment requests one source address may make at once, and one enrollment token may be used
    /// for at once, before the sustained rate applies; beyond either, 429 with Retry-After.
    #[arg(long, env = "EDGEMESH_ENROLL_BURST", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub enroll_burst: u32,

    /// Sustained enrolment requests per second per source address, and per token.
    #[arg(long, env = "EDGEMESH_ENROLL_RATE", default_value_t = 10.0)]
    pub enroll_rate: f64,

    /// Admin API requests one admin token may make at once before the sustained rate applies; beyond
    /// it, 429 with Retry-After.
    #[arg(long, env = "EDGEMESH_ADMIN_BURST", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub admin_burst: u32,

    /// Sustained admin API requests per second per admin token.
    #[arg(long, env = "EDGEMESH_ADMIN_RATE", default_value_t = 50.0)]
    pub admin_rate: f64,

    /// The certificate expiry scan (at start, then daily) and the console warn of a device whose
    /// certificate in force expires within this many days.
    #[arg(long, env = "EDGEMESH_CERT_EXPIRY_WARNING_DAYS", default_value_t = 7,
          value_parser = clap::value_parser!(u32).range(1..=365))]
    pub cert_expiry_warning_days: u32,

    /// Hours a console session lasts after signing in (signing out, or a new admin token, ends it
    /// sooner).
    #[arg(long, env = "EDGEMESH_CONSOLE_SESSION_HOURS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=168))]
    pub console_session_hours: u32,

    /// Failed console sign-ins one address may make at once before the sustained rate applies;
    /// beyond it, sign-ins from that address are refused (429) without being checked.
    #[arg(long, env = "EDGEMESH_CONSOLE_SIGN_IN_BURST", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub console_sign_in_burst: u32,

    /// Sustained failed console sign-ins per second per address (0.1: one every 10 s).
    #[arg(long, env = "EDGEMESH_CONSOLE_SIGN_IN_RATE", default_value_t = 0.1)]
    pub console_sign_in_rate: f64,

    /// A device whose last health report is older than this is shown as stale.
    #[arg(long, env = "EDGEMESH_MAX_HEALTH_AGE_SECS", default_value_t = 300)]
    pub max_health_age_secs: u64,

    /// Connections each HTTPS listener holds open at once; more are closed when accepted.
    #[arg(long, env = "EDGEMESH_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,

    /// Seconds a client has to send a request's headers once its connection is ready for one (after
    /// the TLS handshake, or after the previous answer on a kept-alive connection).
    #[arg(long, env = "EDGEMESH_HEADER_READ_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub header_read_timeout_secs: u64,

    /// A connection that reads and writes nothing for this many seconds is closed.
    #[arg(long, env = "EDGEMESH_IDLE_TIMEOUT_SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_timeout_secs: u64,

    /// Prometheus metrics (`/metrics`, plain HTTP).
    #[arg(
        long,
        env = "EDGEMESH_CONTROL_API_METRICS_LISTEN",
        default_value = "127.0.0.1:9190"
    )]
    pub metrics_listen: SocketAddr,

    /// Monthly audit partitions created ahead of the current month (at start and at every maintenance
    /// run).
    #[arg(long, env = "EDGEMESH_AUDIT_MONTHS_AHEAD", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(2..=24))]
    pub audit_months_ahead: u32,

    /// Audit records are kept this many days; whole monthly partitions older than that are dropped
    /// at each maintenance run. 0 keeps everything.
    #[arg(long, env = "EDGEMESH_AUDIT_RETENTION_DAYS", default_value_t = 400)]
    pub audit_retention_days: u32,

    /// Health reports (the history; not a device's latest, which stays on the device) are kept this
    /// many days; whole daily partitions older than that are dropped. 0 keeps everything.
    #[arg(long, env = "EDGEMESH_HEALTH_RETENTION_DAYS", default_value_t = 14)]
    pub health_retention_days: u32,

    /// How often the fleet's maintenance jobs run (partitions, retention, the certificate expiry
    /// scan), once for all replicas: whichever takes a job's advisory lock runs it when due.
    #[arg(long, env = "EDGEMESH_MAINTENANCE_INTERVAL_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub maintenance_interval_secs: u64,

    /// Apply database migrations at start-up.
    #[arg(long, env = "EDGEMESH_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
}

impl Config {
    pub fn ca_cert_path(&self) -> PathBuf {
        self.ca_cert
            .clone()
            .unwrap_or_else(|| self.state_dir.join("ca.pem"))
    }

    pub fn ca_key_path(&self) -> PathBuf {
        self.ca_key
            .clone()
            .unwrap_or_else(|| self.state_dir.join("ca-key.pem"))
    }

    pub fn audit_signing_key_path(&self) -> PathBuf {
        self.audit_signing_key
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit-signing.key"))
    }

    pub fn audit_checkpoint_dir(&self) -> PathBuf {
        self.audit_checkpoint_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit-checkpoints"))
    }

    pub fn admin_token_path(&self) -> PathBuf {
        self.admin_token_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("admin-token"))
    }
}
