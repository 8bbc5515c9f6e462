use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use tokio::process::{Child, Command};

/// A workspace binary, built next to this test's own executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --all-targets` first (make test does)",
        path.display()
    );
    path
}

/// The repository's policies.
pub fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// A port on 127.0.0.1 for a process a test starts, reserved for the rest of the test.
///
/// Asking the kernel for port 0 and letting go of it races: between the drop and the child's bind,
/// any connection on the machine may take it as its source port (the kernel hands out both from the
/// ephemeral range), and a parallel test may be handed it too. So ports come from below the
/// ephemeral range, where no connection's source port is taken from, and each is reserved across
/// nextest's test processes by an advisory lock on a file of its own, held until this process ends.
pub fn free_port() -> u16 {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (
        ephemeral_start.saturating_sub(12_000).max(1024),
        ephemeral_start,
    );
    let dir = std::env::temp_dir().join("edgemesh-test-ports");
    std::fs::create_dir_all(&dir).expect("port reservation directory");
    let span = u32::from(high - low);
    let start = std::process::id().wrapping_mul(7919) % span;
    for i in 0..span {
        let port = low + u16::try_from((start + i * 97) % span).unwrap_or(0);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{port}.lock")))
            .expect("port reservation file");
        if lock.try_lock().is_err() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(lock);
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// The URL of the database `#[sqlx::test]` created for this test.
pub fn database_url(options: &PgConnectOptions) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (server, _) = base.rsplit_once('/').expect("DATABASE_URL has a database");
    format!(
        "{server}/{}",
        options.get_database().expect("test database")
    )
}

/// A background process stopped on drop (SIGKILL) or gracefully with `stop` (SIGTERM).
pub struct Process {
    child: Child,
}

impl Process {
    pub fn spawn(command: &mut Command) -> Self {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        Self { child }
    }

    /// Takes over a child spawned with `kill_on_drop`.
    pub fn from_child(child: Child) -> Self {
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("a running process has a pid")
    }

    /// Whether it has not exited yet.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// SIGKILL, as the OOM killer would, and waits for the exit.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("kill -9");
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then answers whether it exited cleanly within 20 s.
    pub async fn stop(&mut self) -> bool {
        let Some(pid) = self.child.id() else {
            return false;
        };
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM");
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => false,
        }
    }
}

/// A running `edgemesh-control-api` process.
pub struct ControlApi {
    process: Process,
    ports: (u16, u16),
    pub api: String,
    pub device_api: String,
    /// `http://127.0.0.1:<port>/metrics`.
    pub metrics: String,
    pub http: reqwest::Client,
    pub admin_token: String,
}

impl ControlApi {
    pub async fn start(database_url: &str, state_dir: &Path) -> Self {
        Self::start_on(database_url, state_dir, (free_port(), free_port())).await
    }

    /// Starts on given (API, device) ports: a restart keeps its clients' addresses.
    pub async fn start_on(database_url: &str, state_dir: &Path, ports: (u16, u16)) -> Self {
        Self::start_with(database_url, state_dir, ports, &[]).await
    }

    /// `start_on` with more environment.
    pub async fn start_with(
        database_url: &str,
        state_dir: &Path,
        (api_port, device_port): (u16, u16),
        env: &[(&str, &str)],
    ) -> Self {
        let metrics_port = free_port();
        let process = Process::spawn(
            Command::new(bin("edgemesh-control-api"))
                .envs(env.iter().copied())
                .env(
                    "EDGEMESH_CONTROL_API_METRICS_LISTEN",
                    format!("127.0.0.1:{metrics_port}"),
                )
                .env("EDGEMESH_DATABASE_URL", database_url)
                .env("EDGEMESH_STATE_DIR", state_dir)
                .env("EDGEMESH_API_LISTEN", format!("127.0.0.1:{api_port}"))
                .env("EDGEMESH_DEVICE_LISTEN", format!("127.0.0.1:{device_port}"))
                .env("EDGEMESH_POLICY_DIR", policies_dir()),
        );
        let api = format!("https://127.0.0.1:{api_port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let ca_path = state_dir.join("ca.pem");
        let http = loop {
            assert!(
                Instant::now() < deadline,
                "control-api did not become ready within 30 s"
            );
            if let Ok(ca) = std::fs::read_to_string(&ca_path) {
                let http = client(&ca);
                if http
                    .get(format!("{api}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    break http;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let admin_token = std::fs::read_to_string(state_dir.join("admin-token"))
            .expect("admin token")
            .trim()
            .to_owned();
        Self {
            process,
            ports: (api_port, device_port),
            api,
            device_api: format!("https://127.0.0.1:{device_port}"),
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            http,
            admin_token,
        }
    }

    /// Sends SIGTERM and answers whether the process exited successfully (a graceful shutdown).
    pub async fn stop(mut self) -> bool {
        self.process.stop().await
    }

    pub fn ports(&self) -> (u16, u16) {
        self.ports
    }

    pub async fn admin_get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/api/v1/admin{path}", self.api))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .expect("request");
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.expect("json")
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/api/v1/admin{path}", self.api))
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .expect("request");
        assert!(
            response.status().is_success(),
            "POST {path}: {}",
            response.status()
        );
        response.json().await.expect("json")
    }

    /// SHA-256 of the CA certificate served at `/api/v1/ca.pem`.
    pub async fn served_ca_fingerprint(&self) -> String {
        let pem = self
            .http
            .get(format!("{}/api/v1/ca.pem", self.api))
            .send()
            .await
            .expect("ca.pem")
            .text()
            .await
            .expect("pem");
        edgemesh_core::cert::Fingerprint::of(
            &edgemesh_core::cert::first_pem_der(&pem).expect("PEM certificate"),
        )
        .to_string()
    }

    /// Creates a developer and a one-use token for them; answers (token, CA fingerprint).
    pub async fn token_for(&self, owner: &str) -> (String, String) {
        self.token_for_role(owner, "developer").await
    }

    /// Creates an owner with `role` and a one-use token; answers (token, CA fingerprint).
    pub async fn token_for_role(&self, owner: &str, role: &str) -> (String, String) {
        self.admin_post(
            "/users",
            json!({"id": owner, "email": format!("{owner}@example.com"), "role": role}),
        )
        .await;
        let created = self
            .admin_post(
                "/tokens",
                json!({"owner": owner, "ttl_seconds": 600, "max_uses": 1}),
            )
            .await;
        (
            created["token"].as_str().expect("token").to_owned(),
            created["ca_fingerprint"]
                .as_str()
                .expect("fingerprint")
                .to_owned(),
        )
    }
}

pub fn client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(edgemesh_core::tls::client_config(ca_pem, None).expect("tls"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Output of one `edgemesh-agent` run.
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the agent with `args` against `state_dir`, with extra environment variables.
pub async fn agent(state_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let output = Command::new(bin("edgemesh-agent"))
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run agent");
    Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `edgemesh-agent enroll` against `api` with the token in the environment, as an operator would run it.
pub async fn agent_enroll(
    state_dir: &Path,
    api: &ControlApi,
    token: &str,
    fingerprint: &str,
    device: &str,
) -> Run {
    agent(
        state_dir,
        &[
            "enroll",
            "--server",
            &api.api,
            "--ca-fingerprint",
            fingerprint,
            "--device-id",
            device,
        ],
        &[("EDGEMESH_ENROLLMENT_TOKEN", token)],
    )
    .await
}

/// A metric's value in a Prometheus exposition (0 if absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
