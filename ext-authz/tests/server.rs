//! ext-authz built and run in-process on port 0 against a real PostgreSQL, without Envoy: Check over
//! gRPC (the short path) and the gRPC health service, the decision and the answer's headers (ours
//! overwritten, look-alikes removed), and configuration errors at build time.

use std::path::Path;
use std::time::Duration;

use clap::Parser;
use edgemesh_core::exit::ConfigError;
use edgemesh_core::policy::Reason;
use edgemesh_ext_authz::Config;
use edgemesh_ext_authz::check::response;
use edgemesh_ext_authz::request::CheckRequest as Decoded;
use edgemesh_ext_authz::startup::Server;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use prost::Message;
use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use time::OffsetDateTime;

/// The flags, a later one overriding an earlier one.
#[derive(Parser)]
#[command(args_override_self = true)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

/// What a test needs: the CA, a device certificate it issued, and the configuration's files.
struct Fixture {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
    device_pem: String,
    url: String,
}

fn database_url(options: &PgConnectOptions) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (make test sets it)");
    let (server, _) = base.rsplit_once('/').expect("DATABASE_URL has a database");
    format!(
        "{server}/{}",
        options.get_database().expect("test database")
    )
}

fn leaf(ca: &Issuer<'static, KeyPair>, device: &str) -> String {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, device);
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://edgemesh.local/device/{device}")
            .try_into()
            .expect("uri"),
    )];
    params.not_after = OffsetDateTime::now_utc() + time::Duration::days(1);
    params
        .signed_by(&KeyPair::generate().expect("key"), ca)
        .expect("sign")
        .pem()
}

impl Fixture {
    /// A CA, and device `pi-1` of `alice` (a developer) enrolled with a healthy report.
    async fn new(db: &PgConnectOptions) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        let key = KeyPair::generate().expect("key");
        let ca_cert = params.self_signed(&key).expect("self-signed");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).expect("write CA");
        let ca = Issuer::new(params, key);
        let device_pem = leaf(&ca, "pi-1");
        let fixture = Self {
            dir,
            ca,
            device_pem,
            url: database_url(db),
        };
        fixture.enrol("pi-1", &fixture.device_pem).await;
        fixture
    }

    async fn enrol(&self, device: &str, pem: &str) {
        let db = PgPool::connect(&self.url).await.expect("connect");
        let info = edgemesh_core::cert::CertInfo::from_pem(pem).expect("certificate");
        sqlx::query(
            "INSERT INTO users (id, email, role) VALUES ('alice', 'alice@example.com', 'developer')
             ON CONFLICT DO NOTHING",
        )
        .execute(&db)
        .await
        .expect("user");
        sqlx::query(
            "INSERT INTO devices (id, owner_id, device_type, os, os_version)
             VALUES ($1, 'alice', 'raspberrypi', 'debian', '12')",
        )
        .bind(device)
        .execute(&db)
        .await
        .expect("device");
        sqlx::query(
            "INSERT INTO certificates (serial, device_id, fingerprint, not_before, not_after, certificate_pem)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&info.serial)
        .bind(device)
        .bind(info.fingerprint.to_string())
        .bind(info.not_before)
        .bind(info.not_after)
        .bind(pem)
        .execute(&db)
        .await
        .expect("certificate");
        sqlx::query(
            "UPDATE devices SET health_status = 'healthy', last_health_at = now(),
                 health_received_at = now(), cpu_usage = 20, memory_usage = 40, disk_usage = 50,
                 disk_encrypted = true, os_patches_current = true, antivirus_enabled = true,
                 firewall_enabled = true
             WHERE id = $1",
        )
        .bind(device)
        .execute(&db)
        .await
        .expect("health");
    }

    /// The configuration: both listeners on port 0, deciding on a Tuesday at 10:00 UTC.
    fn config(&self, extra: &[&str]) -> Config {
        let dir = self.dir.path();
        let path = |name: &str| dir.join(name).display().to_string();
        let mut args = vec![
            "ext-authz".to_owned(),
            "--listen=127.0.0.1:0".to_owned(),
            "--metrics-listen=127.0.0.1:0".to_owned(),
            format!("--database-url={}", self.url),
            format!("--ca-cert={}", path("ca.pem")),
            format!("--audit-spool-dir={}", path("spool")),
            "--clock=2026-11-24T10:00:00Z".to_owned(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        Cli::try_parse_from(args).expect("valid flags").config
    }
}

fn policies() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"))
}

fn check_request(certificate_pem: &str, headers: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                certificate: percent_encoding::utf8_percent_encode(
                    certificate_pem,
                    percent_encoding::NON_ALPHANUMERIC,
                )
                .to_string(),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/api/orders".into(),
                    host: "edgemesh.local".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("service".to_owned(), "api".to_owned())].into(),
            ..Default::default()
        }),
    }
}

