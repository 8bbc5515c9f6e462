use edgemesh_core::client::DeviceKey;
use edgemesh_core::id::DeviceId;
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ED25519, SanType};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use x509_parser::prelude::*;

use crate::helpers::{enroll_body, error_code, https_client, spawn_app};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

#[sqlx::test(migrations = "../migrations")]
async fn enrollment_issues_a_client_certificate_for_the_device_chained_to_the_ca(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.create_token("alice", 1).await;
    // The CSR asks for another name and a DNS SAN: neither may reach the certificate.
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["evil.example.com".to_owned()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, "admin");
    params.subject_alt_names.push(SanType::URI(
        "spiffe://edgemesh.local/device/someone-else"
            .try_into()
            .expect("ia5"),
    ));
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");

    let response = app
        .enroll_raw(Some(&token), &enroll_body("pi-01", &csr))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["device_id"], "pi-01");
    assert_eq!(body["ca_pem"].as_str(), Some(app.ca_pem.as_str()));

    let cert_der =
        edgemesh_core::cert::first_pem_der(body["certificate_pem"].as_str().expect("pem"))
            .expect("der");
    let ca_der = edgemesh_core::cert::first_pem_der(&app.ca_pem).expect("ca der");
    let (_, cert) = X509Certificate::from_der(&cert_der).expect("certificate parses");
    let (_, ca) = X509Certificate::from_der(&ca_der).expect("CA parses");

    cert.verify_signature(Some(ca.public_key()))
        .expect("signed by the CA");
    assert_eq!(cert.issuer(), ca.subject(), "issuer is the CA");
    assert!(!cert.is_ca(), "a device certificate is not a CA");
    let cn: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().expect("utf-8"))
        .collect();
    assert_eq!(cn, ["pi-01"], "CN is the device id, not what the CSR asked");
    let san = cert
        .subject_alternative_name()
        .expect("SAN parses")
        .expect("SAN present");
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://edgemesh.local/device/pi-01")],
        "exactly the device's SPIFFE ID"
    );
    let eku = cert
        .extended_key_usage()
        .expect("EKU parses")
        .expect("EKU present")
        .value;
    assert!(eku.client_auth, "clientAuth");
    assert!(
        !eku.server_auth && !eku.any && eku.other.is_empty(),
        "clientAuth only: {eku:?}"
    );
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw(),
        "certifies the key of the CSR"
    );
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    let thirty_days = 30 * 24 * 3600;
    assert!(
        (thirty_days..=thirty_days + 600).contains(&lifetime),
        "default validity 30 days: {lifetime}s"
    );

    let (serial, fingerprint): (String, String) =
        sqlx::query_as("SELECT serial, fingerprint FROM certificates WHERE device_id = 'pi-01'")
            .fetch_one(&app.db)
            .await
            .expect("certificate recorded");
    assert_eq!(serial, hex_serial(&cert));
    assert_eq!(
        fingerprint,
        edgemesh_core::cert::Fingerprint::of(&cert_der).to_string()
    );
    let (owner, status, os): (String, String, String) =
        sqlx::query_as("SELECT owner_id, status, os FROM devices WHERE id = 'pi-01'")
            .fetch_one(&app.db)
            .await
            .expect("device recorded");
    assert_eq!(
        (owner.as_str(), status.as_str(), os.as_str()),
        ("alice", "active", "debian")
    );
}

