//! The request path end to end: devices enrolled by the real agent, health reported over the real mTLS
//! API, requests through the real Envoy, decided by the real ext-authz over the real database.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::database_url;
use crate::proxy::{Options, PROPAGATION_BOUND, Stack, device_client, grpc_health};

fn has_reason(reasons: &[String], needle: &str) -> bool {
    reasons.iter().any(|r| r.contains(needle))
}

#[sqlx::test(migrations = false)]
async fn a_healthy_admin_reaches_the_database_and_the_upstream_sees_who(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let stack = Stack::start(&database_url(&db), Options::default()).await;
    let device = stack.device("root", "admin", "laptop-root").await;

    let never = stack.get(&device, "/database/orders").await;
    assert_eq!(never.status, StatusCode::FORBIDDEN);
    assert_eq!(
        never.reasons(),
        ["the device has never reported its health"]
    );
    assert!(never.body["decision_id"].is_string(), "{:?}", never.body);

    let verdict = stack.report(&device, json!({})).await;
    assert_eq!(verdict["status"], "healthy");
    // The report reaches ext-authz by a NOTIFY that can trail its answer: until then a request is
    // still denied (and counted), so the denies this test saw are counted here.
    let mut denied = 1.0;
    let started = std::time::Instant::now();
    let allowed = loop {
        let answer = stack.get(&device, "/database/orders").await;
        if answer.status != StatusCode::FORBIDDEN
            || started.elapsed() > crate::proxy::PROPAGATION_BOUND
        {
            break answer;
        }
        denied += 1.0;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(allowed.status, StatusCode::OK, "{:?}", allowed.body);
    let seen = &allowed.body["headers"];
    assert_eq!(allowed.body["service"], "database");
    assert_eq!(seen["x-edgemesh-device-id"], "laptop-root");
    assert_eq!(seen["x-edgemesh-user-id"], "root");
    assert_eq!(seen["x-edgemesh-role"], "admin");
    assert!(
        seen["x-edgemesh-decision-id"]
            .as_str()
            .is_some_and(|d| d.len() == 36)
    );

    // Spoofed identity headers change nothing the upstream sees.
    let spoofed = stack
        .get_with(
            &device,
            "/database/orders",
            &[
                ("x-edgemesh-device-id", "someone-else"),
                ("x-edgemesh-role", "admin; evil"),
                ("x-edgemesh-extra", "trust me"),
                (
                    "x-forwarded-client-cert",
                    "URI=spiffe://edgemesh.local/device/someone-else",
                ),
            ],
        )
        .await;
    assert_eq!(spoofed.status, StatusCode::OK);
    let seen = &spoofed.body["headers"];
    assert_eq!(seen["x-edgemesh-device-id"], "laptop-root");
    assert_eq!(seen["x-edgemesh-role"], "admin");
    assert!(seen.get("x-edgemesh-extra").is_none(), "{seen}");
    let xfcc = seen["x-forwarded-client-cert"]
        .as_str()
        .expect("Envoy's XFCC");
    assert!(
        xfcc.contains("URI=spiffe://edgemesh.local/device/laptop-root")
            && !xfcc.contains("someone-else"),
        "{xfcc}"
    );

    for path in ["/api/x", "/storage/x", "/analytics/x"] {
        assert_eq!(
            stack.get(&device, path).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    let unknown = stack.get(&device, "/payroll").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // Every decision is counted, by decision, service and reason.
    let metrics = stack.ext_authz_metrics().await;
    let counter = |labels: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("edgemesh_ext_authz_decisions_total{{{labels}}} "))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(
        counter(r#"decision="deny",reason="never_reported",service="database""#),
        denied,
        "{metrics}"
    );
    assert_eq!(
        counter(r#"decision="allow",reason="none",service="database""#),
        2.0
    );
    // The denies, the two database allows, and one allow each of the three other services.
    assert!(
        metrics.contains(&format!(
            "edgemesh_ext_authz_decision_latency_seconds_count {}",
            denied + 5.0
        )),
        "{metrics}"
    );
}

/// Wednesday 2026-11-18 10:30 UTC: business hours, so only roles decide.
pub const WEDNESDAY_MORNING: &str = "2026-11-18T10:30:00Z";

#[sqlx::test(migrations = false)]
async fn roles_decide_which_services(_pool: PgPoolOptions, db: PgConnectOptions) {
    let options = Options {
        clock: Some(WEDNESDAY_MORNING),
        ..Options::default()
    };
    let stack = Stack::start(&database_url(&db), options).await;
    let analyst = stack.device("ann", "analyst", "pc-ann").await;
    stack.report(&analyst, json!({})).await;
    let denied = stack.get(&analyst, "/database/x").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(
        denied.reasons(),
        ["role analyst may not use service database"],
        "{:?}",
        denied.body
    );
    assert_eq!(
        denied.headers["x-edgemesh-decision-id"].to_str().ok(),
        denied.body["decision_id"].as_str()
    );
    assert_eq!(
        stack.get(&analyst, "/analytics/x").await.status,
        StatusCode::OK
    );
    assert_eq!(
        stack.get(&analyst, "/storage/x").await.status,
        StatusCode::OK
    );

    let developer = stack.device("dan", "developer", "pc-dan").await;
    stack.report(&developer, json!({})).await;
    assert_eq!(
        stack.get(&developer, "/database/x").await.status,
        StatusCode::OK
    );
    let denied = stack.get(&developer, "/analytics/x").await;
    assert_eq!(
        denied.reasons(),
        ["role developer may not use service analytics"]
    );
}

/// Admins are exempt from business hours, so these run on the real clock (health ages are real).
#[sqlx::test(migrations = false)]
async fn health_decides(_pool: PgPoolOptions, db: PgConnectOptions) {
    let stack = Stack::start(&database_url(&db), Options::default()).await;
    let admin = stack.device("bob", "admin", "pi-bob").await;
    let verdict = stack
        .report(&admin, json!({"antivirus_enabled": false}))
        .await;
    assert_eq!(verdict["status"], "unhealthy");
    let denied = stack.get(&admin, "/api/x").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.reasons(), ["antivirus is not enabled"]);

    // A report measured ten minutes ago is stale, whatever it says.
    let stale = stack.device("cy", "admin", "pi-stale").await;
    let ten_minutes_ago = OffsetDateTime::now_utc() - time::Duration::minutes(10);
    stack
        .report(
            &stale,
            json!({"collected_at": ten_minutes_ago.format(&Rfc3339).expect("time")}),
        )
        .await;
    let denied = stack.get(&stale, "/api/x").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(
        has_reason(&denied.reasons(), "the device's health is stale"),
        "{:?}",
        denied.body
    );

    // A health change is enforced as soon as its notification arrives (well under a second; the
    // bound here is for a loaded machine).
    stack.report(&admin, json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.get(&admin, "/api/x").await.status != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "the healthy report was not enforced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn business_hours_bind_developers_not_admins(_pool: PgPoolOptions, db: PgConnectOptions) {
    // Saturday evening, by the configured clock.
    let options = Options {
        clock: Some("2026-11-21T20:00:00Z"),
        ..Options::default()
    };
    let stack = Stack::start(&database_url(&db), options).await;
    let developer = stack.device("dev", "developer", "pc-dev").await;
    stack.report(&developer, json!({})).await;
    let denied = stack.get(&developer, "/api/x").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(
        denied.reasons(),
        ["outside business hours (Mon-Fri 09:00-17:00 UTC) for role developer"]
    );
    let admin = stack.device("ops", "admin", "pc-ops").await;
    stack.report(&admin, json!({})).await;
    assert_eq!(stack.get(&admin, "/api/x").await.status, StatusCode::OK);
}

#[sqlx::test(migrations = false)]
/// A revocation reaches ext-authz by its notification, not by the cache's expiry (60 s): it is
/// enforced within the propagation bound (2 s) of the admin call (in practice a few milliseconds:
/// `bench` measures it), and every request after the first denied one is denied too.
async fn a_revocation_is_enforced_by_its_notification_not_the_cache_ttl(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let stack = Stack::start(&database_url(&db), Options::default()).await;
    let device = stack.device("eve", "admin", "pi-revoked").await;
    stack.report(&device, json!({})).await;
    assert_eq!(stack.get(&device, "/api/x").await.status, StatusCode::OK);

    stack
        .api
        .admin_post("/devices/pi-revoked/revoke", json!({"reason": "lost"}))
        .await;
    let returned = Instant::now();
    let mut polls = 0;
    let answer = loop {
        polls += 1;
        let answer = stack.get(&device, "/api/x").await;
        if answer.status != StatusCode::OK || returned.elapsed() > PROPAGATION_BOUND {
            break answer;
        }
    };
    let delay = returned.elapsed();
    eprintln!("revocation enforced {delay:?} after the admin call returned ({polls} requests)");
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{:?}", answer.body);
    assert!(
        delay <= PROPAGATION_BOUND,
        "within the bound, not the TTL: {delay:?}"
    );
    assert!(
        has_reason(&answer.reasons(), "revoked") || has_reason(&answer.reasons(), "not active"),
        "{:?}",
        answer.body
    );
    for _ in 0..5 {
        assert_eq!(
            stack.get(&device, "/api/x").await.status,
            StatusCode::FORBIDDEN,
            "and stays denied"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn refused_certificates_never_reach_ext_authz_or_an_upstream(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let stack = Stack::start(&database_url(&db), Options::default()).await;
    let ca_pem = std::fs::read_to_string(stack.state_dir.path().join("ca.pem")).expect("ca");
    let checks = "cluster.ext_authz.upstream_rq_total";
    let upstream = "cluster.demo_services.upstream_rq_total";
    let (checks_before, upstream_before) = (
        stack.envoy_stat(checks).await,
        stack.envoy_stat(upstream).await,
    );

    // No client certificate.
    let anonymous = device_client(&ca_pem, None);
    let result = anonymous
        .get(format!("{}/api/x", stack.envoy_url))
        .send()
        .await;
    assert!(
        result.is_err(),
        "no certificate must not get an answer: {result:?}"
    );

    // A certificate from another CA, naming a device of our trust domain.
    let foreign_ca = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let foreign_ca_cert = ca_params.self_signed(&foreign_ca).expect("ca");
    let foreign_issuer = rcgen::Issuer::new(ca_params, foreign_ca);
    let (cert, key) = leaf(
        &foreign_issuer,
        OffsetDateTime::now_utc() + time::Duration::days(1),
    );
    drop(foreign_ca_cert);
    let foreign = device_client(&ca_pem, Some((&cert, &key)));
    let result = foreign
        .get(format!("{}/api/x", stack.envoy_url))
        .send()
        .await;
    assert!(result.is_err(), "a foreign CA must be refused: {result:?}");

    // An expired certificate from the EdgeMesh CA itself.
    let ca_key =
        std::fs::read_to_string(stack.state_dir.path().join("ca-key.pem")).expect("ca key");
    let ours = rcgen::Issuer::from_ca_cert_pem(
        &ca_pem,
        rcgen::KeyPair::from_pem(&ca_key).expect("ca key"),
    )
    .expect("issuer");
    let (cert, key) = leaf(&ours, OffsetDateTime::now_utc() - time::Duration::hours(1));
    let expired = device_client(&ca_pem, Some((&cert, &key)));
    let result = expired
        .get(format!("{}/api/x", stack.envoy_url))
        .send()
        .await;
    assert!(
        result.is_err(),
        "an expired certificate must be refused: {result:?}"
    );

    let ssl = "listener.127.0.0.1_";
    let stats = reqwest::get(format!(
        "{}/stats?filter=ssl.fail_verify",
        stack.envoy_admin
    ))
    .await
    .expect("stats")
    .text()
    .await
    .expect("text");
    let count = |name: &str| -> u64 {
        stats
            .lines()
            .filter(|l| l.starts_with(ssl) && l.contains(&format!("ssl.{name}: ")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(count("fail_verify_no_cert"), 1, "{stats}");
    assert_eq!(
        count("fail_verify_error"),
        2,
        "foreign CA and expired: {stats}"
    );
    assert_eq!(
        stack.envoy_stat(checks).await,
        checks_before,
        "ext-authz never asked"
    );
    assert_eq!(
        stack.envoy_stat(upstream).await,
        upstream_before,
        "no upstream reached"
    );
}

/// A device certificate for `pi-forged` signed by `issuer`, expiring at `not_after`.
fn leaf(issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, not_after: OffsetDateTime) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://edgemesh.local/device/pi-forged"
            .try_into()
            .expect("uri"),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = not_after - time::Duration::days(2);
    params.not_after = not_after;
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

#[sqlx::test(migrations = false)]
async fn with_ext_authz_down_nothing_gets_through(_pool: PgPoolOptions, db: PgConnectOptions) {
    let mut stack = Stack::start(&database_url(&db), Options::default()).await;
    let device = stack.device("fay", "admin", "pi-fay").await;
    stack.report(&device, json!({})).await;
    assert_eq!(stack.get(&device, "/api/x").await.status, StatusCode::OK);
    assert!(stack.ext_authz.process.stop().await, "graceful shutdown");
    let answer = stack.get(&device, "/api/x").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}");
    assert!(
        answer.body.get("headers").is_none(),
        "the upstream never answered"
    );
}

#[sqlx::test(migrations = false)]
async fn a_broken_policy_does_not_replace_the_working_one(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let policies = tempfile::tempdir().expect("tempdir");
    for name in ["authz.rego", "compliance.rego"] {
        std::fs::copy(
            crate::helpers::policies_dir().join(name),
            policies.path().join(name),
        )
        .expect("copy policy");
    }
    let options = Options {
        policy_dir: policies.path().to_owned(),
        ..Options::default()
    };
    let stack = Stack::start(&database_url(&db), options).await;
    let device = stack.device("gus", "admin", "pi-gus").await;
    stack.report(&device, json!({})).await;
    assert_eq!(
        stack.get(&device, "/database/x").await.status,
        StatusCode::OK
    );

    let authz = policies.path().join("authz.rego");
    let good = std::fs::read_to_string(&authz).expect("read");
    std::fs::write(&authz, format!("{good}\nallow if {{ input.x ==\n")).expect("break");
    // The broken file has been read and refused (its metric says so) before the next request.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stack.ext_authz_metrics().await.lines().any(|l| {
        l.starts_with("edgemesh_ext_authz_policy_reloads_total{result=\"refused\"}")
            && !l.ends_with(" 0")
    }) {
        assert!(
            Instant::now() < deadline,
            "ext-authz refuses the broken policy within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stack.get(&device, "/database/x").await.status,
        StatusCode::OK,
        "the working policy stays in force"
    );

    // A valid change (databases for developers only) is picked up.
    let stricter = good.replace(
        "\"database\": {\"admin\", \"developer\"}",
        "\"database\": {\"developer\"}",
    );
    assert_ne!(stricter, good);
    std::fs::write(&authz, stricter).expect("fix");
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let answer = stack.get(&device, "/database/x").await;
        if answer.status == StatusCode::FORBIDDEN || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        answer.reasons(),
        ["role admin may not use service database"]
    );
}

/// PostgreSQL restarted under a running ext-authz (a failover, an upgrade): every pooled connection is
/// broken while idle, and the pool does not ping before lending one. The first cache miss after the
/// restart, for a device never looked up before, is still an allow: a lookup that meets a broken
/// connection asks another, and no device is denied for the restart.
#[tokio::test]
async fn a_restarted_database_costs_no_deny() {
    let cluster = crate::postgres::Cluster::start();
    let stack = Stack::start(&cluster.url(), Options::default()).await;
    let warm = stack.device("vera", "admin", "pi-warm").await;
    stack.report(&warm, json!({})).await;
    let mut fresh = Vec::new();
    for n in 0..3 {
        let device = stack
            .device(&format!("vera-{n}"), "admin", &format!("pi-fresh-{n}"))
            .await;
        stack.report(&device, json!({})).await;
        fresh.push(device);
    }
    // Several lookups at once, so that the pool holds several connections.
    let answers =
        futures_util::future::join_all((0..8).map(|_| stack.get(&warm, "/api/ping"))).await;
    assert!(
        answers.iter().all(|a| a.status == StatusCode::OK),
        "{answers:?}"
    );

    cluster.stop_server();
    cluster.start_server();
    for device in &fresh {
        let answer = stack.get(device, "/api/ping").await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
}

#[sqlx::test(migrations = false)]
async fn ext_authz_is_not_serving_without_its_database(_pool: PgPoolOptions, db: PgConnectOptions) {
    let url = database_url(&db);
    // The right server, a database that does not exist: started, but never ready. (Not a suffix of
    // the test database's name: Postgres truncates names to 63 bytes.)
    let (server, _) = url.rsplit_once('/').expect("url");
    let missing = format!("{server}/edgemesh_no_such_database");
    let port = crate::helpers::free_port();
    let ports = (port, crate::helpers::free_port());
    let spool = tempfile::tempdir().expect("tempdir");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca
        .self_signed(&rcgen::KeyPair::generate().expect("key"))
        .expect("ca");
    std::fs::write(spool.path().join("ca.pem"), ca.pem()).expect("write ca.pem");
    let mut process = crate::proxy::ExtAuthz::spawn(
        &missing,
        ports,
        &crate::helpers::policies_dir(),
        None,
        spool.path(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = grpc_health(port).await {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "ext-authz did not answer health checks"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        grpc_health(port).await,
        Some(tonic_health::pb::health_check_response::ServingStatus::NotServing)
    );
    assert!(process.stop().await);
}

/// A caller that reaches ext-authz's gRPC port directly, with a certificate of its own CA claiming an
/// enrolled device: the decision is a deny naming no device, so it cannot make audit rows in that
/// device's name either.
#[sqlx::test(migrations = false)]
async fn ext_authz_refuses_a_peer_certificate_the_edgemesh_ca_did_not_sign(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request,
    };
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

    let stack = Stack::start(&database_url(&db), Options::default()).await;
    let device = stack.device("gus", "admin", "pi-forged").await;
    stack.report(&device, json!({})).await;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let rogue = rcgen::Issuer::new(ca, rcgen::KeyPair::generate().expect("key"));
    let (forged, _) = leaf(&rogue, OffsetDateTime::now_utc() + time::Duration::days(1));

    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://127.0.0.1:{}",
        stack.ext_authz.port
    ))
    .expect("endpoint")
    .connect()
    .await
    .expect("connect to ext-authz");
    let mut client = AuthorizationClient::new(channel);
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: "spiffe://edgemesh.local/device/pi-forged".into(),
                certificate: percent_encoding::utf8_percent_encode(
                    &forged,
                    percent_encoding::NON_ALPHANUMERIC,
                )
                .to_string(),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/api/x".into(),
                    headers: [(":path".to_owned(), "/api/x".to_owned())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("service".to_owned(), "api".to_owned())].into(),
            ..Default::default()
        }),
    };
    let answer = client.check(request).await.expect("an answer").into_inner();
    assert_ne!(
        answer.status.as_ref().map(|s| s.code),
        Some(0),
        "allowed: {answer:?}"
    );
    let body = match answer.http_response {
        Some(
            envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse::DeniedResponse(
                d,
            ),
        ) => d.body,
        other => panic!("not a denied response: {other:?}"),
    };
    let body: serde_json::Value = serde_json::from_str(&body).expect("json body");
    assert_eq!(
        body["reasons"],
        json!(["the client certificate is not issued by the EdgeMesh CA"]),
        "{body}"
    );
    let decision = body["decision_id"]
        .as_str()
        .expect("decision id")
        .to_owned();
    let pool = PgPoolOptions::new()
        .connect(&database_url(&db))
        .await
        .expect("connect");
    let deadline = Instant::now() + Duration::from_secs(20);
    let device_named: Option<String> = loop {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT device_id FROM audit_log WHERE id = $1::uuid")
                .bind(&decision)
                .fetch_optional(&pool)
                .await
                .expect("query");
        if let Some((device,)) = row {
            break device;
        }
        assert!(Instant::now() < deadline, "the decision was not audited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(device_named, None, "the audit row names no device");
}

/// A policy that fails at evaluation (here: it runs past the time limit) denies; the client learns
/// that evaluation failed, never the engine's error text (that goes to ext-authz's log, with the
/// decision id).
#[sqlx::test(migrations = false)]
async fn a_failing_policy_denies_without_telling_the_client_why_in_engine_terms(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let policies = tempfile::tempdir().expect("tempdir");
    for name in ["authz.rego", "compliance.rego"] {
        std::fs::copy(
            crate::helpers::policies_dir().join(name),
            policies.path().join(name),
        )
        .expect("copy policy");
    }
    let authz = policies.path().join("authz.rego");
    let mut rules = std::fs::read_to_string(&authz).expect("read");
    rules.push_str(
        "\nallow if {\n\tinput.request.path == \"/database/runaway\"\n\
         \tcount([x | some x in numbers.range(1, 1000000); x > 0]) < 0\n}\n",
    );
    std::fs::write(&authz, rules).expect("write");
    let options = Options {
        policy_dir: policies.path().to_owned(),
        clock: Some(WEDNESDAY_MORNING),
        ..Options::default()
    };
    let stack = Stack::start(&database_url(&db), options).await;
    let analyst = stack.device("ann", "analyst", "pc-ann").await;
    stack.report(&analyst, json!({})).await;
    let answer = stack.get(&analyst, "/database/runaway").await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{answer:?}");
    assert_eq!(answer.reasons(), ["policy evaluation failed"], "{answer:?}");
    let body = answer.body.to_string();
    assert!(
        !body.contains("limit") && !body.contains("xecution"),
        "engine text in the deny: {body}"
    );
}
