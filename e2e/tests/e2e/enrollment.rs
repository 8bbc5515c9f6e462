use std::os::unix::fs::PermissionsExt;

use edgemesh_core::cert::{CertInfo, first_pem_der};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use x509_parser::prelude::*;

use crate::helpers::{ControlApi, agent, agent_enroll, database_url};

#[sqlx::test(migrations = false)]
async fn the_agent_enrolls_with_a_local_key_renews_and_is_refused_once_revoked(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let server_state = tempfile::tempdir().expect("tempdir");
    let api = ControlApi::start(&database_url(&db), server_state.path()).await;
    let (token, fingerprint) = api.token_for("olga").await;
    let device_state = tempfile::tempdir().expect("tempdir");
    let dir = device_state.path();

    // A wrong CA fingerprint: the agent refuses the CA and writes nothing.
    let wrong = format!("{}00", &fingerprint[..62]);
    let run = agent_enroll(dir, &api, &token, &wrong, "pi-e2e").await;
    assert!(
        !run.success,
        "enrollment with a wrong CA fingerprint must fail"
    );
    assert!(run.stderr.contains("does not match"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_dir(dir).expect("dir").count(),
        0,
        "nothing written"
    );

    let run = agent_enroll(dir, &api, &token, &fingerprint, "pi-e2e").await;
    assert!(run.success, "enroll failed: {}", run.stderr);
    assert!(run.stdout.contains("enrolled pi-e2e"), "{}", run.stdout);

    // The key was generated here, is private, and is the key the certificate certifies.
    let key_path = dir.join("key.pem");
    let mode = std::fs::metadata(&key_path)
        .expect("key.pem")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "key file mode");
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&key_path).expect("key"))
        .expect("key parses");
    let cert_pem = std::fs::read_to_string(dir.join("cert.pem")).expect("cert.pem");
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).expect("ca.pem");
    let cert_der = first_pem_der(&cert_pem).expect("der");
    let ca_der = first_pem_der(&ca_pem).expect("ca der");
    let (_, cert) = X509Certificate::from_der(&cert_der).expect("cert");
    let (_, ca) = X509Certificate::from_der(&ca_der).expect("ca");
    cert.verify_signature(Some(ca.public_key()))
        .expect("chains to the CA");
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    assert_eq!(
        edgemesh_core::cert::sha256_hex(&ca_der),
        fingerprint,
        "the agent stored the pinned CA"
    );
    let info = CertInfo::from_der(&cert_der).expect("info");
    assert_eq!(info.uri_sans, ["spiffe://edgemesh.local/device/pi-e2e"]);

    let status = agent(dir, &["status"], &[]).await;
    assert!(status.success, "{}", status.stderr);
    assert!(
        status.stdout.contains(&info.serial),
        "status shows the serial: {}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .contains("spiffe://edgemesh.local/device/pi-e2e"),
        "{}",
        status.stdout
    );

    let renew = agent(dir, &["renew", "--server", &api.device_api], &[]).await;
    assert!(renew.success, "renew failed: {}", renew.stderr);
    let renewed = CertInfo::from_pem(&std::fs::read_to_string(dir.join("cert.pem")).expect("cert"))
        .expect("info");
    assert_ne!(renewed.serial, info.serial, "a new certificate");
    let new_key = std::fs::read_to_string(&key_path).expect("key");
    assert_ne!(new_key, key.serialize_pem(), "renewal rotates the key");

    api.admin_post("/devices/pi-e2e/revoke", json!({"reason": "e2e"}))
        .await;
    let refused = agent(dir, &["renew", "--server", &api.device_api], &[]).await;
    assert!(!refused.success, "renewal after revocation must fail");
    assert!(
        refused.stderr.contains("certificate_revoked"),
        "{}",
        refused.stderr
    );
    assert!(api.stop().await, "control-api exits cleanly on SIGTERM");
}

#[sqlx::test(migrations = false)]
async fn the_ca_survives_a_restart(_pool: PgPoolOptions, db: PgConnectOptions) {
    let server_state = tempfile::tempdir().expect("tempdir");
    let url = database_url(&db);
    let api = ControlApi::start(&url, server_state.path()).await;
    let first = api.served_ca_fingerprint().await;
    let (token, fingerprint) = api.token_for("pat").await;
    let device_state = tempfile::tempdir().expect("tempdir");
    let run = agent_enroll(device_state.path(), &api, &token, &fingerprint, "keeps-1").await;
    assert!(run.success, "{}", run.stderr);
    assert!(api.stop().await, "graceful stop");

    let api = ControlApi::start(&url, server_state.path()).await;
    let second = api.served_ca_fingerprint().await;
    assert_eq!(first, second, "same CA after restart");
    // The device enrolled before the restart still authenticates.
    let renew = agent(
        device_state.path(),
        &["renew", "--server", &api.device_api],
        &[],
    )
    .await;
    assert!(renew.success, "{}", renew.stderr);
    assert!(api.stop().await);
}
