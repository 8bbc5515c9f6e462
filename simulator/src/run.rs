//! A simulator run: users of each role, N devices enrolled through the real CSR flow, health reported
//! over mTLS with a configurable distribution, and requests through Envoy with each device's own
//! certificate, under a scenario (`steady`, `revocation`, `flapping`, `attack`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use edgemesh_core::api::{HealthReport, Role};
use edgemesh_core::id::DeviceId;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::attack;
use crate::bench::ControlPlane;
use crate::fleet::{Admin, SimDevice, enroll_like_the_agent, healthy_report, run_id};
use crate::summary::{Latency, Outcome, Propagation, Summary, Tally};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Traffic and periodic health reports.
    Steady,
    /// Revokes devices mid-run; per device, the time from the revoke call's return to its first 403.
    Revocation,
    /// Devices' health toggles; the time from each report to the changed decision.
    Flapping,
    /// Requests that must all be refused, next to steady traffic.
    Attack,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Devices to enroll, each with its own key and CSR.
    #[arg(long, default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub devices: u32,
    /// How long the traffic runs, after enrollment (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Requests per second through Envoy over all devices, sent on schedule (open loop).
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Instead of a rate: this many requests in flight, back to back (closed loop).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub concurrency: Option<usize>,
    /// Envoy's mTLS front door.
    #[arg(
        long,
        env = "EDGEMESH_ENVOY",
        default_value = "https://127.0.0.1:10000"
    )]
    pub envoy: String,
    /// Seed of every random choice (roles, health, requests): equal seeds, equal runs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = Scenario::Steady)]
    pub scenario: Scenario,
    /// Each device reports its health this often.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub report_every: Duration,
    /// Share of devices whose OS patches are current.
    #[arg(long, default_value_t = 0.85, value_parser = share)]
    pub patches_current: f64,
    /// Share of devices whose antivirus runs.
    #[arg(long, default_value_t = 0.90, value_parser = share)]
    pub antivirus: f64,
    /// Share of devices whose disk is encrypted.
    #[arg(long, default_value_t = 0.95, value_parser = share)]
    pub encrypted: f64,
    /// revocation: how many devices are revoked during the run (admins' devices).
    #[arg(long, default_value_t = 5)]
    pub revocations: u32,
    /// flapping: how many devices toggle their health.
    #[arg(long, default_value_t = 3)]
    pub flapping: u32,
    /// SPIFFE trust domain of the device identities (attack: forged certificates claim it).
    #[arg(long, env = "EDGEMESH_TRUST_DOMAIN", default_value = "edgemesh.local")]
    pub trust_domain: String,
    /// attack: the local stack's CA certificate and key, to forge a genuine but expired certificate.
    #[arg(long, default_value = ".edgemesh/ca.pem")]
    pub ca_cert: PathBuf,
    #[arg(long, default_value = ".edgemesh/ca-key.pem")]
    pub ca_key: PathBuf,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s, 2m or 500ms"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m or h")),
    };
    if !(secs > 0.0 && secs <= 7.0 * 86400.0) {
        return Err(format!("{s:?} must be more than 0 and at most a week"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1")),
    }
}

/// The health a device reports: fixed traits (chosen once per device), varying load.
#[derive(Debug, Clone, Copy)]
struct Traits {
    patches_current: bool,
    antivirus: bool,
    encrypted: bool,
}

/// One simulated device during a run.
struct Member {
    device: SimDevice,
    role: Role,
    traits: Traits,
    client: reqwest::Client,
    /// Part of the random traffic and the periodic reports (false once revoked or while a scenario
    /// drives it).
    in_pool: AtomicBool,
}

/// Requests per second when neither `--rate` nor `--concurrency` is given.
const DEFAULT_RATE: f64 = 50.0;
const SERVICES: [&str; 4] = ["api", "database", "storage", "analytics"];
/// A scenario gives up on seeing a changed decision after this long.
const PROPAGATION_BOUND: Duration = Duration::from_secs(5);

struct Run {
    args: RunArgs,
    /// The control API's device (mTLS) URL, for health reports.
    device_api: String,
    /// The control API's enrollment and admin URL.
    api: String,
    admin: Admin,
    members: Vec<Member>,
    tally: Tally,
    reports: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<Vec<String>>,
    sequence: AtomicU64,
}

pub async fn run(control: &ControlPlane<'_>, args: RunArgs) -> anyhow::Result<Summary> {
    if args.scenario == Scenario::Attack {
        // Before enrolling anything: the attack needs the CA to forge an expired certificate.
        for path in [&args.ca_cert, &args.ca_key] {
            ensure!(
                path.exists(),
                "the attack scenario needs {} (the local stack's CA; set --ca-cert/--ca-key)",
                path.display()
            );
        }
    }
    let admin = Admin::connect(control.api, control.admin_token).await?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let roles: Vec<Role> = (0..args.devices)
        .map(|_| match rng.random_range(0..10) {
            0..=1 => Role::Admin,
            2..=6 => Role::Developer,
            _ => Role::Analyst,
        })
        .collect();
    let admins = roles.iter().filter(|r| **r == Role::Admin).count() as u32;
    let needed = match args.scenario {
        Scenario::Revocation => args.revocations,
        Scenario::Flapping => args.flapping,
        Scenario::Attack => 1,
        Scenario::Steady => 0,
    };
    ensure!(
        admins >= needed,
        "{} needs {needed} admins' devices, and {admins} of the {} devices are admins' (about 20%): \
         use more --devices",
        format!("{:?}", args.scenario).to_lowercase(),
        args.devices
    );

    let run = run_id();
    let progress = spinner();
    progress.set_message(format!("enrolling {} devices", args.devices));
    let mut tokens = BTreeMap::new();
    for role in [Role::Admin, Role::Developer, Role::Analyst] {
        let count = roles.iter().filter(|r| **r == role).count() as u32;
        if count > 0 {
            let owner = format!("sim-{run}-{}", role.as_str());
            tokens.insert(
                role.as_str(),
                admin.owner_with_token(&owner, role.as_str(), count).await?,
            );
        }
    }
    let enrolling = Instant::now();
    let enrolled = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, role) in roles.iter().enumerate() {
        let (token, pin) = tokens[role.as_str()].clone();
        let id = DeviceId::parse(&format!("sim-{run}-{i:05}"))?;
        let base = control.api.to_owned();
        let (permits, enrolled) = (Arc::clone(&permits), Arc::clone(&enrolled));
        let role = *role;
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let device = enroll_like_the_agent(&base, &token, &pin, &id)
                .await
                .with_context(|| format!("enrolling {id}"))?;
            enrolled.fetch_add(1, Ordering::Relaxed);
            anyhow::Ok((i, role, device))
        });
    }
    let mut devices = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        devices.push(joined??);
        progress.set_message(format!(
            "enrolled {}/{} devices",
            enrolled.load(Ordering::Relaxed),
            args.devices
        ));
    }
    devices.sort_by_key(|(i, _, _)| *i);
    say(
        &progress,
        format!(
            "enrolled {} devices in {:.1} s (each its own key and CSR, through {}): {} admins', {} \
             developers', {} analysts'",
            devices.len(),
            enrolling.elapsed().as_secs_f64(),
            control.api,
            admins,
            roles.iter().filter(|r| **r == Role::Developer).count(),
            roles.iter().filter(|r| **r == Role::Analyst).count(),
        ),
    );
    let members = devices
        .into_iter()
        .map(|(_, role, device)| {
            let traits = Traits {
                patches_current: rng.random_bool(args.patches_current),
                antivirus: rng.random_bool(args.antivirus),
                encrypted: rng.random_bool(args.encrypted),
            };
            Ok(Member {
                client: device.client()?,
                device,
                role,
                traits,
                in_pool: AtomicBool::new(true),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let run = Arc::new(Run {
        args,
        device_api: control.device_api.to_owned(),
        api: control.api.to_owned(),
        admin,
        members,
        tally: Tally::default(),
        reports: Mutex::new(BTreeMap::new()),
        failures: Mutex::new(Vec::new()),
        sequence: AtomicU64::new(0),
    });

    // Everyone reports once before traffic starts, so no device is denied for never having reported.
    progress.set_message("first health reports");
    let mut first = tokio::task::JoinSet::new();
    for index in 0..run.members.len() {
        let run = Arc::clone(&run);
        let permits = Arc::clone(&permits);
        first.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let mut rng = StdRng::seed_from_u64(run.args.seed ^ index as u64);
            run.report(index, None, &mut rng).await;
        });
    }
    while first.join_next().await.is_some() {}

    say(
        &progress,
        format!(
            "traffic through {} for {:.0} s ({}), scenario {:?}",
            run.args.envoy,
            run.args.duration.as_secs_f64(),
            match (run.args.concurrency, run.args.rate) {
                (Some(c), _) => format!("{c} in flight"),
                (None, rate) => format!("{:.0} requests/s", rate.unwrap_or(DEFAULT_RATE)),
            },
            run.args.scenario
        )
        .to_lowercase(),
    );
    let started = Instant::now();
    let deadline = started + run.args.duration;
    let reporter = tokio::spawn(Arc::clone(&run).report_periodically(deadline));
    let traffic = tokio::spawn(Arc::clone(&run).traffic(deadline));
    let scenario = tokio::spawn(Arc::clone(&run).scenario(deadline));
    let ticker = tokio::spawn(Arc::clone(&run).show_progress(progress.clone(), started, deadline));

    let scenario = scenario.await?;
    traffic.await?;
    reporter.await?;
    ticker.abort();
    progress.finish_and_clear();
    let (propagation, attacks) = scenario?;
    let elapsed = started.elapsed();
    let failures = run
        .failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let health_reports = run
        .reports
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(Summary {
        scenario: format!("{:?}", run.args.scenario).to_lowercase(),
        seed: run.args.seed,
        devices: run.args.devices,
        duration_s: elapsed.as_secs_f64(),
        health_reports,
        traffic: run.tally.traffic(elapsed),
        propagation,
        attacks,
        failures,
    })
}

/// A line above the progress line (or on its own without a terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

impl Run {
    fn fail(&self, what: String) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(what);
    }

    fn count_report(&self, label: &str) {
        *self
            .reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(label.to_owned())
            .or_default() += 1;
    }

    /// A report from member `index`: its traits (or `healthy` forced), a load drawn from the
    /// distribution. Counts the verdict; a refused or failed report is a failure of the run.
    async fn report(&self, index: usize, healthy: Option<bool>, rng: &mut StdRng) -> bool {
        let member = &self.members[index];
        let mut report: HealthReport = healthy_report();
        report.cpu_usage = Some(rng.random_range(20.0..85.0));
        report.memory_usage = Some(rng.random_range(30.0..80.0));
        match healthy {
            Some(true) => {}
            Some(false) => report.antivirus_enabled = Some(false),
            None => {
                report.os_patches_current = Some(member.traits.patches_current);
                report.antivirus_enabled = Some(member.traits.antivirus);
                report.disk_encrypted = Some(member.traits.encrypted);
            }
        }
        match member.device.report(&self.device_api, &report).await {
            Ok(verdict) => {
                self.count_report(&verdict.status);
                true
            }
            Err(e) => {
                self.count_report("failed");
                self.fail(format!("health report of {}: {e:#}", member.device.id));
                false
            }
        }
    }

    /// Every device in the pool reports every `report_every`, spread over the interval.
    async fn report_periodically(self: Arc<Self>, deadline: Instant) {
        let n = self.members.len().max(1);
        let step = self.args.report_every.div_f64(n as f64);
        let mut rng = StdRng::seed_from_u64(self.args.seed.wrapping_add(17));
        let mut index = 0;
        let mut next = Instant::now() + step;
        while next < deadline {
            tokio::time::sleep_until(next.into()).await;
            if self.members[index].in_pool.load(Ordering::Relaxed) {
                self.report(index, None, &mut rng).await;
            }
            index = (index + 1) % n;
            next += step;
        }
    }

    /// One request through Envoy as member `index`.
    async fn request(&self, index: usize, service: &str) -> (Outcome, Duration, Option<Value>) {
        let member = &self.members[index];
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}/{service}/sim/{n}", self.args.envoy);
        let started = Instant::now();
        let response = member.client.get(&url).send().await;
        let (outcome, body) = match response {
            Err(e) => (Outcome::Error(attack::short_error(&e)), None),
            Ok(r) => {
                let status = r.status();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                let outcome = match status.as_u16() {
                    200 => Outcome::Allowed,
                    403 => match body["reasons"].get(0).and_then(Value::as_str) {
                        Some(reason) => Outcome::Denied(reason.to_owned()),
                        None => Outcome::Error("HTTP 403 without reasons".to_owned()),
                    },
                    code => Outcome::Error(format!("HTTP {code}")),
                };
                (outcome, Some(body))
            }
        };
        (outcome, started.elapsed(), body)
    }

    /// Random traffic from the pool until `deadline`: on schedule at `--rate`, or back to back with
    /// `--concurrency` requests in flight.
    async fn traffic(self: Arc<Self>, deadline: Instant) {
        let mut rng = StdRng::seed_from_u64(self.args.seed.wrapping_add(1));
        if let Some(concurrency) = self.args.concurrency {
            let mut workers = tokio::task::JoinSet::new();
            for worker in 0..concurrency {
                let run = Arc::clone(&self);
                let mut rng = StdRng::seed_from_u64(rng.random::<u64>() ^ worker as u64);
                workers.spawn(async move {
                    while Instant::now() < deadline {
                        if let Some((index, service)) = run.pick(&mut rng) {
                            let (outcome, took, _) = run.request(index, service).await;
                            run.tally.record(outcome, took);
                        } else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                });
            }
            while workers.join_next().await.is_some() {}
            return;
        }
        let rate = self.args.rate.unwrap_or(DEFAULT_RATE).max(0.1);
        let in_flight = Arc::new(Semaphore::new(512));
        let started = Instant::now();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut requests = tokio::task::JoinSet::new();
        while Instant::now() < deadline {
            tick.tick().await;
            let due = (started.elapsed().as_secs_f64() * rate) as u64;
            while sent < due {
                sent += 1;
                let Some((index, service)) = self.pick(&mut rng) else {
                    break;
                };
                let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                    self.tally.record(
                        Outcome::Error("simulator overloaded (512 in flight)".to_owned()),
                        Duration::ZERO,
                    );
                    continue;
                };
                let run = Arc::clone(&self);
                requests.spawn(async move {
                    let (outcome, took, _) = run.request(index, service).await;
                    run.tally.record(outcome, took);
                    drop(permit);
                });
            }
            while requests.try_join_next().is_some() {}
        }
        while requests.join_next().await.is_some() {}
    }

    fn pick(&self, rng: &mut StdRng) -> Option<(usize, &'static str)> {
        for _ in 0..16 {
            let index = rng.random_range(0..self.members.len());
            if self.members[index].in_pool.load(Ordering::Relaxed) {
                return Some((index, SERVICES[rng.random_range(0..SERVICES.len())]));
            }
        }
        None
    }

    async fn show_progress(self: Arc<Self>, bar: ProgressBar, started: Instant, deadline: Instant) {
        let visible = !bar.is_hidden();
        let mut last = (Instant::now(), 0u64);
        let mut printed = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let s = self.tally.snapshot();
            let now = Instant::now();
            let rate = (s.requests - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, s.requests);
            let line = format!(
                "{} | requests {} | allowed {} | denied {} | errors {} | {:.0}/s | p99 {:.1} ms | {:.0} s left",
                format!("{:?}", self.args.scenario).to_lowercase(),
                s.requests,
                s.allowed,
                s.denied,
                s.errors,
                rate,
                s.p99_ms,
                deadline.saturating_duration_since(now).as_secs_f64()
            );
            // Without a terminal (CI, a pipe) the spinner is hidden: a plain line every 5 s instead.
            if visible {
                bar.set_message(line);
            } else if printed.elapsed() >= Duration::from_secs(5)
                || started.elapsed() < Duration::from_millis(300)
            {
                eprintln!("{line}");
                printed = Instant::now();
            }
        }
    }

    async fn scenario(
        self: Arc<Self>,
        deadline: Instant,
    ) -> anyhow::Result<(Vec<Propagation>, Vec<crate::summary::Attack>)> {
        match self.args.scenario {
            Scenario::Steady => Ok((Vec::new(), Vec::new())),
            Scenario::Revocation => Ok((vec![self.revocations(deadline).await?], Vec::new())),
            Scenario::Flapping => Ok((self.flapping(deadline).await?, Vec::new())),
            Scenario::Attack => {
                let privileged = self.members.iter().position(|m| m.role == Role::Admin);
                let lesser = self.members.iter().position(|m| m.role != Role::Admin);
                let (Some(privileged), Some(lesser)) = (privileged, lesser) else {
                    bail!("the attack scenario needs an admin's device and another");
                };
                let targets = attack::Targets {
                    envoy: &self.args.envoy,
                    device_api: &self.device_api,
                    api: &self.api,
                    admin: &self.admin,
                    trust_domain: &self.args.trust_domain,
                    privileged: &self.members[privileged].device,
                    lesser: &self.members[lesser].device,
                    ca_cert: &self.args.ca_cert,
                    ca_key: &self.args.ca_key,
                };
                let attacks = attack::run(&targets).await?;
                tokio::time::sleep_until(deadline.into()).await;
                Ok((Vec::new(), attacks))
            }
        }
    }

    /// Sends requests as member `index` until the answer is `allowed` (or not), up to the bound;
    /// answers how long that took from `since`.
    async fn until(&self, index: usize, allowed: bool, since: Instant) -> Option<Duration> {
        while since.elapsed() < PROPAGATION_BOUND {
            let (outcome, _, _) = self.request(index, "api").await;
            match outcome {
                Outcome::Allowed if allowed => return Some(since.elapsed()),
                Outcome::Denied(_) if !allowed => return Some(since.elapsed()),
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        None
    }

    /// Revokes admins' devices one by one, spread over the middle of the run, each from a state where
    /// it is allowed, and measures the time from the revoke call's return to its first 403.
    async fn revocations(&self, deadline: Instant) -> anyhow::Result<Propagation> {
        let victims: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].role == Role::Admin)
            .take(self.args.revocations as usize)
            .collect();
        let window = deadline.saturating_duration_since(Instant::now());
        let gap = window.mul_f64(0.6).div_f64(victims.len().max(1) as f64);
        let mut next = Instant::now() + window.mul_f64(0.2);
        let mut latency = Latency::default();
        let mut not_enforced = 0;
        let mut rng = StdRng::seed_from_u64(self.args.seed.wrapping_add(99));
        for index in victims {
            tokio::time::sleep_until(next.into()).await;
            next += gap;
            let member = &self.members[index];
            member.in_pool.store(false, Ordering::Relaxed);
            // From a known state: healthy, and allowed.
            self.report(index, Some(true), &mut rng).await;
            if self.until(index, true, Instant::now()).await.is_none() {
                self.fail(format!(
                    "{} was never allowed before its revocation",
                    member.device.id
                ));
                continue;
            }
            self.admin
                .post(
                    &format!("/devices/{}/revoke", member.device.id),
                    serde_json::json!({"reason": "simulator revocation scenario"}),
                )
                .await?;
            match self.until(index, false, Instant::now()).await {
                Some(took) => latency.record(took),
                None => not_enforced += 1,
            }
        }
        Ok(Propagation {
            what: "revocation → first 403".to_owned(),
            measured: latency.len(),
            not_enforced,
            latency: (latency.len() > 0).then(|| latency.stats()),
        })
    }

    /// Toggles admins' devices between unhealthy and healthy reports until the deadline and measures,
    /// for each report, the time from its return to the changed decision.
    async fn flapping(&self, deadline: Instant) -> anyhow::Result<Vec<Propagation>> {
        let flappers: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].role == Role::Admin)
            .take(self.args.flapping as usize)
            .collect();
        for index in &flappers {
            self.members[*index].in_pool.store(false, Ordering::Relaxed);
        }
        let (mut to_deny, mut to_allow) = (Latency::default(), Latency::default());
        let (mut missed_deny, mut missed_allow) = (0, 0);
        let mut rng = StdRng::seed_from_u64(self.args.seed.wrapping_add(7));
        // Two reports per device per cycle; the control API allows one per second sustained.
        while Instant::now() + Duration::from_secs(3) < deadline {
            for &index in &flappers {
                for healthy in [false, true] {
                    if !self.report(index, Some(healthy), &mut rng).await {
                        continue;
                    }
                    let since = Instant::now();
                    match (self.until(index, healthy, since).await, healthy) {
                        (Some(took), false) => to_deny.record(took),
                        (Some(took), true) => to_allow.record(took),
                        (None, false) => missed_deny += 1,
                        (None, true) => missed_allow += 1,
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(2100)).await;
        }
        for index in &flappers {
            self.members[*index].in_pool.store(true, Ordering::Relaxed);
        }
        Ok(vec![
            Propagation {
                what: "unhealthy report → first 403".to_owned(),
                measured: to_deny.len(),
                not_enforced: missed_deny,
                latency: (to_deny.len() > 0).then(|| to_deny.stats()),
            },
            Propagation {
                what: "healthy report → first 200".to_owned(),
                measured: to_allow.len(),
                not_enforced: missed_allow,
                latency: (to_allow.len() > 0).then(|| to_allow.stats()),
            },
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_shares_parse_or_say_why_not() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        for bad in ["", "0s", "ten", "5 parsecs", "-1s", "9999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(share("0.85"), Ok(0.85));
        assert!(share("1.5").is_err());
    }
}