fn hex_serial(cert: &X509Certificate<'_>) -> String {
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn enrollment_accepts_ed25519_keys(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.create_token("bob", 1).await;
    let key = KeyPair::generate_for(&PKCS_ED25519).expect("key");
    let csr = CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let response = app
        .enroll_raw(Some(&token), &enroll_body("ed-1", &csr))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[sqlx::test(migrations = "../migrations")]
async fn every_refusal_answers_its_4xx_and_writes_nothing(db: PgPool) {
    let app = spawn_app(db).await;
    let csr = |id: &str| {
        DeviceKey::generate()
            .expect("key")
            .csr_pem(&DeviceId::parse(id).expect("id"))
            .expect("csr")
    };

    // Tokens in each unusable state, and a device already enrolled.
    let good = app.create_token("carol", 100).await;
    app.enroll(&good, "taken-1").await;
    let used_up = app.create_token("carol", 1).await;
    app.enroll(&used_up, "first-user").await;
    let expired = app.create_token("carol", 5).await;
    sqlx::query(
        "UPDATE enrollment_tokens SET expires_at = now() - interval '1 second' WHERE max_uses = 5",
    )
    .execute(&app.db)
    .await
    .expect("expire token");
    let revoked = app.create_token("carol", 7).await;
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM enrollment_tokens WHERE max_uses = 7")
        .fetch_one(&app.db)
        .await
        .expect("token id");
    assert_eq!(
        app.admin_post(&format!("/tokens/{id}/revoke"), json!({}))
            .await
            .status(),
        StatusCode::OK
    );

    let good_csr = csr("dev-x");
    let tampered = {
        let mut der = edgemesh_core::cert::first_pem_der(
            &good_csr.replace("CERTIFICATE REQUEST", "CERTIFICATE"),
        )
        .expect("der");
        let last = der.len() - 1;
        der[last] ^= 1;
        use base64::Engine;
        format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    };
    let mut huge = enroll_body("dev-x", &good_csr);
    huge["os"] = json!("x".repeat(70_000));

    let cases: Vec<(&str, Option<&str>, Value, StatusCode, &str)> = vec![
        (
            "no token",
            None,
            enroll_body("dev-x", &good_csr),
            StatusCode::UNAUTHORIZED,
            "missing_token",
        ),
        (
            "unknown token",
            Some("emt_nope"),
            enroll_body("dev-x", &good_csr),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "expired token",
            Some(&expired),
            enroll_body("dev-x", &good_csr),
            StatusCode::FORBIDDEN,
            "token_expired",
        ),
        (
            "used-up token",
            Some(&used_up),
            enroll_body("dev-x", &good_csr),
            StatusCode::FORBIDDEN,
            "token_used_up",
        ),
        (
            "revoked token",
            Some(&revoked),
            enroll_body("dev-x", &good_csr),
            StatusCode::FORBIDDEN,
            "token_revoked",
        ),
        (
            "malformed CSR",
            Some(&good),
            enroll_body("dev-x", "not a csr"),
            StatusCode::BAD_REQUEST,
            "invalid_csr",
        ),
        (
            "unsigned CSR",
            Some(&good),
            enroll_body("dev-x", &tampered),
            StatusCode::BAD_REQUEST,
            "invalid_csr",
        ),
        (
            "RSA-1024 CSR",
            Some(&good),
            enroll_body("dev-x", &fixture("rsa1024.csr")),
            StatusCode::BAD_REQUEST,
            "invalid_csr",
        ),
        (
            "P-521 CSR",
            Some(&good),
            enroll_body("dev-x", &fixture("p521.csr")),
            StatusCode::BAD_REQUEST,
            "invalid_csr",
        ),
        (
            "bad device id",
            Some(&good),
            enroll_body("a/b", &good_csr),
            StatusCode::BAD_REQUEST,
            "invalid_device_id",
        ),
        (
            "empty device id",
            Some(&good),
            enroll_body("", &good_csr),
            StatusCode::BAD_REQUEST,
            "invalid_device_id",
        ),
        (
            "long device id",
            Some(&good),
            enroll_body(&"d".repeat(65), &good_csr),
            StatusCode::BAD_REQUEST,
            "invalid_device_id",
        ),
        (
            "control chars in os",
            Some(&good),
            {
                let mut b = enroll_body("dev-x", &good_csr);
                b["os"] = json!("deb\nian");
                b
            },
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "missing field",
            Some(&good),
            json!({"device_id": "dev-x", "csr_pem": good_csr}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "active device",
            Some(&good),
            enroll_body("taken-1", &csr("taken-1")),
            StatusCode::CONFLICT,
            "device_exists",
        ),
        (
            "oversize body",
            Some(&good),
            huge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ];
    for (why, token, body, status, code) in cases {
        let before = app.snapshot().await;
        let response = app.enroll_raw(token, &body).await;
        assert_eq!(
            error_code(response).await,
            (status, code.to_owned()),
            "{why}"
        );
        assert_eq!(app.snapshot().await, before, "{why}: the database changed");
    }

    // Not JSON at all.
    let before = app.snapshot().await;
    let response = app
        .http
        .post(format!("{}/api/v1/enroll", app.api))
        .bearer_auth(&good)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(
        error_code(response).await,
        (StatusCode::BAD_REQUEST, "invalid_body".to_owned())
    );
    assert_eq!(app.snapshot().await, before);
}

#[sqlx::test(migrations = "../migrations")]
async fn fifty_concurrent_enrollments_with_a_one_use_token_admit_exactly_one(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.create_token("dave", 1).await;
    let mut bodies = Vec::new();
    for i in 0..50 {
        let id = format!("race-{i}");
        let csr = DeviceKey::generate()
            .expect("key")
            .csr_pem(&DeviceId::parse(&id).expect("id"))
            .expect("csr");
        bodies.push(enroll_body(&id, &csr));
    }
    let mut attempts = tokio::task::JoinSet::new();
    for body in bodies {
        let request = app
            .http
            .post(format!("{}/api/v1/enroll", app.api))
            .bearer_auth(&token)
            .json(&body);
        attempts.spawn(async move { request.send().await.expect("request") });
    }
    let mut created = 0;
    while let Some(response) = attempts.join_next().await {
        let response = response.expect("task");
        match response.status() {
            StatusCode::CREATED => created += 1,
            _ => assert_eq!(
                error_code(response).await,
                (StatusCode::FORBIDDEN, "token_used_up".to_owned())
            ),
        }
    }
    assert_eq!(created, 1, "exactly one enrollment succeeds");
    let (devices, certificates, uses): (i64, i64, i32) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM certificates),
                (SELECT uses FROM enrollment_tokens)",
    )
    .fetch_one(&app.db)
    .await
    .expect("counts");
    assert_eq!((devices, certificates, uses), (1, 1, 1));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_revoked_device_can_enroll_again_with_a_new_token(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.create_token("erin", 1).await;
    app.enroll(&token, "laptop-9").await;
    assert_eq!(
        app.admin_post("/devices/laptop-9/revoke", json!({"reason": "lost"}))
            .await
            .status(),
        StatusCode::OK
    );
    let again = app.create_token("erin", 1).await;
    app.enroll(&again, "laptop-9").await;
    let (active, revoked): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE revoked_at IS NULL), count(*) FILTER (WHERE revoked_at IS NOT NULL)
         FROM certificates WHERE device_id = 'laptop-9'",
    )
    .fetch_one(&app.db)
    .await
    .expect("counts");
    assert_eq!(
        (active, revoked),
        (1, 1),
        "the old certificate stays revoked"
    );
}

/// Upstreams key data on device ids: a revoked id does not pass to another owner's token, only to a
/// token of its owner, or by an admin's explicit (audited) transfer.
#[sqlx::test(migrations = "../migrations")]
async fn a_revoked_device_id_does_not_pass_to_another_owner_without_an_admin(db: PgPool) {
    let app = spawn_app(db).await;
    let erin = app.create_token("erin", 1).await;
    app.enroll(&erin, "laptop-7").await;
    assert_eq!(
        app.admin_post("/devices/laptop-7/revoke", json!({}))
            .await
            .status(),
        StatusCode::OK
    );
    let mallory = app.create_token("mallory", 1).await;
    let csr = DeviceKey::generate()
        .expect("key")
        .csr_pem(&DeviceId::parse("laptop-7").expect("id"))
        .expect("csr");
    let before = app.snapshot().await;
    let response = app
        .enroll_raw(Some(&mallory), &enroll_body("laptop-7", &csr))
        .await;
    assert_eq!(
        error_code(response).await,
        (StatusCode::CONFLICT, "device_owned".to_owned())
    );
    assert_eq!(app.snapshot().await, before, "the refusal wrote nothing");

    // A transfer of an active device is refused; of the revoked one, it is audited and lets
    // mallory's (unused) token enroll it.
    let response = app
        .admin_post("/devices/laptop-7/transfer", json!({"owner": "nobody"}))
        .await;
    assert_eq!(
        error_code(response).await,
        (StatusCode::BAD_REQUEST, "unknown_owner".to_owned())
    );
    let response = app
        .admin_post("/devices/laptop-7/transfer", json!({"owner": "mallory"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    app.enroll(&mallory, "laptop-7").await;
    let response = app
        .admin_post("/devices/laptop-7/transfer", json!({"owner": "erin"}))
        .await;
    assert_eq!(
        error_code(response).await,
        (StatusCode::CONFLICT, "device_active".to_owned())
    );
    let (owner, transfers): (String, i64) = sqlx::query_as(
        "SELECT (SELECT owner_id FROM devices WHERE id = 'laptop-7'),
                (SELECT count(*) FROM audit_log WHERE event_type = 'enrollment'
                   AND action = 'transferred' AND device_id = 'laptop-7' AND user_id = 'mallory'
                   AND details ->> 'previous_owner' = 'erin')",
    )
    .fetch_one(&app.db)
    .await
    .expect("query");
    assert_eq!((owner.as_str(), transfers), ("mallory", 1));
}

/// Health belongs to an enrolment: enrolled again, a device starts as never reported.
#[sqlx::test(migrations = "../migrations")]
async fn a_device_enrolled_again_starts_as_never_reported(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.create_token("fay", 2).await;
    let enrolled = app.enroll(&token, "pi-again").await;
    let client = https_client(&app.ca_pem, Some((&enrolled.cert_pem, &enrolled.key_pem)));
    let report = client
        .post(format!("{}/api/v1/health", app.device_api))
        .json(&json!({
            "sequence": 1,
            "collected_at": ::time::OffsetDateTime::now_utc()
                .format(&::time::format_description::well_known::Rfc3339)
                .expect("time"),
            "agent_version": "test",
            "disk_encrypted": true,
            "os_patches_current": true,
            "antivirus_enabled": true,
            "firewall_enabled": true,
        }))
        .send()
        .await
        .expect("report");
    assert_eq!(report.status(), StatusCode::OK);
    let health = |v: &Value| v["health"].as_str().unwrap_or_default().to_owned();
    let detail: Value = app
        .admin_get("/devices/pi-again")
        .await
        .json()
        .await
        .expect("json");
    assert_ne!(health(&detail), "unknown", "{detail}");
    app.admin_post("/devices/pi-again/revoke", json!({})).await;
    app.enroll(&token, "pi-again").await;
    let detail: Value = app
        .admin_get("/devices/pi-again")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(health(&detail), "unknown", "{detail}");
    assert!(detail["last_health_at"].is_null(), "{detail}");
}

#[sqlx::test(migrations = "../migrations")]
async fn dot_segment_device_ids_are_refused(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.create_token("gil", 5).await;
    for id in [".", ".."] {
        let csr = DeviceKey::generate()
            .expect("key")
            .csr_pem(&DeviceId::parse("placeholder").expect("id"))
            .expect("csr");
        let response = app.enroll_raw(Some(&token), &enroll_body(id, &csr)).await;
        assert_eq!(
            error_code(response).await,
            (StatusCode::BAD_REQUEST, "invalid_device_id".to_owned()),
            "{id}"
        );
    }
    // The database refuses them too, whatever writes them.
    let inserted = sqlx::query(
        "INSERT INTO devices (id, owner_id, device_type, os, os_version) VALUES ('..', 'gil', 'x', 'x', 'x')",
    )
    .execute(&app.db)
    .await;
    assert!(inserted.is_err(), "the CHECK constraint refuses '..'");
}

/// The token is checked before the CSR (whose signature check costs CPU): a request without a usable
/// token learns nothing about its CSR.
#[sqlx::test(migrations = "../migrations")]
async fn the_token_is_checked_before_the_csr(db: PgPool) {
    let app = spawn_app(db).await;
    let response = app
        .enroll_raw(Some("emt_guess"), &enroll_body("dev-y", "not a csr"))
        .await;
    assert_eq!(
        error_code(response).await,
        (StatusCode::UNAUTHORIZED, "invalid_token".to_owned())
    );
}

/// Refusals from one address are audited up to a burst, then answered 429 without being processed
/// or audited, so a token-guessing loop cannot grow the audit log without bound.
#[sqlx::test(migrations = "../migrations")]
async fn refused_enrollments_are_rate_limited_per_address(db: PgPool) {
    let app = crate::helpers::spawn_app_with(
        db,
        &[
            "--enroll-refusal-burst",
            "3",
            "--enroll-refusal-rate",
            "0.01",
        ],
    )
    .await;
    let csr = DeviceKey::generate()
        .expect("key")
        .csr_pem(&DeviceId::parse("dev-z").expect("id"))
        .expect("csr");
    let mut codes = Vec::new();
    for _ in 0..6 {
        let response = app
            .enroll_raw(Some("emt_guess"), &enroll_body("dev-z", &csr))
            .await;
        codes.push(error_code(response).await);
    }
    let invalid = (StatusCode::UNAUTHORIZED, "invalid_token".to_owned());
    let limited = (StatusCode::TOO_MANY_REQUESTS, "rate_limited".to_owned());
    assert_eq!(
        codes,
        [
            invalid.clone(),
            invalid.clone(),
            invalid,
            limited.clone(),
            limited.clone(),
            limited
        ]
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE event_type = 'enrollment' AND action = 'refused'",
    )
    .fetch_one(&app.db)
    .await
    .expect("count");
    assert_eq!(audited, 3, "only the refusals within the burst are audited");
    // Until the bucket refills, even a good token from that address is answered 429.
    let token = app.create_token("hana", 1).await;
    let response = app
        .enroll_raw(Some(&token), &enroll_body("dev-z", &csr))
        .await;
    assert_eq!(
        error_code(response).await,
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited".to_owned())
    );
}
