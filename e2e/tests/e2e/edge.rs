//! The edge as a device's raw bytes meet it: paths and headers written exactly as sent (an HTTP client
//! library would normalise the path first), through the real Envoy, decided by the real ext-authz.
//! What EdgeMesh decides on must be what the upstream serves, for every spelling of a request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::enforcement::WEDNESDAY_MORNING;
use crate::helpers::database_url;
use crate::proxy::{Device, Options, Stack};

/// A TLS connection to Envoy's front door with `device`'s certificate (HTTP/1.1: no ALPN).
pub async fn connect(stack: &Stack, device: &Device) -> TlsStream<TcpStream> {
    let read = |name: &str| std::fs::read_to_string(device.dir.path().join(name)).expect(name);
    let config = edgemesh_core::tls::client_config(
        &read("ca.pem"),
        Some((&read("cert.pem"), &read("key.pem"))),
    )
    .expect("tls config");
    let addr = stack.envoy_url.trim_start_matches("https://").to_owned();
    let tcp = TcpStream::connect(&addr).await.expect("connect to Envoy");
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .expect("TLS handshake with Envoy")
}

/// What came back for one raw request.
#[derive(Debug)]
struct Raw {
    status: u16,
    body: Value,
}

/// Sends `target` (the request-target, byte for byte) with `headers`, on a connection of its own.
async fn raw_get(stack: &Stack, device: &Device, target: &[u8], headers: &[(&str, &str)]) -> Raw {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let mut tls = connect(stack, device).await;
    tls.write_all(&request).await.expect("send");
    let mut answer = Vec::new();
    // Envoy closes after the answer (connection: close); a TLS close without close_notify is fine.
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    parse(&answer)
}