fn decoded(request: &CheckRequest) -> Decoded {
    Decoded::decode(request.encode_to_vec().as_slice()).expect("decodes")
}

/// The headers an allow sets, by name, with their append action; and the headers it removes.
fn allowed(answer: &CheckResponse) -> (Vec<(String, String, i32)>, Vec<String>) {
    let Some(HttpResponse::OkResponse(ok)) = &answer.http_response else {
        panic!("not an allow: {answer:?}");
    };
    let set = ok
        .headers
        .iter()
        .map(|h| {
            let header = h.header.as_ref().expect("header");
            (header.key.clone(), header.value.clone(), h.append_action)
        })
        .collect();
    (set, ok.headers_to_remove.clone())
}

/// A server built from `config` with the repository's policies, running in this process.
struct Running {
    addr: std::net::SocketAddr,
    metrics_addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(config: &Config) -> Self {
        let server = Server::build(config, policies()).await.expect("builds");
        let (addr, metrics_addr) = (server.addr(), server.metrics_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            metrics_addr,
            stop,
            task,
        }
    }

    /// Shuts it down and waits until it has stopped, every task with it.
    async fn stop(self) {
        self.stop.send(()).expect("still running");
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("stops on shutdown, every task with it")
            .expect("no panic");
    }
}

/// A channel to the server at `addr`, once its gRPC health says SERVING (the directory listens for
/// changes).
async fn serving(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for _ in 0..100 {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "envoy.service.auth.v3.Authorization".into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the health service never said SERVING");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_started_server_has_its_pool_open_before_it_serves(
    pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    // A restarted replica's first Checks are all misses: none may wait for a new connection.
    let fixture = Fixture::new(&db).await;
    let server = Running::start(&fixture.config(&["--database-connections=6"])).await;
    serving(server.addr).await;
    let observer = pool
        .max_connections(1)
        .connect_with(db)
        .await
        .expect("connect");
    let (open,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&observer)
    .await
    .expect("pg_stat_activity");
    // The pool's six, the change listener's among them.
    assert!(open >= 6, "{open} connections open when it said SERVING");
    server.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn an_in_process_server_answers_check_and_health_over_grpc(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let fixture = Fixture::new(&db).await;
    let server = Running::start(&fixture.config(&[])).await;
    let (addr, metrics_addr) = (server.addr, server.metrics_addr);
    assert_ne!(addr.port(), 0, "bound to a real port");

    let channel = serving(addr).await;

    let mut client = AuthorizationClient::new(channel);
    let answer = client
        .check(check_request(
            &fixture.device_pem,
            &[("x-edgemesh-role", "admin"), ("x_edgemesh_role", "admin")],
        ))
        .await
        .expect("Check answers")
        .into_inner();
    assert_eq!(
        answer.status.as_ref().map(|s| s.code),
        Some(0),
        "{answer:?}"
    );
    let (set, removed) = allowed(&answer);
    let role = set
        .iter()
        .find(|(k, _, _)| k == "x-edgemesh-role")
        .expect("role header");
    assert_eq!(
        role.1, "developer",
        "the directory's role, not the client's"
    );
    assert_eq!(
        role.2,
        HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        "a client-sent copy is overwritten, not appended to"
    );
    assert_eq!(removed, ["x_edgemesh_role"]);

    // No certificate: a 403 with its reason in the body.
    let denied = client
        .check(check_request("", &[]))
        .await
        .expect("Check answers")
        .into_inner();
    assert_eq!(
        denied.status.as_ref().map(|s| s.code),
        Some(7),
        "PERMISSION_DENIED"
    );
    let Some(HttpResponse::DeniedResponse(body)) = &denied.http_response else {
        panic!("not a deny: {denied:?}");
    };
    assert_eq!(body.status.as_ref().map(|s| s.code), Some(403));
    let reasons: serde_json::Value = serde_json::from_str(&body.body).expect("JSON body");
    assert_eq!(
        reasons["reasons"],
        serde_json::json!(["no client certificate was presented"])
    );

    // The metrics listener serves, and the decisions are counted.
    edgemesh_core::tls::install_crypto_provider();
    let metrics = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let counted = |decision: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("edgemesh_ext_authz_decisions_total{"))
            .filter(|l| l.contains(&format!("decision=\"{decision}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!((counted("allow"), counted("deny")), (1.0, 1.0), "{metrics}");

    server.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn decisions_without_envoy_name_what_they_checked(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let fixture = Fixture::new(&db).await;
    let server = Server::build(&fixture.config(&[]), policies())
        .await
        .expect("builds");
    let authorizer = server.authorizer();

    let request = decoded(&check_request(&fixture.device_pem, &[]));
    let verdict = authorizer.decide(&request).await;
    assert!(verdict.decision.allow, "{:?}", verdict.decision.reasons);
    assert_eq!(verdict.device.as_deref(), Some("pi-1"));
    assert_eq!(verdict.role.as_deref(), Some("developer"));
    let (set, removed) = allowed(&response(&request, &verdict));
    let names: Vec<&str> = set.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "x-edgemesh-device-id",
            "x-edgemesh-user-id",
            "x-edgemesh-role",
            "x-edgemesh-decision-id"
        ]
    );
    assert!(removed.is_empty());

    // A certificate of another CA naming the same device.
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let rogue = Issuer::new(params, KeyPair::generate().expect("key"));
    let forged = decoded(&check_request(&leaf(&rogue, "pi-1"), &[]));
    let verdict = authorizer.decide(&forged).await;
    assert!(!verdict.decision.allow);
    assert_eq!(
        verdict.decision.reasons,
        [Reason::new(
            "no_identity",
            "the client certificate is not issued by the EdgeMesh CA"
        )]
    );
    assert_eq!(verdict.device, None, "a forgery is not decided as pi-1's");
    // ... and naming a device that is not enrolled, it is still a forgery, not a stranger.
    let forged = decoded(&check_request(&leaf(&rogue, "pi-2"), &[]));
    let verdict = authorizer.decide(&forged).await;
    assert_eq!(
        verdict.decision.reasons,
        [Reason::new(
            "no_identity",
            "the client certificate is not issued by the EdgeMesh CA"
        )]
    );
    assert_eq!(verdict.device, None);

    // Our CA's certificate for a device that is not enrolled.
    let stranger = decoded(&check_request(&leaf(&fixture.ca, "pi-2"), &[]));
    let verdict = authorizer.decide(&stranger).await;
    assert_eq!(
        verdict.decision.reasons,
        [Reason::new("not_enrolled", "device pi-2 is not enrolled")]
    );
    assert_eq!(verdict.device.as_deref(), Some("pi-2"));

    // Our CA's second certificate for pi-1, never recorded for it.
    let unrecorded = decoded(&check_request(&leaf(&fixture.ca, "pi-1"), &[]));
    let verdict = authorizer.decide(&unrecorded).await;
    assert!(!verdict.decision.allow);
    assert_eq!(verdict.decision.reasons[0].code, "unknown_certificate");
    assert!(
        verdict.decision.reasons[0]
            .message
            .starts_with("the client certificate (serial "),
        "{:?}",
        verdict.decision.reasons
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_configuration_is_a_configuration_error(_pool: PgPoolOptions, db: PgConnectOptions) {
    let fixture = Fixture::new(&db).await;
    let missing = format!(
        "--ca-cert={}",
        fixture.dir.path().join("nowhere.pem").display()
    );
    for (flags, says) in [
        (["--timezone=Mars/Olympus"], "unknown time zone"),
        (
            [missing.as_str()],
            "failed to read the EdgeMesh CA certificate",
        ),
    ] {
        let error = match Server::build(&fixture.config(&flags), policies()).await {
            Ok(_) => panic!("{flags:?} built"),
            Err(e) => e,
        };
        assert!(
            error.downcast_ref::<ConfigError>().is_some(),
            "{flags:?}: {error:#}"
        );
        assert!(format!("{error:#}").contains(says), "{error:#}");
    }
    let error = match Server::build(&fixture.config(&[]), Path::new("/nonexistent")).await {
        Ok(_) => panic!("built without policies"),
        Err(e) => e,
    };
    assert!(error.downcast_ref::<ConfigError>().is_some(), "{error:#}");
    // A trust domain that is not one is refused by the flags themselves.
    assert!(
        Cli::try_parse_from(["ext-authz", "--trust-domain=Edge Mesh"]).is_err(),
        "an invalid trust domain parsed"
    );
}
