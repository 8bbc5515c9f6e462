//! `bench-directory`: ext-authz's device directory at a million devices. The devices (each with its
//! certificate and a healthy report) are written straight into a bench database; an ext-authz this
//! bench starts, with its default cache capacity, serves it; Checks come at a fixed rate (open loop)
//! over all the devices with a Zipf-like popularity (the device of rank k is asked for in proportion
//! to 1/k^s). Reported: the cache hit rate in the second half of the run, the latency of the first
//! Check of each device (a certain cache miss; a device evicted and asked for again misses too, and
//! is not in that sample), the whole run's p99, the resident memory, and, after a restart of
//! ext-authz, how long until a second's p99 is under 1 ms again. Each latency is given twice: as the
//! load generator sees it (which includes its own scheduling and the gRPC hop on the same two cores)
//! and as ext-authz's own histogram has it (arrival to answer).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgPoolOptions;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::bench::check_request;
use crate::db::{self, Seeded};
use crate::fleet::run_id;
use crate::memory_bench::{issue_fleet, read_issuer};
use crate::stats::{buckets, histogram_quantile, percentile, sample};

#[derive(Debug, clap::Args)]
pub struct DirectoryArgs {
    /// A database with the EdgeMesh schema that may be filled (never the stack's own).
    #[arg(
        long,
        env = "EDGEMESH_DIRECTORY_BENCH_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: String,
    #[arg(long, default_value_t = 1_000_000)]
    pub devices: u32,
    /// Checks per second.
    #[arg(long, default_value_t = 2_000)]
    pub rate: u32,
    #[arg(long, default_value_t = 60)]
    pub duration_secs: u64,
    /// The Zipf exponent s.
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// How long Checks go on after the restart.
    #[arg(long, default_value_t = 30)]
    pub restart_secs: u64,
    /// The ext-authz binary this bench starts (and restarts) on the bench database.
    #[arg(long)]
    pub ext_authz_bin: PathBuf,
    /// ext-authz's gRPC and metrics ports (on 127.0.0.1).
    #[arg(long, default_value_t = 19391)]
    pub port: u16,
    #[arg(long, default_value_t = 19392)]
    pub metrics_port: u16,
    /// The CA the ext-authz started here trusts, and its key, to sign the devices' certificates with.
    #[arg(long)]
    pub ca_cert: PathBuf,
    #[arg(long)]
    pub ca_key: PathBuf,
    /// Where ext-authz keeps its audit spool.
    #[arg(long)]
    pub spool_dir: PathBuf,
}

/// The popularity: device `order[k]` has rank k, asked for with probability ∝ 1/(k+1)^s.
struct Popularity {
    cumulative: Vec<f64>,
    order: Vec<u32>,
}

impl Popularity {
    fn new(devices: u32, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=devices)
            .map(|k| {
                total += 1.0 / f64::from(k).powf(s);
                total
            })
            .collect();
        let mut order: Vec<u32> = (0..devices).collect();
        // The popular devices are not the first ids written.
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(20_261_203));
        Self { cumulative, order }
    }

    fn pick(&self, rng: &mut impl Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let x = rng.random::<f64>() * total;
        let rank = self.cumulative.partition_point(|&c| c < x);
        self.order[rank.min(self.order.len() - 1)] as usize
    }
}

/// One Check's outcome: when it was due (from the run's start), its latency, whether it was its
/// device's first in the run, and whether it was allowed.
#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    latency: Duration,
    first: bool,
    allowed: bool,
}

struct ExtAuthz {
    child: Child,
    client: AuthorizationClient<Channel>,
    metrics: String,
}

impl ExtAuthz {
    /// Starts it and waits until it serves; answers how long that took.
    async fn start(args: &DirectoryArgs) -> anyhow::Result<(Self, Duration)> {
        let spawned = Instant::now();
        let child = Command::new(&args.ext_authz_bin)
            .arg("serve")
            .env("EDGEMESH_DATABASE_URL", &args.database_url)
            .env(
                "EDGEMESH_EXT_AUTHZ_LISTEN",
                format!("127.0.0.1:{}", args.port),
            )
            .env(
                "EDGEMESH_EXT_AUTHZ_METRICS_LISTEN",
                format!("127.0.0.1:{}", args.metrics_port),
            )
            .env("EDGEMESH_CA_CERT", &args.ca_cert)
            .env("EDGEMESH_AUDIT_SPOOL_DIR", &args.spool_dir)
            .env("EDGEMESH_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", args.ext_authz_bin.display()))?;
        let endpoint = format!("http://127.0.0.1:{}", args.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        let channel = loop {
            if let Ok(channel) = Channel::from_shared(endpoint.clone())?.connect().await {
                break channel;
            }
            ensure!(
                Instant::now() < deadline,
                "ext-authz did not listen on {endpoint}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Traffic starts when the gRPC health service says SERVING, as a health-checking load
        // balancer (Envoy) would send it.
        let mut health = HealthClient::new(channel.clone());
        loop {
            let status = health
                .check(HealthCheckRequest::default())
                .await
                .map(|r| r.into_inner().status);
            if status.is_ok_and(|s| s == ServingStatus::Serving as i32) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "ext-authz did not become ready (gRPC health) on {endpoint}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((
            Self {
                child,
                client: AuthorizationClient::new(channel),
                metrics: format!("http://127.0.0.1:{}/metrics", args.metrics_port),
            },
            spawned.elapsed(),
        ))
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            // SIGTERM: it drains and flushes its audit spool, as in a rolling restart.
            std::process::Command::new("kill")
                .arg(pid.to_string())
                .status()?;
        }
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("ext-authz did not stop")??;
        Ok(())
    }
}

