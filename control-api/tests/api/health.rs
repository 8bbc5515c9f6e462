use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::{TestApp, error_code, https_client, next_sequence, spawn_app};

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("format")
}

pub fn healthy_report() -> Value {
    json!({
        "sequence": next_sequence(),
        "collected_at": rfc3339(OffsetDateTime::now_utc()),
        "agent_version": "0.1.0",
        "cpu_usage": 12.5,
        "memory_usage": 40.0,
        "disk_usage": 55.0,
        "os": "debian",
        "os_version": "12",
        "kernel": "6.1.0-13-amd64",
        "uptime_seconds": 3600,
        "disk_encrypted": true,
        "os_patches_current": true,
        "antivirus_enabled": true,
        "firewall_enabled": null,
    })
}

/// A device enrolled for a fresh owner, and a client presenting its certificate.
pub async fn device(app: &TestApp, owner: &str, id: &str) -> reqwest::Client {
    let token = app.create_token(owner, 1).await;
    let enrolled = app.enroll(&token, id).await;
    https_client(&app.ca_pem, Some((&enrolled.cert_pem, &enrolled.key_pem)))
}

async fn report(app: &TestApp, client: &reqwest::Client, body: &Value) -> reqwest::Response {
    client
        .post(format!("{}/api/v1/health", app.device_api))
        .json(body)
        .send()
        .await
        .expect("request")
}

async fn device_json(app: &TestApp, id: &str) -> Value {
    let response = app.admin_get(&format!("/devices/{id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("json")
}

#[sqlx::test(migrations = "../migrations")]
async fn reports_set_the_devices_verdict_and_build_its_history(db: PgPool) {
    let app = spawn_app(db).await;
    let client = device(&app, "hank", "pi-health").await;
    assert_eq!(device_json(&app, "pi-health").await["health"], "unknown");

    let response = report(&app, &client, &healthy_report()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let verdict: Value = response.json().await.expect("json");
    assert_eq!(verdict, json!({"status": "healthy", "reasons": []}));
    let shown = device_json(&app, "pi-health").await;
    assert_eq!(shown["health"], "healthy");
    assert!(shown["last_seen_at"].is_string());

    let mut sick = healthy_report();
    sick["antivirus_enabled"] = json!(false);
    sick["cpu_usage"] = json!(97.0);
    let verdict: Value = report(&app, &client, &sick)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(verdict["status"], "unhealthy");
    let reasons = verdict["reasons"].as_array().expect("reasons");
    assert!(
        reasons.contains(&json!("antivirus is not enabled")),
        "{verdict}"
    );
    assert!(
        reasons.contains(&json!("CPU usage is 90% or more")),
        "{verdict}"
    );

    let listed: Value = app.admin_get("/devices").await.json().await.expect("json");
    let listed = &listed["devices"][0];
    assert_eq!(listed["health"], "unhealthy");
    assert_eq!(listed["health_reasons"], verdict["reasons"]);

    let history: Value = app
        .admin_get("/devices/pi-health/health?limit=5")
        .await
        .json()
        .await
        .expect("json");
    let reports = history["reports"].as_array().expect("reports");
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["status"], "unhealthy", "newest first");
    assert_eq!(reports[0]["cpu_usage"], 97.0);
    assert_eq!(reports[1]["status"], "healthy");
    assert_eq!(reports[1]["kernel"], "6.1.0-13-amd64");

    let (status, code) = error_code(app.admin_get("/devices/pi-health/health?limit=0").await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_limit")
    );
    let (status, _) = error_code(app.admin_get("/devices/nobody/health").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrations = "../migrations")]
async fn an_unknown_value_is_not_compliant(db: PgPool) {
    let app = spawn_app(db).await;
    let client = device(&app, "ivy", "pi-unknown").await;
    let mut body = healthy_report();
    body["disk_encrypted"] = Value::Null;
    body.as_object_mut()
        .expect("object")
        .remove("os_patches_current");
    let verdict: Value = report(&app, &client, &body)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(verdict["status"], "unhealthy");
    // Both reasons, in the policy's order (by their codes: disk_encryption, os_patches).
    assert_eq!(
        verdict["reasons"],
        json!([
            "disk encryption is not enabled",
            "OS security patches are not current"
        ])
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_device_cannot_report_for_another(db: PgPool) {
    let app = spawn_app(db).await;
    let alice = device(&app, "owner-a", "pi-a").await;
    let _bob = device(&app, "owner-b", "pi-b").await;
    let before = app.snapshot().await;
    let mut body = healthy_report();
    body["device_id"] = json!("pi-b");
    let (status, code) = error_code(report(&app, &alice, &body).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "device_mismatch")
    );
    assert_eq!(app.snapshot().await, before, "nothing changed for anyone");
    assert_eq!(device_json(&app, "pi-b").await["health"], "unknown");

    // Naming itself is fine.
    body["device_id"] = json!("pi-a");
    assert_eq!(report(&app, &alice, &body).await.status(), StatusCode::OK);
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_reports_are_refused_and_store_nothing(db: PgPool) {
    let app = spawn_app(db).await;
    let client = device(&app, "jack", "pi-bad").await;
    let before = app.snapshot().await;
    let future = rfc3339(OffsetDateTime::now_utc() + time::Duration::minutes(10));
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "cpu out of range",
            json!({"cpu_usage": 100.5}),
            "invalid_field",
        ),
        (
            "negative memory",
            json!({"memory_usage": -1}),
            "invalid_field",
        ),
        (
            "future-dated",
            json!({"collected_at": future}),
            "collected_in_future",
        ),
        (
            "control characters",
            json!({"os": "debian\u{7}"}),
            "invalid_field",
        ),
        (
            "long kernel",
            json!({"kernel": "k".repeat(300)}),
            "invalid_field",
        ),
        (
            "empty agent version",
            json!({"agent_version": ""}),
            "invalid_field",
        ),
        (
            "wrong type",
            json!({"antivirus_enabled": "yes"}),
            "invalid_body",
        ),
        ("unknown field", json!({"battery": 80}), "invalid_body"),
        (
            "bad date",
            json!({"collected_at": "yesterday"}),
            "invalid_body",
        ),
    ];
    for (name, patch, expected) in cases {
        let mut body = healthy_report();
        for (k, v) in patch.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (status, code) = error_code(report(&app, &client, &body).await).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, expected),
            "{name}"
        );
    }
    let response = client
        .post(format!("{}/api/v1/health", app.device_api))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(error_code(response).await.0, StatusCode::BAD_REQUEST);
    let mut huge = healthy_report();
    huge["kernel"] = json!("x".repeat(100 * 1024));
    let (status, _) = error_code(report(&app, &client, &huge).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.snapshot().await, before, "nothing stored");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_revoked_devices_report_is_refused(db: PgPool) {
    let app = spawn_app(db).await;
    let client = device(&app, "kim", "pi-gone").await;
    let revoked = app.admin_post("/devices/pi-gone/revoke", json!({})).await;
    assert_eq!(revoked.status(), StatusCode::OK);
    let before = app.snapshot().await;
    let (status, code) = error_code(report(&app, &client, &healthy_report()).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "certificate_revoked")
    );
    assert_eq!(app.snapshot().await, before);
}

