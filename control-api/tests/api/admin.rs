use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{error_code, spawn_app};

#[sqlx::test(migrations = "../migrations")]
async fn admin_endpoints_require_the_admin_token(db: PgPool) {
    let app = spawn_app(db).await;
    let url = format!("{}/api/v1/admin/users", app.api);
    let none = app.http.get(&url).send().await.expect("request");
    assert_eq!(
        error_code(none).await,
        (StatusCode::UNAUTHORIZED, "missing_token".to_owned())
    );
    let wrong = app
        .http
        .get(&url)
        .bearer_auth("x".repeat(64))
        .send()
        .await
        .expect("request");
    assert_eq!(
        error_code(wrong).await,
        (StatusCode::UNAUTHORIZED, "invalid_token".to_owned())
    );
    let before = app.snapshot().await;
    let response = app
        .http
        .post(&url)
        .bearer_auth("wrong")
        .json(&json!({"id": "mallory", "email": "m@example.com", "role": "admin"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.snapshot().await, before);
}

#[sqlx::test(migrations = "../migrations")]
async fn users_and_tokens_are_validated(db: PgPool) {
    let app = spawn_app(db).await;
    app.create_user("hank", "analyst").await;
    let cases = [
        (
            "/users",
            json!({"id": "hank", "email": "other@example.com", "role": "admin"}),
            StatusCode::CONFLICT,
            "user_exists",
        ),
        (
            "/users",
            json!({"id": "hank2", "email": "hank@example.com", "role": "admin"}),
            StatusCode::CONFLICT,
            "email_taken",
        ),
        (
            "/users",
            json!({"id": "ivy", "email": "ivy@example.com", "role": "root"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "/users",
            json!({"id": "i v", "email": "ivy@example.com", "role": "admin"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "/users",
            json!({"id": "ivy", "email": "not-an-email", "role": "admin"}),
            StatusCode::BAD_REQUEST,
            "invalid_email",
        ),
        (
            "/tokens",
            json!({"owner": "nobody", "ttl_seconds": 3600, "max_uses": 1}),
            StatusCode::BAD_REQUEST,
            "unknown_owner",
        ),
        (
            "/tokens",
            json!({"owner": "hank", "ttl_seconds": 5, "max_uses": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_ttl",
        ),
        (
            "/tokens",
            json!({"owner": "hank", "ttl_seconds": 3600, "max_uses": 0}),
            StatusCode::BAD_REQUEST,
            "invalid_max_uses",
        ),
    ];
    for (path, body, status, code) in cases {
        let before = app.snapshot().await;
        let response = app.admin_post(path, body.clone()).await;
        assert_eq!(
            error_code(response).await,
            (status, code.to_owned()),
            "{path} {body}"
        );
        assert_eq!(
            app.snapshot().await,
            before,
            "{path} {body}: the database changed"
        );
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_token_is_shown_once_and_stored_only_as_a_hash(db: PgPool) {
    let app = spawn_app(db).await;
    app.create_user("jo", "developer").await;
    let created: Value = app
        .admin_post(
            "/tokens",
            json!({"owner": "jo", "ttl_seconds": 600, "max_uses": 3}),
        )
        .await
        .json()
        .await
        .expect("json");
    let token = created["token"].as_str().expect("token");
    let fingerprint = created["ca_fingerprint"].as_str().expect("fingerprint");
    let ca_der = edgemesh_core::cert::first_pem_der(&app.ca_pem).expect("der");
    assert_eq!(
        fingerprint,
        edgemesh_core::cert::Fingerprint::of(&ca_der).to_string(),
        "the fingerprint pins the CA"
    );

    let listed = app.admin_get("/tokens").await.text().await.expect("text");
    assert!(!listed.contains(token), "listing never shows the token");
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM enrollment_tokens")
        .fetch_one(&app.db)
        .await
        .expect("hash");
    use sha2::Digest;
    assert_eq!(stored, sha2::Sha256::digest(token.as_bytes()).to_vec());
}

#[sqlx::test(migrations = "../migrations")]
async fn devices_are_listed_by_status_page_by_page_and_revoked_with_their_certificates(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.create_token("kim", 10).await;
    for i in 0..5 {
        app.enroll(&token, &format!("dev-{i}")).await;
    }
    let revoked: Value = app
        .admin_post("/devices/dev-3/revoke", json!({"reason": "decommissioned"}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(
        revoked["certificates"][0]["revocation_reason"],
        "decommissioned"
    );
    assert!(revoked["certificates"][0]["revoked_at"].is_string());

    // Two pages of two, then the last page: following `next_cursor` with `cursor` (the audit's
    // convention), and with the earlier names `next_after` and `after`.
    for (param, next) in [("cursor", "next_cursor"), ("after", "next_after")] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let query = match &cursor {
                Some(c) => format!("/devices?status=active&limit=2&{param}={c}"),
                None => "/devices?status=active&limit=2".to_owned(),
            };
            let page: Value = app.admin_get(&query).await.json().await.expect("json");
            for d in page["devices"].as_array().expect("devices") {
                assert_eq!(d["status"], "active");
                seen.push(d["id"].as_str().expect("id").to_owned());
            }
            assert_eq!(page["next_cursor"], page["next_after"]);
            match page[next].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, ["dev-0", "dev-1", "dev-2", "dev-4"], "{param}");
    }
    let both = app.admin_get("/devices?cursor=dev-0&after=dev-1").await;
    assert_eq!(both.status(), StatusCode::BAD_REQUEST);
    let body: Value = both.json().await.expect("json");
    assert_eq!(body["error"], "invalid_cursor");

    let only_revoked: Value = app
        .admin_get("/devices?status=revoked")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        only_revoked["devices"].as_array().expect("devices").len(),
        1
    );

    let detail: Value = app
        .admin_get("/devices/dev-1")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(detail["owner"], "kim");
    assert_eq!(
        detail["certificates"]
            .as_array()
            .expect("certificates")
            .len(),
        1
    );

    for (path, status, code) in [
        (
            "/devices?status=lost",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        ("/devices?limit=0", StatusCode::BAD_REQUEST, "invalid_limit"),
        (
            "/devices?limit=5000",
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            "/devices?colour=red",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        ("/devices/nope", StatusCode::NOT_FOUND, "unknown_device"),
    ] {
        assert_eq!(
            error_code(app.admin_get(path).await).await,
            (status, code.to_owned()),
            "{path}"
        );
    }
    let missing = app.admin_post("/devices/ghost/revoke", json!({})).await;
    assert_eq!(
        error_code(missing).await,
        (StatusCode::NOT_FOUND, "unknown_device".to_owned())
    );
}

/// A long-lived secret in a file others can read is refused at start, as the CA key is.
#[sqlx::test(migrations = "../migrations")]
async fn an_admin_token_file_readable_by_others_is_refused_at_start(db: PgPool) {
    use clap::Parser;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, format!("{}\n", "a".repeat(64))).expect("write");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let config = edgemesh_control_api::Config::try_parse_from([
        "edgemesh-control-api",
        "--state-dir",
        dir.path().to_str().expect("utf-8"),
        "--admin-token-file",
        token.to_str().expect("utf-8"),
        "--api-listen",
        "127.0.0.1:0",
        "--device-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--policy-dir",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"),
    ])
    .expect("config");
    let built = edgemesh_control_api::Application::build_with_pool(&config, db).await;
    let error = format!("{:#}", built.err().expect("refused"));
    assert!(error.contains("readable by others"), "{error}");
}
