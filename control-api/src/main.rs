//! `edgemesh-control-api`: the control API server (enrollment, device mTLS, admin API, console) and its
//! one-shot commands (`migrate`, `issue-server-cert`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

const PROGRAM: &str = "edgemesh-control-api";
use edgemesh_control_api::ca::CertificateAuthority;
use edgemesh_control_api::{Application, Config};
use edgemesh_core::exit::ConfigContext;
use edgemesh_core::files::write_atomic;
use edgemesh_core::shutdown_signal;

#[derive(Debug, Parser)]
#[command(name = "edgemesh-control-api", version, about = "EdgeMesh control API")]
struct Cli {
    #[command(flatten)]
    config: Config,
    /// Without a command, the API is served.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the database migrations and exit (the server also applies them at start, unless
    /// `--migrate false`).
    Migrate,
    /// Issue a TLS server certificate signed by the EdgeMesh CA (for Envoy's front door), write it
    /// and its key (mode 0600) to files, and exit.
    IssueServerCert {
        /// DNS names and IP addresses the certificate is valid for.
        #[arg(long, value_delimiter = ',', required = true)]
        names: Vec<String>,
        #[arg(long)]
        cert_out: PathBuf,
        #[arg(long)]
        key_out: PathBuf,
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=398))]
        days: u32,
    },
    /// The tamper-evident audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the audit's hash chain from the records in PostgreSQL (EDGEMESH_DATABASE_URL) and
    /// check it against the signed checkpoints, in the database and in the checkpoint files; print
    /// the first record that was altered, removed, inserted or moved, and exit 1 if there is one.
    Verify {
        /// The checkpoint signing key's public key (`audit-signing.pub` beside the key).
        #[arg(long)]
        public_key: PathBuf,
        /// The checkpoint files' directory (a copy shipped elsewhere is best); without it only the
        /// database's checkpoints are checked, and the removal of the newest records goes unseen.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// Start at the signed checkpoint of this sequence number instead of the first record.
        #[arg(long)]
        from: Option<i64>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let _log = edgemesh_core::telemetry::init();
    let cli: Cli = edgemesh_core::exit::parse_args(PROGRAM);
    let config = cli.config;
    let done = match cli.command {
        Some(Command::IssueServerCert {
            names,
            cert_out,
            key_out,
            days,
        }) => Some(issue_server_cert(
            &config, &names, &cert_out, &key_out, days,
        )),
        Some(Command::Migrate) => Some(edgemesh_control_api::startup::migrate(&config).await),
        Some(Command::Audit(AuditCommand::Verify {
            public_key,
            checkpoints,
            from,
        })) => {
            return match verify(&config, &public_key, checkpoints.as_deref(), from).await {
                Ok(code) => code,
                Err(e) => edgemesh_core::exit::failed(PROGRAM, &e),
            };
        }
        None => None,
    };
    if let Some(done) = done {
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => edgemesh_core::exit::failed(PROGRAM, &e),
        };
    }
    let app = match Application::build(&config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "failed to start");
            return edgemesh_core::exit::failed(PROGRAM, &e);
        }
    };
    app.run_until_stopped(shutdown_signal()).await;
    ExitCode::SUCCESS
}

async fn verify(
    config: &Config,
    public_key: &std::path::Path,
    checkpoints: Option<&std::path::Path>,
    from: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let key = std::fs::read_to_string(public_key)
        .with_context(|| format!("failed to read {}", public_key.display()))
        .and_then(|text| edgemesh_core::release::PublicKey::parse(&text))
        .with_context(|| format!("{} is not a public key", public_key.display()))
        .config_error()?;
    let db = edgemesh_control_api::startup::connect(config).await?;
    let started = std::time::Instant::now();
    let report = edgemesh_control_api::chain::verify::verify(&db, &key, checkpoints, from).await?;
    let secs = started.elapsed().as_secs_f64();
    match &report.problem {
        None => {
            println!(
                "audit verified: {} records up to {} ({} checkpoints; {} records dropped by \
                 retention, as signed) in {secs:.1} s",
                report.verified, report.last_seq, report.checkpoints, report.dropped
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(problem) => {
            println!(
                "AUDIT TAMPERED: {problem} ({} records verified before it)",
                report.verified
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn issue_server_cert(
    config: &Config,
    names: &[String],
    cert_out: &std::path::Path,
    key_out: &std::path::Path,
    days: u32,
) -> anyhow::Result<()> {
    edgemesh_core::tls::install_crypto_provider();
    let ca = CertificateAuthority::load_or_create(&config.ca_cert_path(), &config.ca_key_path())
        .context("failed to load or create the CA")
        .config_error()?;
    let (cert, key) = ca.issue_server(names, time::Duration::days(i64::from(days)))?;
    write_atomic(key_out, key.as_bytes(), 0o600)?;
    write_atomic(cert_out, cert.as_bytes(), 0o644)?;
    println!(
        "issued a server certificate for {} to {}",
        names.join(", "),
        cert_out.display()
    );
    Ok(())
}