#[sqlx::test(migrations = "../migrations")]
async fn reports_beyond_the_rate_limit_get_429_with_retry_after(db: PgPool) {
    let app = spawn_app(db).await;
    let client = device(&app, "lee", "pi-chatty").await;
    for _ in 0..10 {
        assert_eq!(
            report(&app, &client, &healthy_report()).await.status(),
            StatusCode::OK
        );
    }
    let response = report(&app, &client, &healthy_report()).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(error_code(response).await.1, "rate_limited");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM health_reports")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(stored, 10, "the refused report was not stored");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_device_without_a_recent_report_is_stale(db: PgPool) {
    let app = spawn_app(db).await;
    let client = device(&app, "mo", "pi-old").await;
    let mut body = healthy_report();
    body["collected_at"] = json!(rfc3339(
        OffsetDateTime::now_utc() - time::Duration::minutes(10)
    ));
    assert_eq!(report(&app, &client, &body).await.status(), StatusCode::OK);
    assert_eq!(device_json(&app, "pi-old").await["health"], "stale");
}

/// A report is accepted once: one whose sequence is not above the last accepted (sent again by
/// whoever recorded it on the way) is refused with 409 and changes nothing; a new enrolment starts
/// its sequence again.
#[sqlx::test(migrations = "../migrations")]
async fn a_report_sent_again_is_refused(db: PgPool) {
    let app = spawn_app(db).await;
    let client = device(&app, "rex", "pi-replay").await;
    let mut body = healthy_report();
    body["sequence"] = json!(5);
    assert_eq!(report(&app, &client, &body).await.status(), StatusCode::OK);

    let before = app.snapshot().await;
    for sequence in [5, 4] {
        body["sequence"] = json!(sequence);
        let response = report(&app, &client, &body).await;
        let (status, code) = error_code(response).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::CONFLICT, "stale_sequence"),
            "sequence {sequence}"
        );
    }
    for (sequence, why) in [
        (json!(0), "invalid_sequence"),
        (json!(null), "invalid_body"),
    ] {
        body["sequence"] = sequence;
        let (status, code) = error_code(report(&app, &client, &body).await).await;
        assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, why));
    }
    body.as_object_mut().expect("object").remove("sequence");
    let (status, code) = error_code(report(&app, &client, &body).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_body")
    );
    assert_eq!(
        app.snapshot().await,
        before,
        "a refused report changes nothing"
    );

    body["sequence"] = json!(6);
    assert_eq!(report(&app, &client, &body).await.status(), StatusCode::OK);

    // Enrolled again (a fresh agent state starts counting at 1): the old sequence is not held against it.
    app.admin_post("/devices/pi-replay/revoke", json!({})).await;
    let token = app.create_token("rex", 1).await;
    let enrolled = app.enroll(&token, "pi-replay").await;
    let client = https_client(&app.ca_pem, Some((&enrolled.cert_pem, &enrolled.key_pem)));
    body["sequence"] = json!(1);
    assert_eq!(report(&app, &client, &body).await.status(), StatusCode::OK);
}
