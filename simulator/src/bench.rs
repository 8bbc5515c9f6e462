//! Benchmarks: enrollment throughput, the Check handler over gRPC, and requests through Envoy with no
//! authorizer, the do-nothing authorizer and EdgeMesh's. Each prints its numbers; `scripts/bench.sh`
//! runs them and BENCHMARKS.md records them with the command.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use edgemesh_core::id::DeviceId;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use tokio::sync::Mutex;
use tonic::transport::Channel;

use crate::fleet::{Admin, SimDevice, enroll_all, healthy_report, run_id};
use crate::stats::{buckets, histogram_quantile, percentile, sample};

/// Where the control API listens.
pub struct ControlPlane<'a> {
    pub api: &'a str,
    pub device_api: &'a str,
    pub admin_token: &'a str,
}

pub async fn enroll(
    control: &ControlPlane<'_>,
    devices: u32,
    concurrency: usize,
) -> anyhow::Result<()> {
    let admin = Admin::connect(control.api, control.admin_token).await?;
    let run = run_id();
    let (token, fingerprint) = admin
        .owner_with_token(&format!("bench-{run}"), "developer", devices)
        .await?;
    let ids = (0..devices)
        .map(|i| DeviceId::parse(&format!("b{run}-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    // Each enrollment timed on its own: the same flow as `enroll_all`, one device per task.
    let token: Arc<str> = token.into();
    let fingerprint: Arc<str> = fingerprint.into();
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for id in ids {
        let permit = permits.clone().acquire_owned().await?;
        let (token, fingerprint, base) =
            (token.clone(), fingerprint.clone(), control.api.to_owned());
        tasks.spawn(async move {
            let t0 = Instant::now();
            let result =
                crate::fleet::enroll_like_the_agent(&base, &token, &fingerprint, &id).await;
            drop(permit);
            result.map(|_| t0.elapsed())
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
    print_latencies("latency", &latencies);
    ensure!(failures == 0, "{failures} enrollments failed");
    Ok(())
}

fn print_latencies(label: &str, sorted: &[Duration]) {
    for (name, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0)] {
        println!(
            "{label} {name}    {:.3} ms",
            percentile(sorted, q).as_secs_f64() * 1000.0
        );
    }
}

/// Health reports through the mTLS device API: `devices` devices enrolled through the real CSR flow,
/// each sending `reports` reports back to back over its own connection (within the per-device burst,
/// so the rate limit does not decide the result), all devices at once.
pub async fn health(control: &ControlPlane<'_>, devices: u32, reports: u32) -> anyhow::Result<()> {
    let admin = Admin::connect(control.api, control.admin_token).await?;
    let run = run_id();
    let (token, fingerprint) = admin
        .owner_with_token(&format!("bench-health-{run}"), "developer", devices)
        .await?;
    let ids = (0..devices)
        .map(|i| DeviceId::parse(&format!("h{run}-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let fleet = enroll_all(control.api, &token, &fingerprint, ids, 16).await?;
    let mut apis = Vec::new();
    for device in &fleet {
        apis.push(edgemesh_core::client::ControlApi::new(
            control.device_api,
            &device.ca_pem,
            Some((&device.cert_pem, &device.key_pem)),
        )?);
    }
    // One report each first, so every connection is open before the clock starts.
    for api in &apis {
        api.report_health(&healthy_report()).await?;
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for api in apis {
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            for _ in 1..reports {
                let t0 = Instant::now();
                api.report_health(&healthy_report()).await?;
                latencies.push(t0.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "health reports {} from {devices} devices at once, {:.2} s",
        latencies.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "rate           {:.0} reports/s (stored, judged by the compliance policy, notified)",
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    print_latencies("latency", &latencies);
    Ok(())
}

/// `n` devices of an admin (no business hours), enrolled and reported healthy.
async fn healthy_fleet(control: &ControlPlane<'_>, n: u32) -> anyhow::Result<Vec<SimDevice>> {
    let admin = Admin::connect(control.api, control.admin_token).await?;
    let run = run_id();
    let (token, fingerprint) = admin
        .owner_with_token(&format!("bench-admin-{run}"), "admin", n)
        .await?;
    let ids = (0..n)
        .map(|i| DeviceId::parse(&format!("bench-{run}-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let devices = enroll_all(control.api, &token, &fingerprint, ids, 16).await?;
    for device in &devices {
        let verdict = device.report(control.device_api, &healthy_report()).await?;
        ensure!(verdict.status == "healthy", "{}: {verdict:?}", device.id);
    }
    Ok(devices)
}

/// The Check Envoy sends for a GET of `/api/bench` (route `api`) by the holder of `cert_pem`.
pub fn check_request(device: &str, cert_pem: &str) -> CheckRequest {
    let certificate =
        percent_encoding::utf8_percent_encode(cert_pem, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let headers: HashMap<String, String> = [
        (":method", "GET"),
        (":path", "/api/bench"),
        (":authority", "localhost:10000"),
        ("user-agent", "edgemesh-simulator"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: format!("spiffe://edgemesh.local/device/{device}"),
                certificate,
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/api/bench".into(),
                    host: "localhost:10000".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("service".to_owned(), "api".to_owned())].into(),
            ..Default::default()
        }),
    }
}

/// What the server says about itself, from its `/metrics`.
pub(crate) struct ServerSide {
    pub(crate) text: String,
}

impl ServerSide {
    pub(crate) async fn scrape(url: &str) -> anyhow::Result<Self> {
        let text = reqwest::get(url)
            .await
            .with_context(|| format!("cannot scrape {url}"))?
            .text()
            .await?;
        Ok(Self { text })
    }

    fn cpu_seconds(&self) -> f64 {
        sample(&self.text, "process_cpu_seconds_total").unwrap_or(0.0)
    }

    fn checks(&self) -> f64 {
        sample(
            &self.text,
            "edgemesh_ext_authz_decision_latency_seconds_count",
        )
        .unwrap_or(0.0)
    }

    /// Every series of `edgemesh_shadow_decisions_total`, summed.
    fn shadow_decisions(&self) -> f64 {
        self.text
            .lines()
            .filter(|l| l.starts_with("edgemesh_shadow_decisions_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    fn latency_buckets(&self) -> Vec<(f64, f64)> {
        buckets(&self.text, "edgemesh_ext_authz_decision_latency_seconds")
    }
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[arg(long, default_value = "http://127.0.0.1:9191")]
    pub ext_authz: String,
    #[arg(long, default_value = "http://127.0.0.1:9192/metrics")]
    pub metrics: String,
    /// Devices enrolled, reported healthy and cached.
    #[arg(long, default_value_t = 100)]
    pub devices: u32,
    /// Checks per second in the fixed-rate run.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    #[arg(long = "duration-secs", default_value = "10", value_parser = parse_secs)]
    pub duration: Duration,
    /// Checks in flight in the closed-loop run.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Route the Checks as one that asks for a shadow decision (context extension `shadow: "true"`):
    /// the ext-authz must have shadow policies (EDGEMESH_SHADOW_POLICY_DIR), and every Check then
    /// evaluates them too.
    #[arg(long)]
    pub shadow: bool,
}

/// Whole seconds, as a duration.
fn parse_secs(text: &str) -> Result<Duration, String> {
    text.parse()
        .map(Duration::from_secs)
        .map_err(|_| format!("{text:?} is not a whole number of seconds"))
}

/// Check calls straight to ext-authz over gRPC with a warm cache: a fixed-rate run (server-side and
/// client-side latency, CPU per request), then a closed-loop run for throughput.
pub async fn check(control: &ControlPlane<'_>, args: &CheckArgs) -> anyhow::Result<()> {
    let devices = healthy_fleet(control, args.devices).await?;
    let requests: Arc<Vec<CheckRequest>> = Arc::new(
        devices
            .iter()
            .map(|d| {
                let mut request = check_request(&d.id, &d.cert_pem);
                if let (true, Some(attributes)) = (args.shadow, request.attributes.as_mut()) {
                    attributes
                        .context_extensions
                        .insert("shadow".to_owned(), "true".to_owned());
                }
                request
            })
            .collect(),
    );
    let channel = Channel::from_shared(args.ext_authz.clone())?
        .connect()
        .await
        .with_context(|| format!("cannot connect to ext-authz at {}", args.ext_authz))?;
    let client = AuthorizationClient::new(channel);
    // Warm the cache: every device once, and each must be allowed.
    for request in requests.iter() {
        let answer = client.clone().check(request.clone()).await?.into_inner();
        let code = answer.status.map_or(-1, |s| s.code);
        ensure!(code == 0, "warm-up Check was not allowed (status {code})");
    }

    // Fixed rate.
    let before = ServerSide::scrape(&args.metrics).await?;
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0usize;
    while started.elapsed() < args.duration {
        tick.tick().await;
        let request = requests[sent % requests.len()].clone();
        sent += 1;
        let (mut client, latencies, errors) = (client.clone(), latencies.clone(), errors.clone());
        tasks.spawn(async move {
            let t0 = Instant::now();
            match client.check(request).await {
                Ok(answer)
                    if answer
                        .get_ref()
                        .status
                        .as_ref()
                        .is_some_and(|s| s.code == 0) =>
                {
                    latencies.lock().await.push(t0.elapsed());
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let after = ServerSide::scrape(&args.metrics).await?;
    let mut latencies = std::mem::take(&mut *latencies.lock().await);
    latencies.sort();
    let checks = after.checks() - before.checks();
    let (b, a) = (before.latency_buckets(), after.latency_buckets());
    println!(
        "== Check over gRPC, fixed rate ({} devices cached)",
        devices.len()
    );
    println!(
        "sent           {sent} in {:.1} s = {:.0}/s, {} errors",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        errors.load(Ordering::Relaxed)
    );
    for q in [0.5, 0.99] {
        println!(
            "server p{:<2}     {:.1} µs (histogram_quantile over {checks:.0} checks)",
            (q * 100.0) as u32,
            histogram_quantile(q, &b, &a).unwrap_or(f64::NAN) * 1e6
        );
    }
    print_latencies("client", &latencies);
    println!(
        "server CPU     {:.1} µs per Check (process_cpu_seconds_total)",
        (after.cpu_seconds() - before.cpu_seconds()) / checks.max(1.0) * 1e6
    );
    let shadowed = after.shadow_decisions() - before.shadow_decisions();
    println!("shadow         {shadowed:.0} shadow decisions made beside the enforced ones");
    if args.shadow {
        ensure!(
            shadowed >= checks,
            "asked for shadow decisions, but the server made {shadowed} for {checks} Checks: does it \
             have EDGEMESH_SHADOW_POLICY_DIR?"
        );
    }

    // Closed loop.
    let before = ServerSide::scrape(&args.metrics).await?;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency.max(1) {
        let (mut client, requests, done, stop) =
            (client.clone(), requests.clone(), done.clone(), stop.clone());
        tasks.spawn(async move {
            let mut i = worker;
            while !stop.load(Ordering::Relaxed) {
                let request = requests[i % requests.len()].clone();
                i += 1;
                if client.check(request).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    tokio::time::sleep(args.duration).await;
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let after = ServerSide::scrape(&args.metrics).await?;
    let done = done.load(Ordering::Relaxed) as f64;
    println!(
        "== Check over gRPC, closed loop ({} in flight)",
        args.concurrency
    );
    println!(
        "throughput     {:.0} checks/s; server CPU {:.1} µs per Check",
        done / elapsed.as_secs_f64(),
        (after.cpu_seconds() - before.cpu_seconds()) / (after.checks() - before.checks()).max(1.0)
            * 1e6
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The Envoy listener with no authorizer.
    #[arg(long, default_value = "https://127.0.0.1:10001")]
    pub none: String,
    /// The Envoy listener with the do-nothing authorizer (same route).
    #[arg(long, default_value = "https://127.0.0.1:10002")]
    pub noop: String,
    /// The Envoy listener with EdgeMesh's authorizer (same route).
    #[arg(long, default_value = "https://127.0.0.1:10003")]
    pub edgemesh: String,
    /// EdgeMesh ext-authz metrics, for its CPU per request.
    #[arg(long, default_value = "http://127.0.0.1:9192/metrics")]
    pub metrics: String,
    /// Connections, one device (own certificate) each, sending back to back.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    #[arg(long = "phase-secs", default_value = "5", value_parser = parse_secs)]
    pub phase: Duration,
    /// NAME=PID of a process whose CPU per request to report for each authorizer (with its
    /// children's: a PostgreSQL postmaster counts its backends); repeatable.
    #[arg(long, value_parser = parse_watch)]
    pub watch: Vec<(String, u32)>,
    /// The database of the ext-authz measured (the stack's), for the audit's size.
    #[arg(long, env = "EDGEMESH_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Before measuring, fill that audit to at least this many records in this month's partition (with
    /// synthetic decisions of devices `bench-*`), chained and vacuumed; 0 leaves it as it is.
    #[arg(long, default_value_t = 0)]
    pub audit_rows: u64,
}

impl ProxyArgs {
    /// The listeners, in the order of [`AUTHORIZERS`].
    fn targets(&self) -> [&str; 3] {
        [&self.none, &self.noop, &self.edgemesh]
    }
}

pub(crate) fn parse_watch(text: &str) -> Result<(String, u32), String> {
    let (name, pid) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PID, got {text:?}"))?;
    let pid = pid
        .parse()
        .map_err(|_| format!("{pid:?} is not a process id"))?;
    Ok((name.to_owned(), pid))
}

const AUTHORIZERS: [&str; 3] = ["none", "do-nothing", "edgemesh"];

/// Requests through Envoy with each device's own certificate, the three authorizers interleaved in
/// rounds (each round in a rotated order) so that the machine's noise falls on all three alike.
pub async fn proxy(control: &ControlPlane<'_>, args: &ProxyArgs) -> anyhow::Result<()> {
    if args.audit_rows > 0 {
        crate::audit_bench::fill_this_month(&args.database_url, args.audit_rows).await?;
    }
    println!(
        "audit          {} (before)",
        crate::audit_bench::describe(&args.database_url).await?
    );
    let devices = healthy_fleet(control, args.connections as u32).await?;
    let clients = devices
        .iter()
        .map(SimDevice::client)
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (name, base) in AUTHORIZERS.iter().zip(args.targets()) {
        let response = clients[0].get(format!("{base}/api/bench")).send().await?;
        ensure!(
            response.status().is_success(),
            "{name} ({base}) answered {} to a healthy admin device",
            response.status()
        );
    }
    let mut latencies: [Vec<Duration>; 3] = Default::default();
    let mut busy = [Duration::ZERO; 3];
    let mut errors = [0u64; 3];
    let mut cpu = 0.0;
    let mut edgemesh_checks = 0.0;
    // CPU seconds of each watched process (and the simulator itself, last) per authorizer.
    let mut watched = vec![[0.0f64; 3]; args.watch.len() + 1];
    let watched_cpu = || -> Vec<f64> {
        args.watch
            .iter()
            .map(|(_, pid)| process_tree_cpu_seconds(*pid))
            .chain([process_tree_cpu_seconds(std::process::id())])
            .collect()
    };
    for round in 0..args.rounds as usize {
        // Each round starts one authorizer later, so what a phase leaves behind (PostgreSQL's
        // autovacuum after EdgeMesh's audit writes, say) falls on each of the three in turn.
        let targets = args.targets();
        for step in 0..targets.len() {
            let index = (round + step) % targets.len();
            let base = targets[index];
            let before = (index == 2).then(|| ServerSide::scrape(&args.metrics));
            let before = match before {
                Some(f) => Some(f.await?),
                None => None,
            };
            let watched_before = watched_cpu();
            let (samples, failed, elapsed) = load(&clients, base, args.phase).await;
            for (total, (after, before)) in watched
                .iter_mut()
                .zip(watched_cpu().iter().zip(&watched_before))
            {
                total[index] += after - before;
            }
            if let Some(before) = before {
                let after = ServerSide::scrape(&args.metrics).await?;
                cpu += after.cpu_seconds() - before.cpu_seconds();
                edgemesh_checks += after.checks() - before.checks();
            }
            latencies[index].extend(samples);
            errors[index] += failed;
            busy[index] += elapsed;
        }
    }
    println!(
        "== Through Envoy: {} connections (one device each), {} rounds of {} s per authorizer",
        args.connections,
        args.rounds,
        args.phase.as_secs()
    );
    let mut rps = [0.0; 3];
    let mut p99 = [Duration::ZERO; 3];
    for index in 0..3 {
        latencies[index].sort();
        rps[index] = latencies[index].len() as f64 / busy[index].as_secs_f64();
        p99[index] = percentile(&latencies[index], 0.99);
        println!(
            "{:<11} {:>7.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}",
            AUTHORIZERS[index],
            rps[index],
            percentile(&latencies[index], 0.5).as_secs_f64() * 1000.0,
            p99[index].as_secs_f64() * 1000.0,
            errors[index]
        );
    }
    println!(
        "edgemesh / do-nothing: throughput {:.2}x, p99 {:.2}x",
        rps[2] / rps[1],
        p99[2].as_secs_f64() / p99[1].as_secs_f64()
    );
    println!(
        "edgemesh / none:       throughput {:.2}x, p99 {:.2}x",
        rps[2] / rps[0],
        p99[2].as_secs_f64() / p99[0].as_secs_f64()
    );
    println!(
        "edgemesh authorizer CPU {:.1} µs per request ({edgemesh_checks:.0} checks)",
        cpu / edgemesh_checks.max(1.0) * 1e6
    );
    println!("CPU per request (µs)      none   do-nothing   edgemesh");
    for (name, seconds) in watched_names(&args.watch).zip(&watched) {
        let per = |i: usize| seconds[i] / (latencies[i].len().max(1) as f64) * 1e6;
        println!(
            "{name:<22} {:>7.1} {:>12.1} {:>10.1}",
            per(0),
            per(1),
            per(2)
        );
    }
    println!(
        "audit          {} (after)",
        crate::audit_bench::describe(&args.database_url).await?
    );
    ensure!(
        errors.iter().all(|e| *e == 0),
        "requests failed: {errors:?}"
    );
    Ok(())
}

/// CPU seconds (user + system) used so far by a process and its descendants: the running ones and
/// those it has reaped (a PostgreSQL backend or autovacuum worker that ended); 0 for a process that
/// is gone.
/// The names of the `--watch` processes, then the load generator's (this process): the rows of a
/// CPU-per-request table, in the order their CPU is read.
pub(crate) fn watched_names(watch: &[(String, u32)]) -> impl Iterator<Item = &str> {
    watch
        .iter()
        .map(|(name, _)| name.as_str())
        .chain(["load generator"])
}

pub(crate) fn process_tree_cpu_seconds(pid: u32) -> f64 {
    // Linux reports them in clock ticks, 100 per second on every platform it supports.
    const TICKS: f64 = 100.0;
    let own = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the parenthesised command name: utime, stime, cutime and cstime are the
            // 12th to the 15th.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            fields
                .get(11..15)?
                .iter()
                .map(|f| f.parse::<f64>().ok())
                .sum::<Option<f64>>()
        })
        .unwrap_or(0.0);
    let children: f64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .map(process_tree_cpu_seconds)
        .sum();
    own / TICKS + children
}

/// One closed-loop phase: every client sends GETs back to back for `phase`.
async fn load(
    clients: &[reqwest::Client],
    base: &str,
    phase: Duration,
) -> (Vec<Duration>, u64, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for client in clients {
        let (client, stop, url) = (client.clone(), stop.clone(), format!("{base}/api/bench"));
        tasks.spawn(async move {
            let (mut samples, mut failed) = (Vec::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                match client.get(&url).send().await {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        samples.push(t0.elapsed());
                    }
                    _ => failed += 1,
                }
            }
            (samples, failed)
        });
    }
    tokio::time::sleep(phase).await;
    stop.store(true, Ordering::Relaxed);
    let (mut samples, mut failed) = (Vec::new(), 0);
    while let Some(Ok((s, f))) = tasks.join_next().await {
        samples.extend(s);
        failed += f;
    }
    (samples, failed, started.elapsed())
}
