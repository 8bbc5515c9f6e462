//! The operator console in a real headless Chromium (`e2e/browser/driver.mjs`, playwright-core),
//! against the real control API, ext-authz, Envoy and PostgreSQL: signing in, the fleet, a token made
//! in the console enrolling a real agent, the live feed, the audit and its CSV, a revocation from the
//! device page refusing the device's next requests through Envoy, a cross-site form refused, signing
//! out. Screenshots go to `.edgemesh/console-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::enforcement::WEDNESDAY_MORNING;
use crate::helpers::{agent, client, database_url};
use crate::proxy::{Device, Options, Stack};

const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.edgemesh/console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// Chromium driven over `driver.mjs`'s line protocol.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` when Chromium, Node or playwright-core is missing here (`make browser` and
    /// `scripts/stack.sh test-tools-install` provide them); with `EDGEMESH_REQUIRE_TOOLS=1`, as in
    /// CI, a missing one fails the test instead.
    async fn start() -> Option<Self> {
        let missing: Vec<&str> = [
            (Path::new(CHROMIUM).exists(), "chromium (make browser)"),
            (
                browser_dir().join("node_modules/playwright-core").exists(),
                "playwright-core (scripts/stack.sh test-tools-install)",
            ),
            (
                std::process::Command::new("node")
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success()),
                "node",
            ),
        ]
        .into_iter()
        .filter(|(present, _)| !present)
        .map(|(_, what)| what)
        .collect();
        if !missing.is_empty() {
            assert!(
                std::env::var("EDGEMESH_REQUIRE_TOOLS").as_deref() != Ok("1"),
                "the browser tests need {missing:?}"
            );
            eprintln!("SKIPPED: the browser tests need {missing:?}");
            return None;
        }
        let profile = tempfile::tempdir().expect("profile");
        let mut child = Command::new("node")
            .arg(browser_dir().join("driver.mjs"))
            .arg(CHROMIUM)
            .arg(profile.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the browser driver");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Some(Self {
            child,
            stdin,
            stdout,
            _profile: profile,
        })
    }

    async fn try_send(&mut self, command: Value) -> Result<Value, String> {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("to the driver");
        let answer = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
            .await
            .expect("the driver answers within a minute")
            .expect("read the driver")
            .expect("the driver is running");
        let answer: Value = serde_json::from_str(&answer).expect("JSON answer");
        match answer.get("error") {
            Some(error) => Err(error.as_str().unwrap_or_default().to_owned()),
            None => Ok(answer["ok"].clone()),
        }
    }

    async fn send(&mut self, command: Value) -> Value {
        let shown = command.to_string();
        self.try_send(command)
            .await
            .unwrap_or_else(|e| panic!("browser: {shown}: {e}"))
    }

    async fn goto(&mut self, url: &str) -> Value {
        self.send(json!({"op": "goto", "url": url})).await
    }

    async fn fill(&mut self, selector: &str, value: &str) {
        self.send(json!({"op": "fill", "selector": selector, "value": value}))
            .await;
    }

    async fn click(&mut self, selector: &str) -> Value {
        self.send(json!({"op": "click", "selector": selector}))
            .await
    }

    async fn text(&mut self, selector: &str) -> String {
        self.send(json!({"op": "text", "selector": selector})).await["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn texts(&mut self, selector: &str) -> Vec<String> {
        serde_json::from_value(
            self.send(json!({"op": "texts", "selector": selector}))
                .await["texts"]
                .clone(),
        )
        .expect("texts")
    }

    async fn url(&mut self) -> String {
        self.send(json!({"op": "url"})).await["url"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn screenshot(&mut self, name: &str) {
        let path = screenshots().join(name);
        self.send(json!({"op": "screenshot", "path": path})).await;
    }

    async fn close(mut self) {
        let _ = self.try_send(json!({"op": "close"})).await;
        let _ = self.child.wait().await;
    }
}

/// Where the page a driver command ended on is.
fn at(answer: &Value) -> &str {
    answer["url"].as_str().unwrap_or_default()
}

#[sqlx::test(migrations = false)]
async fn an_operator_runs_the_fleet_from_the_console_in_a_real_browser(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let Some(mut browser) = Browser::start().await else {
        return;
    };
    let stack = Stack::start(
        &database_url(&db),
        Options {
            clock: Some(WEDNESDAY_MORNING),
            ..Options::default()
        },
    )
    .await;
    let ui = format!("{}/ui", stack.api.api);
    let listed = stack
        .device("console-owner", "developer", "console-pi")
        .await;
    stack.report(&listed, json!({})).await;

    // Without a session, a page sends the browser to sign in; the API stays a 401 JSON error.
    let start = browser.goto(&format!("{ui}/fleet")).await;
    assert!(at(&start).ends_with("/ui/sign-in"), "{start}");
    let api = client(&std::fs::read_to_string(stack.state_dir.path().join("ca.pem")).expect("ca"))
        .get(format!("{}/api/v1/admin/devices", stack.api.api))
        .send()
        .await
        .expect("api");
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
    let body: Value = api.json().await.expect("a JSON error");
    assert_eq!(body["error"], "missing_token");

    // A wrong token is refused, on the page and in the audit.
    browser.fill("#token", "not-the-admin-token").await;
    let refused = browser.click("#sign-in").await;
    assert_eq!(refused["status"], 401, "{refused}");
    assert!(
        browser.text("#error").await.contains("not the admin token"),
        "the refusal is shown"
    );
    let audit = stack
        .api
        .admin_get("/audit?event_type=console&limit=10")
        .await;
    assert!(
        audit["records"]
            .as_array()
            .expect("records")
            .iter()
            .any(|r| r["action"] == "sign_in" && r["decision"] == "deny"),
        "a refused sign-in is audited: {audit}"
    );

    // The admin token opens a session: the fleet lists the device enrolled through the API.
    browser.fill("#token", &stack.api.admin_token).await;
    let signed_in = browser.click("#sign-in").await;
    assert!(at(&signed_in).ends_with("/ui/fleet"), "{signed_in}");
    // The refused sign-in's 401 is the only error a page shows; from here on there must be none.
    browser.send(json!({"op": "problems"})).await;
    let cookies = browser.send(json!({"op": "cookies"})).await;
    let cookie = cookies["cookies"]
        .as_array()
        .expect("cookies")
        .iter()
        .find(|c| c["name"] == "__Host-edgemesh-session")
        .cloned()
        .expect("the session cookie");
    assert_eq!(
        (&cookie["httpOnly"], &cookie["secure"], &cookie["sameSite"]),
        (&json!(true), &json!(true), &json!("Strict")),
        "{cookie}"
    );
    let rows = browser.texts("#devices tbody tr").await;
    let row = rows
        .iter()
        .find(|r| r.contains("console-pi"))
        .unwrap_or_else(|| panic!("console-pi is listed: {rows:?}"));
    assert!(
        row.contains("healthy") && row.contains("console-owner"),
        "{row}"
    );
    let detail = stack.api.admin_get("/devices/console-pi").await;
    let expiry = &detail["certificate_expires_at"].as_str().expect("expiry")[..10];
    assert!(
        row.contains(expiry),
        "the exact expiry date {expiry}: {row}"
    );
    browser.screenshot("fleet.png").await;

    // A token made in the console enrols a real agent, with the command the console shows.
    browser.goto(&format!("{ui}/tokens")).await;
    browser
        .send(json!({"op": "select", "selector": "#owner", "value": "console-owner"}))
        .await;
    browser.click("#create-token").await;
    let token = browser.text("#new-token").await.trim().to_owned();
    let command = browser.text("#enroll-command").await;
    assert!(token.starts_with("emt_"), "{token}");
    let agent_dir = tempfile::tempdir().expect("agent dir");
    std::fs::write(agent_dir.path().join("enrollment-token"), &token).expect("token file");
    let args: Vec<String> = command
        .split_whitespace()
        .skip(1) // edgemesh-agent
        .map(|a| {
            if a == "DEVICE_ID" {
                "console-agent-pi".to_owned()
            } else {
                a.to_owned()
            }
        })
        .map(|a| {
            if a == "enrollment-token" {
                agent_dir.path().join(a).display().to_string()
            } else {
                a
            }
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let enrolled = agent(agent_dir.path(), &args, &[]).await;
    assert!(enrolled.success, "{command}: {}", enrolled.stderr);
    let device = Device::from_dir(agent_dir);
    stack.report(&device, json!({})).await;
    assert_eq!(
        stack.get(&device, "/api/items").await.status,
        StatusCode::OK
    );

    // The live feed shows a request made through Envoy within 2 s.
    browser.goto(&format!("{ui}/live")).await;
    browser
        .send(json!({"op": "wait_text", "selector": "#live-state", "contains": "live", "timeout_ms": 10000}))
        .await;
    let sent = Instant::now();
    let answer = stack.get(&device, "/api/live-check").await;
    assert_eq!(answer.status, StatusCode::OK);
    let decision_id = answer.body["headers"]["x-edgemesh-decision-id"]
        .as_str()
        .expect("the decision id the upstream got")
        .to_owned();
    browser
        .send(json!({"op": "wait_text", "selector": "#live tbody tr", "contains": "/api/live-check", "timeout_ms": 2000}))
        .await;
    let shown_after = sent.elapsed();
    let live_rows = browser.texts("#live tbody tr").await;
    assert!(
        live_rows
            .iter()
            .any(|r| r.contains("console-agent-pi") && r.contains("allow")),
        "{live_rows:?}"
    );
    eprintln!("the live feed showed the request {shown_after:?} after it was sent");
    browser.screenshot("live.png").await;

    // The audit page finds that decision, and its CSV download holds it.
    browser
        .goto(&format!(
            "{ui}/audit?device=console-agent-pi&event_type=authorization"
        ))
        .await;
    let records = browser.texts("#records tbody tr").await;
    assert!(
        records.iter().any(|r| r.contains(&decision_id)),
        "{decision_id} in {records:?}"
    );
    let csv = browser
        .send(json!({"op": "download", "selector": "#csv"}))
        .await;
    let csv_body = csv["body"].as_str().expect("CSV");
    assert!(csv_body.starts_with("id,occurred_at,"), "{csv_body}");
    assert!(
        csv_body.contains(&decision_id),
        "the CSV holds {decision_id}"
    );

    // A form posted from another site does not revoke anything.
    browser
        .goto(&format!("{ui}/devices/console-pi/revoke"))
        .await;
    let csrf = browser
        .send(json!({"op": "value", "selector": "input[name=csrf]"}))
        .await["value"]
        .as_str()
        .expect("csrf")
        .to_owned();
    let forged = browser
        .send(json!({
            "op": "cross_site_post",
            "url": format!("{ui}/devices/console-pi/revoke"),
            "fields": {"csrf": csrf, "reason": "forged"},
        }))
        .await;
    assert!(
        at(&forged).ends_with("/ui/sign-in") || forged["status"] == 403,
        "refused: {forged}"
    );
    assert_eq!(
        stack.api.admin_get("/devices/console-pi").await["status"],
        "active",
        "the cross-site form revoked nothing"
    );

    // Revoking from the device page: the device's next requests through Envoy are refused.
    browser
        .goto(&format!("{ui}/devices/console-agent-pi"))
        .await;
    let certificates = browser.texts("#certificates tbody tr").await;
    assert!(
        certificates.iter().any(|c| c.contains("in force")),
        "{certificates:?}"
    );
    browser.screenshot("device.png").await;
    browser.click("#revoke").await;
    browser.fill("#reason", "lost on a train").await;
    let revoked = browser.click("#confirm-revoke").await;
    assert!(
        at(&revoked).ends_with("/ui/devices/console-agent-pi"),
        "{revoked}"
    );
    assert_eq!(browser.text("#status").await, "revoked");
    let revoked_at = Instant::now();
    let mut answer = stack.get(&device, "/api/after-revoke").await;
    while answer.status != StatusCode::FORBIDDEN && revoked_at.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        answer = stack.get(&device, "/api/after-revoke").await;
    }
    assert_eq!(
        answer.status,
        StatusCode::FORBIDDEN,
        "refused within a second of the revocation"
    );

    // Signing out ends the session: the old cookie no longer opens a page.
    browser.click(".sign-out button").await;
    assert!(browser.url().await.ends_with("/ui/sign-in"));
    let start = browser.goto(&format!("{ui}/fleet")).await;
    assert!(at(&start).ends_with("/ui/sign-in"), "{start}");
    let old_cookie = format!(
        "__Host-edgemesh-session={}",
        cookie["value"].as_str().expect("value")
    );
    let replay = reqwest::Client::builder()
        .use_preconfigured_tls(
            edgemesh_core::tls::client_config(
                &std::fs::read_to_string(stack.state_dir.path().join("ca.pem")).expect("ca"),
                None,
            )
            .expect("tls"),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(format!("{ui}/fleet"))
        .header("cookie", old_cookie)
        .send()
        .await
        .expect("replay");
    assert_eq!(replay.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        replay.headers()["location"],
        "/ui/sign-in",
        "the signed-out cookie is sent to sign in"
    );

    let problems = browser.send(json!({"op": "problems"})).await;
    assert_eq!(
        problems["problems"],
        json!([]),
        "no script error or blocked resource on any page"
    );
    browser.close().await;
}
