//! The agent's health reports end to end: real measurements of this machine, sent over mTLS to the real
//! control API, judged by the compliance policy, enforced by Envoy and ext-authz.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::process::Command;

use crate::helpers::{ControlApi, Process, agent, agent_enroll, bin, database_url, metric};
use crate::proxy::{Options, Stack};

/// `df -P /`'s capacity of the root filesystem, in percent.
fn df_root_percent() -> f64 {
    let output = std::process::Command::new("df")
        .args(["-P", "/"])
        .output()
        .expect("df");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().nth(1).expect("df line");
    line.split_whitespace()
        .nth(4)
        .and_then(|c| c.trim_end_matches('%').parse().ok())
        .expect("capacity")
}

fn os_release_field(name: &str) -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(&format!("{name}="))
            .map(|v| v.trim_matches('"').to_owned())
    })
}

fn meminfo_used_percent() -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let field = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect(name)
    };
    100.0 * (1.0 - field("MemAvailable:") / field("MemTotal:"))
}

#[sqlx::test(migrations = false)]
async fn the_agent_reports_what_this_machine_measures(_pool: PgPoolOptions, db: PgConnectOptions) {
    let server_state = tempfile::tempdir().expect("tempdir");
    let api = ControlApi::start(&database_url(&db), server_state.path()).await;
    let (token, fingerprint) = api.token_for("quinn").await;
    let device_state = tempfile::tempdir().expect("tempdir");
    let dir = device_state.path();
    let run = agent_enroll(dir, &api, &token, &fingerprint, "this-machine").await;
    assert!(run.success, "{}", run.stderr);

    let run = agent(dir, &["report", "--once", "--server", &api.device_api], &[]).await;
    assert!(run.success, "report failed: {}", run.stderr);
    assert!(run.stdout.contains("verdict: "), "{}", run.stdout);

    let history = api.admin_get("/devices/this-machine/health?limit=1").await;
    let report = &history["reports"][0];
    assert_eq!(report["os"].as_str(), os_release_field("ID").as_deref());
    assert_eq!(
        report["os_version"].as_str(),
        os_release_field("VERSION_ID").as_deref()
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel");
    assert_eq!(report["kernel"].as_str(), Some(kernel.trim()));
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .expect("uptime")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .expect("uptime");
    let reported_uptime = report["uptime_seconds"].as_f64().expect("uptime known");
    assert!(
        (uptime - reported_uptime).abs() < 60.0,
        "{uptime} vs {reported_uptime}"
    );
    let memory = report["memory_usage"].as_f64().expect("memory known");
    assert!((memory - meminfo_used_percent()).abs() < 15.0, "{memory}");
    let disk = report["disk_usage"].as_f64().expect("disk known");
    assert!((disk - df_root_percent()).abs() <= 2.0, "{disk} vs df");
    let cpu = report["cpu_usage"].as_f64().expect("cpu known");
    assert!((0.0..=100.0).contains(&cpu));
    assert_eq!(report["agent_version"], env!("CARGO_PKG_VERSION"));

    // The device's verdict in the admin API follows the report, with reasons when unhealthy.
    let device = api.admin_get("/devices/this-machine").await;
    let verdict = device["health"].as_str().expect("health");
    assert!(verdict == "healthy" || verdict == "unhealthy", "{device}");
    assert_eq!(device["health_reasons"], report["reasons"]);
    assert_eq!(
        verdict == "unhealthy",
        !report["reasons"].as_array().expect("reasons").is_empty()
    );
    assert!(
        run.stdout.contains(&format!("verdict: {verdict}")),
        "{}",
        run.stdout
    );
}

#[sqlx::test(migrations = false)]
/// What the agent reports is what Envoy enforces, once its notification has reached ext-authz (within
/// the propagation bound: the NOTIFY can trail the report's answer by milliseconds).
async fn the_agents_report_is_enforced_within_the_propagation_bound(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let stack = Stack::start(&database_url(&db), Options::default()).await;
    let device = stack.device("rita", "admin", "pi-rita").await;
    stack.report(&device, json!({})).await;
    assert_eq!(stack.get(&device, "/api/x").await.status, StatusCode::OK);

    // This machine's real posture: whatever the compliance policy says of it is what Envoy enforces.
    let run = agent(
        device.dir.path(),
        &["report", "--once", "--server", &stack.api.device_api],
        &[],
    )
    .await;
    assert!(run.success, "{}", run.stderr);
    let stored = stack.api.admin_get("/devices/pi-rita").await;
    let reasons: Vec<String> =
        serde_json::from_value(stored["health_reasons"].clone()).expect("reasons");
    let expected = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    };
    let answer = stack.get_after_change(&device, "/api/x", expected).await;
    if reasons.is_empty() {
        assert_eq!(answer.status, StatusCode::OK);
    } else {
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{:?}", answer.body);
        assert_eq!(
            answer.reasons(),
            reasons,
            "the agent's reasons are the deny's"
        );
    }
}

