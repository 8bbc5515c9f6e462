use edgemesh_core::client::DeviceKey;
use edgemesh_core::id::DeviceId;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{TestApp, error_code, https_client, spawn_app, spawn_app_with};

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
            .device_id(&"edgemesh.local".parse().expect("trust domain"))
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
    assert_handshake_refused(result, "certificaterequired");
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
            &"edgemesh.local".parse().expect("trust domain"),
            &key,
            time::Duration::days(1),
        )
        .expect("issue");
    let client = https_client(&app.ca_pem, Some((&forged.pem, &key.serialize_pem())));
    let result = renew(&client, &app, "pi-forged").await;
    // The forged chain names an issuer called like ours, whose signature does not verify with our CA's
    // key: rustls answers that with the `decrypt_error` alert (RFC 8446: a signature failed).
    assert_handshake_refused(result, "decrypterror");
}

/// The request failed because the server's TLS refused the client certificate with `alert` (never an
/// HTTP answer, never a timeout).
fn assert_handshake_refused(result: Result<reqwest::Response, reqwest::Error>, alert: &str) {
    let error = match result {
        Ok(response) => panic!(
            "the TLS layer refuses the client, yet it answered {}",
            response.status()
        ),
        Err(e) => e,
    };
    assert!(!error.is_timeout(), "{error:?}");
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        chain.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    let normalised = chain.to_lowercase().replace([' ', '_'], "");
    assert!(
        normalised.contains(alert),
        "the server's alert is {alert}: {chain}"
    );
}

/// A renewal's certificate, key and serial.
struct Renewed {
    cert_pem: String,
    key_pem: String,
    serial: String,
}

async fn renew_as(app: &TestApp, cert_pem: &str, key_pem: &str, device: &str) -> Renewed {
    let client = https_client(&app.ca_pem, Some((cert_pem, key_pem)));
    let key = DeviceKey::generate().expect("key");
    let csr = key
        .csr_pem(&DeviceId::parse(device).expect("id"))
        .expect("csr");
    let response = client
        .post(format!("{}/api/v1/renew", app.device_api))
        .json(&json!({ "csr_pem": csr }))
        .send()
        .await
        .expect("renew");
    assert_eq!(response.status(), StatusCode::OK, "renewal");
    let body: serde_json::Value = response.json().await.expect("json");
    let cert_pem = body["certificate_pem"].as_str().expect("pem").to_owned();
    let serial = edgemesh_core::cert::CertInfo::from_pem(&cert_pem)
        .expect("cert")
        .serial;
    Renewed {
        cert_pem,
        key_pem: key.to_pem(),
        serial,
    }
}

/// What the device listener answers `cert_pem` (a renewal attempt with a fresh key).
async fn answer_for(
    app: &TestApp,
    cert_pem: &str,
    key_pem: &str,
    device: &str,
) -> (StatusCode, String) {
    let client = https_client(&app.ca_pem, Some((cert_pem, key_pem)));
    let response = renew(&client, app, device).await.expect("request");
    if response.status() == StatusCode::OK {
        (StatusCode::OK, String::new())
    } else {
        error_code(response).await
    }
}

