//! `edgemesh-ext-authz`: Envoy's external authorization server for EdgeMesh (`serve`), and the policy
//! commands operators use to debug and test policies (`policy eval`, `policy test`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgemesh_core::policy::{AUTHZ, Example, Files, PolicySet};

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
    /// Operator commands for the policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Evaluate an input document and print the decision as JSON. An example of policies/examples
    /// (`{"input": …, "expect": …}`) is unwrapped, and its expected decision checked (exit 1 if not met).
    Eval {
        /// The input document (JSON); `-` or absent reads standard input.
        #[arg(long)]
        input: Option<PathBuf>,
    },
    /// Run the Rego unit tests (`test_*` rules of `*_test.rego`).
    Test,
}

fn main() -> ExitCode {
    let _log = edgemesh_core::telemetry::init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Serve(config) => return serve(config, &cli.policy_dir),
        Command::Policy { command } => policy(&cli.policy_dir, command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgemesh-ext-authz: error: {e:#}");
            ExitCode::from(64)
        }
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
            eprintln!("edgemesh-ext-authz: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(edgemesh_ext_authz::startup::serve(
        config,
        policy_dir,
        edgemesh_core::shutdown_signal(),
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "failed");
            eprintln!("edgemesh-ext-authz: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn policy(policy_dir: &Path, command: &PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Eval { input } => {
            let policies = PolicySet::load_dir(policy_dir, Files::Policies)?;
            let text = match input.as_deref() {
                None => read_stdin()?,
                Some(p) if p.as_os_str() == "-" => read_stdin()?,
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("failed to read {}", p.display()))?,
            };
            let example = Example::from_document(
                serde_json::from_str(&text).context("the input is not JSON")?,
            )?;
            let decision = policies.evaluate(AUTHZ, &example.input);
            println!("{}", serde_json::to_string_pretty(&decision)?);
            Ok(match example.expected(&decision) {
                None => ExitCode::SUCCESS,
                Some(true) => {
                    eprintln!("as the example expects");
                    ExitCode::SUCCESS
                }
                Some(false) => {
                    eprintln!(
                        "NOT as the example expects: {}",
                        example.expect.unwrap_or_default()
                    );
                    ExitCode::FAILURE
                }
            })
        }
        PolicyCommand::Test => {
            let policies = PolicySet::load_dir(policy_dir, Files::WithTests)?;
            let outcomes = policies.run_tests();
            let failed = outcomes.iter().filter(|(_, ok)| !ok).count();
            for (rule, ok) in &outcomes {
                println!("{} {rule}", if *ok { "PASS" } else { "FAIL" });
            }
            println!(
                "{} tests, {failed} failed (policy version {})",
                outcomes.len(),
                policies.version()
            );
            Ok(if failed == 0 && !outcomes.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn read_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("failed to read standard input")?;
    Ok(text)
}
