//! What a client can hold on the HTTPS listeners: connections that never finish their headers are
//! closed, the number of connections is capped, and a certificate that expires on a kept-alive
//! connection stops working at once. Raw TLS, so nothing in between reconnects or retries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgemesh_core::id::DeviceId;
use rustls::pki_types::ServerName;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::helpers::{TestApp, spawn_app_with};

async fn connect(
    app: &TestApp,
    url: &str,
    identity: Option<(&str, &str)>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let config = edgemesh_core::tls::client_config(&app.ca_pem, identity).expect("tls config");
    let tcp = TcpStream::connect(url.trim_start_matches("https://")).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
}

/// Reads one HTTP/1.1 response (with a Content-Length) off `tls`: (status, body).
async fn read_response(tls: &mut TlsStream<TcpStream>) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("status");
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                return (status, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut chunk))
            .await
            .expect("answer within 10 s")
            .expect("read");
        assert!(
            n > 0,
            "connection closed mid-answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Completes with how long it took `tls` to be closed by the server (bounded by `limit`).
async fn closed_within(tls: &mut TlsStream<TcpStream>, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(limit, tls.read_to_end(&mut sink))
        .await
        .ok()
        .map(|_| started.elapsed())
}

#[sqlx::test(migrations = "../migrations")]
async fn a_client_that_never_finishes_its_headers_is_disconnected(db: PgPool) {
    let app = spawn_app_with(
        db,
        &[
            "--enroll-refusal-burst",
            "1000",
            "--header-read-timeout-secs",
            "2",
        ],
    )
    .await;
    // Twenty half-sent requests on the admin listener (no client certificate needed there): the
    // request line and one header, then nothing.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut tls = connect(&app, &app.api, None).await.expect("connect");
        tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n")
            .await
            .expect("send");
        slow.push(tls);
    }
    for tls in &mut slow {
        let closed = closed_within(tls, Duration::from_secs(15)).await;
        assert!(
            closed.is_some(),
            "a half-sent request was still open after 15 s (header timeout 2 s)"
        );
    }
    // A connection that sends nothing at all after the handshake is closed too.
    let mut silent = connect(&app, &app.api, None).await.expect("connect");
    let closed = closed_within(&mut silent, Duration::from_secs(15)).await;
    assert!(
        closed.is_some_and(|t| t >= Duration::from_millis(1500)),
        "{closed:?}"
    );
    // A client that finishes in time is answered.
    let mut prompt = connect(&app, &app.api, None).await.expect("connect");
    prompt
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .expect("send");
    assert_eq!(read_response(&mut prompt).await.0, 200);
}

#[sqlx::test(migrations = "../migrations")]
async fn connections_beyond_the_cap_are_closed(db: PgPool) {
    let app = spawn_app_with(
        db,
        &["--enroll-refusal-burst", "1000", "--max-connections", "3"],
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&app, &app.api, None).await.expect("within the cap"));
    }
    let mut over = connect(&app, &app.api, None).await;
    if let Ok(tls) = &mut over {
        // The server may close right after accepting, before or during the handshake.
        let _ = tls
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            .await;
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut sink)).await;
        assert!(
            !String::from_utf8_lossy(&sink).starts_with("HTTP/1.1 200"),
            "a fourth connection was served: {read:?}"
        );
    }
    drop(held.pop());
    // A slot is free again once the server has seen the close.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut tls) = connect(&app, &app.api, None).await
            && tls
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
                .await
                .is_ok()
        {
            let mut buf = [0u8; 12];
            if tokio::time::timeout(Duration::from_secs(2), tls.read_exact(&mut buf))
                .await
                .is_ok_and(|r| r.is_ok())
                && buf.starts_with(b"HTTP/1.1 200")
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no connection served after one closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The handshake checked the certificate's validity once; the request after its expiry, on the same
/// kept-alive connection, must be refused.
#[sqlx::test(migrations = "../migrations")]
async fn a_certificate_that_expires_on_a_kept_alive_connection_is_refused(db: PgPool) {
    let app = spawn_app_with(db, &["--enroll-refusal-burst", "1000"]).await;
    let token = app.create_token("kim", 1).await;
    app.enroll(&token, "pi-expiring").await;
    // A certificate of the EdgeMesh CA, on record, valid for 3 more seconds.
    let ca = edgemesh_control_api::ca::CertificateAuthority::load_or_create(
        &app.state_dir.path().join("ca.pem"),
        &app.state_dir.path().join("ca-key.pem"),
    )
    .expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let issued = ca
        .issue_device(
            &DeviceId::parse("pi-expiring").expect("id"),
            &"edgemesh.local".parse().expect("trust domain"),
            &key,
            time::Duration::seconds(3),
        )
        .expect("issue");
    sqlx::query(
        "INSERT INTO certificates (serial, device_id, fingerprint, not_before, not_after, certificate_pem)
         VALUES ($1, 'pi-expiring', $2, $3, $4, $5)",
    )
    .bind(&issued.info.serial)
    .bind(issued.info.fingerprint.to_string())
    .bind(issued.info.not_before)
    .bind(issued.info.not_after)
    .bind(&issued.pem)
    .execute(&app.db)
    .await
    .expect("record");
    let key_pem = key.serialize_pem();
    let mut tls = connect(&app, &app.device_api, Some((&issued.pem, &key_pem)))
        .await
        .expect("handshake while valid");
    // A renewal with an empty body: authenticated, then refused for the body (nothing written).
    let request = b"POST /api/v1/renew HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    tls.write_all(request).await.expect("send");
    let (status, body) = read_response(&mut tls).await;
    assert_eq!(status, 400, "authenticated while valid: {body}");
    assert!(body.contains("invalid_body"), "{body}");
    let left = issued.info.not_after - time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(left.whole_milliseconds()).unwrap_or(0) + 500,
    ))
    .await;
    tls.write_all(request)
        .await
        .expect("send on the same connection");
    let (status, body) = read_response(&mut tls).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("certificate_expired"), "{body}");
}
