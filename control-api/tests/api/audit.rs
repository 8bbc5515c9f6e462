use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::health::{device, healthy_report};
use crate::helpers::{TestApp, error_code, spawn_app};

async fn audit(app: &TestApp, query: &str) -> Value {
    let response = app.admin_get(&format!("/audit?{query}")).await;
    assert_eq!(response.status(), StatusCode::OK, "audit?{query}");
    response.json().await.expect("json")
}

fn field<'a>(records: &'a Value, name: &str) -> Vec<&'a str> {
    records["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r[name].as_str().unwrap_or("-"))
        .collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn every_change_is_audited_with_its_transaction(db: PgPool) {
    let app = spawn_app(db).await;
    let client = device(&app, "ivy", "pi-audit").await;
    let response = client
        .post(format!("{}/api/v1/health", app.device_api))
        .json(&healthy_report())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let refused = app
        .enroll_raw(
            Some("emt_not-a-token"),
            &crate::helpers::enroll_body("pi-intruder", "x"),
        )
        .await;
    assert_eq!(
        refused.status(),
        StatusCode::UNAUTHORIZED,
        "the token is checked before the CSR"
    );
    let key = edgemesh_core::client::DeviceKey::generate().expect("key");
    let csr = key
        .csr_pem(&edgemesh_core::id::DeviceId::parse("pi-intruder").expect("id"))
        .expect("csr");
    let refused = app
        .enroll_raw(
            Some("emt_not-a-token"),
            &crate::helpers::enroll_body("pi-intruder", &csr),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let revoked = app
        .admin_post("/devices/pi-audit/revoke", json!({"reason": "lost"}))
        .await;
    assert_eq!(revoked.status(), StatusCode::OK);

    let all = audit(&app, "limit=50").await;
    let kinds: Vec<(String, String)> = all["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            (
                r["event_type"].as_str().expect("type").to_owned(),
                r["action"].as_str().expect("action").to_owned(),
            )
        })
        .collect();
    // Newest first.
    let expected = [
        ("revocation", "revoked"),
        ("enrollment", "refused"),
        ("enrollment", "refused"),
        ("health", "verdict"),
        ("enrollment", "created"),
        ("token", "created"),
        ("user", "created"),
    ];
    assert_eq!(
        kinds,
        expected
            .iter()
            .map(|(t, a)| ((*t).to_owned(), (*a).to_owned()))
            .collect::<Vec<_>>()
    );
    let records = all["records"].as_array().expect("records");
    assert_eq!(records[0]["device_id"], "pi-audit");
    assert_eq!(records[0]["reasons"], json!(["lost"]));
    assert_eq!(records[1]["decision"], "deny");
    assert_eq!(records[1]["device_id"], "pi-intruder");
    assert_eq!(
        records[1]["reasons"],
        json!(["the enrollment token is not known"])
    );
    assert!(
        records[1]["peer_address"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:"))
    );
    assert_eq!(records[3]["details"]["status"], "healthy");
    assert_eq!(records[4]["user_id"], "ivy");
    assert!(records[4]["certificate_serial"].is_string());

    let enrollments = audit(&app, "event_type=enrollment&decision=deny").await;
    assert_eq!(
        field(&enrollments, "device_id"),
        ["pi-intruder", "pi-intruder"]
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_failed_change_leaves_no_audit_record(db: PgPool) {
    let app = spawn_app(db).await;
    app.create_user("jo", "analyst").await;
    // The same user again: refused by the database, so its audit record is rolled back with it.
    let again = app
        .admin_post(
            "/users",
            json!({"id": "jo", "email": "jo2@example.com", "role": "analyst"}),
        )
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let users = audit(&app, "event_type=user").await;
    assert_eq!(field(&users, "user_id"), ["jo"]);
}

/// Inserts `n` authorization records for `device`, one per second going back from `newest`, every
/// third one a deny.
async fn seed_decisions(db: &PgPool, device: &str, newest: OffsetDateTime, n: i64) {
    sqlx::query(
        "INSERT INTO audit_log (id, occurred_at, event_type, action, device_id, user_id, role, service,
             method, path, decision, reasons, policy_version, latency_us)
         SELECT gen_random_uuid(), $2 - make_interval(secs => i), 'authorization', 'check', $1, 'owner',
             'developer', 'database', 'GET', '/database/' || i,
             CASE WHEN i % 3 = 0 THEN 'deny' ELSE 'allow' END,
             CASE WHEN i % 3 = 0 THEN ARRAY['antivirus is not enabled'] ELSE '{}' END,
             'v1', 80
         FROM generate_series(0, $3 - 1) AS i",
    )
    .bind(device)
    .bind(newest)
    .bind(n)
    .execute(db)
    .await
    .expect("seed");
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("format")
}

#[sqlx::test(migrations = "../migrations")]
async fn pages_follow_the_cursor_without_gaps_or_repeats_and_exports_match(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    let newest = OffsetDateTime::now_utc().replace_nanosecond(0).expect("ns");
    seed_decisions(&db, "pi-1", newest, 700).await;
    seed_decisions(&db, "pi-2", newest, 50).await;
    // A window of 600 seconds holds 600 of pi-1's records, 200 of them denies.
    let since = rfc3339(newest - time::Duration::seconds(599));
    let until = rfc3339(newest + time::Duration::seconds(1));
    let filter = format!("device=pi-1&decision=deny&since={since}&until={until}");

    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = format!("{filter}&limit=64");
        if let Some(c) = &cursor {
            query.push_str(&format!("&cursor={c}"));
        }
        let page = audit(&app, &query).await;
        pages += 1;
        for record in page["records"].as_array().expect("records") {
            assert_eq!(record["device_id"], "pi-1");
            assert_eq!(record["decision"], "deny");
            assert_eq!(record["reasons"], json!(["antivirus is not enabled"]));
            assert_eq!(record["policy_version"], "v1");
            seen.push(record["path"].as_str().expect("path").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..600)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("/database/{i}"))
        .collect();
    assert_eq!(seen, expected, "newest first, every deny once");
    assert_eq!(pages, 4);

    let csv = app.admin_get(&format!("/audit?{filter}&format=csv")).await;
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/csv")
    );
    let csv = csv.text().await.expect("body");
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .expect("header")
            .starts_with("id,occurred_at,event_type")
    );
    let paths: Vec<String> = lines
        .map(|l| l.split(',').nth(9).expect("path column").to_owned())
        .collect();
    assert_eq!(
        paths, expected,
        "the CSV export holds the same rows in the same order"
    );

    // An export larger than one fetch streams them all.
    let ndjson = app.admin_get("/audit?device=pi-1&format=ndjson").await;
    let body = ndjson.text().await.expect("body");
    let ids: std::collections::HashSet<Uuid> = body
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("one JSON object per line");
            Uuid::parse_str(v["id"].as_str().expect("id")).expect("uuid")
        })
        .collect();
    assert_eq!(ids.len(), 700);
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_audit_queries_are_refused_with_a_reason(db: PgPool) {
    let app = spawn_app(db).await;
    for (query, code) in [
        ("decision=maybe", "invalid_query"),
        ("event_type=coffee", "invalid_query"),
        ("colour=red", "invalid_query"),
        ("device=..%2F..", "invalid_query"),
        ("service=a%20b", "invalid_service"),
        ("cursor=bm9wZQ", "invalid_cursor"),
        ("cursor=%21%21", "invalid_cursor"),
        ("since=yesterday", "invalid_time"),
        (
            "since=2026-11-22T10:00:00Z&until=2026-11-22T09:00:00Z",
            "invalid_time_range",
        ),
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("limit=-5", "invalid_limit"),
        ("format=xml", "invalid_query"),
    ] {
        let response = app.admin_get(&format!("/audit?{query}")).await;
        assert_eq!(
            error_code(response).await,
            (StatusCode::BAD_REQUEST, code.to_owned()),
            "{query}"
        );
    }
    let anonymous = app
        .http
        .get(format!("{}/api/v1/admin/audit", app.api))
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

async fn partitions(db: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'audit_log'::regclass ORDER BY 1",
    )
    .fetch_all(db)
    .await
    .expect("partitions")
}

