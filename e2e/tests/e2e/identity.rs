//! Identity through its life, through the real Envoy: a renewed certificate falls with the one it came
//! from, and a device id enrolled again inherits neither another owner nor its old health.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{agent, database_url};
use crate::proxy::{Answer, Device, Options, Stack, device_client};

/// A client presenting the identity now stored in the agent state directory `dir`.
fn client_of(dir: &std::path::Path) -> reqwest::Client {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect(name);
    device_client(&read("ca.pem"), Some((&read("cert.pem"), &read("key.pem"))))
}

fn serial_of(device: &Device) -> String {
    edgemesh_core::cert::CertInfo::from_pem(
        &std::fs::read_to_string(device.dir.path().join("cert.pem")).expect("cert"),
    )
    .expect("cert")
    .serial
}

/// Polls `path` as `device` until the answer satisfies `done` (30 s at most).
async fn until<F: Fn(&Answer) -> bool>(
    stack: &Stack,
    device: &Device,
    path: &str,
    done: F,
) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = stack.get(device, path).await;
        if done(&answer) {
            return answer;
        }
        assert!(Instant::now() < deadline, "last answer: {answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn a_renewed_certificate_falls_with_the_revocation_of_the_one_it_came_from(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let stack = Stack::start(&database_url(&db), Options::default()).await;
    let mut device = stack.device("root", "admin", "pc-root").await;
    stack.report(&device, json!({})).await;
    assert_eq!(stack.get(&device, "/api/x").await.status, StatusCode::OK);
    let stolen = serial_of(&device);

    // Someone holding the key renews it (here: the real agent).
    let run = agent(
        device.dir.path(),
        &["renew", "--server", &stack.api.device_api],
        &[],
    )
    .await;
    assert!(run.success, "renew: {}", run.stderr);
    device.client = client_of(device.dir.path());
    assert_ne!(serial_of(&device), stolen);
    until(&stack, &device, "/api/x", |a| a.status == StatusCode::OK).await;

    // The operator revokes the stolen serial: the renewed certificate must fall too.
    stack
        .api
        .admin_post(
            &format!("/certificates/{stolen}/revoke"),
            json!({"reason": "key stolen"}),
        )
        .await;
    let denied = until(&stack, &device, "/api/x", |a| {
        a.status == StatusCode::FORBIDDEN
    })
    .await;
    assert!(
        denied.reasons().iter().any(|r| r.contains("revoked")),
        "{denied:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn a_device_id_enrolled_again_inherits_no_other_owner_and_no_old_health(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let stack = Stack::start(&database_url(&db), Options::default()).await;
    let device = stack.device("ann", "admin", "pi-shared").await;
    stack.report(&device, json!({})).await;
    assert_eq!(stack.get(&device, "/api/x").await.status, StatusCode::OK);
    stack
        .api
        .admin_post("/devices/pi-shared/revoke", json!({}))
        .await;

    // Another owner's token cannot take the id over.
    let (bob_token, fingerprint) = stack.api.token_for_role("bob", "admin").await;
    let other = tempfile::tempdir().expect("tempdir");
    let run = crate::helpers::agent_enroll(
        other.path(),
        &stack.api,
        &bob_token,
        &fingerprint,
        "pi-shared",
    )
    .await;
    assert!(!run.success, "another owner enrolled a revoked id");
    assert!(run.stderr.contains("device_owned"), "{}", run.stderr);

    // Its owner enrols it again: a new incarnation that has never reported, whatever the old one did.
    let again = stack
        .api
        .admin_post(
            "/tokens",
            json!({"owner": "ann", "ttl_seconds": 600, "max_uses": 1}),
        )
        .await;
    let token = again["token"].as_str().expect("token");
    let fresh = tempfile::tempdir().expect("tempdir");
    let run =
        crate::helpers::agent_enroll(fresh.path(), &stack.api, token, &fingerprint, "pi-shared")
            .await;
    assert!(run.success, "{}", run.stderr);
    let reborn = Device {
        client: client_of(fresh.path()),
        dir: fresh,
    };
    let answer = until(&stack, &reborn, "/api/x", |a| {
        a.status == StatusCode::FORBIDDEN
    })
    .await;
    assert_eq!(
        answer.reasons(),
        ["the device has never reported its health"],
        "{answer:?}"
    );
}
