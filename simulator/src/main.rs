//! `edgemesh-simulator`: drives simulated devices through the real EdgeMesh flows (enrollment by CSR,
//! health over mTLS, requests through Envoy with each device's certificate), and stands in for the world
//! around EdgeMesh in demos and benches: `upstream` is the demo services behind Envoy, `noop-authz` the
//! do-nothing ext_authz server benches compare EdgeMesh's against.

mod attack;
mod audit_bench;
mod bench;
mod chain_bench;
mod console_bench;
mod db;
mod directory_bench;
mod fleet;
mod fleet_bench;
mod memory_bench;
mod noop_authz;
mod run;
mod stats;
mod summary;
mod updates;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::bench::{CheckArgs, ControlPlane, ProxyArgs};

#[derive(Debug, Parser)]
#[command(
    name = "edgemesh-simulator",
    version,
    about = "EdgeMesh device simulator and load generator",
    long_about = "EdgeMesh device simulator and load generator.\n\nWithout a command it runs a fleet: \
users of each role, --devices devices enrolled through the real CSR flow, health reports over mTLS, and \
requests through Envoy with each device's certificate, under --scenario (steady, revocation, flapping, \
attack), with a live progress line and a summary. Exit status: 0 ok; 1 a request failed for a reason \
other than a policy deny, or a scenario could not measure what it had to; 3 an attack succeeded."
)]
struct Cli {
    /// The control API's enrollment and admin URL.
    #[arg(
        long,
        global = true,
        env = "EDGEMESH_CONTROL_API",
        default_value = "https://127.0.0.1:8444"
    )]
    control_api: String,
    /// The control API's device (mTLS) URL.
    #[arg(
        long,
        global = true,
        env = "EDGEMESH_DEVICE_API",
        default_value = "https://127.0.0.1:8443"
    )]
    device_api: String,
    /// File holding the admin token.
    #[arg(
        long,
        global = true,
        env = "EDGEMESH_ADMIN_TOKEN_FILE",
        default_value = ".edgemesh/admin-token"
    )]
    admin_token_file: PathBuf,
    /// Without a command: a simulated fleet and its traffic through Envoy (below).
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: run::RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll N devices concurrently with the agent's CSR flow and report enrollments per second.
    BenchEnroll {
        /// Number of devices to enroll.
        #[arg(long, default_value_t = 500)]
        devices: u32,
        /// Enrollments in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Health reports per second through the mTLS device API, N devices at once.
    BenchHealth {
        #[arg(long, default_value_t = 200)]
        devices: u32,
        /// Reports per device (the per-device burst allowance is 10).
        #[arg(long, default_value_t = 10)]
        reports: u32,
    },
    /// Check calls straight to ext-authz over gRPC with a warm cache: latency at a fixed rate (server
    /// histogram and client), CPU per Check, then closed-loop throughput.
    BenchCheck(CheckArgs),
    /// Requests through Envoy on the same route with no authorizer, the do-nothing one and EdgeMesh's
    /// (three listeners of the bench Envoy), interleaved in rounds.
    BenchProxy(ProxyArgs),
    /// Health at fleet rate: --devices enrolled through the CSR flow report at --rate reports/s in all,
    /// each over its own mTLS connection, while Checks for them go to an ext-authz on the same
    /// database: the rate, latency, notifications per report, cache hit rate and CPU per report.
    BenchFleetHealth(fleet_bench::FleetHealthArgs),
    /// ext-authz's directory at a million devices written into a bench database: Checks at a fixed
    /// rate with a Zipf-like popularity to an ext-authz it starts; the hit rate, miss latency,
    /// resident memory, and the p99 by second after a restart.
    BenchDirectory(directory_bench::DirectoryArgs),
    /// The tamper-evident audit: ROWS replayable decisions stored in bulk into a fresh bench database,
    /// chained by the sequencer, then verified; writes the newest million's window (for
    /// `edgemeshctl policy replay`) to WINDOW_FILE.
    BenchChain {
        #[arg(
            long,
            env = "EDGEMESH_CHAIN_BENCH_DATABASE_URL",
            hide_env_values = true
        )]
        database_url: String,
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
        #[arg(long)]
        window_file: PathBuf,
    },
    /// The ext-authz audit writer alone, into a bench database: its drain rate with a full queue,
    /// then the queue depth at half that rate.
    BenchAuditWriter {
        /// A database with the EdgeMesh schema that may be filled (never the stack's own).
        #[arg(long, env = "EDGEMESH_BENCH_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[arg(long, default_value_t = 200_000)]
        records: u64,
        #[arg(long, default_value_t = 10)]
        steady_secs: u64,
    },
    /// Audit queries through the admin API (a control API serving the bench database) for one device
    /// and a one-day window, over ROWS records it seeds first (once).
    BenchAuditQuery {
        #[arg(long, env = "EDGEMESH_BENCH_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 10_000)]
        devices: u32,
        #[arg(long, default_value_t = 500)]
        queries: u32,
    },
    /// The console's pages at fleet scale (after bench-memory filled the bench database): the server's
    /// time per page, from its Server-Timing header.
    BenchConsole {
        /// Requests per page.
        #[arg(long, default_value_t = 100)]
        requests: u32,
    },
    /// ext-authz's resident memory with many devices cached: writes devices straight into a bench
    /// database, sends one Check per device to an ext-authz serving it, reads its RSS at each milestone.
    BenchMemory {
        #[arg(long, env = "EDGEMESH_BENCH_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// An ext-authz serving the bench database.
        #[arg(long, default_value = "http://127.0.0.1:19191")]
        ext_authz: String,
        #[arg(long, default_value = "http://127.0.0.1:19192/metrics")]
        metrics: String,
        /// Devices checked when the memory is read (the largest is how many are written).
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        milestones: Vec<u32>,
        /// The CA the bench's ext-authz trusts (EDGEMESH_CA_CERT), and its key, to sign the devices'
        /// certificates with.
        #[arg(long)]
        ca_cert: PathBuf,
        #[arg(long)]
        ca_key: PathBuf,
    },
    /// A fleet playing its agents' update checks: N devices report running --agent-version on
    /// --target; each offered a release fetches and checks it and reports again as the new version.
    /// Prints one JSON line: the devices, which were offered what, and how many updated.
    UpdateChecks {
        #[arg(long, default_value_t = 200)]
        devices: u32,
        #[arg(long, default_value = "0.1.0")]
        agent_version: String,
        #[arg(long, default_value = "x86_64-unknown-linux-gnu")]
        target: String,
    },
    /// Serve the demo services Envoy routes to: each request is answered with the identity headers it
    /// arrived with.
    Upstream {
        #[arg(
            long,
            env = "EDGEMESH_UPSTREAM_LISTEN",
            default_value = "127.0.0.1:8081"
        )]
        listen: SocketAddr,
        /// Answer every request with the same small body instead of the echo (bench-proxy's upstream:
        /// the echo of EdgeMesh's identity headers would make its responses, and so Envoy's and the
        /// client's work, bigger than the other authorizers').
        #[arg(long)]
        plain: bool,
    },
    /// Serve a do-nothing ext_authz server that allows everything (bench only: the protocol's ceiling).
    NoopAuthz {
        #[arg(long, default_value = "127.0.0.1:9193")]
        listen: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let _log = edgemesh_core::telemetry::init();
    edgemesh_core::tls::install_crypto_provider();
    let cli: Cli = edgemesh_core::exit::parse_args("edgemesh-simulator");
    let result = if cli.command.is_some() {
        command(cli).await.map(|()| summary::EXIT_OK)
    } else {
        fleet(cli).await
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => edgemesh_core::exit::failed("edgemesh-simulator", &e),
    }
}