/// Renew, then revoke the old serial: a key stolen before the renewal must not keep a certificate
/// that outlives the revocation of the one stolen.
#[sqlx::test(migrations = "../migrations")]
async fn revoking_a_certificate_revokes_what_was_renewed_from_it(db: PgPool) {
    let app = spawn_app_with(db, &["--renewal-overlap-secs", "0"]).await;
    let token = app.create_token("hal", 1).await;
    let device = app.enroll(&token, "pi-lineage").await;
    let first = edgemesh_core::cert::CertInfo::from_pem(&device.cert_pem)
        .expect("cert")
        .serial;
    // The thief renews the stolen certificate, then renews again.
    let second = renew_as(&app, &device.cert_pem, &device.key_pem, "pi-lineage").await;
    let third = renew_as(&app, &second.cert_pem, &second.key_pem, "pi-lineage").await;

    // With no overlap, each renewal retired its predecessor at once.
    assert_eq!(
        answer_for(&app, &device.cert_pem, &device.key_pem, "pi-lineage").await,
        (StatusCode::FORBIDDEN, "certificate_revoked".to_owned())
    );
    assert_eq!(
        answer_for(&app, &second.cert_pem, &second.key_pem, "pi-lineage").await,
        (StatusCode::FORBIDDEN, "certificate_revoked".to_owned())
    );
    let detail: serde_json::Value = app
        .admin_get("/devices/pi-lineage")
        .await
        .json()
        .await
        .expect("json");
    let certificates = detail["certificates"].as_array().expect("certificates");
    let by_serial = |serial: &str| {
        certificates
            .iter()
            .find(|c| c["serial"] == serial)
            .unwrap_or_else(|| panic!("{serial} listed: {detail}"))
            .clone()
    };
    assert_eq!(
        by_serial(&third.serial)["renewed_from"],
        second.serial.as_str()
    );
    assert_eq!(by_serial(&second.serial)["renewed_from"], first.as_str());
    assert!(by_serial(&first)["renewed_from"].is_null());

    // The operator learns the first key was stolen and revokes its serial: the whole line goes.
    let response = app
        .admin_post(
            &format!("/certificates/{first}/revoke"),
            json!({"reason": "key stolen"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let revoked: serde_json::Value = response.json().await.expect("json");
    assert_eq!(revoked["revocation_reason"], "key stolen");
    assert_eq!(
        answer_for(&app, &third.cert_pem, &third.key_pem, "pi-lineage").await,
        (StatusCode::FORBIDDEN, "certificate_revoked".to_owned())
    );
    let (descendants,): (serde_json::Value,) = sqlx::query_as(
        "SELECT details -> 'descendants_revoked' FROM audit_log
         WHERE event_type = 'revocation' AND certificate_serial = $1",
    )
    .bind(&first)
    .fetch_one(&app.db)
    .await
    .expect("audited");
    let mut descendants: Vec<String> = serde_json::from_value(descendants).expect("serial list");
    descendants.sort();
    let mut expected = vec![second.serial.clone(), third.serial.clone()];
    expected.sort();
    assert_eq!(descendants, expected);
}

/// A certificate renews once: a second renewal for another key (a copy of the key elsewhere) is
/// refused, a retry for the same key gets the same certificate, and the predecessor keeps working only
/// for the overlap.
#[sqlx::test(migrations = "../migrations")]
async fn a_certificate_renews_once_and_its_predecessor_retires_after_the_overlap(db: PgPool) {
    let app = spawn_app_with(db, &["--renewal-overlap-secs", "2"]).await;
    let token = app.create_token("ida", 1).await;
    let device = app.enroll(&token, "pi-once").await;
    let client = https_client(&app.ca_pem, Some((&device.cert_pem, &device.key_pem)));
    let key = DeviceKey::generate().expect("key");
    let csr = key
        .csr_pem(&DeviceId::parse("pi-once").expect("id"))
        .expect("csr");
    let mut issued = Vec::new();
    for _ in 0..2 {
        let response = client
            .post(format!("{}/api/v1/renew", app.device_api))
            .json(&json!({ "csr_pem": csr }))
            .send()
            .await
            .expect("renew");
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "same key: the same answer"
        );
        let body: serde_json::Value = response.json().await.expect("json");
        issued.push(body["certificate_pem"].as_str().expect("pem").to_owned());
    }
    assert_eq!(
        issued[0], issued[1],
        "a retry gets the certificate already issued"
    );
    let before = app.snapshot().await;
    assert_eq!(
        answer_for(&app, &device.cert_pem, &device.key_pem, "pi-once").await,
        (StatusCode::CONFLICT, "already_renewed".to_owned())
    );
    assert_eq!(
        app.snapshot().await,
        before,
        "a refused renewal writes nothing"
    );

    // After the overlap, the predecessor is retired.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        answer_for(&app, &device.cert_pem, &device.key_pem, "pi-once").await,
        (StatusCode::FORBIDDEN, "certificate_revoked".to_owned())
    );
    let successor = renew_as(&app, &issued[0], &key.to_pem(), "pi-once").await;
    assert!(!successor.serial.is_empty());
}

#[sqlx::test(migrations = "../migrations")]
async fn renewals_per_device_are_rate_limited(db: PgPool) {
    let app = spawn_app_with(
        db,
        &["--renewals-per-hour", "2", "--renewal-overlap-secs", "0"],
    )
    .await;
    let token = app.create_token("jo", 1).await;
    let device = app.enroll(&token, "pi-rate").await;
    let first = renew_as(&app, &device.cert_pem, &device.key_pem, "pi-rate").await;
    let second = renew_as(&app, &first.cert_pem, &first.key_pem, "pi-rate").await;
    let client = https_client(&app.ca_pem, Some((&second.cert_pem, &second.key_pem)));
    let response = renew(&client, &app, "pi-rate").await.expect("renew");
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    assert_eq!(
        error_code(response).await,
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited".to_owned())
    );
}
