//! `edgemesh-simulator`: drives many devices through the real EdgeMesh flows, and stands in for the world
//! around EdgeMesh in demos and benches. `bench-enroll`: N devices, each with its own key generated
//! locally, its own CSR and its own TLS connection, enroll concurrently through the control API exactly
//! as `edgemesh-agent enroll` does. `upstream`: the demo services behind Envoy. `noop-authz`: the
//! do-nothing ext_authz server benches compare EdgeMesh's against.

mod noop_authz;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::{Parser, Subcommand};
use edgemesh_core::api::EnrollRequest;
use edgemesh_core::client::{ControlApi, DeviceKey, fetch_pinned_ca};
use edgemesh_core::id::DeviceId;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

#[derive(Debug, Parser)]
#[command(
    name = "edgemesh-simulator",
    version,
    about = "EdgeMesh device simulator and load generator"
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
    /// File holding the admin token.
    #[arg(
        long,
        global = true,
        env = "EDGEMESH_ADMIN_TOKEN_FILE",
        default_value = ".edgemesh/admin-token"
    )]
    admin_token_file: PathBuf,
    #[command(subcommand)]
    command: Command,
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
    /// Serve the demo services Envoy routes to: each request is answered with the identity headers it
    /// arrived with.
    Upstream {
        #[arg(
            long,
            env = "EDGEMESH_UPSTREAM_LISTEN",
            default_value = "127.0.0.1:8081"
        )]
        listen: std::net::SocketAddr,
    },
    /// Serve a do-nothing ext_authz server that allows everything (bench only: the protocol's ceiling).
    NoopAuthz {
        #[arg(long, default_value = "127.0.0.1:9193")]
        listen: std::net::SocketAddr,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    edgemesh_core::telemetry::init();
    edgemesh_core::tls::install_crypto_provider();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgemesh-simulator: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Upstream { listen } => upstream::serve(listen).await,
        Command::NoopAuthz { listen } => noop_authz::serve(listen).await,
        Command::BenchEnroll {
            devices,
            concurrency,
        } => {
            let admin_token = read_admin_token(&cli.admin_token_file)?;
            bench_enroll(&cli.control_api, &admin_token, devices, concurrency.max(1)).await
        }
    }
}

fn read_admin_token(path: &std::path::Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("failed to read the admin token from {}", path.display()))?
        .trim()
        .to_owned())
}

/// Admin calls the simulator needs to set up a run. The admin API is served with a certificate of the
/// EdgeMesh CA, which the simulator takes from the control API itself (it holds the admin token, so it
/// is the operator, not a device bootstrapping trust).
struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!("{}/api/v1/admin{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "POST {path} answered {status}: {body}");
        Ok(body)
    }
}

async fn bench_enroll(
    base: &str,
    admin_token: &str,
    devices: u32,
    concurrency: usize,
) -> anyhow::Result<()> {
    // The run's own user and token, so runs do not collide.
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let ca_http = reqwest::Client::builder()
        .use_preconfigured_tls(edgemesh_core::tls::unverified_client_config())
        .build()?;
    let ca_pem = ca_http
        .get(format!("{base}/api/v1/ca.pem"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let admin = Admin {
        http: reqwest::Client::builder()
            .use_preconfigured_tls(edgemesh_core::tls::client_config(&ca_pem, None)?)
            .build()?,
        base: base.to_owned(),
        token: admin_token.to_owned(),
    };
    let owner = format!("bench-{run_id}");
    admin
        .post(
            "/users",
            json!({"id": owner, "email": format!("{owner}@bench.invalid"), "role": "developer"}),
        )
        .await?;
    let created = admin
        .post(
            "/tokens",
            json!({"owner": owner, "ttl_seconds": 3600, "max_uses": devices}),
        )
        .await?;
    let token: Arc<str> = created["token"]
        .as_str()
        .context("no token in answer")?
        .into();
    let fingerprint: Arc<str> = created["ca_fingerprint"]
        .as_str()
        .context("no fingerprint")?
        .into();

    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..devices {
        let permit = permits.clone().acquire_owned().await?;
        let (token, fingerprint, base) = (token.clone(), fingerprint.clone(), base.to_owned());
        let device = DeviceId::parse(&format!("b{run_id}-{i}"))?;
        tasks.spawn(async move {
            let t0 = Instant::now();
            let result = enroll_like_the_agent(&base, &token, &fingerprint, &device).await;
            drop(permit);
            result.map(|()| t0.elapsed())
        });
    }
    let mut latencies = Vec::with_capacity(devices as usize);
    let mut failures = 0u32;
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok(latency) => latencies.push(latency),
            Err(e) => {
                failures += 1;
                if failures <= 5 {
                    eprintln!("enrollment failed: {e:#}");
                }
            }
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "enrollments    {} ok, {failures} failed, concurrency {concurrency}",
        latencies.len()
    );
    println!("elapsed        {:.2} s", elapsed.as_secs_f64());
    println!(
        "rate           {:.1} enrollments/s",
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    for (name, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0)] {
        println!(
            "latency {name}    {:.1} ms",
            percentile(&latencies, q).as_secs_f64() * 1000.0
        );
    }
    ensure!(failures == 0, "{failures} enrollments failed");
    Ok(())
}

/// What `edgemesh-agent enroll` does: pin the CA, generate a key, send a CSR with the token.
async fn enroll_like_the_agent(
    base: &str,
    token: &str,
    fingerprint: &str,
    device: &DeviceId,
) -> anyhow::Result<()> {
    let ca_pem = fetch_pinned_ca(base, fingerprint).await?;
    let key = DeviceKey::generate()?;
    let request = EnrollRequest {
        device_id: device.to_string(),
        device_type: "simulated".into(),
        os: "debian".into(),
        os_version: "12".into(),
        csr_pem: key.csr_pem(device)?,
    };
    ControlApi::new(base, &ca_pem, None)?
        .enroll(token, &request)
        .await?;
    Ok(())
}

/// The nearest-rank percentile of sorted samples (`q` in 0..=1).
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_of_a_known_distribution() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let cases = [(0.50, 50), (0.90, 90), (0.99, 99), (1.0, 100), (0.0, 1)];
        for (q, expected) in cases {
            assert_eq!(
                percentile(&samples, q),
                Duration::from_millis(expected),
                "q = {q}"
            );
        }
        assert_eq!(percentile(&[], 0.5), Duration::ZERO, "no samples");
    }
}
