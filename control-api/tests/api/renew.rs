use edgemesh_core::client::DeviceKey;
use edgemesh_core::id::DeviceId;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{TestApp, error_code, https_client, spawn_app};

/// Asks the device listener for a renewal of `device`, with a fresh key, as `client`.
async fn renew(
    client: &reqwest::Client,
    app: &TestApp,
    device: &str,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{}/api/v1/renew", app.device_api))
        .json(&renew_body(device))
        .send()
        .await
}

fn renew_body(device: &str) -> serde_json::Value {
    let csr = DeviceKey::generate()
        .expect("key")
        .csr_pem(&DeviceId::parse(device).expect("id"))
        .expect("csr");
    json!({ "csr_pem": csr })
}

#[sqlx::test(migrations = "../migrations")]
async fn renewal_issues_a_new_certificate_until_the_device_is_revoked(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.create_token("frank", 1).await;
    let device = app.enroll(&token, "pi-renew").await;
    let client = https_client(&app.ca_pem, Some((&device.cert_pem, &device.key_pem)));

    let response = renew(&client, &app, "pi-renew").await.expect("renew");
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.expect("json");
    let renewed =
        edgemesh_core::cert::CertInfo::from_pem(body["certificate_pem"].as_str().expect("pem"))
            .expect("cert");
    assert_eq!(
        renewed
            .device_id("edgemesh.local")
            .map(|d| d.to_string())
            .as_deref(),
        Some("pi-renew")
    );
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM certificates WHERE device_id = 'pi-renew'")
            .fetch_one(&app.db)
            .await
            .expect("count");
    assert_eq!(count, 2);

    let revoke = app
        .admin_post("/devices/pi-renew/revoke", json!({"reason": "stolen"}))
        .await;
    assert_eq!(revoke.status(), StatusCode::OK);
    let before = app.snapshot().await;
    let response = renew(&client, &app, "pi-renew").await.expect("renew");
    assert_eq!(
        error_code(response).await,
        (StatusCode::FORBIDDEN, "certificate_revoked".to_owned())
    );
    assert_eq!(
        app.snapshot().await,
        before,
        "a refused renewal writes nothing"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn renewal_with_a_certificate_revoked_by_serial_is_refused(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.create_token("gina", 1).await;
    let device = app.enroll(&token, "pi-serial").await;
    let serial = edgemesh_core::cert::CertInfo::from_pem(&device.cert_pem)
        .expect("cert")
        .serial;
    let response = app
        .admin_post(&format!("/certificates/{serial}/revoke"), json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let client = https_client(&app.ca_pem, Some((&device.cert_pem, &device.key_pem)));
    let response = renew(&client, &app, "pi-serial").await.expect("renew");
    assert_eq!(
        error_code(response).await,
        (StatusCode::FORBIDDEN, "certificate_revoked".to_owned())
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn the_device_listener_refuses_connections_without_a_client_certificate(db: PgPool) {
    let app = spawn_app(db).await;
    let result = renew(&app.http, &app, "anyone").await;
    assert!(
        result.is_err(),
        "the TLS layer refuses a client without a certificate: {result:?}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_certificate_from_another_ca_is_refused(db: PgPool) {
    let app = spawn_app(db).await;
    // A self-signed CA of our own making signs a certificate with a valid-looking device identity.
    let other_ca_dir = tempfile::tempdir().expect("tempdir");
    let other = edgemesh_control_api::ca::CertificateAuthority::load_or_create(
        &other_ca_dir.path().join("ca.pem"),
        &other_ca_dir.path().join("ca-key.pem"),
    )
    .expect("other CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let forged = other
        .issue_device(
            &DeviceId::parse("pi-forged").expect("id"),
            "edgemesh.local",
            &key,
            time::Duration::days(1),
        )
        .expect("issue");
    let client = https_client(&app.ca_pem, Some((&forged.pem, &key.serialize_pem())));
    let result = renew(&client, &app, "pi-forged").await;
    assert!(
        result.is_err(),
        "a foreign CA's certificate fails the handshake: {result:?}"
    );
}