/// Reports stored for `device`.
async fn reports(api: &ControlApi, device: &str) -> usize {
    let history = api
        .admin_get(&format!("/devices/{device}/health?limit=1000"))
        .await;
    history["reports"].as_array().map_or(0, Vec::len)
}

#[sqlx::test(migrations = false)]
/// An outage four times the back-off cap (the cap and the interval are configured short, so the same
/// behaviour as a long outage of a production agent takes seconds): the daemon keeps running, and
/// reports again within one back-off of the control API's return.
async fn the_agent_rides_out_an_outage_longer_than_its_back_off_cap(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let url = database_url(&db);
    let server_state = tempfile::tempdir().expect("tempdir");
    let api = ControlApi::start(&url, server_state.path()).await;
    let (token, fingerprint) = api.token_for("sam").await;
    let device_state = tempfile::tempdir().expect("tempdir");
    let run = agent_enroll(device_state.path(), &api, &token, &fingerprint, "pi-sam").await;
    assert!(run.success, "{}", run.stderr);

    let max_backoff = Duration::from_secs(3);
    let mut daemon = Process::spawn(
        Command::new(bin("edgemesh-agent"))
            .arg("--state-dir")
            .arg(device_state.path())
            .args(["run", "--server", &api.device_api, "--interval-secs", "1"])
            .args(["--max-backoff-secs", &max_backoff.as_secs().to_string()]),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while reports(&api, "pi-sam").await < 2 {
        assert!(Instant::now() < deadline, "the agent did not report");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let ports = api.ports();
    assert!(api.stop().await, "control-api stops cleanly");
    tokio::time::sleep(max_backoff * 4).await;
    assert!(
        daemon.running(),
        "the agent kept running while the control API was away"
    );

    let api = ControlApi::start_on(&url, server_state.path(), ports).await;
    let back = Instant::now();
    let before = reports(&api, "pi-sam").await;
    // One back-off period (at most max_backoff), plus the CPU sampling window and slack for a busy machine.
    let bound = max_backoff + Duration::from_secs(5);
    while reports(&api, "pi-sam").await <= before {
        assert!(
            back.elapsed() < bound,
            "no report within {bound:?} of the control API's return"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "reported again {:?} after the control API returned",
        back.elapsed()
    );
    assert!(daemon.stop().await, "a clean stop on SIGTERM");
    let _: Value = api.admin_get("/devices/pi-sam").await;
}

#[sqlx::test(migrations = false)]
/// Reports that measure the same facts again notify nobody, yet freshness holds on ext-authz: a device
/// that keeps reporting stays allowed past the maximum health age (ext-authz reads a measurement that
/// turned stale again), and one that stops is denied as stale at that age, with no notification.
async fn freshness_is_enforced_without_notifications(_pool: PgPoolOptions, db: PgConnectOptions) {
    let max_age = Duration::from_secs(3);
    let options = Options {
        ext_authz_env: vec![(
            "EDGEMESH_MAX_HEALTH_AGE_SECS",
            max_age.as_secs().to_string(),
        )],
        ..Options::default()
    };
    let stack = Stack::start(&database_url(&db), options).await;
    let device = stack.device("una", "admin", "pi-una").await;
    stack.report(&device, json!({})).await;
    assert_eq!(
        stack
            .get_after_change(&device, "/api/x", StatusCode::OK)
            .await
            .status,
        StatusCode::OK
    );
    let counters = |text: &str| {
        (
            metric(text, "edgemesh_ext_authz_cache_invalidations_total"),
            metric(text, "edgemesh_ext_authz_cache_stale_rereads_total"),
        )
    };
    let (invalidations, rereads) = counters(&stack.ext_authz_metrics().await);

    // Twice the maximum age of the same facts reported every second: allowed throughout.
    let until = Instant::now() + max_age * 2;
    let mut next_report = Instant::now();
    while Instant::now() < until {
        if Instant::now() >= next_report {
            stack.report(&device, json!({})).await;
            next_report += Duration::from_secs(1);
        }
        let answer = stack.get(&device, "/api/x").await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (quiet_invalidations, reread) = counters(&stack.ext_authz_metrics().await);
    assert_eq!(
        quiet_invalidations, invalidations,
        "no notification was applied"
    );
    assert!(
        reread > rereads,
        "freshness came from reading the device again"
    );

    // Reports stop: denied as stale once the last one is older than the maximum age, unnotified.
    let stopped = Instant::now();
    let answer = loop {
        let answer = stack.get(&device, "/api/x").await;
        if answer.status == StatusCode::FORBIDDEN || stopped.elapsed() > max_age * 3 {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{:?}", answer.body);
    assert!(
        answer.reasons().iter().any(|r| r.contains("stale")),
        "{:?}",
        answer.body
    );
    assert!(
        stopped.elapsed() >= max_age - Duration::from_secs(1),
        "not before the maximum age: {:?}",
        stopped.elapsed()
    );
    let (after, _) = counters(&stack.ext_authz_metrics().await);
    assert_eq!(after, invalidations, "no notification was applied");
}
