//! The observability files against the running services: every metric the Grafana dashboards and the
//! alert rules query is one that control-api, ext-authz or Envoy really export, and the dashboards are
//! well-formed for Grafana's file provisioning. (`promtool test rules` checks the rules' logic.)

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{database_url, policies_dir};
use crate::proxy::{Options, Stack};

fn deploy(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Metric names in a Prometheus text exposition.
fn exported(text: &str) -> HashSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The metric names a PromQL expression (or a rules file) refers to: identifiers with one of our
/// prefixes, outside label matchers and strings.
fn referenced(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let (mut depth, mut quoted, mut token) = (0, false, String::new());
    let mut flush = |token: &mut String, depth: i32, quoted: bool| {
        if depth == 0
            && !quoted
            && ["edgemesh_", "envoy_", "process_"]
                .iter()
                .any(|p| token.starts_with(p))
        {
            names.insert(token.clone());
        }
        token.clear();
    };
    for c in expr.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            token.push(c);
            continue;
        }
        flush(&mut token, depth, quoted);
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth -= 1,
            _ => {}
        }
    }
    flush(&mut token, depth, quoted);
    names
}

#[test]
fn references_are_found_outside_label_matchers_only() {
    assert_eq!(
        referenced(r#"sum by (le) (rate(edgemesh_x_bucket{envoy_label="a{b"}[5m])) / envoy_y"#),
        BTreeSet::from(["edgemesh_x_bucket".to_owned(), "envoy_y".to_owned()])
    );
}

#[sqlx::test(migrations = false)]
async fn dashboards_and_alerts_query_only_metrics_the_services_export(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    // With shadow policies (the enforced ones again), so that the shadow decisions' series exist.
    let stack = Stack::start(
        &database_url(&db),
        Options {
            ext_authz_env: vec![(
                "EDGEMESH_SHADOW_POLICY_DIR",
                policies_dir().display().to_string(),
            )],
            ..Options::default()
        },
    )
    .await;
    let admin = stack.device("dana", "admin", "pi-dana").await;
    let analyst = stack.device("abe", "analyst", "pi-abe").await;
    stack.report(&admin, json!({})).await;
    stack.report(&analyst, json!({})).await;
    assert_eq!(stack.get(&admin, "/api/a").await.status, StatusCode::OK);
    assert_eq!(stack.get(&admin, "/storage/a").await.status, StatusCode::OK);
    assert_eq!(
        stack.get(&analyst, "/database/a").await.status,
        StatusCode::FORBIDDEN
    );

    let mut names = exported(&stack.ext_authz_metrics().await);
    let control_api = reqwest::get(&stack.api.metrics)
        .await
        .expect("control-api metrics")
        .text()
        .await
        .expect("text");
    names.extend(exported(&control_api));
    let envoy = reqwest::get(format!("{}/stats/prometheus", stack.envoy_admin))
        .await
        .expect("envoy metrics")
        .text()
        .await
        .expect("text");
    names.extend(exported(&envoy));

    // The seed plan's names and the ones the issue asks for are all there.
    for name in [
        "edgemesh_control_api_devices",
        "edgemesh_control_api_enrollments_total",
        "edgemesh_ext_authz_decisions_total",
        "edgemesh_ext_authz_decision_latency_seconds_bucket",
        "edgemesh_control_api_health_reports_total",
        "edgemesh_control_api_unhealthy_devices",
        "edgemesh_ext_authz_cache_hits_total",
        "edgemesh_ext_authz_cache_misses_total",
        "edgemesh_ext_authz_cache_invalidations_total",
        "edgemesh_ext_authz_policy_reloads_total",
        "edgemesh_ext_authz_audit_queue_depth",
        "edgemesh_ext_authz_audit_spool_torn_total",
        "edgemesh_ext_authz_notify_heartbeat_age_seconds",
        "edgemesh_ext_authz_audit_records_replayed_total",
        "edgemesh_shadow_decisions_total",
        "edgemesh_control_api_audit_sequencer_leader",
        "edgemesh_control_api_audit_sequenced_total",
    ] {
        assert!(names.contains(name), "{name} is not exported");
    }

    let alerts = deploy("prometheus/alerts.yml");
    let mut missing: Vec<String> = referenced(&alerts)
        .into_iter()
        .filter(|n| !names.contains(n))
        .map(|n| format!("alerts.yml: {n}"))
        .collect();

    let datasources = deploy("grafana/provisioning/datasources/prometheus.yml");
    assert!(datasources.contains("uid: prometheus"));
    let mut uids = HashSet::new();
    for file in ["overview", "security", "performance"] {
        let dashboard: Value =
            serde_json::from_str(&deploy(&format!("grafana/dashboards/{file}.json")))
                .unwrap_or_else(|e| panic!("{file}.json is not JSON: {e}"));
        let uid = dashboard["uid"].as_str().expect("uid");
        assert!(uids.insert(uid.to_owned()), "{file}: uid {uid} repeats");
        assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(dashboard["schemaVersion"].is_u64());
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{file}: no panels");
        let mut ids = HashSet::new();
        for panel in panels {
            let title = panel["title"].as_str().expect("panel title");
            assert!(
                ids.insert(panel["id"].as_u64().expect("panel id")),
                "{file}/{title}: id repeats"
            );
            assert!(
                ["stat", "gauge", "timeseries", "table", "bargauge"]
                    .contains(&panel["type"].as_str().expect("type")),
                "{file}/{title}: panel type"
            );
            for field in ["h", "w", "x", "y"] {
                assert!(
                    panel["gridPos"][field].is_u64(),
                    "{file}/{title}: gridPos.{field}"
                );
            }
            assert_eq!(panel["datasource"]["uid"], "prometheus", "{file}/{title}");
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{file}/{title}: no query");
            for target in targets {
                let expr = target["expr"].as_str().expect("expr");
                assert!(target["refId"].is_string());
                let refs = referenced(expr);
                assert!(!refs.is_empty(), "{file}/{title}: {expr} names no metric");
                missing.extend(
                    refs.into_iter()
                        .filter(|n| !names.contains(n))
                        .map(|n| format!("{file}.json/{title}: {n}")),
                );
            }
        }
    }
    assert!(missing.is_empty(), "queried but not exported: {missing:#?}");
}
