//! Configuration of `edgemesh-ext-authz serve`: flags with `EDGEMESH_` environment variables.

use std::net::SocketAddr;
use std::sync::Arc;

use edgemesh_core::cert::TrustDomain;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// gRPC listener for Envoy's Check calls and the gRPC health service.
    #[arg(
        long,
        env = "EDGEMESH_EXT_AUTHZ_LISTEN",
        default_value = "127.0.0.1:9191"
    )]
    pub listen: SocketAddr,

    /// Prometheus metrics (`/metrics`, plain HTTP).
    #[arg(
        long,
        env = "EDGEMESH_EXT_AUTHZ_METRICS_LISTEN",
        default_value = "127.0.0.1:9192"
    )]
    pub metrics_listen: SocketAddr,

    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "EDGEMESH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:54329/edgemesh",
        hide_env_values = true
    )]
    pub database_url: String,

    /// SPIFFE trust domain of device identities.
    #[arg(long, env = "EDGEMESH_TRUST_DOMAIN", default_value = "edgemesh.local")]
    pub trust_domain: TrustDomain,

    /// The EdgeMesh CA certificate (PEM): a peer certificate not on record must carry its signature.
    #[arg(long, env = "EDGEMESH_CA_CERT", default_value = ".edgemesh/ca.pem")]
    pub ca_cert: std::path::PathBuf,

    /// Health older than this is a deny.
    #[arg(long, env = "EDGEMESH_MAX_HEALTH_AGE_SECS", default_value_t = 300)]
    pub max_health_age_secs: u64,

    /// IANA time zone of business hours.
    #[arg(long, env = "EDGEMESH_TIMEZONE", default_value = "UTC")]
    pub timezone: String,

    /// Decide as if it were this instant (RFC 3339), instead of the system clock. For tests and
    /// what-if questions; health ages are measured against it too (never below zero).
    #[arg(long, env = "EDGEMESH_CLOCK", value_parser = parse_instant)]
    pub clock: Option<OffsetDateTime>,

    /// Connections to PostgreSQL, at most: cache misses, the audit writer and the policy poller share
    /// them (the change listener has its own). A miss holds one for a round trip, so a database
    /// further away needs more for the same rate of misses.
    #[arg(long, env = "EDGEMESH_DATABASE_CONNECTIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub database_connections: u32,

    /// Devices kept in the cache.
    #[arg(long, env = "EDGEMESH_CACHE_CAPACITY", default_value_t = 200_000)]
    pub cache_capacity: u64,

    /// Safety net: a cached device is reloaded at least this often even without a notification (the
    /// notifications carry every change, the heartbeat proves they are heard, and a measurement that
    /// turns stale is read again anyway).
    #[arg(long, env = "EDGEMESH_CACHE_TTL_SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub cache_ttl_secs: u64,

    /// How often the change listener notifies itself to prove its connection is alive. A heartbeat
    /// not heard for three intervals makes the cache untrusted (every Check reads the database)
    /// until the listener is back: the bound on how long a silently dropped connection can hide a
    /// revocation.
    #[arg(long, env = "EDGEMESH_NOTIFY_HEARTBEAT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub notify_heartbeat_ms: u64,

    /// Threads answering Check calls (default: one per core). Next to Envoy on a small machine, fewer
    /// threads than cores cost less CPU per Check; with 1, everything runs on one thread.
    #[arg(long, env = "EDGEMESH_EXT_AUTHZ_WORKERS",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub worker_threads: Option<usize>,

    /// Directory of the audit spool: every decision is journaled there before its answer leaves, and
    /// shipped from there, in order, after an outage of Postgres or a crash of ext-authz. Must survive
    /// restarts (not a tmpfs), and belong to this ext-authz alone (one spool per replica).
    #[arg(
        long,
        env = "EDGEMESH_AUDIT_SPOOL_DIR",
        default_value = ".edgemesh/audit-spool"
    )]
    pub audit_spool_dir: std::path::PathBuf,

    /// Decisions queued in memory for the audit writer; beyond it they are shipped from the spool.
    #[arg(long, env = "EDGEMESH_AUDIT_QUEUE", default_value_t = 100_000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    pub audit_queue: usize,

    /// Directory of candidate (shadow) policies, evaluated beside the enforced ones on the routes whose
    /// `context_extensions` say `shadow: "true"`: the enforced decision is the answer, the shadow one is
    /// audited and counted (`edgemesh_shadow_decisions_total`). Reloaded like the enforced ones.
    #[arg(long, env = "EDGEMESH_SHADOW_POLICY_DIR")]
    pub shadow_policy_dir: Option<std::path::PathBuf>,

    /// How often the policy files are checked for changes (SIGHUP checks at once).
    #[arg(long, env = "EDGEMESH_POLICY_POLL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..))]
    pub policy_poll_ms: u64,
}

/// What decisions are made with, fixed for the server's life (from [`Config`] and the CA file).
#[derive(Debug, Clone)]
pub struct Settings {
    pub trust_domain: TrustDomain,
    /// The DER of the EdgeMesh CA certificate. Envoy verifies the client's chain; ext-authz checks the
    /// signature again of a certificate the directory does not vouch for (see [`crate::identity`]).
    pub ca_der: Arc<[u8]>,
    pub max_health_age_seconds: u64,
    pub timezone: String,
    pub clock: Clock,
}

/// What "now" is for decisions.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    /// A fixed instant, for deterministic tests of time-of-day rules and what-if questions.
    Fixed(OffsetDateTime),
}

impl Clock {
    pub fn now(&self) -> OffsetDateTime {
        match self {
            Clock::System => OffsetDateTime::now_utc(),
            Clock::Fixed(at) => *at,
        }
    }
}

fn parse_instant(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 instant (2026-11-21T10:30:00Z): {e}"))
}
