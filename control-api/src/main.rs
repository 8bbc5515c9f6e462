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
