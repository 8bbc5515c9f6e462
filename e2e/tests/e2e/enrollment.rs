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
        edgemesh_core::cert::Fingerprint::of(&ca_der).to_string(),
        fingerprint,
        "the agent stored the pinned CA"
    );
    let info = CertInfo::from_der(&cert_der).expect("info");
    assert_eq!(info.uri_sans, ["spiffe://edgemesh.local/device/pi-e2e"]);

    let status = agent(dir, &["status", "--server", &api.device_api], &[]).await;
    assert!(status.success, "{}", status.stderr);
    assert!(
        status.stdout.contains("the control API accepts it"),
        "status asks the control API: {}",
        status.stdout
    );
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
    // `status` says so too (not "valid for 29 more days"), and exits non-zero.
    let status = agent(dir, &["status", "--server", &api.device_api], &[]).await;
    assert!(!status.success, "{}", status.stdout);
    assert!(
        status
            .stdout
            .contains("REFUSED by the control API (certificate_revoked"),
        "{}",
        status.stdout
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

/// A server in the path that serves the real CA with its own appended, and a server certificate of its
/// own CA: the agent must refuse the bundle before it sends its enrollment token anywhere.
#[sqlx::test(migrations = false)]
async fn a_ca_bundle_with_a_certificate_beside_the_pinned_one_is_refused(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server_state = tempfile::tempdir().expect("tempdir");
    let api = ControlApi::start(&database_url(&db), server_state.path()).await;
    let (token, fingerprint) = api.token_for("olga").await;
    let real_ca = std::fs::read_to_string(server_state.path().join("ca.pem")).expect("ca.pem");

    let attacker_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let attacker_ca = ca_params.self_signed(&attacker_key).expect("ca");
    let attacker = rcgen::Issuer::new(ca_params, attacker_key);
    let server_key = rcgen::KeyPair::generate().expect("key");
    let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&server_key, &attacker)
        .expect("server cert");
    let bundle = format!("{real_ca}{}", attacker_ca.pem());

    edgemesh_core::tls::install_crypto_provider();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).expect("key"),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, log, bundle) = (acceptor.clone(), Arc::clone(&log), bundle.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 64 * 1024];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                log.lock()
                    .expect("log")
                    .push(head.lines().next().unwrap_or_default().to_owned());
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-pem-file\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{bundle}",
                    bundle.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });

    let device_state = tempfile::tempdir().expect("tempdir");
    let run = crate::helpers::agent(
        device_state.path(),
        &[
            "enroll",
            "--server",
            &format!("https://{addr}"),
            "--ca-fingerprint",
            &fingerprint,
            "--device-id",
            "pi-mitm",
        ],
        &[("EDGEMESH_ENROLLMENT_TOKEN", &token)],
    )
    .await;
    assert!(!run.success, "enrolled through a server in the path");
    assert!(
        run.stderr.contains("pinned CA certificate alone"),
        "{}",
        run.stderr
    );
    let requests = seen.lock().expect("log").clone();
    assert!(
        requests.iter().all(|r| r.starts_with("GET /api/v1/ca.pem")),
        "the agent sent more than the CA request: {requests:?}"
    );
    assert_eq!(
        std::fs::read_dir(device_state.path()).expect("dir").count(),
        0,
        "nothing written"
    );
}

/// The Python interpreter of the project's virtualenv (with py-spiffe, installed by make test).
fn python() -> std::path::PathBuf {
    std::env::var_os("EDGEMESH_PYTHON").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python3"),
        Into::into,
    )
}

/// SPIFFE's own library (py-spiffe, not EdgeMesh's parser) accepts an enrolled and a renewed
/// certificate as X.509-SVIDs for the device's SPIFFE ID, issued by the EdgeMesh CA.
#[sqlx::test(migrations = false)]
async fn issued_certificates_are_x509_svids_to_an_independent_spiffe_implementation(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let server_state = tempfile::tempdir().expect("tempdir");
    let api = ControlApi::start(&database_url(&db), server_state.path()).await;
    let (token, fingerprint) = api.token_for("olga").await;
    let device_state = tempfile::tempdir().expect("tempdir");
    let dir = device_state.path();
    let run = agent_enroll(dir, &api, &token, &fingerprint, "pi-svid").await;
    assert!(run.success, "enroll: {}", run.stderr);
    let check = r#"
import sys
from cryptography import x509
from spiffe.svid.x509_svid import X509Svid
cert, key, ca = (open(p, 'rb').read() for p in sys.argv[1:4])
svid = X509Svid.parse(cert, key)
svid.leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
print(svid.spiffe_id)
"#;
    for round in ["enrolled", "renewed"] {
        let output = std::process::Command::new(python())
            .arg("-c")
            .arg(check)
            .arg(dir.join("cert.pem"))
            .arg(dir.join("key.pem"))
            .arg(dir.join("ca.pem"))
            .output()
            .expect("run py-spiffe (scripts/stack.sh test-tools-install installs it)");
        assert!(
            output.status.success(),
            "{round}: py-spiffe refused the certificate: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "spiffe://edgemesh.local/device/pi-svid",
            "{round}"
        );
        if round == "enrolled" {
            let run = agent(dir, &["renew", "--server", &api.device_api], &[]).await;
            assert!(run.success, "renew: {}", run.stderr);
        }
    }
}

/// The enrolment token is taken from a file or the environment, never from the command line, where
/// every user of the machine could read it.
#[tokio::test]
async fn the_agent_refuses_an_enrollment_token_on_its_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = agent(
        dir.path(),
        &[
            "enroll",
            "--token",
            "emt_secret",
            "--ca-fingerprint",
            &"ab".repeat(32),
            "--device-id",
            "pi-argv",
        ],
        &[],
    )
    .await;
    assert!(!run.success);
    assert!(
        run.stderr.contains("unexpected argument '--token'"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}