/// What ext-authz's `metrics` say at one moment: its cache hits and misses so far, its resident
/// memory (MiB), and its Check latency histogram.
struct Scrape {
    hits: f64,
    misses: f64,
    rss: f64,
    cpu_seconds: f64,
    latency: Vec<(f64, f64)>,
}

impl Scrape {
    async fn take(metrics: &str) -> anyhow::Result<Self> {
        let text = reqwest::get(metrics).await?.text().await?;
        Ok(Self {
            hits: sample(&text, "edgemesh_ext_authz_cache_hits_total").unwrap_or(0.0),
            misses: sample(&text, "edgemesh_ext_authz_cache_misses_total").unwrap_or(0.0),
            rss: sample(&text, "process_resident_memory_bytes").unwrap_or(0.0) / 1_048_576.0,
            cpu_seconds: sample(&text, "process_cpu_seconds_total").unwrap_or(0.0),
            latency: buckets(&text, "edgemesh_ext_authz_decision_latency_seconds"),
        })
    }

    /// ext-authz's p99 of the Checks it answered between `self` and `later`.
    fn server_p99(&self, later: &Self) -> Option<Duration> {
        histogram_quantile(0.99, &self.latency, &later.latency).map(Duration::from_secs_f64)
    }
}

/// Scrapes `metrics` once a second, from now until `duration` has passed: each second's number and
/// what the scrape at its start said.
fn scrape_every_second(
    metrics: String,
    duration: Duration,
) -> tokio::task::JoinHandle<Vec<(u64, Scrape)>> {
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut scrapes = Vec::new();
        for second in 0..=duration.as_secs() {
            tokio::time::sleep_until(started + Duration::from_secs(second)).await;
            // A scrape that fails leaves a gap: the second's server-side figure is then not shown.
            if let Ok(scrape) = Scrape::take(&metrics).await {
                scrapes.push((second, scrape));
            }
        }
        scrapes
    })
}

