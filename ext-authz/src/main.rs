//! `edgemesh-ext-authz`: Envoy's external authorization server for EdgeMesh (`serve`). The policy
//! tools (`policy eval`, `policy test`) are `edgemeshctl`'s.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgemesh_ext_authz::startup::Server;

#[derive(Debug, Parser)]
#[command(
    name = "edgemesh-ext-authz",
    version,
    about = "EdgeMesh external authorization for Envoy"
)]
struct Cli {
    /// Directory of the Rego policies.
    #[arg(
        long,
        global = true,
        env = "EDGEMESH_POLICY_DIR",
        default_value = "policies"
    )]
    policy_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Envoy's ext_authz gRPC API (and the gRPC health service) until SIGTERM or SIGINT.
    Serve(Box<edgemesh_ext_authz::Config>),
}

const PROGRAM: &str = "edgemesh-ext-authz";

fn main() -> ExitCode {
    let _log = edgemesh_core::telemetry::init();
    let cli: Cli = edgemesh_core::exit::parse_args(PROGRAM);
    match &cli.command {
        Command::Serve(config) => serve(config, &cli.policy_dir),
    }
}

fn serve(config: &edgemesh_ext_authz::Config, policy_dir: &Path) -> ExitCode {
    // One thread: everything on it, no hand-offs between threads (Tokio's current-thread runtime).
    let mut builder = if config.worker_threads == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if let Some(threads) = config.worker_threads.filter(|t| *t > 1) {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{PROGRAM}: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match Server::build(config, policy_dir).await {
            Ok(server) => {
                server
                    .run_until_stopped(edgemesh_core::shutdown_signal())
                    .await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "failed to start");
                edgemesh_core::exit::failed(PROGRAM, &e)
            }
        }
    })
}