fn parse(answer: &[u8]) -> Raw {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Raw {
        status,
        body: serde_json::from_str(&body).unwrap_or(Value::String(body)),
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

#[sqlx::test(migrations = false)]
async fn every_spelling_of_a_path_is_decided_as_the_service_the_upstream_serves(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let options = Options {
        clock: Some(WEDNESDAY_MORNING),
        ..Options::default()
    };
    let stack = Stack::start(&database_url(&db), options).await;
    // An analyst may use `api` in business hours, never `database`.
    let analyst = stack.device("ann", "analyst", "pc-ann").await;
    stack.report(&analyst, json!({})).await;
    let database_denied = "role analyst may not use service database";

    // (request-target, what must happen): a number is the status Envoy answers itself; "database" a
    // deny for service database; a path a 200 whose upstream saw exactly that path.
    let cases: &[(&[u8], &str)] = &[
        (b"/api/x", "/api/x"),
        (b"/api/./x", "/api/x"),
        (b"/api/../database/x", "database"),
        (b"/api/%2e%2e/database/x", "database"),
        (b"/api/%2E%2E/database/x", "database"),
        (b"/api/.%2e/database/x", "database"),
        (b"/api/x/../../database/x", "database"),
        (b"//database/x", "database"),
        (b"/api/..%2fdatabase/x", "400"),
        (b"/api/..%2Fdatabase/x", "400"),
        (b"/api%2Fx", "400"),
        (b"/api/..%5cdatabase/x", "400"),
        (b"/API/x", "404"),
        (b"/Api/../database/x", "database"),
        (b"/api/\xff/../../database/x", "400"),
    ];
    for (target, expected) in cases {
        let shown = String::from_utf8_lossy(target);
        let answer = raw_get(&stack, &analyst, target, &[]).await;
        match *expected {
            "database" => {
                assert_eq!(answer.status, 403, "{shown}: {answer:?}");
                let reasons = answer.body["reasons"].to_string();
                assert!(reasons.contains(database_denied), "{shown}: {answer:?}");
            }
            status if status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit()) => {
                assert_eq!(answer.status.to_string(), status, "{shown}: {answer:?}");
                assert!(
                    answer.body.get("headers").is_none(),
                    "{shown} reached the upstream: {answer:?}"
                );
            }
            path => {
                assert_eq!(answer.status, 200, "{shown}: {answer:?}");
                assert_eq!(answer.body["path"], path, "{shown}: {answer:?}");
                assert_eq!(answer.body["service"], "api", "{shown}: {answer:?}");
            }
        }
    }
}

#[sqlx::test(migrations = false)]
async fn identity_headers_in_any_spelling_never_reach_the_upstream(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let stack = Stack::start(&database_url(&db), Options::default()).await;
    let analyst = stack.device("ann", "analyst", "pc-ann").await;
    stack.report(&analyst, json!({})).await;

    // Underscores: a CGI-style upstream would read it as HTTP_X_EDGEMESH_ROLE. Refused at the edge.
    for name in [
        "x_edgemesh_role",
        "X_EdgeMesh_Role",
        "x-edgemesh_role",
        "x_edgemesh-device-id",
    ] {
        let answer = raw_get(&stack, &analyst, b"/api/x", &[(name, "superuser")]).await;
        assert_eq!(answer.status, 400, "{name}: {answer:?}");
        assert!(answer.body.get("headers").is_none(), "{name}: {answer:?}");
    }

    // Any other x-edgemesh-* and a forged X-Forwarded-For: removed, whatever the case. The answer
    // is an allow or a deny by the hour; an allow must show none of them.
    let answer = raw_get(
        &stack,
        &analyst,
        b"/api/x",
        &[
            ("X-EdgeMesh-Role", "superuser"),
            ("X-EDGEMESH-Extra", "trust me"),
            ("X-Forwarded-For", "203.0.113.7"),
        ],
    )
    .await;
    if answer.status == 200 {
        let seen = &answer.body["headers"];
        assert_eq!(seen["x-edgemesh-role"], "analyst", "{answer:?}");
        assert!(seen.get("x-edgemesh-extra").is_none(), "{answer:?}");
        assert_forwarded_for_is_envoys(seen);
    } else {
        assert_eq!(answer.status, 403, "{answer:?}");
    }
    // An admin is allowed at any hour: the same request must show the same.
    let admin = stack.device("root", "admin", "pc-root").await;
    stack.report(&admin, json!({})).await;
    let answer = raw_get(
        &stack,
        &admin,
        b"/api/x",
        &[
            ("X-EdgeMesh-Role", "superuser"),
            ("X-EDGEMESH-Extra", "trust me"),
            ("X-Forwarded-For", "203.0.113.7"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = &answer.body["headers"];
    assert_eq!(seen["x-edgemesh-role"], "admin", "{answer:?}");
    assert!(seen.get("x-edgemesh-extra").is_none(), "{answer:?}");
    assert_forwarded_for_is_envoys(seen);
}

/// X-Forwarded-For holds one address, the one Envoy saw (for a loopback client, Envoy writes its own
/// host's address), never what the client sent.
fn assert_forwarded_for_is_envoys(seen: &Value) {
    let xff = seen["x-forwarded-for"].as_str().unwrap_or_default();
    assert!(
        !xff.is_empty() && !xff.contains(',') && !xff.contains("203.0.113.7"),
        "X-Forwarded-For {xff:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn a_client_that_never_finishes_its_headers_is_disconnected(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let stack = Stack::start(&database_url(&db), Options::default()).await;
    let device = stack.device("root", "admin", "pc-root").await;
    let mut tls = connect(&stack, &device).await;
    tls.write_all(b"GET /api/x HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        .await
        .expect("send");
    let started = Instant::now();
    let mut answer = Vec::new();
    // Envoy's request_headers_timeout is 10 s: the connection must end well within 30.
    let ended = tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut answer)).await;
    assert!(ended.is_ok(), "still open after 30 s");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "closed before the timeout: {:?}",
        String::from_utf8_lossy(&answer)
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[sqlx::test(migrations = false)]
async fn envoy_shows_its_stats_but_not_its_admin_interface_beyond_loopback(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let stack = Stack::start(&database_url(&db), Options::default()).await;
    let http = reqwest::Client::new();
    let stats = http
        .get(format!("{}/stats/prometheus", stack.envoy_stats))
        .send()
        .await
        .expect("stats");
    assert_eq!(stats.status(), 200);
    assert!(
        stats
            .text()
            .await
            .expect("text")
            .contains("envoy_server_live")
    );
    for path in [
        "/quitquitquit",
        "/config_dump",
        "/stats",
        "/stats/prometheus/../config_dump",
    ] {
        let answer = http
            .post(format!("{}{path}", stack.envoy_stats))
            .send()
            .await
            .expect("request");
        assert_eq!(answer.status(), 404, "{path}");
    }
    // Envoy is still up.
    let ready = http
        .get(format!("{}/ready", stack.envoy_admin))
        .send()
        .await;
    assert!(ready.is_ok_and(|r| r.status().is_success()));
}

/// Reads one HTTP/1.1 answer with a Content-Length off a kept-alive connection: (status, body).
async fn read_answer(tls: &mut TlsStream<TcpStream>) -> (u16, Value) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
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
                let body = &buf[end + 4..end + 4 + length];
                return (status, serde_json::from_slice(body).unwrap_or(Value::Null));
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert!(n > 0, "Envoy closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The handshake checked the certificate's validity once; a request after its expiry on the same
/// kept-alive connection through Envoy is denied, cache or not.
#[sqlx::test(migrations = false)]
async fn a_certificate_that_expires_on_a_kept_alive_connection_through_envoy_is_denied(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let stack = Stack::start(&database_url(&db), Options::default()).await;
    let device = stack.device("root", "admin", "pc-root").await;
    stack.report(&device, json!({})).await;
    // A certificate of the EdgeMesh CA for the same device, on record, valid for 3 more seconds.
    let state = stack.state_dir.path();
    let read = |name: &str| std::fs::read_to_string(state.join(name)).expect(name);
    let ca = rcgen::Issuer::from_ca_cert_pem(
        &read("ca.pem"),
        rcgen::KeyPair::from_pem(&read("ca-key.pem")).expect("CA key"),
    )
    .expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://edgemesh.local/device/pc-root"
            .try_into()
            .expect("uri"),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::seconds(3);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x41; 16]));
    let cert = params.signed_by(&key, &ca).expect("sign");
    let info = edgemesh_core::cert::CertInfo::from_der(cert.der()).expect("info");
    let pool = PgPoolOptions::new()
        .connect(&database_url(&db))
        .await
        .expect("connect");
    sqlx::query(
        "INSERT INTO certificates (serial, device_id, fingerprint, not_before, not_after, certificate_pem)
         VALUES ($1, 'pc-root', $2, $3, $4, $5)",
    )
    .bind(&info.serial)
    .bind(info.fingerprint.to_string())
    .bind(info.not_before)
    .bind(info.not_after)
    .bind(cert.pem())
    .execute(&pool)
    .await
    .expect("record");
    let shortlived = Device {
        client: reqwest::Client::new(),
        dir: tempfile::tempdir().expect("tempdir"),
    };
    for (name, contents) in [
        ("ca.pem", read("ca.pem")),
        ("cert.pem", cert.pem()),
        ("key.pem", key.serialize_pem()),
    ] {
        std::fs::write(shortlived.dir.path().join(name), contents).expect("write");
    }
    let mut tls = connect(&stack, &shortlived).await;
    let request = b"GET /api/x HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n";
    tls.write_all(request).await.expect("send");
    let (status, body) = read_answer(&mut tls).await;
    assert_eq!(status, 200, "allowed while valid: {body}");
    let left = info.not_after - time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(left.whole_milliseconds()).unwrap_or(0) + 500,
    ))
    .await;
    tls.write_all(request)
        .await
        .expect("send on the same connection");
    let (status, body) = read_answer(&mut tls).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["reasons"],
        json!(["the client certificate has expired"]),
        "{body}"
    );
}
