//! The simulator against the real stack: its scenarios measure what they claim, every attack is
//! refused, and its exit status says whether the run went well.

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::process::Command;

use crate::helpers::{bin, database_url, free_port};
use crate::proxy::{Options, Stack};

struct Finished {
    code: Option<i32>,
    summary: Value,
    stdout: String,
    stderr: String,
}

async fn simulate(stack: &Stack, envoy: &str, args: &[&str]) -> Finished {
    let state = stack.state_dir.path();
    let json = state.join(format!("summary-{}.json", free_port()));
    let output = Command::new(bin("edgemesh-simulator"))
        .args(["--control-api", &stack.api.api])
        .args(["--device-api", &stack.api.device_api])
        .arg("--admin-token-file")
        .arg(state.join("admin-token"))
        .args(["--envoy", envoy])
        .arg("--ca-cert")
        .arg(state.join("ca.pem"))
        .arg("--ca-key")
        .arg(state.join("ca-key.pem"))
        .arg("--json")
        .arg(&json)
        .args(args)
        .env("EDGEMESH_LOG", "warn")
        .output()
        .await
        .expect("run the simulator");
    let summary = std::fs::read(&json)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null);
    Finished {
        code: output.status.code(),
        summary,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[sqlx::test(migrations = false)]
async fn every_attack_is_refused_and_the_run_succeeds(_pool: PgPoolOptions, db: PgConnectOptions) {
    let stack = Stack::start(&database_url(&db), Options::default()).await;
    let run = simulate(
        &stack,
        &stack.envoy_url,
        &[
            "--devices",
            "12",
            "--duration",
            "4s",
            "--rate",
            "30",
            "--scenario",
            "attack",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let attacks = run.summary["attacks"].as_array().expect("attacks");
    let names: Vec<&str> = attacks
        .iter()
        .map(|a| a["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "no client certificate",
            "certificate from another CA",
            "expired certificate of the EdgeMesh CA",
            "spoofed identity headers",
            "health report for another device",
            "path spelling /api/../database/attack",
            "path spelling /api/%2e%2e/database/attack",
            "path spelling /api/..%2fdatabase/attack",
            "path spelling /api/..%5cdatabase/attack",
            "path spelling //database/attack",
            "identity header spelt with underscores",
            "renewed certificate outliving its revoked original",
        ]
    );
    assert!(attacks.iter().all(|a| a["refused"] == true), "{attacks:#?}");
    let traffic = &run.summary["traffic"];
    assert_eq!(traffic["errors"], 0, "{traffic}");
    assert!(
        traffic["allowed"].as_u64().is_some_and(|n| n > 0),
        "{traffic}"
    );
    assert!(
        traffic["denied"].as_u64().is_some_and(|n| n > 0),
        "{traffic}"
    );
    assert!(
        run.stdout.contains("attacks: 12 tried, 12 refused"),
        "{}",
        run.stdout
    );
}

#[sqlx::test(migrations = false)]
async fn the_revocation_scenario_measures_each_revocation(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let stack = Stack::start(&database_url(&db), Options::default()).await;
    let run = simulate(
        &stack,
        &stack.envoy_url,
        &[
            "--devices",
            "30",
            "--duration",
            "6s",
            "--rate",
            "30",
            "--scenario",
            "revocation",
            "--revocations",
            "4",
            "--seed",
            "5",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let revocation = &run.summary["propagation"][0];
    assert_eq!(revocation["measured"], 4, "{revocation}");
    assert_eq!(revocation["not_enforced"], 0, "{revocation}");
    let p99 = revocation["latency"]["p99_ms"].as_f64().expect("p99");
    assert!(p99 > 0.0 && p99 < 5000.0, "{revocation}");
    // The revoked devices really are revoked.
    let devices = stack.api.admin_get("/devices?status=revoked").await;
    assert_eq!(devices["devices"].as_array().expect("devices").len(), 4);
}

#[sqlx::test(migrations = false)]
async fn requests_that_fail_for_other_reasons_than_policy_make_the_run_fail(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let stack = Stack::start(&database_url(&db), Options::default()).await;
    // Nothing listens there: every request is a connection error, not a deny.
    let nowhere = format!("https://127.0.0.1:{}", free_port());
    let run = simulate(
        &stack,
        &nowhere,
        &["--devices", "3", "--duration", "2s", "--rate", "10"],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.summary["traffic"]["errors"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );
    assert!(run.stdout.contains("errors (exit 1)"), "{}", run.stdout);

    // A bad argument is refused before anything happens.
    let bad = simulate(&stack, &stack.envoy_url, &["--duration", "forever"]).await;
    assert_eq!(bad.code, Some(64), "a usage error");
    assert!(bad.stderr.contains("not a duration"), "{}", bad.stderr);
}
