//! `bench-fleet-health`: health at fleet rate. A fleet enrolled through the real CSR flow, each device
//! on its own mTLS connection, reports at a fixed total rate (open loop: a report's latency counts
//! from when it was due, so a slow server cannot hide its queue), while Checks for the same devices
//! go to an ext-authz on the same database. Reports the achieved rate, errors, latency, the NOTIFYs
//! per report (a LISTEN on the change channel), ext-authz's cache hit rate, and CPU per report by
//! process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::ensure;
use edgemesh_core::client::ControlApi;
use edgemesh_core::id::DeviceId;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use futures_util::StreamExt;
use sqlx::postgres::PgListener;
use tokio::sync::Mutex;

use crate::bench::{
    ControlPlane, ServerSide, check_request, process_tree_cpu_seconds, watched_names,
};
use crate::fleet::{Admin, enroll_all, healthy_report, run_id};
use crate::stats::{percentile, sample};

#[derive(Debug, clap::Args)]
pub struct FleetHealthArgs {
    /// Devices enrolled, each reporting over its own connection.
    #[arg(long, default_value_t = 10_000)]
    pub devices: u32,
    /// Health reports per second, all devices together.
    #[arg(long, default_value_t = 3_500)]
    pub rate: u32,
    #[arg(long, default_value_t = 60)]
    pub duration_secs: u64,
    /// Checks per second sent meanwhile to ext-authz, spread over the devices (0: none).
    #[arg(long, default_value_t = 1_000)]
    pub check_rate: u32,
    /// An ext-authz on the control API's database.
    #[arg(long, default_value = "http://127.0.0.1:19191")]
    pub ext_authz: String,
    #[arg(long, default_value = "http://127.0.0.1:19192/metrics")]
    pub metrics: String,
    /// The control API's database, to count the notifications on its change channel.
    #[arg(long, env = "EDGEMESH_BENCH_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// A process (and its children) whose CPU is reported per report: NAME=PID, repeatable.
    #[arg(long, value_parser = crate::bench::parse_watch)]
    pub watch: Vec<(String, u32)>,
}

