//! `edgemeshctl`: the operator's CLI over the control API's admin endpoints, plus the policy tools.
//!
//! Output is a table (`--output table`, the default) or the API's JSON (`--output json`) on stdout;
//! messages go to stderr. Exit status: 0 done, 1 refused by the server (its `{error, detail}` shown) or
//! a service down, 64 a usage error (bad flags, missing configuration), 3 the server could not be
//! reached or answered something unexpected.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod audit;
mod client;
mod commands;
mod config;
mod decisions;
mod failure;
mod policy;
mod release;
mod table;

use failure::Failure;

#[derive(Debug, Parser)]
#[command(name = "edgemeshctl", version, about = "EdgeMesh administration")]
struct Cli {
    #[command(flatten)]
    connection: config::Flags,
    /// How results are printed: a table, or the API's JSON (one document; NDJSON for a followed audit).
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Users, who own devices.
    Users {
        #[command(subcommand)]
        command: commands::Users,
    },
    /// One-time enrollment tokens.
    Tokens {
        #[command(subcommand)]
        command: commands::Tokens,
    },
    /// Enrolled devices.
    Devices {
        #[command(subcommand)]
        command: commands::Devices,
    },
    /// Device certificates.
    Certs {
        #[command(subcommand)]
        command: commands::Certs,
    },
    /// Devices' health reports.
    Health {
        #[command(subcommand)]
        command: commands::Health,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Each service's health and version: the control API and its database, ext-authz, Envoy.
    Status(commands::StatusArgs),
    /// Agent releases: sign (offline), publish, list.
    Release {
        #[command(subcommand)]
        command: release::Release,
    },
    /// Roll an agent version out to a channel's devices, and watch it.
    Rollout {
        #[command(subcommand)]
        command: release::Rollout,
    },
    /// The Rego policies: evaluate and test locally (no server needed); replay stored decisions
    /// against a candidate, explain one.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Records, newest first; `--follow` then prints new ones as they are written.
    Query(audit::QueryArgs),
}

/// Arguments shared by the commands that take a revocation reason.
#[derive(Debug, Args)]
pub struct Reason {
    /// Why (1 to 256 characters); recorded with the revocation.
    #[arg(long)]
    reason: Option<String>,
}

/// A value-enum argument as the API spells it (`Verdict::Unhealthy` is `unhealthy`).
pub fn lower<T: std::fmt::Debug>(value: T) -> String {
    format!("{value:?}").to_lowercase()
}

fn main() -> ExitCode {
    let cli: Cli = edgemesh_core::exit::parse_args("edgemeshctl");
    if let Command::Policy { command } = &cli.command
        && command.is_local()
    {
        return match policy::run(command, cli.output) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("edgemeshctl: error: {e:#}");
                ExitCode::from(edgemesh_core::exit::CONFIG)
            }
        };
    }
    if let Command::Release { command } = &cli.command
        && let Some(done) = release::local(command)
    {
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("edgemeshctl: error: {e:#}");
                ExitCode::from(edgemesh_core::exit::CONFIG)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("edgemeshctl: error: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("edgemeshctl: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let settings = config::Settings::resolve(&cli.connection)?;
    if let Command::Status(args) = &cli.command {
        return commands::status(&settings, args, cli.output).await;
    }
    let api = client::Admin::connect(&settings)?;
    let out = cli.output;
    if let Command::Policy { command } = &cli.command {
        return match command {
            policy::PolicyCommand::Replay(args) => decisions::replay(&api, args, out).await,
            policy::PolicyCommand::Explain(args) => decisions::explain(&api, args, out).await,
            _ => unreachable!("local policy commands are handled in main"),
        };
    }
    match cli.command {
        Command::Users { command } => commands::users(&api, command, out).await?,
        Command::Tokens { command } => commands::tokens(&api, &settings, command, out).await?,
        Command::Devices { command } => commands::devices(&api, command, out).await?,
        Command::Certs { command } => commands::certs(&api, command, out).await?,
        Command::Health { command } => commands::health(&api, command, out).await?,
        Command::Audit {
            command: AuditCommand::Query(args),
        } => audit::query(&api, &args, out).await?,
        Command::Release { command } => release::release(&api, command, out).await?,
        Command::Rollout { command } => release::rollout(&api, command, out).await?,
        Command::Status(_) | Command::Policy { .. } => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}