#[sqlx::test(migrations = "../migrations")]
async fn partitions_are_created_ahead_and_dropped_after_retention(db: PgPool) {
    use edgemesh_control_api::audit::{Retention, maintain};
    use time::macros::datetime;

    // A record of a month without a partition lands in the default partition ...
    sqlx::query(
        "INSERT INTO audit_log (id, occurred_at, event_type, action)
         VALUES (gen_random_uuid(), '2031-03-15T12:00:00Z', 'user', 'created')",
    )
    .execute(&db)
    .await
    .expect("insert");
    let retention = Retention {
        months_ahead: 2,
        keep_days: Some(90),
    };
    let done = maintain(&db, retention, datetime!(2031-02-10 08:00 UTC))
        .await
        .expect("maintain");
    assert_eq!(
        done.created,
        [
            "audit_log_p203102",
            "audit_log_p203103",
            "audit_log_p203104"
        ]
    );
    // ... and moves into its month's partition when that is created.
    let (home,): (String,) = sqlx::query_as("SELECT tableoid::regclass::text FROM audit_log")
        .fetch_one(&db)
        .await
        .expect("row");
    assert_eq!(home, "audit_log_p203103");
    // The months the migration created (this month and the next two) are older than 90 days by
    // then, so they are dropped whole.
    assert!(done.dropped.len() >= 3, "{:?}", done.dropped);
    let left = partitions(&db).await;
    assert_eq!(
        left,
        [
            "audit_log_default",
            "audit_log_p203102",
            "audit_log_p203103",
            "audit_log_p203104"
        ]
    );
    let again = maintain(&db, retention, datetime!(2031-02-10 08:00 UTC))
        .await
        .expect("maintain");
    assert_eq!(again, Default::default(), "maintenance is idempotent");
}

