//! The OpenAPI document against the server it describes: served, valid OpenAPI 3.1, covering every
//! route, and schema-fuzzed by schemathesis on both listeners.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{TestApp, https_client, spawn_app};

/// A tool installed in the project's virtualenv (`scripts/stack.sh test-tools-install`).
fn venv_tool(name: &str) -> PathBuf {
    let python = std::env::var_os("EDGEMESH_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python3"),
        PathBuf::from,
    );
    let tool = python.parent().expect("python's directory").join(name);
    assert!(
        tool.exists(),
        "{} is missing: run scripts/stack.sh test-tools-install",
        tool.display()
    );
    tool
}

async fn document(app: &TestApp) -> Value {
    let response = app
        .http
        .get(format!("{}/api/v1/openapi.json", app.api))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.expect("the document is JSON")
}

/// Every operation of the document: (method, path, the port of the listener that serves it).
fn operations(doc: &Value) -> Vec<(Method, String, u16)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let url = item["servers"][0]["url"]
            .as_str()
            .expect("each path names its listener");
        let port: u16 = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port");
        for (method, name) in [
            (Method::GET, "get"),
            (Method::POST, "post"),
            (Method::PUT, "put"),
            (Method::PATCH, "patch"),
            (Method::DELETE, "delete"),
        ] {
            if item.get(name).is_some() {
                found.push((method, path.clone(), port));
            }
        }
    }
    found
}

#[sqlx::test(migrations = "../migrations")]
async fn the_document_is_valid_openapi_3_1_and_its_reference_page_lists_every_path(db: PgPool) {
    let app = spawn_app(db).await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "OpenAPI 3.1: {}",
        doc["openapi"]
    );
    let file = app.state_dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).expect("write");
    let validated = Command::new(venv_tool("openapi-spec-validator"))
        .arg(&file)
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        validated.status.success(),
        "openapi-spec-validator: {:.2000}{:.2000}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    // The security schemes, the error body, the limits.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["admin_token"]["scheme"], "bearer");
    assert_eq!(schemes["device_certificate"]["type"], "mutualTLS");
    assert!(doc["components"]["schemas"]["ErrorBody"]["properties"]["error"].is_object());
    let limit = &doc["paths"]["/api/v1/admin/devices"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "limit")
        .expect("limit")["schema"];
    assert_eq!(
        (limit["minimum"].as_i64(), limit["maximum"].as_i64()),
        (Some(1), Some(1000))
    );
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if path.starts_with("/api/v1/admin/") {
            for (method, operation) in item.as_object().expect("item") {
                if method != "servers" {
                    assert!(
                        operation["responses"]["429"]["headers"]["Retry-After"].is_object(),
                        "{method} {path} documents the admin rate limit"
                    );
                }
            }
        }
    }
    let enroll = &doc["paths"]["/api/v1/enroll"]["post"]["responses"];
    assert!(
        enroll["429"]["headers"]["Retry-After"].is_object(),
        "{enroll}"
    );
    assert!(
        enroll["413"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("body_too_large"))
    );

    let page = app
        .http
        .get(format!("{}/api/v1/docs", app.api))
        .send()
        .await
        .expect("request");
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let html = page.text().await.expect("text");
    assert!(!html.contains("<script"), "no script");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "loads nothing from elsewhere"
    );
    for (method, path, _) in operations(&doc) {
        assert!(
            html.contains(&format!("<code>{path}</code>")),
            "{method} {path} is on the reference page"
        );
    }
}

/// Routes exist only through `routes!` (which takes each one's path and method from its documented
/// handler), and every documented operation is routed: no route the document misses, no operation
/// without a route.
#[sqlx::test(migrations = "../migrations")]
async fn the_document_and_the_routes_are_the_same_set(db: PgPool) {
    // A route added any other way (`.route`, `.route_service`, `.nest_service`, a plain `Router`)
    // would be served without being described.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut undocumented = Vec::new();
    let mut stack = vec![src];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                // The console is HTML for people under /ui (README), not the API.
                if path.file_name().is_some_and(|n| n != "console") {
                    stack.push(path);
                }
                continue;
            }
            // The metrics listener is not the API: Prometheus' text format, on its own port.
            if path.file_name().is_some_and(|n| n == "metrics.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            for (n, line) in text.lines().enumerate() {
                let plain_router = line
                    .replace("OpenApiRouter::new()", "")
                    .contains("Router::new()");
                if plain_router
                    || [".route(", ".route_service(", ".nest_service("]
                        .iter()
                        .any(|needle| line.contains(needle))
                {
                    undocumented.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "routes that bypass the document:\n{}",
        undocumented.join("\n")
    );

    let app = spawn_app(db).await;
    let token = app.create_token("router-owner", 5).await;
    let device = app.enroll(&token, "router-pi").await;
    let device_http = https_client(&app.ca_pem, Some((&device.cert_pem, &device.key_pem)));
    let doc = document(&app).await;
    let ops = operations(&doc);
    assert!(ops.len() >= 19, "every operation: {ops:?}");
    for (method, path, port) in ops {
        let concrete = path
            .replace("{id}", "00000000-0000-4000-8000-000000000000")
            .replace("{serial}", "00");
        let (client, base) = if port == 8444 {
            (&app.http, &app.api)
        } else {
            assert_eq!(port, 8443, "{path}: a listener of ours");
            (&device_http, &app.device_api)
        };
        let response = client
            .request(method.clone(), format!("{base}{concrete}"))
            .bearer_auth(&app.admin_token)
            .send()
            .await
            .expect("request");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} is routed"
        );
        assert!(
            !body.contains("\"no such endpoint\""),
            "{method} {path} is routed on its listener: {status} {body}"
        );
    }
}