pub async fn fleet_health(
    control: &ControlPlane<'_>,
    args: &FleetHealthArgs,
) -> anyhow::Result<()> {
    let admin = Admin::connect(control.api, control.admin_token).await?;
    let run = run_id();
    let (token, fingerprint) = admin
        .owner_with_token(&format!("bench-fleet-{run}"), "admin", args.devices)
        .await?;
    let ids = (0..args.devices)
        .map(|i| DeviceId::parse(&format!("f{run}-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let enrolling = Instant::now();
    let fleet = enroll_all(control.api, &token, &fingerprint, ids, 16).await?;
    println!(
        "enrolled       {} devices through the CSR flow in {:.1} s",
        fleet.len(),
        enrolling.elapsed().as_secs_f64()
    );
    let apis = fleet
        .iter()
        .map(|d| {
            ControlApi::new(
                control.device_api,
                &d.ca_pem,
                Some((&d.cert_pem, &d.key_pem)),
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let apis: Arc<Vec<ControlApi>> = Arc::new(apis);
    // A first report from every device opens its connection before the clock starts.
    let warm = futures_util::stream::iter(0..apis.len())
        .map(|i| {
            let apis = Arc::clone(&apis);
            async move { apis[i].report_health(&healthy_report()).await }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    ensure!(
        warm.iter().all(Result::is_ok),
        "a warm-up report failed: {:?}",
        warm.iter().find(|r| r.is_err())
    );
    let checks: Vec<_> = fleet
        .iter()
        .map(|d| check_request(&d.id, &d.cert_pem))
        .collect();
    let checker = if args.check_rate > 0 {
        let channel = tonic::transport::Endpoint::from_shared(args.ext_authz.clone())?
            .connect()
            .await?;
        let client = AuthorizationClient::new(channel);
        // Every device once, so that the cache holds the fleet before the clock starts.
        for request in &checks {
            client.clone().check(request.clone()).await?;
        }
        Some(client)
    } else {
        None
    };

    // Notifications on the change channel, other than the listeners' heartbeats.
    let notified = Arc::new(AtomicU64::new(0));
    let mut listener = PgListener::connect(&args.database_url).await?;
    listener.listen("edgemesh_changes").await?;
    let counting = {
        let notified = Arc::clone(&notified);
        tokio::spawn(async move {
            while let Ok(n) = listener.recv().await {
                if !n.payload().starts_with("heartbeat:") {
                    notified.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let cpu = |args: &FleetHealthArgs| -> Vec<f64> {
        args.watch
            .iter()
            .map(|(_, pid)| process_tree_cpu_seconds(*pid))
            .chain([process_tree_cpu_seconds(std::process::id())])
            .collect()
    };
    let authz_before = match &checker {
        Some(_) => Some(ServerSide::scrape(&args.metrics).await?),
        None => None,
    };
    let cpu_before = cpu(args);

    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let check_errors = Arc::new(AtomicU64::new(0));
    let duration = Duration::from_secs(args.duration_secs);
    let started = Instant::now();
    let (mut reports_sent, mut checks_sent) = (0u64, 0u64);
    let mut tasks = tokio::task::JoinSet::new();
    let due = |rate: u32, at: Duration| (f64::from(rate) * at.as_secs_f64()) as u64;
    while started.elapsed() < duration {
        let now = started.elapsed();
        while reports_sent < due(args.rate, now) {
            let scheduled =
                started + Duration::from_secs_f64(reports_sent as f64 / f64::from(args.rate));
            let index = (reports_sent % apis.len() as u64) as usize;
            let (apis, latencies, errors) = (
                Arc::clone(&apis),
                Arc::clone(&latencies),
                Arc::clone(&errors),
            );
            tasks.spawn(async move {
                match apis[index].report_health(&healthy_report()).await {
                    Ok(_) => latencies.lock().await.push(scheduled.elapsed()),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("report failed: {e:#}");
                        }
                    }
                }
            });
            reports_sent += 1;
        }
        if let Some(client) = &checker {
            while checks_sent < due(args.check_rate, now) {
                // A stride through the fleet: every device is checked every devices/check_rate s.
                let request = checks[(checks_sent % checks.len() as u64) as usize].clone();
                let (mut client, check_errors) = (client.clone(), Arc::clone(&check_errors));
                tasks.spawn(async move {
                    if client.check(request).await.is_err() {
                        check_errors.fetch_add(1, Ordering::Relaxed);
                    }
                });
                checks_sent += 1;
            }
        }
        while tasks.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let cpu_after = cpu(args);
    // Notifications trail their commits by milliseconds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    counting.abort();
    let mut latencies = latencies.lock().await.clone();
    latencies.sort();
    let stored = latencies.len() as f64;
    let failed = errors.load(Ordering::Relaxed);
    println!(
        "== health at fleet rate: {} devices, {} reports/s asked for {} s",
        apis.len(),
        args.rate,
        args.duration_secs
    );
    println!(
        "reports        {} accepted, {failed} failed, {:.0} reports/s",
        latencies.len(),
        stored / elapsed.as_secs_f64()
    );
    println!(
        "latency        p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms (from when each was due)",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "notifications  {} ({:.4} per report)",
        notified.load(Ordering::Relaxed),
        notified.load(Ordering::Relaxed) as f64 / stored.max(1.0)
    );
    if let Some(before) = authz_before {
        let after = ServerSide::scrape(&args.metrics).await?;
        let delta = |name: &str| {
            sample(&after.text, name).unwrap_or(0.0) - sample(&before.text, name).unwrap_or(0.0)
        };
        let (hits, misses) = (
            delta("edgemesh_ext_authz_cache_hits_total"),
            delta("edgemesh_ext_authz_cache_misses_total"),
        );
        println!(
            "ext-authz      {checks_sent} Checks ({} failed): cache hit rate {:.2}% ({hits:.0} hits, {misses:.0} misses, {:.0} stale re-reads)",
            check_errors.load(Ordering::Relaxed),
            100.0 * hits / (hits + misses).max(1.0),
            delta("edgemesh_ext_authz_cache_stale_rereads_total")
        );
    }
    println!("CPU per report (µs; Checks included where they ran)");
    for (name, (after, before)) in watched_names(&args.watch).zip(cpu_after.iter().zip(&cpu_before))
    {
        println!(
            "  {name:<20} {:>8.1}",
            (after - before) / stored.max(1.0) * 1e6
        );
    }
    ensure!(failed == 0, "{failed} reports failed");
    Ok(())
}