/// Every partition, those the migrations made and those made later, keeps statistics only for the
/// columns queries filter on and is analysed after growing by half.
#[sqlx::test(migrations = "../migrations")]
async fn every_partition_has_the_audit_statistics_settings(db: PgPool) {
    use edgemesh_control_api::audit::{Retention, maintain};
    use time::macros::datetime;

    let retention = Retention {
        months_ahead: 1,
        keep_days: None,
    };
    let done = maintain(&db, retention, datetime!(2031-02-10 08:00 UTC))
        .await
        .expect("maintain");
    assert_eq!(done.created, ["audit_log_p203102", "audit_log_p203103"]);
    let all = partitions(&db).await;
    assert!(
        all.len() >= 6,
        "the migration's months, the default and the new: {all:?}"
    );
    for partition in all {
        let (options,): (Option<Vec<String>>,) =
            sqlx::query_as("SELECT reloptions::text[] FROM pg_class WHERE relname = $1")
                .bind(&partition)
                .fetch_one(&db)
                .await
                .expect("reloptions");
        assert_eq!(
            options.unwrap_or_default(),
            ["autovacuum_analyze_scale_factor=0.5"],
            "{partition}"
        );
        let targets: Vec<(String, i32)> = sqlx::query_as(
            "SELECT attname::text, attstattarget::int FROM pg_attribute
             WHERE attrelid = $1::regclass AND attname IN ('device_id', 'occurred_at', 'path', 'reasons')
             ORDER BY 1",
        )
        .bind(&partition)
        .fetch_all(&db)
        .await
        .expect("statistics targets");
        assert_eq!(
            targets,
            [
                ("device_id".to_owned(), -1),
                ("occurred_at".to_owned(), -1),
                ("path".to_owned(), 0),
                ("reasons".to_owned(), 0)
            ],
            "{partition}"
        );
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn metrics_count_enrollments_and_health(db: PgPool) {
    let app = spawn_app(db).await;
    let client = device(&app, "kim", "pi-metrics").await;
    let mut sick = healthy_report();
    sick["antivirus_enabled"] = json!(false);
    let response = client
        .post(format!("{}/api/v1/health", app.device_api))
        .json(&sick)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let text = reqwest::get(&app.metrics)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        "edgemesh_control_api_enrollments_total{result=\"enrolled\"} 1",
        "edgemesh_control_api_enrollments_total{result=\"refused\"} 0",
        "edgemesh_control_api_enrollments_total{result=\"rate_limited\"} 0",
        "edgemesh_control_api_health_reports_total{status=\"unhealthy\"} 1",
        "edgemesh_control_api_devices{status=\"active\"} 1",
        "edgemesh_control_api_unhealthy_devices 1",
        "edgemesh_control_api_database_up 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}
