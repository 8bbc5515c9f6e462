//! `edgemeshctl` against the real stack: every command, its JSON parsed, `audit query --follow` seeing a
//! request made through Envoy, and each exit status.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::{bin, database_url};
use crate::proxy::{Device, Options, Stack};

struct Ctl<'a> {
    stack: &'a Stack,
    /// The working directory and HOME: no configuration file, no local `.edgemesh/`.
    home: tempfile::TempDir,
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        assert_eq!(self.code, 0, "success: {}", self.stderr);
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is one JSON document ({e}): {}", self.stdout))
    }
}

impl Ctl<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let state = self.stack.state_dir.path();
        let mut command = Command::new(bin("edgemeshctl"));
        command
            .args(args)
            .current_dir(self.home.path())
            .env("HOME", self.home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("EDGEMESH_CONFIG")
            .env("EDGEMESH_SERVER", &self.stack.api.api)
            .env("EDGEMESH_CA_FILE", state.join("ca.pem"))
            .env("EDGEMESH_ADMIN_TOKEN_FILE", state.join("admin-token"));
        command
    }

    /// `audit query --follow` of `device`'s decisions, as NDJSON on a pipe.
    fn follow(&self, device: &str) -> tokio::process::Child {
        self.command(&[
            "audit",
            "query",
            "--follow",
            "--device",
            device,
            "--event-type",
            "authorization",
            "--interval",
            "0.2",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("follow")
    }

    async fn run(&self, args: &[&str]) -> Outcome {
        self.run_with(args, &[]).await
    }

    async fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Outcome {
        let output = self
            .command(args)
            .envs(env.iter().copied())
            .output()
            .await
            .expect("run edgemeshctl");
        Outcome {
            code: output.status.code().expect("exited"),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

#[sqlx::test(migrations = false)]
async fn every_command_works_against_the_real_control_api(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let stack = Stack::start(&database_url(&db), Options::default()).await;
    let ctl = Ctl {
        stack: &stack,
        home: tempfile::tempdir().expect("tempdir"),
    };

    // users
    let carol = ctl
        .run(&[
            "users",
            "create",
            "carol",
            "--email",
            "carol@example.com",
            "--role",
            "admin",
            "-o",
            "json",
        ])
        .await
        .json();
    assert_eq!(
        (carol["id"].as_str(), carol["role"].as_str()),
        (Some("carol"), Some("admin"))
    );
    let again = ctl
        .run(&[
            "users",
            "create",
            "carol",
            "--email",
            "c2@example.com",
            "--role",
            "admin",
        ])
        .await;
    assert_eq!(again.code, 1, "a refusal exits 1");
    assert!(
        again.stderr.contains("user_exists"),
        "the server's code is shown: {}",
        again.stderr
    );
    assert!(again.stdout.is_empty(), "nothing on stdout for a refusal");
    let users = ctl.run(&["users", "list", "-o", "json"]).await.json();
    assert!(
        users["users"]
            .as_array()
            .expect("users")
            .iter()
            .any(|u| u["id"] == "carol")
    );
    let table = ctl.run(&["users", "list"]).await;
    assert!(
        table.stdout.starts_with("id ") && table.stdout.contains("carol@example.com"),
        "{}",
        table.stdout
    );

    // tokens: the printed enroll command, run as printed, enrolls a device
    let created = ctl
        .run(&[
            "tokens",
            "create",
            "--owner",
            "carol",
            "--ttl",
            "10m",
            "--max-uses",
            "2",
            "-o",
            "json",
        ])
        .await
        .json();
    let token = created["token"].as_str().expect("token");
    assert!(token.starts_with("emt_"));
    let fingerprint = stack.api.served_ca_fingerprint().await;
    let enroll = created["enroll_command"].as_str().expect("enroll command");
    assert!(
        enroll.contains(&format!("--ca-fingerprint {fingerprint}")),
        "{enroll}"
    );
    assert!(
        !enroll.contains(token),
        "the token is not on the command line"
    );
    let agent_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(agent_dir.path().join("enrollment-token"), token).expect("token file");
    let words: Vec<String> = enroll
        .split_whitespace()
        .map(|w| {
            if w == "DEVICE_ID" {
                "pi-carol".to_owned()
            } else {
                w.to_owned()
            }
        })
        .collect();
    assert_eq!(words[0], "edgemesh-agent");
    let enrolled = Command::new(bin("edgemesh-agent"))
        .arg("--state-dir")
        .arg(agent_dir.path())
        .args(&words[1..])
        .current_dir(agent_dir.path())
        .output()
        .await
        .expect("agent");
    assert!(
        enrolled.status.success(),
        "the printed command enrolls: {}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    let tokens = ctl.run(&["tokens", "list", "-o", "json"]).await.json();
    let listed = tokens["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["id"] == created["id"])
        .expect("the token is listed")
        .clone();
    assert_eq!(listed["uses"], 1);
    assert!(
        listed.get("token").is_none(),
        "the token itself is never listed"
    );
    let id = created["id"].as_str().expect("id");
    let revoked = ctl
        .run(&["tokens", "revoke", id, "-o", "json"])
        .await
        .json();
    assert!(revoked["revoked_at"].is_string());

    // devices, filtered; health
    let device = Device::from_dir(agent_dir);
    let ids = |page: &Value| -> Vec<String> {
        page["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .map(|d| d["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let list = |args: &'static [&'static str]| {
        let ctl = &ctl;
        async move {
            let mut all = vec!["devices", "list", "-o", "json"];
            all.extend_from_slice(args);
            ids(&ctl.run(&all).await.json())
        }
    };
    assert_eq!(list(&["--owner", "carol"]).await, ["pi-carol"]);
    assert_eq!(
        list(&["--verdict", "unknown"]).await,
        ["pi-carol"],
        "never reported"
    );
    assert!(list(&["--verdict", "healthy"]).await.is_empty());
    assert!(list(&["--status", "revoked"]).await.is_empty());
    assert!(list(&["--owner", "nobody"]).await.is_empty());
    stack.report(&device, json!({})).await;
    assert_eq!(
        list(&["--verdict", "healthy", "--status", "active"]).await,
        ["pi-carol"]
    );
    let history = ctl
        .run(&["health", "history", "pi-carol", "-o", "json"])
        .await
        .json();
    assert_eq!(history["reports"].as_array().map(Vec::len), Some(1));
    assert_eq!(history["reports"][0]["status"], "healthy");

    // audit query, and --follow seeing a request made through Envoy
    let mut follow = ctl.follow("pi-carol");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = stack.get(&device, "/api/orders?seen-by=follow").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = followed(&mut follow, Duration::from_secs(20), |path| {
        path == "/api/orders?seen-by=follow" || path == "/api/orders"
    })
    .await;
    assert_eq!(
        (seen["decision"].as_str(), seen["device_id"].as_str()),
        (Some("allow"), Some("pi-carol"))
    );
    follow.kill().await.expect("stop follow");
    let page = ctl
        .run(&[
            "audit",
            "query",
            "--device",
            "pi-carol",
            "--decision",
            "allow",
            "--limit",
            "5",
            "-o",
            "json",
        ])
        .await
        .json();
    assert!(page["records"].as_array().is_some_and(|r| !r.is_empty()));

    // certificates and revocation
    let certs = ctl
        .run(&["certs", "list", "pi-carol", "-o", "json"])
        .await
        .json();
    let serial = certs["certificates"][0]["serial"]
        .as_str()
        .expect("serial")
        .to_owned();
    let revoked = ctl
        .run(&[
            "certs",
            "revoke",
            &serial,
            "--reason",
            "key rotated",
            "-o",
            "json",
        ])
        .await
        .json();
    assert_eq!(revoked["revocation_reason"], "key rotated");
    let shown = ctl
        .run(&["devices", "show", "pi-carol", "-o", "json"])
        .await
        .json();
    assert!(shown["certificates"][0]["revoked_at"].is_string());
    let gone = ctl
        .run(&[
            "devices", "revoke", "pi-carol", "--reason", "lost", "-o", "json",
        ])
        .await
        .json();
    assert_eq!(gone["status"], "revoked");
    let unknown = ctl.run(&["devices", "show", "nope"]).await;
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("unknown_device"),
        "{}",
        unknown.stderr
    );

    // status: every service with its version
    let metrics = format!("http://127.0.0.1:{}/metrics", stack.ext_authz.metrics_port);
    let status = ctl
        .run(&[
            "status",
            "--envoy-admin",
            &stack.envoy_admin,
            "--ext-authz-metrics",
            &metrics,
            "-o",
            "json",
        ])
        .await
        .json();
    assert_eq!(status["all_up"], true, "{status}");
    for service in status["services"].as_array().expect("services") {
        assert!(service["version"].is_string(), "{service}");
    }
    let down = ctl
        .run(&[
            "status",
            "--envoy-admin",
            "http://127.0.0.1:1",
            "--ext-authz-metrics",
            &metrics,
        ])
        .await;
    assert_eq!(down.code, 1, "a service down exits 1");
    assert!(down.stdout.contains("DOWN"), "{}", down.stdout);

    // exit statuses of usage errors and of an unreachable server
    let usage = ctl.run(&["devices", "list", "--limit", "many"]).await;
    assert_eq!(usage.code, 64, "{}", usage.stderr);
    let no_token = ctl
        .run_with(
            &["users", "list"],
            &[("EDGEMESH_ADMIN_TOKEN_FILE", "/nonexistent/admin-token")],
        )
        .await;
    assert_eq!(no_token.code, 64);
    assert!(
        no_token.stderr.contains("/nonexistent/admin-token"),
        "{}",
        no_token.stderr
    );
    let open_file = ctl.home.path().join("readable-token");
    std::fs::write(&open_file, "x").expect("write");
    set_mode(&open_file, 0o644);
    let readable = ctl
        .run_with(
            &["users", "list"],
            &[(
                "EDGEMESH_ADMIN_TOKEN_FILE",
                open_file.to_str().expect("utf-8"),
            )],
        )
        .await;
    assert_eq!(readable.code, 64);
    assert!(readable.stderr.contains("chmod 600"), "{}", readable.stderr);
    let unreachable = ctl
        .run_with(
            &["users", "list"],
            &[("EDGEMESH_SERVER", "https://127.0.0.1:1")],
        )
        .await;
    assert_eq!(unreachable.code, 3, "{}", unreachable.stderr);
}

/// The configuration file gives the server, CA and token file; the policy tools need no server.
#[sqlx::test(migrations = false)]
async fn a_configuration_file_is_enough_and_policies_are_checked_locally(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let stack = Stack::start(&database_url(&db), Options::default()).await;
    let home = tempfile::tempdir().expect("tempdir");
    let state = stack.state_dir.path();
    let config_dir = home.path().join(".config/edgemesh");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    std::fs::write(
        config_dir.join("config.toml"),
        format!(
            "server = \"{}\"\nca_file = \"{}\"\nadmin_token_file = \"{}\"\n",
            stack.api.api,
            state.join("ca.pem").display(),
            state.join("admin-token").display()
        ),
    )
    .expect("config");
    let run = |args: &[&str]| {
        let mut command = Command::new(bin("edgemeshctl"));
        command
            .args(args)
            .current_dir(home.path())
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("EDGEMESH_CONFIG")
            .env_remove("EDGEMESH_SERVER")
            .env_remove("EDGEMESH_CA_FILE")
            .env_remove("EDGEMESH_ADMIN_TOKEN_FILE");
        async move { command.output().await.expect("run") }
    };
    let listed = run(&["users", "list", "-o", "json"]).await;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let users: Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert!(users["users"].is_array());

    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let policy_dir = policies.to_str().expect("utf-8");
    let tested = run(&["policy", "test", "--policy-dir", policy_dir, "-o", "json"]).await;
    assert!(
        tested.status.success(),
        "{}: {}{}",
        tested.status,
        String::from_utf8_lossy(&tested.stdout),
        String::from_utf8_lossy(&tested.stderr)
    );
    let report: Value = serde_json::from_slice(&tested.stdout).expect("json");
    assert_eq!(report["failed"], 0);
    assert!(report["tests"].as_array().is_some_and(|t| t.len() > 10));
    let example = policies.join("examples/deny-role.json");
    let evaluated = run(&[
        "policy",
        "eval",
        "--policy-dir",
        policy_dir,
        "--input",
        example.to_str().expect("utf-8"),
    ])
    .await;
    assert!(
        evaluated.status.success(),
        "{}",
        String::from_utf8_lossy(&evaluated.stderr)
    );
    let decision: Value = serde_json::from_slice(&evaluated.stdout).expect("json");
    assert_eq!(decision["allow"], false);
    let missing = run(&[
        "policy",
        "eval",
        "--policy-dir",
        "/nonexistent",
        "--input",
        "-",
    ])
    .await;
    assert_eq!(
        missing.status.code(),
        Some(64),
        "an unreadable policy directory is a usage error"
    );
}

/// The first record a follow prints whose path `wanted` accepts, within `limit`.
async fn followed(
    follow: &mut tokio::process::Child,
    limit: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Value {
    let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    tokio::time::timeout(limit, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            let record: Value = serde_json::from_str(&line).expect("each line is a JSON record");
            if record["path"].as_str().is_some_and(&wanted) {
                return record;
            }
        }
        panic!("the follow ended without the record")
    })
    .await
    .unwrap_or_else(|_| panic!("the follow shows the record within {limit:?}"))
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `audit query --follow` keeps its place when the control API goes away: a decision made through
/// Envoy while it is down is shown once it is back.
#[sqlx::test(migrations = false)]
async fn a_followed_audit_resumes_after_the_control_api_restarts(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let url = database_url(&db);
    let stack = Stack::start(&url, Options::default()).await;
    let device = stack.device("rita", "admin", "pi-rita").await;
    stack.report(&device, json!({})).await;
    let ctl = Ctl {
        stack: &stack,
        home: tempfile::tempdir().expect("tempdir"),
    };
    let mut follow = ctl.follow("pi-rita");
    drop(ctl);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let Stack {
        api,
        envoy_url,
        state_dir,
        ..
    } = stack;
    let ports = api.ports();
    assert!(api.stop().await, "the control API stops");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let response = device
        .client
        .get(format!("{envoy_url}/api/orders?while=away"))
        .send()
        .await
        .expect("through Envoy");
    assert_eq!(
        response.status(),
        200,
        "decisions do not need the control API"
    );
    let _api = crate::helpers::ControlApi::start_on(&url, state_dir.path(), ports).await;

    let seen = followed(&mut follow, Duration::from_secs(30), |path| {
        path.contains("while=away")
    })
    .await;
    assert_eq!(seen["decision"], "allow");
    follow.kill().await.expect("stop follow");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(
        &mut follow.stderr.take().expect("stderr"),
        &mut stderr,
    )
    .await
    .expect("stderr");
    assert!(
        stderr.contains("retrying") && stderr.contains("reconnected"),
        "it said so: {stderr}"
    );
}