/// Checks at `rate` for `duration`, each of a device drawn by `popularity`.
async fn traffic(
    client: &AuthorizationClient<Channel>,
    fleet: &Arc<Vec<Seeded>>,
    popularity: &Popularity,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<Vec<Sample>> {
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let mut seen = vec![false; fleet.len()];
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        let due = (f64::from(rate) * started.elapsed().as_secs_f64()) as u64;
        while sent < due {
            let index = popularity.pick(&mut rng);
            let first = !std::mem::replace(&mut seen[index], true);
            let request: CheckRequest = check_request(&fleet[index].id, &fleet[index].cert_pem);
            let at = Duration::from_secs_f64(sent as f64 / f64::from(rate));
            let (mut client, samples) = (client.clone(), Arc::clone(&samples));
            tasks.spawn(async move {
                // From when it is sent: the pacing's own tick (a millisecond or two) is not
                // ext-authz's latency, and the rate is far below what it can answer.
                let sent = Instant::now();
                let answer = client.check(request).await;
                let latency = sent.elapsed();
                let allowed =
                    answer.is_ok_and(|a| a.into_inner().status.is_some_and(|s| s.code == 0));
                samples.lock().await.push(Sample {
                    at,
                    latency,
                    first,
                    allowed,
                });
            });
            sent += 1;
        }
        while tasks.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while tasks.join_next().await.is_some() {}
    let mut samples = samples.lock().await.clone();
    samples.sort_by_key(|s| s.at);
    Ok(samples)
}

fn p99(samples: impl Iterator<Item = Duration>) -> Duration {
    let mut sorted: Vec<_> = samples.collect();
    sorted.sort();
    percentile(&sorted, 0.99)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub async fn directory(args: &DirectoryArgs) -> anyhow::Result<()> {
    ensure!(args.devices > 0, "--devices must be above 0");
    let db = PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.database_url)
        .await
        .context("cannot connect to the directory bench database")?;
    let run = run_id();
    let started = Instant::now();
    let ca = read_issuer(&args.ca_cert, &args.ca_key)?;
    let fleet = Arc::new(issue_fleet(&ca, &format!("dir-{run}"), &run, args.devices)?);
    eprintln!(
        "issued {} certificates in {:.1} s",
        fleet.len(),
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    db::bench_admin(&db).await?;
    for chunk in fleet.chunks(10_000) {
        db::insert_fleet(&db, chunk).await?;
    }
    // Written just now: fresh for the five minutes of the default maximum health age.
    let (in_db,): (i64,) = sqlx::query_as("SELECT count(*) FROM devices")
        .fetch_one(&db)
        .await?;
    eprintln!(
        "wrote {} devices with their certificates and health in {:.1} s ({in_db} in the database)",
        fleet.len(),
        started.elapsed().as_secs_f64()
    );
    let popularity = Popularity::new(args.devices, args.zipf);

    let (ext_authz, _) = ExtAuthz::start(args).await?;
    let duration = Duration::from_secs(args.duration_secs);
    let scrapes = scrape_every_second(ext_authz.metrics.clone(), duration);
    let samples = traffic(&ext_authz.client, &fleet, &popularity, args.rate, duration).await?;
    let scrapes = scrapes.await?;
    let end = Scrape::take(&ext_authz.metrics).await?;
    let half = scrapes
        .iter()
        .find(|(second, _)| *second >= args.duration_secs / 2)
        .map(|(_, s)| s)
        .context("ext-authz's metrics could not be read in the run's second half")?;
    let (hits, misses) = (end.hits - half.hits, end.misses - half.misses);
    let allowed = samples.iter().filter(|s| s.allowed).count();
    let firsts: Vec<_> = samples.iter().filter(|s| s.first).collect();
    println!(
        "== the directory at {} devices: {} Checks/s for {} s, Zipf s = {}",
        args.devices, args.rate, args.duration_secs, args.zipf
    );
    println!(
        "checks         {} ({allowed} allowed), {} distinct devices",
        samples.len(),
        firsts.len()
    );
    // A miss of a device never asked for before is compulsory (no cache holds it); the others are
    // devices the cache evicted, or read again as their health turned stale.
    let compulsory = firsts.iter().filter(|s| s.at >= duration / 2).count();
    println!(
        "hit rate       {:.2}% in the second half ({hits:.0} hits, {misses:.0} misses, {compulsory} of them a device's first Check)",
        100.0 * hits / (hits + misses).max(1.0)
    );
    println!(
        "latency        p99 {:.3} ms over all; a device's first Check (a miss) p50 {:.3} ms, p99 {:.3} ms",
        ms(p99(samples.iter().map(|s| s.latency))),
        ms({
            let mut sorted: Vec<_> = firsts.iter().map(|s| s.latency).collect();
            sorted.sort();
            percentile(&sorted, 0.5)
        }),
        ms(p99(firsts.iter().map(|s| s.latency)))
    );
    println!(
        "               ext-authz's own p99 (arrival to answer) {:.3} ms in the second half",
        half.server_p99(&end).map_or(f64::NAN, ms)
    );
    println!(
        "resident       {:.1} MiB (ext-authz, after the run)",
        end.rss
    );
    println!(
        "CPU            ext-authz {:.1} µs per Check over the run (process_cpu_seconds_total)",
        end.cpu_seconds * 1e6 / (samples.len().max(1) as f64)
    );
    ensure!(
        allowed * 1000 >= samples.len() * 999,
        "{} of {} Checks were not allowed: the devices written are not what ext-authz expects",
        samples.len() - allowed,
        samples.len()
    );

    // A restart: an empty cache under the same traffic.
    ext_authz.stop().await?;
    let (ext_authz, lag) = ExtAuthz::start(args).await?;
    let restart = Duration::from_secs(args.restart_secs);
    let scrapes = scrape_every_second(ext_authz.metrics.clone(), restart);
    let samples = traffic(&ext_authz.client, &fleet, &popularity, args.rate, restart).await?;
    let scrapes = scrapes.await?;
    let client: Vec<Duration> = (0..args.restart_secs)
        .map(|second| {
            p99(samples
                .iter()
                .filter(|s| s.at.as_secs() == second)
                .map(|s| s.latency))
        })
        .collect();
    // ext-authz's p99 of second n: between the scrapes at n and n + 1 (a second with a scrape
    // missing has none).
    let server: Vec<Option<Duration>> = (0..args.restart_secs)
        .map(|second| {
            let at = |n| scrapes.iter().find(|(s, _)| *s == n).map(|(_, s)| s);
            at(second)
                .zip(at(second + 1))
                .and_then(|(a, b)| a.server_p99(b))
        })
        .collect();
    let show = |p: Option<Duration>| p.map_or("-".to_owned(), |p| format!("{:.2}", ms(p)));
    println!(
        "restart        p99 by second after it served: {} ms …",
        client
            .iter()
            .take(10)
            .map(|p| show(Some(*p)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "               ext-authz's own p99 by second:   {} ms …",
        server
            .iter()
            .take(10)
            .map(|p| show(*p))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let under = Duration::from_millis(1);
    for (whose, back) in [
        (
            "the load generator's",
            client.iter().position(|p| *p < under),
        ),
        (
            "ext-authz's own",
            server.iter().position(|p| p.is_some_and(|p| p < under)),
        ),
    ] {
        match back {
            Some(second) => println!(
                "               {whose} p99 back under 1 ms in second {} after the restart (it served {:.1} s after it was started)",
                second + 1,
                lag.as_secs_f64()
            ),
            None => println!(
                "               {whose} p99 not under 1 ms within {} s",
                args.restart_secs
            ),
        }
    }
    ext_authz.stop().await?;
    Ok(())
}