/// schemathesis against both listeners, with the document the server serves: no 5xx, every status,
/// content type, header and body as documented, invalid input refused, and refusals write nothing.
#[sqlx::test(migrations = "../migrations")]
async fn schemathesis_finds_no_fault_on_either_listener(db: PgPool) {
    let app = spawn_app(db).await;
    let token = app.create_token("fuzz-owner", 5).await;
    let device = app.enroll(&token, "fuzz-pi").await;
    let dir = app.state_dir.path();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let doc = write("openapi.json", &document(&app).await.to_string());
    let ca = write("fuzz-ca.pem", &app.ca_pem);
    let cert = write("fuzz-device.pem", &device.cert_pem);
    let key = write("fuzz-device-key.pem", &device.key_pem);
    // The admin token goes in through the environment, never on a command line.
    let config = write(
        "schemathesis.toml",
        "headers = { Authorization = \"Bearer ${EDGEMESH_FUZZ_ADMIN_TOKEN}\" }\n",
    );

    let files = FuzzFiles {
        config,
        doc,
        ca,
        cert,
        key,
        reports: Path::new(env!("CARGO_TARGET_TMPDIR")).join("schemathesis"),
    };
    let checks = "not_a_server_error,status_code_conformance,content_type_conformance,\
                  response_headers_conformance,response_schema_conformance";
    let before = app.snapshot().await;
    let negative = format!("{checks},negative_data_rejection");
    schemathesis(&app, &files, "device", "negative", &negative).await;
    schemathesis(&app, &files, "api", "negative", &negative).await;
    assert_eq!(
        app.snapshot().await,
        before,
        "requests refused for invalid input wrote nothing"
    );
    schemathesis(&app, &files, "device", "positive", checks).await;
    schemathesis(&app, &files, "api", "positive", checks).await;
}

struct FuzzFiles {
    config: PathBuf,
    doc: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    reports: PathBuf,
}

/// One schemathesis run against one listener (the server runs on this test's runtime, so the run is
/// awaited, not waited for).
async fn schemathesis(app: &TestApp, files: &FuzzFiles, listener: &str, mode: &str, checks: &str) {
    let (url, filter) = match listener {
        "device" => (&app.device_api, ["--include-tag", "device"]),
        _ => (&app.api, ["--exclude-tag", "device"]),
    };
    let report_dir = files.reports.join(format!("{listener}-{mode}"));
    std::fs::create_dir_all(&report_dir).expect("report directory");
    let output = tokio::process::Command::new(venv_tool("st"))
        // Its working files (a cache) go beside the report, not into the checkout.
        .current_dir(&report_dir)
        .env("EDGEMESH_FUZZ_ADMIN_TOKEN", &app.admin_token)
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(&files.config)
        .arg("run")
        .arg(&files.doc)
        .args(["--url", url])
        .args(filter)
        .arg("--tls-verify")
        .arg(&files.ca)
        .arg("--request-cert")
        .arg(&files.cert)
        .arg("--request-cert-key")
        .arg(&files.key)
        .args(["--mode", mode, "--seed", "20261202", "--max-examples", "60"])
        .args(["--phases", "examples,coverage,fuzzing", "--workers", "1"])
        // A connection the loaded machine drops (a listener's header timeout under a parallel test
        // run) is retried; an answer is never retried, so every check still sees every answer.
        .args(["--request-retries", "2"])
        .args(["--checks", checks])
        .args(["--generation-database", "none", "--report", "junit"])
        .arg("--report-dir")
        .arg(&report_dir)
        .output()
        .await
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis ({listener} listener, {mode}) found faults; report in {}:\n{stdout}\n{}",
        report_dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    // The summary: operations tested and test cases generated.
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    let after = |heading: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(heading))
            .map(|i| {
                lines[i + 1..]
                    .iter()
                    .take_while(|l| !l.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let (operations, cases) = (after("API Operations:"), after("Test cases:"));
    println!(
        "schemathesis, {listener} listener, {mode} mode: operations {operations}; test cases {cases}"
    );
    assert!(
        !cases.is_empty(),
        "schemathesis printed its summary:\n{stdout}"
    );
}
