//! Rate limits: enrolment per source address and per token, the admin API per token. Beyond a limit
//! the answer is 429 `rate_limited` with `Retry-After`, and nothing is written.

use edgemesh_core::client::DeviceKey;
use edgemesh_core::id::DeviceId;
use reqwest::{Client, StatusCode};
use sqlx::PgPool;

use crate::helpers::{TestApp, enroll_body, spawn_app_with};

/// A client of the API listener whose connections come from `source` (a loopback address).
fn client_from(app: &TestApp, source: &str) -> Client {
    Client::builder()
        .use_preconfigured_tls(
            edgemesh_core::tls::client_config(&app.ca_pem, None).expect("tls config"),
        )
        .local_address(source.parse::<std::net::IpAddr>().expect("address"))
        .build()
        .expect("client")
}

async fn enroll_from(
    client: &Client,
    app: &TestApp,
    token: &str,
    device: &str,
) -> reqwest::Response {
    let key = DeviceKey::generate().expect("key");
    let csr = key
        .csr_pem(&DeviceId::parse(device).expect("id"))
        .expect("csr");
    client
        .post(format!("{}/api/v1/enroll", app.api))
        .bearer_auth(token)
        .json(&enroll_body(device, &csr))
        .send()
        .await
        .expect("request")
}

async fn assert_limited(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!(retry_after >= 1);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"], "rate_limited", "{body}");
}

#[sqlx::test(migrations = "../migrations")]
async fn enrolments_beyond_an_addresss_limit_are_refused_and_write_nothing(db: PgPool) {
    let app = spawn_app_with(
        db,
        &[
            "--enroll-burst",
            "3",
            "--enroll-rate",
            "0.001",
            "--admin-burst",
            "1000",
        ],
    )
    .await;
    let from = client_from(&app, "127.0.0.1");
    let mut tokens = Vec::new();
    for i in 0..4 {
        tokens.push(app.create_token(&format!("owner-{i}"), 1).await);
    }
    for (i, token) in tokens.iter().take(3).enumerate() {
        let response = enroll_from(&from, &app, token, &format!("pi-{i}")).await;
        assert_eq!(response.status(), StatusCode::CREATED, "within the burst");
    }
    let before = app.snapshot().await;
    assert_limited(enroll_from(&from, &app, &tokens[3], "pi-3").await).await;
    assert_eq!(
        app.snapshot().await,
        before,
        "a limited enrolment writes nothing"
    );
    // Another address has its own allowance.
    let other = client_from(&app, "127.0.0.2");
    let response = enroll_from(&other, &app, &tokens[3], "pi-3").await;
    assert_eq!(response.status(), StatusCode::CREATED, "another address");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_token_used_beyond_its_limit_is_refused_from_any_address(db: PgPool) {
    let app = spawn_app_with(
        db,
        &[
            "--enroll-burst",
            "2",
            "--enroll-rate",
            "0.001",
            "--admin-burst",
            "1000",
        ],
    )
    .await;
    let token = app.create_token("fleet-owner", 10).await;
    for (i, source) in ["127.0.0.1", "127.0.0.2"].iter().enumerate() {
        let response =
            enroll_from(&client_from(&app, source), &app, &token, &format!("pi-{i}")).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let before = app.snapshot().await;
    assert_limited(enroll_from(&client_from(&app, "127.0.0.3"), &app, &token, "pi-2").await).await;
    assert_eq!(app.snapshot().await, before);
    let other = app.create_token("other-owner", 1).await;
    let response = enroll_from(&client_from(&app, "127.0.0.4"), &app, &other, "pi-3").await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "another token has its own allowance"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn admin_requests_beyond_the_tokens_limit_are_429(db: PgPool) {
    let app = spawn_app_with(db, &["--admin-burst", "3", "--admin-rate", "0.001"]).await;
    for _ in 0..3 {
        assert_eq!(app.admin_get("/users").await.status(), StatusCode::OK);
    }
    assert_limited(app.admin_get("/users").await).await;
    let before = app.snapshot().await;
    let response = app
        .admin_post(
            "/users",
            serde_json::json!({"id": "late", "email": "late@example.com", "role": "admin"}),
        )
        .await;
    assert_limited(response).await;
    assert_eq!(
        app.snapshot().await,
        before,
        "a limited request writes nothing"
    );
    // Another token (here a wrong one) is counted apart: it is refused for what it is.
    let response = app
        .http
        .get(format!("{}/api/v1/admin/users", app.api))
        .bearer_auth("not-the-admin-token")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
