//! The console's HTTP contract, below the browser: sessions, forgery checks, security headers and
//! escaping, against the real HTTPS listener and PostgreSQL. (`e2e/tests/e2e/console.rs` drives the
//! same pages in Chromium.)

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{Client, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{TestApp, https_client, spawn_app, spawn_app_with};

fn no_redirects(app: &TestApp) -> Client {
    Client::builder()
        .use_preconfigured_tls(edgemesh_core::tls::client_config(&app.ca_pem, None).expect("tls"))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// What a browser on the console's own page sends with a form.
fn same_origin(app: &TestApp) -> [(&'static str, String); 2] {
    [
        ("origin", app.api.clone()),
        ("sec-fetch-site", "same-origin".to_owned()),
    ]
}

async fn sign_in_with(app: &TestApp, token: &str) -> reqwest::Response {
    let mut request = no_redirects(app)
        .post(format!("{}/ui/sign-in", app.api))
        .form(&[("token", token)]);
    for (name, value) in same_origin(app) {
        request = request.header(name, value);
    }
    request.send().await.expect("sign in")
}

/// Signs in; answers the `Cookie` header value and the page's per-session token.
async fn signed_in(app: &TestApp) -> (String, String) {
    let response = sign_in_with(app, &app.admin_token).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let set_cookie = response.headers()[SET_COOKIE]
        .to_str()
        .expect("ascii")
        .to_owned();
    let cookie = set_cookie.split(';').next().expect("name=value").to_owned();
    let page = page(app, &cookie, "/ui/tokens").await;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the form's token")
        .to_owned();
    (cookie, csrf)
}

async fn get(app: &TestApp, cookie: Option<&str>, path: &str) -> reqwest::Response {
    let mut request = no_redirects(app).get(format!("{}{path}", app.api));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.expect("get")
}

async fn page(app: &TestApp, cookie: &str, path: &str) -> String {
    let response = get(app, Some(cookie), path).await;
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.text().await.expect("html")
}

fn assert_security_headers(headers: &HeaderMap, what: &str) {
    let csp = headers["content-security-policy"].to_str().expect("csp");
    assert!(csp.contains("default-src 'self'"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    for (name, value) in [
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("strict-transport-security", "max-age=31536000"),
    ] {
        assert_eq!(headers[name], value, "{what}: {name}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn pages_need_a_session_and_carry_the_security_headers(db: PgPool) {
    let app = spawn_app(db).await;
    for path in [
        "/ui/fleet",
        "/ui/devices/pi",
        "/ui/tokens",
        "/ui/audit",
        "/ui/live",
        "/ui/live/events",
        "/ui/policies",
    ] {
        let response = get(&app, None, path).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(response.headers()[LOCATION], "/ui/sign-in", "{path}");
        assert_security_headers(response.headers(), path);
    }
    // An API call without a token stays a JSON 401.
    let api = get(&app, None, "/api/v1/admin/devices").await;
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = api.json().await.expect("json");
    assert_eq!(body["error"], "missing_token");

    let (cookie, _) = signed_in(&app).await;
    for path in [
        "/ui/fleet",
        "/ui/tokens",
        "/ui/audit",
        "/ui/live",
        "/ui/policies",
    ] {
        let response = get(&app, Some(&cookie), path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_security_headers(response.headers(), path);
        let html = response.text().await.expect("html");
        assert!(!html.contains("<script>"), "{path}: no inline script");
        assert!(!html.contains(" style="), "{path}: no inline style");
    }
    // A console path that does not exist is a console page too: a 404, with the same headers.
    for path in ["/ui/nope", "/ui/devices/pi/nope"] {
        let missing = get(&app, None, path).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND, "{path}");
        assert_security_headers(missing.headers(), path);
    }
    let css = get(&app, None, "/ui/static/console.css").await;
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    assert_eq!(
        get(&app, None, "/ui/static/x.js").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_session_cookie_is_host_only_secure_http_only_and_strict(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    let response = sign_in_with(&app, &app.admin_token).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/ui/fleet");
    let cookie = response.headers()[SET_COOKIE].to_str().expect("ascii");
    assert!(cookie.starts_with("__Host-edgemesh-session="), "{cookie}");
    for attribute in [
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=28800",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    // The database holds the id's hash, never the id.
    let id = cookie
        .split(';')
        .next()
        .and_then(|c| c.split_once('='))
        .expect("id")
        .1;
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT id_sha256 FROM console_sessions")
        .fetch_all(&db)
        .await
        .expect("sessions");
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], id.as_bytes());
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE event_type = 'console' AND action = 'sign_in'
           AND decision IS NULL",
    )
    .fetch_one(&db)
    .await
    .expect("audit");
    assert_eq!(audited, 1, "the sign-in is audited");
}

#[sqlx::test(migrations = "../migrations")]
async fn wrong_tokens_are_refused_audited_and_rate_limited(db: PgPool) {
    let app = spawn_app_with(
        db.clone(),
        &[
            "--console-sign-in-burst",
            "3",
            "--console-sign-in-rate",
            "0.01",
        ],
    )
    .await;
    for _ in 0..3 {
        let refused = sign_in_with(&app, "guess").await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(refused.headers().get(SET_COOKIE).is_none());
        assert!(
            refused
                .text()
                .await
                .expect("html")
                .contains("not the admin token")
        );
    }
    // Beyond the burst, even the right token waits: nothing is checked, nothing audited.
    let limited = sign_in_with(&app, &app.admin_token).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE event_type = 'console' AND decision = 'deny'",
    )
    .fetch_one(&db)
    .await
    .expect("audit");
    assert_eq!(
        refused, 3,
        "each checked refusal is audited, the limited one is not"
    );
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM console_sessions")
        .fetch_one(&db)
        .await
        .expect("sessions");
    assert_eq!(sessions, 0);

    // A sign-in posted from another site is refused before the token is looked at.
    let cross = no_redirects(&app)
        .post(format!("{}/ui/sign-in", app.api))
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .form(&[("token", app.admin_token.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_state_change_needs_the_session_token_and_the_console_origin(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    let token = app.create_token("forms-owner", 1).await;
    app.enroll(&token, "forms-pi").await;
    let (cookie, csrf) = signed_in(&app).await;
    let revoke = |headers: Vec<(&'static str, String)>, csrf: String| {
        let app = &app;
        let cookie = cookie.clone();
        async move {
            let mut request = no_redirects(app)
                .post(format!("{}/ui/devices/forms-pi/revoke", app.api))
                .header("cookie", cookie)
                .form(&[("csrf", csrf.as_str()), ("reason", "test")]);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request.send().await.expect("post").status()
        }
    };
    let status = || async {
        let detail: serde_json::Value = app
            .admin_get("/devices/forms-pi")
            .await
            .json()
            .await
            .expect("json");
        detail["status"].as_str().expect("status").to_owned()
    };
    let refused = [
        // Another site, even with the session's token (a browser would not send the cookie
        // anyway: SameSite=Strict).
        (
            vec![
                ("origin", "https://evil.example".to_owned()),
                ("sec-fetch-site", "cross-site".to_owned()),
            ],
            csrf.clone(),
        ),
        // A page of this origin without the session's token.
        (same_origin(&app).to_vec(), "not-the-token".to_owned()),
        // Nothing that says where it comes from.
        (vec![], csrf.clone()),
    ];
    for (headers, csrf) in refused {
        let shown = format!("{headers:?}");
        assert_eq!(
            revoke(headers, csrf).await,
            StatusCode::FORBIDDEN,
            "{shown}"
        );
        assert_eq!(status().await, "active", "{shown} changed nothing");
    }
    assert_eq!(
        revoke(same_origin(&app).to_vec(), csrf.clone()).await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(status().await, "revoked");
}

#[sqlx::test(migrations = "../migrations")]
async fn sign_out_expiry_and_a_new_admin_token_end_sessions(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    let (cookie, csrf) = signed_in(&app).await;
    let mut sign_out = no_redirects(&app)
        .post(format!("{}/ui/sign-out", app.api))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())]);
    for (name, value) in same_origin(&app) {
        sign_out = sign_out.header(name, value);
    }
    let out = sign_out.send().await.expect("sign out");
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(
        out.headers()[SET_COOKIE]
            .to_str()
            .expect("ascii")
            .contains("Max-Age=0")
    );
    assert_eq!(
        get(&app, Some(&cookie), "/ui/fleet").await.status(),
        StatusCode::SEE_OTHER
    );

    // An expired session is refused.
    let (cookie, _) = signed_in(&app).await;
    assert_eq!(
        get(&app, Some(&cookie), "/ui/fleet").await.status(),
        StatusCode::OK
    );
    sqlx::query("UPDATE console_sessions SET expires_at = now() - interval '1 s'")
        .execute(&db)
        .await
        .expect("expire");
    assert_eq!(
        get(&app, Some(&cookie), "/ui/fleet").await.status(),
        StatusCode::SEE_OTHER
    );

    // A control API started with another admin token (a rotation) ends the sessions of the old one.
    let (cookie, _) = signed_in(&app).await;
    let rotated = spawn_app(db.clone()).await;
    assert_ne!(rotated.admin_token, app.admin_token);
    assert_eq!(
        get(&rotated, Some(&cookie), "/ui/fleet").await.status(),
        StatusCode::SEE_OTHER
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM console_sessions")
        .fetch_one(&db)
        .await
        .expect("sessions");
    assert_eq!(
        left, 0,
        "the new token's start removed the old token's sessions"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn what_devices_write_is_shown_escaped(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    let token = app.create_token("escape-owner", 1).await;
    let device = app.enroll(&token, "escape-pi").await;
    let report = https_client(&app.ca_pem, Some((&device.cert_pem, &device.key_pem)))
        .post(format!("{}/api/v1/health", app.device_api))
        .json(&json!({
            "sequence": crate::helpers::next_sequence(),
            "collected_at": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .expect("time"),
            "agent_version": "<img src=x onerror=alert(1)>",
            "os": "<script>alert(1)</script>",
            "os_version": "\"><b>12",
            "cpu_usage": 10.0, "memory_usage": 20.0, "disk_usage": 30.0,
        }))
        .send()
        .await
        .expect("report");
    assert_eq!(report.status(), StatusCode::OK);
    let (cookie, _) = signed_in(&app).await;
    for path in ["/ui/fleet", "/ui/devices/escape-pi"] {
        let html = page(&app, &cookie, path).await;
        assert!(!html.contains("<script>alert"), "{path}");
        assert!(!html.contains("<img src=x"), "{path}");
        assert!(!html.contains("\"><b>"), "{path}");
    }
    let device_page = page(&app, &cookie, "/ui/devices/escape-pi").await;
    assert!(
        device_page.contains("&#60;img src=x onerror=alert(1)&#62;"),
        "shown as text: {device_page}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn certificates_close_to_expiry_are_counted_at_start_and_shown(db: PgPool) {
    // Certificates valid for a day: inside the 7-day warning window from the start.
    let app = spawn_app_with(db.clone(), &["--cert-validity-secs", "86400"]).await;
    let token = app.create_token("expiry-owner", 1).await;
    app.enroll(&token, "expiry-pi").await;
    let summary: serde_json::Value = app.admin_get("/fleet").await.json().await.expect("json");
    assert_eq!(summary["certificates_expiring"], 1, "{summary}");
    assert_eq!(summary["expiring_devices"], json!(["expiry-pi"]));
    assert_eq!(summary["expiry_warning_days"], 7);
    assert_eq!(summary["active"], 1);
    assert_eq!(summary["verdicts"]["unknown"], 1);

    // The scan runs when due, once for all replicas (the first one ran it at its start, before the
    // enrolment): a control API whose scan is due every second counts the device in its metric.
    let scanned = spawn_app_with(
        db.clone(),
        &[
            "--cert-validity-secs",
            "86400",
            "--maintenance-interval-secs",
            "1",
        ],
    )
    .await;
    let mut metric = String::new();
    for _ in 0..50 {
        let text = reqwest::get(&scanned.metrics)
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if let Some(line) = text
            .lines()
            .find(|l| l.starts_with("edgemesh_control_api_certificates_expiring{"))
        {
            metric = line.to_owned();
            if metric.ends_with(" 1") {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric,
        r#"edgemesh_control_api_certificates_expiring{within="7d"} 1"#
    );

    let (cookie, _) = signed_in(&app).await;
    let fleet = page(&app, &cookie, "/ui/fleet").await;
    assert!(
        fleet.contains("certificates expire within 7 days"),
        "the warning is shown"
    );
    assert!(
        fleet.contains(r#"<a href="/ui/devices/expiry-pi">expiry-pi</a>"#),
        "naming the device"
    );
    assert!(
        fleet.contains(r#"<span class="warning">expires in 23 h</span>"#),
        "and in its row"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn the_policies_page_shows_the_version_in_force_and_a_refused_reload(db: PgPool) {
    let dir = tempfile::tempdir().expect("policy dir");
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    for entry in std::fs::read_dir(&source).expect("policies") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rego") {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
    }
    let app = spawn_app_with(db, &["--policy-dir", dir.path().to_str().expect("utf-8")]).await;
    let (cookie, _) = signed_in(&app).await;
    let before = page(&app, &cookie, "/ui/policies").await;
    assert!(
        before.contains("none since the control API started"),
        "{before}"
    );
    assert!(before.contains("authz.rego"), "the files are shown");
    std::fs::write(
        dir.path().join("broken.rego"),
        "package edgemesh.authz\nallow if {",
    )
    .expect("write");
    let mut after = String::new();
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        after = page(&app, &cookie, "/ui/policies").await;
        if after.contains("id=\"refused\"") {
            break;
        }
    }
    assert!(
        after.contains("id=\"refused\""),
        "the refused reload is shown: {after}"
    );
    assert!(after.contains(": refused"), "{after}");
}
