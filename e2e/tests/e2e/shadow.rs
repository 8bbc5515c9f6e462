//! Shadow (dry-run) policies through the real Envoy: on the route that asks for them (`/storage`,
//! `shadow: "true"` in its context extensions), ext-authz evaluates a candidate policy set beside the
//! enforced one. The enforced decision is the answer; the audit and a metric show the candidate's.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::enforcement::WEDNESDAY_MORNING;
use crate::helpers::{database_url, policies_dir};
use crate::proxy::{Options, Stack};

/// The enforced policies with one rule tightened: only admins may use `storage`. Written into `dir`.
pub fn tightened_candidate(dir: &Path) {
    for entry in std::fs::read_dir(policies_dir()).expect("policies") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if !name.ends_with(".rego") || name.ends_with("_test.rego") {
            continue;
        }
        let mut source = std::fs::read_to_string(&path).expect("read");
        if name == "authz.rego" {
            let rule = r#""storage": {"admin", "developer", "analyst"},"#;
            assert!(
                source.contains(rule),
                "authz.rego still has the storage rule"
            );
            source = source.replace(rule, r#""storage": {"admin"},"#);
        }
        std::fs::write(dir.join(&name), source).expect("write");
    }
}

/// The stored authorization records of `device`, once there are `n` (bounded wait), oldest first,
/// through the audit API.
async fn audited(stack: &Stack, device: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = stack
            .api
            .admin_get(&format!(
                "/audit?device={device}&event_type=authorization&limit=500"
            ))
            .await;
        let mut records = page["records"].as_array().cloned().unwrap_or_default();
        if records.len() >= n || Instant::now() > deadline {
            records.reverse();
            return records;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the shadow counter for these labels (0 if absent).
fn shadow_count(metrics: &str, service: &str, enforced: &str, shadow: &str) -> u64 {
    let series = format!(
        "edgemesh_shadow_decisions_total{{enforced=\"{enforced}\",service=\"{service}\",shadow=\"{shadow}\"}}"
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[sqlx::test(migrations = false)]
async fn a_shadow_deny_is_audited_and_counted_and_the_request_still_allowed(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let candidate = tempfile::tempdir().expect("tempdir");
    tightened_candidate(candidate.path());
    let stack = Stack::start(
        &database_url(&db),
        Options {
            ext_authz_env: vec![(
                "EDGEMESH_SHADOW_POLICY_DIR",
                candidate.path().display().to_string(),
            )],
            clock: Some(WEDNESDAY_MORNING),
            ..Options::default()
        },
    )
    .await;
    let developer = stack.device("dev", "developer", "pi-dev").await;
    let admin = stack.device("ada", "admin", "pi-ada").await;
    stack.report(&developer, json!({})).await;
    stack.report(&admin, json!({})).await;

    // The developer on the shadowed route: allowed, as the enforced policies say.
    for i in 0..5 {
        let answer = stack.get(&developer, &format!("/storage/files/{i}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    // The admin there: allowed by both.
    for i in 0..3 {
        let answer = stack.get(&admin, &format!("/storage/files/{i}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    // The developer on a route without shadow: allowed, and nothing about a shadow.
    for i in 0..4 {
        let answer = stack.get(&developer, &format!("/api/items/{i}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }

    let records = audited(&stack, "pi-dev", 9).await;
    assert_eq!(records.len(), 9, "{records:#?}");
    let enforced_version = records[0]["policy_version"].clone();
    for record in &records {
        assert_eq!(record["decision"], "allow", "{record}");
        let path = record["path"].as_str().expect("path");
        if path.starts_with("/storage") {
            assert_eq!(record["shadow_decision"], "deny", "{record}");
            assert_eq!(
                record["shadow_reasons"],
                json!(["role developer may not use service storage"]),
                "{record}"
            );
            assert_ne!(
                record["shadow_policy_version"], enforced_version,
                "the candidate's own version: {record}"
            );
            assert!(record["shadow_policy_version"].is_string(), "{record}");
        } else {
            for field in ["shadow_decision", "shadow_reasons", "shadow_policy_version"] {
                assert!(record[field].is_null(), "{field} on {record}");
            }
        }
    }
    let admin_records = audited(&stack, "pi-ada", 3).await;
    assert_eq!(admin_records.len(), 3);
    for record in &admin_records {
        assert_eq!(
            (&record["decision"], &record["shadow_decision"]),
            (&json!("allow"), &json!("allow")),
            "{record}"
        );
        assert_eq!(record["shadow_reasons"], json!([]), "{record}");
    }

    let metrics = stack.ext_authz_metrics().await;
    assert_eq!(
        shadow_count(&metrics, "storage", "allow", "deny"),
        5,
        "{metrics}"
    );
    assert_eq!(
        shadow_count(&metrics, "storage", "allow", "allow"),
        3,
        "{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("edgemesh_shadow_decisions_total") && l.contains("\"api\"")),
        "a route without shadow is not counted: {metrics}"
    );
}

#[sqlx::test(migrations = false)]
async fn without_a_shadow_directory_a_shadowed_route_records_nothing(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let options = Options {
        clock: Some(WEDNESDAY_MORNING),
        ..Options::default()
    };
    let stack = Stack::start(&database_url(&db), options).await;
    let developer = stack.device("dev", "developer", "pi-dev").await;
    stack.report(&developer, json!({})).await;
    for i in 0..3 {
        let answer = stack.get(&developer, &format!("/storage/files/{i}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    let records = audited(&stack, "pi-dev", 3).await;
    assert_eq!(records.len(), 3);
    for record in &records {
        assert!(record["shadow_decision"].is_null(), "{record}");
    }
    let metrics = stack.ext_authz_metrics().await;
    assert!(
        !metrics.contains("edgemesh_shadow_decisions_total{"),
        "{metrics}"
    );
}