/// The default: a fleet under a scenario; prints the summary (and writes it as JSON if asked).
async fn fleet(cli: Cli) -> anyhow::Result<u8> {
    let token = read_admin_token(&cli.admin_token_file)?;
    let control = ControlPlane {
        api: &cli.control_api,
        device_api: &cli.device_api,
        admin_token: &token,
    };
    let json = cli.run.json.clone();
    let summary = run::run(&control, cli.run).await?;
    print!("{}", summary.table());
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("failed to write {}", path.display()))?;
        println!("  summary as JSON: {}", path.display());
    }
    Ok(summary.exit_code())
}

async fn command(cli: Cli) -> anyhow::Result<()> {
    let admin_token = || read_admin_token(&cli.admin_token_file);
    let control = |token| ControlPlane {
        api: &cli.control_api,
        device_api: &cli.device_api,
        admin_token: token,
    };
    let Some(command) = cli.command else {
        return Ok(());
    };
    match command {
        Command::BenchChain {
            ref database_url,
            rows,
            ref window_file,
        } => chain_bench::run(database_url, rows, window_file).await,
        Command::BenchAuditWriter {
            ref database_url,
            records,
            steady_secs,
        } => audit_bench::writer(database_url, records, steady_secs).await,
        Command::BenchAuditQuery {
            ref database_url,
            rows,
            devices,
            queries,
        } => {
            audit_bench::query(
                database_url,
                &cli.control_api,
                &cli.admin_token_file,
                rows,
                devices,
                queries,
            )
            .await
        }
        Command::BenchConsole { requests } => {
            console_bench::console(&cli.control_api, &cli.admin_token_file, requests).await
        }
        Command::BenchMemory {
            ref database_url,
            ref ext_authz,
            ref metrics,
            ref milestones,
            ref ca_cert,
            ref ca_key,
        } => {
            memory_bench::memory(
                database_url,
                ext_authz,
                metrics,
                milestones,
                (ca_cert, ca_key),
            )
            .await
        }
        Command::Upstream { listen, plain } => upstream::serve(listen, plain).await,
        Command::NoopAuthz { listen } => noop_authz::serve(listen).await,
        Command::BenchEnroll {
            devices,
            concurrency,
        } => {
            let token = admin_token()?;
            bench::enroll(&control(&token), devices, concurrency).await
        }
        Command::UpdateChecks {
            devices,
            ref agent_version,
            ref target,
        } => {
            let token = admin_token()?;
            updates::play(&control(&token), devices, agent_version, target).await
        }
        Command::BenchHealth { devices, reports } => {
            let token = admin_token()?;
            bench::health(&control(&token), devices, reports).await
        }
        Command::BenchCheck(ref args) => {
            let token = admin_token()?;
            bench::check(&control(&token), args).await
        }
        Command::BenchDirectory(ref args) => directory_bench::directory(args).await,
        Command::BenchFleetHealth(ref args) => {
            let token = admin_token()?;
            fleet_bench::fleet_health(&control(&token), args).await
        }
        Command::BenchProxy(ref args) => {
            let token = admin_token()?;
            bench::proxy(&control(&token), args).await
        }
    }
}

fn read_admin_token(path: &std::path::Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("failed to read the admin token from {}", path.display()))?
        .trim()
        .to_owned())
}
