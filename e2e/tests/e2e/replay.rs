//! Decision replay and explanation through the real Envoy, ext-authz, control API and PostgreSQL:
//! traffic is recorded, then `edgemeshctl policy replay` evaluates the stored decisions again with a
//! candidate that tightens one rule, and `edgemeshctl policy explain` one decision under the version
//! that made it.

use std::collections::BTreeSet;
use std::process::Output;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::enforcement::WEDNESDAY_MORNING;
use crate::helpers::{bin, database_url, policies_dir};
use crate::proxy::{Options, Stack};
use crate::shadow::tightened_candidate;

/// `edgemeshctl ARGS` against the stack, as the operator runs it.
fn ctl(stack: &Stack, work: &std::path::Path, args: &[&str]) -> Output {
    let state = stack.state_dir.path();
    std::process::Command::new(bin("edgemeshctl"))
        .args(args)
        .current_dir(work)
        .env("HOME", work)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("EDGEMESH_CONFIG")
        .env("EDGEMESH_SERVER", &stack.api.api)
        .env("EDGEMESH_CA_FILE", state.join("ca.pem"))
        .env("EDGEMESH_ADMIN_TOKEN_FILE", state.join("admin-token"))
        .output()
        .expect("edgemeshctl")
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "one JSON document ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Every stored authorization record, once there are `n` (bounded wait).
async fn decisions(stack: &Stack, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = stack
            .api
            .admin_get("/audit?event_type=authorization&limit=1000")
            .await;
        let records = page["records"].as_array().cloned().unwrap_or_default();
        if records.len() >= n {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} decisions stored",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids of the report's changes in `direction`.
fn changed(report: &Value, direction: &str) -> BTreeSet<String> {
    report["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["change"] == direction)
        .map(|c| c["id"].as_str().expect("id").to_owned())
        .collect()
}

#[sqlx::test(migrations = false)]
async fn a_replay_names_exactly_the_decisions_a_tightened_rule_changes_and_explains_one(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let work = tempfile::tempdir().expect("tempdir");
    let candidate = work.path().join("candidate");
    std::fs::create_dir(&candidate).expect("candidate dir");
    tightened_candidate(&candidate);
    // The policy clock is fixed (a Wednesday morning), so every record also keeps its decision's
    // second apart from its own.
    let stack = Stack::start(
        &database_url(&db),
        Options {
            clock: Some(WEDNESDAY_MORNING),
            ..Options::default()
        },
    )
    .await;
    let since = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let developer = stack.device("dev", "developer", "pi-dev").await;
    let analyst = stack.device("ann", "analyst", "pi-ann").await;
    let admin = stack.device("ada", "admin", "pi-ada").await;
    // Enrolled, never reported: denied by the enforced policies everywhere.
    let silent = stack.device("nora", "analyst", "pi-nora").await;
    for device in [&developer, &analyst, &admin] {
        stack.report(device, json!({})).await;
    }
    let mut sent = 0;
    for device in [&developer, &analyst, &admin, &silent] {
        for (route, n) in [
            ("/storage/files", 3),
            ("/api/items", 2),
            ("/database/orders", 2),
        ] {
            for i in 0..n {
                let answer = stack.get(device, &format!("{route}/{i}")).await;
                assert!(
                    [StatusCode::OK, StatusCode::FORBIDDEN].contains(&answer.status),
                    "{answer:?}"
                );
                sent += 1;
            }
        }
    }
    let records = decisions(&stack, sent).await;
    assert_eq!(records.len(), sent);
    let until = (OffsetDateTime::now_utc() + time::Duration::minutes(1))
        .format(&Rfc3339)
        .expect("format");
    let since = since.format(&Rfc3339).expect("format");

    // What the tightened rule changes, worked out from the records alone: on storage, only admins.
    // A non-admin's allow there becomes a deny; a non-admin's deny there gains a reason.
    let on_storage_not_admin = |r: &&Value| r["service"] == "storage" && r["role"] != "admin";
    let expect = |decision: &str| -> BTreeSet<String> {
        records
            .iter()
            .filter(on_storage_not_admin)
            .filter(|r| r["decision"] == decision)
            .map(|r| r["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let (to_deny, other_reasons) = (expect("allow"), expect("deny"));
    assert_eq!(to_deny.len(), 6, "the developer's and the analyst's");
    assert_eq!(other_reasons.len(), 3, "the silent device's");

    let report_path = work.path().join("report.json");
    let replay = |dir: &std::path::Path| {
        json_of(&ctl(
            &stack,
            work.path(),
            &[
                "--output",
                "json",
                "policy",
                "replay",
                "--candidate",
                dir.to_str().expect("utf-8"),
                "--since",
                &since,
                "--until",
                &until,
                "--report",
                report_path.to_str().expect("utf-8"),
            ],
        ))
    };
    let report = replay(&candidate);
    assert_eq!(report["decisions"], sent);
    assert_eq!(report["replayed"], sent, "{report:#}");
    assert_eq!(report["context_missing"], 0);
    assert_eq!(report["context_altered"], 0);
    assert_eq!(changed(&report, "allow_to_deny"), to_deny, "{report:#}");
    assert_eq!(changed(&report, "reasons"), other_reasons, "{report:#}");
    assert_eq!(changed(&report, "deny_to_allow"), BTreeSet::new());
    assert_eq!(report["changed"]["allow_to_deny"], 6);
    assert_eq!(report["by_service"]["storage"]["allow_to_deny"], 6);
    assert_eq!(report["by_device"]["pi-ann"]["allow_to_deny"], 3);
    assert_eq!(
        report["reasons_added"]["role developer may not use service storage"],
        3
    );
    // The report file is the same document.
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("report"))
            .expect("json");
    assert_eq!(written["changes"], report["changes"]);

    // The enforced policies themselves: every decision comes out as it was.
    let same = replay(&policies_dir());
    assert_eq!(same["replayed"], sent);
    assert_eq!(same["unchanged"], sent, "{same:#}");

    // One deny explained: its input, its rules, its reasons, under the version in force.
    let denied = records
        .iter()
        .find(|r| r["device_id"] == "pi-ann" && r["service"] == "database")
        .expect("the analyst's database deny");
    assert_eq!(denied["decision"], "deny");
    let id = denied["id"].as_str().expect("id");
    let explained = json_of(&ctl(
        &stack,
        work.path(),
        &["--output", "json", "policy", "explain", id],
    ));
    assert_eq!(explained["reproduced"], true, "{explained:#}");
    assert_eq!(explained["policy_version"], denied["policy_version"]);
    assert_eq!(explained["input"]["request"]["path"], denied["path"]);
    assert_eq!(explained["input"]["time"]["rfc3339"], WEDNESDAY_MORNING);
    assert_eq!(explained["input"]["user"]["role"], "analyst");
    let rules = &explained["rules"]["edgemesh.authz"];
    assert_eq!(rules["allow"], false);
    assert_eq!(rules["health_fresh"], true);
    assert_eq!(rules["time_permitted"], true);
    assert_eq!(rules["role_permitted"], Value::Null, "undefined: {rules:#}");
    assert_eq!(
        explained["decision"]["reasons"][0]["message"],
        "role analyst may not use service database"
    );
    let table = ctl(&stack, work.path(), &["policy", "explain", id]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success() && text.contains("the same decision"),
        "{text}"
    );
    assert!(
        text.contains("role_permitted") && text.contains("undefined"),
        "{text}"
    );
    let unknown = ctl(
        &stack,
        work.path(),
        &["policy", "explain", "00000000-0000-0000-0000-000000000000"],
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown_decision"));

    // A stored context altered: the decisions made on it are reported, not replayed on a lie.
    let superuser = PgPool::connect(&database_url(&db)).await.expect("connect");
    let altered = sqlx::query(
        "UPDATE decision_contexts SET body = replace(body, '\"role\":\"analyst\"', '\"role\":\"admin\"')
         WHERE body LIKE '%\"id\":\"pi-ann\"%'",
    )
    .execute(&superuser)
    .await
    .expect("tamper")
    .rows_affected();
    assert!(altered >= 1);
    let after = replay(&policies_dir());
    assert_eq!(
        after["context_altered"], 7,
        "the analyst's decisions: {after:#}"
    );
    assert_eq!(after["unchanged"], sent - 7);
}
