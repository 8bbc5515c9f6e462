//! The enforcement stack for end-to-end tests: the real Envoy (from `.venv`), the real ext-authz, the
//! demo upstream and the control API, each on free ports, over a database of the test's own.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgemesh_core::api::HealthReport;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::process::Command;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{ControlApi, Process, agent_enroll, bin, free_port, policies_dir};

pub fn envoy_bin() -> PathBuf {
    let path = std::env::var_os("EDGEMESH_ENVOY_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/envoy"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "Envoy not found at {} (scripts/stack.sh envoy-install, which make test runs, installs it)",
        path.display()
    );
    path
}

async fn wait_until<F, Fut>(what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready().await {
        assert!(Instant::now() < deadline, "{what} not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long a committed change may take to reach ext-authz (its NOTIFY) in the tests.
pub const PROPAGATION_BOUND: Duration = Duration::from_secs(2);

/// An ext-authz server.
pub struct ExtAuthz {
    pub process: Process,
    pub port: u16,
    pub metrics_port: u16,
    /// How it was started, to start it again.
    command: Option<Command>,
}

impl ExtAuthz {
    /// Starts ext-authz with more environment `env` and waits until its gRPC health service says
    /// SERVING.
    pub async fn start(
        database_url: &str,
        port: u16,
        policy_dir: &Path,
        clock: Option<&str>,
        state: &Path,
        env: &[(&'static str, String)],
    ) -> Self {
        let metrics_port = free_port();
        let command = || {
            let mut command =
                Self::command(database_url, (port, metrics_port), policy_dir, clock, state);
            command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
            command
        };
        let process = Process::spawn(&mut command());
        wait_until("ext-authz", || async move {
            grpc_health(port).await == Some(ServingStatus::Serving)
        })
        .await;
        Self {
            process,
            port,
            metrics_port,
            command: Some(command()),
        }
    }

    /// Starts it again, once, as it was started (same ports, state and spool) and waits until
    /// SERVING.
    pub async fn restart(&mut self) {
        let mut command = self.command.take().expect("a command to restart with");
        self.process = Process::spawn(&mut command);
        let port = self.port;
        wait_until("ext-authz", || async move {
            grpc_health(port).await == Some(ServingStatus::Serving)
        })
        .await;
    }

    /// Starts ext-authz (gRPC and metrics ports) without waiting for it. `state` holds the CA
    /// certificate (`ca.pem`) and gets the audit spool (`audit-spool/`).
    pub fn spawn(
        database_url: &str,
        ports: (u16, u16),
        policy_dir: &Path,
        clock: Option<&str>,
        state: &Path,
    ) -> Process {
        Process::spawn(&mut Self::command(
            database_url,
            ports,
            policy_dir,
            clock,
            state,
        ))
    }

    fn command(
        database_url: &str,
        (port, metrics_port): (u16, u16),
        policy_dir: &Path,
        clock: Option<&str>,
        state: &Path,
    ) -> Command {
        let mut command = Command::new(bin("edgemesh-ext-authz"));
        command
            .arg("serve")
            .env("EDGEMESH_DATABASE_URL", database_url)
            .env("EDGEMESH_EXT_AUTHZ_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "EDGEMESH_EXT_AUTHZ_METRICS_LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            )
            .env("EDGEMESH_POLICY_DIR", policy_dir)
            .env("EDGEMESH_POLICY_POLL_MS", "100")
            .env("EDGEMESH_AUDIT_SPOOL_DIR", state.join("audit-spool"))
            .env("EDGEMESH_CA_CERT", state.join("ca.pem"))
            .env("EDGEMESH_LOG", "warn");
        if let Some(clock) = clock {
            command.env("EDGEMESH_CLOCK", clock);
        }
        command
    }
}

/// Migrates `database_url`'s database as its (super)user, then answers URLs for the control API and
/// ext-authz that log in as roles of this database's own, members of the least-privilege roles.
pub async fn least_privilege_urls(database_url: &str) -> (String, String) {
    let migrated = std::process::Command::new(bin("edgemesh-control-api"))
        .arg("migrate")
        .env("EDGEMESH_DATABASE_URL", database_url)
        .env("EDGEMESH_LOG", "warn")
        .status()
        .expect("migrate");
    assert!(migrated.success(), "migrations");
    let pool = sqlx::PgPool::connect(database_url).await.expect("connect");
    let (_, database) = database_url.rsplit_once('/').expect("a database");
    let tag: String = database
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    let mut urls = Vec::new();
    for (prefix, group) in [("ca", "edgemesh_control_api"), ("ea", "edgemesh_ext_authz")] {
        let login = format!("{prefix}_{tag}");
        let password = uuid::Uuid::new_v4().simple().to_string();
        // Roles are per cluster: one per test database, made again if a database name recurs. DDL
        // takes no parameters: they go in as settings of the session, which the block quotes.
        let mut conn = pool.acquire().await.expect("a connection");
        sqlx::query(
            "SELECT set_config('edgemesh.login', $1, false), set_config('edgemesh.password', $2, false),
                    set_config('edgemesh.group', $3, false)",
        )
        .bind(&login)
        .bind(&password)
        .bind(group)
        .execute(&mut *conn)
        .await
        .expect("login settings");
        sqlx::query(
            "DO $$
             DECLARE
                 login text := current_setting('edgemesh.login');
                 password text := current_setting('edgemesh.password');
             BEGIN
                 IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = login) THEN
                     EXECUTE format('ALTER ROLE %I LOGIN PASSWORD %L', login, password);
                 ELSE
                     EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE %I', login, password,
                                    current_setting('edgemesh.group'));
                 END IF;
             END $$",
        )
        .execute(&mut *conn)
        .await
        .expect("login role");
        let (scheme_user, host) = database_url.split_once('@').expect("a user");
        let (scheme, _) = scheme_user.split_once("://").expect("a scheme");
        urls.push(format!("{scheme}://{login}:{password}@{host}"));
    }
    (urls[0].clone(), urls[1].clone())
}

/// The gRPC health status ext-authz reports, if it answers.
pub async fn grpc_health(port: u16) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".to_owned(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

/// The template's one ext-authz endpoint, repeated once per replica.
const EXT_AUTHZ_ENDPOINT: &str = "        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: @EXT_AUTHZ_PORT@ }
";

/// The whole request path.
pub struct Stack {
    pub api: ControlApi,
    pub ext_authz: ExtAuthz,
    /// The other replicas, if more than one was asked for (`Options::ext_authz_replicas`).
    pub replicas: Vec<ExtAuthz>,
    _envoy: Process,
    pub envoy_url: String,
    pub envoy_admin: String,
    /// Envoy's stats-only listener (`/stats/prometheus`).
    pub envoy_stats: String,
    /// The database URLs the control API and ext-authz connect with.
    pub database_urls: (String, String),
    _upstream: Process,
    pub state_dir: tempfile::TempDir,
}

pub struct Options<'a> {
    pub policy_dir: PathBuf,
    pub clock: Option<&'a str>,
    /// ext-authz's database URL, if not the control API's (a relay in between, say).
    pub ext_authz_database_url: Option<String>,
    /// More environment for ext-authz.
    pub ext_authz_env: Vec<(&'static str, String)>,
    /// Files put into ext-authz's audit spool directory before it starts: (name, contents).
    pub audit_spool_files: Vec<(&'static str, Vec<u8>)>,
    /// The migrations run as the superuser, then the control API and ext-authz connect as login
    /// roles of their least-privilege roles (`edgemesh_control_api`, `edgemesh_ext_authz`), as in
    /// `make up`.
    pub least_privilege: bool,
    /// ext-authz replicas behind Envoy's one cluster (each with its own spool): 1 unless set.
    pub ext_authz_replicas: usize,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            policy_dir: policies_dir(),
            clock: None,
            ext_authz_database_url: None,
            ext_authz_env: Vec::new(),
            audit_spool_files: Vec::new(),
            least_privilege: false,
            ext_authz_replicas: 1,
        }
    }
}

impl Stack {
    pub async fn start(database_url: &str, options: Options<'_>) -> Self {
        let state_dir = tempfile::tempdir().expect("tempdir");
        let state = state_dir.path();
        let (api_url, authz_url) = if options.least_privilege {
            least_privilege_urls(database_url).await
        } else {
            (database_url.to_owned(), database_url.to_owned())
        };
        let migrate = if options.least_privilege {
            "false"
        } else {
            "true"
        };
        let api = ControlApi::start_with(
            &api_url,
            state,
            (free_port(), free_port()),
            &[("EDGEMESH_MIGRATE", migrate)],
        )
        .await;
        if !options.audit_spool_files.is_empty() {
            std::fs::create_dir_all(state.join("audit-spool")).expect("spool dir");
            for (name, contents) in &options.audit_spool_files {
                std::fs::write(state.join("audit-spool").join(name), contents).expect("spool file");
            }
        }
        let ext_authz = ExtAuthz::start(
            options
                .ext_authz_database_url
                .as_deref()
                .unwrap_or(&authz_url),
            free_port(),
            &options.policy_dir,
            options.clock,
            state,
            &options.ext_authz_env,
        )
        .await;
        let mut replicas = Vec::new();
        for n in 1..options.ext_authz_replicas.max(1) {
            let dir = state.join(format!("ext-authz-{n}"));
            std::fs::create_dir_all(&dir).expect("replica dir");
            std::fs::copy(state.join("ca.pem"), dir.join("ca.pem")).expect("CA certificate");
            replicas.push(
                ExtAuthz::start(
                    options
                        .ext_authz_database_url
                        .as_deref()
                        .unwrap_or(&authz_url),
                    free_port(),
                    &options.policy_dir,
                    options.clock,
                    &dir,
                    &options.ext_authz_env,
                )
                .await,
            );
        }

        let upstream_port = free_port();
        let upstream = Process::spawn(
            Command::new(bin("edgemesh-simulator"))
                .args([
                    "upstream",
                    "--listen",
                    &format!("127.0.0.1:{upstream_port}"),
                ])
                .env("EDGEMESH_LOG", "warn"),
        );
        let plain = reqwest::Client::new();
        wait_until("upstream", || {
            let plain = plain.clone();
            async move {
                plain
                    .get(format!("http://127.0.0.1:{upstream_port}/"))
                    .send()
                    .await
                    .is_ok()
            }
        })
        .await;

        let (cert, key) = (state.join("envoy.pem"), state.join("envoy-key.pem"));
        let issued = std::process::Command::new(bin("edgemesh-control-api"))
            .arg("issue-server-cert")
            .args(["--names", "localhost,127.0.0.1"])
            .arg("--cert-out")
            .arg(&cert)
            .arg("--key-out")
            .arg(&key)
            .env("EDGEMESH_STATE_DIR", state)
            .output()
            .expect("issue-server-cert");
        assert!(issued.status.success(), "{issued:?}");

        let (listen_port, admin_port, stats_port) = (free_port(), free_port(), free_port());
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/envoy.yaml.in"),
        )
        .expect("envoy template");
        assert!(
            template.contains(EXT_AUTHZ_ENDPOINT),
            "the template's ext-authz endpoint is not the one the replicas repeat"
        );
        let config = template
            .replace("@ADMIN_PORT@", &admin_port.to_string())
            .replace("@STATS_PORT@", &stats_port.to_string())
            .replace("@LISTEN_PORT@", &listen_port.to_string())
            .replace(
                EXT_AUTHZ_ENDPOINT,
                &std::iter::once(&ext_authz)
                    .chain(&replicas)
                    .map(|r| EXT_AUTHZ_ENDPOINT.replace("@EXT_AUTHZ_PORT@", &r.port.to_string()))
                    .collect::<String>(),
            )
            .replace("@UPSTREAM_PORT@", &upstream_port.to_string())
            .replace("@TRUST_DOMAIN@", "edgemesh.local")
            .replace("@SERVER_CERT@", cert.to_str().expect("utf-8"))
            .replace("@SERVER_KEY@", key.to_str().expect("utf-8"))
            .replace("@CA_CERT@", state.join("ca.pem").to_str().expect("utf-8"));
        let config_path = state.join("envoy.yaml");
        std::fs::write(&config_path, config).expect("write envoy config");
        let envoy = Process::spawn(
            Command::new(envoy_bin())
                .arg("-c")
                .arg(&config_path)
                .args(["--disable-hot-restart", "--concurrency", "1"])
                .args(["--log-level", "error"]),
        );
        let envoy_admin = format!("http://127.0.0.1:{admin_port}");
        wait_until("envoy", || {
            let (plain, url) = (plain.clone(), format!("{envoy_admin}/ready"));
            async move {
                plain
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        Self {
            api,
            ext_authz,
            replicas,
            _envoy: envoy,
            envoy_url: format!("https://127.0.0.1:{listen_port}"),
            envoy_admin,
            envoy_stats: format!("http://127.0.0.1:{stats_port}"),
            database_urls: (api_url, authz_url),
            _upstream: upstream,
            state_dir,
        }
    }

    /// Enrolls device `id` for a new owner with `role`, with the real agent.
    pub async fn device(&self, owner: &str, role: &str, id: &str) -> Device {
        let (token, fingerprint) = self.api.token_for_role(owner, role).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let run = agent_enroll(dir.path(), &self.api, &token, &fingerprint, id).await;
        assert!(run.success, "enroll {id}: {}", run.stderr);
        Device::from_dir(dir)
    }

    /// Sends a health report for `device` over its mTLS connection: healthy values with `patch` applied.
    pub async fn report(&self, device: &Device, patch: Value) -> Value {
        // Above every sequence this device's agent (or an earlier report) sent: see `sequence_after`.
        static LAST: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
        let sequence = {
            let mut last = LAST.lock().expect("sequence");
            *last = HealthReport::sequence_after(*last);
            *last
        };
        let mut body = json!({
            "sequence": sequence,
            "collected_at": OffsetDateTime::now_utc().format(&Rfc3339).expect("time"),
            "agent_version": "e2e",
            "cpu_usage": 20.0,
            "memory_usage": 35.0,
            "disk_usage": 40.0,
            "os": "debian",
            "os_version": "12",
            "kernel": "6.1.0",
            "uptime_seconds": 1000,
            "disk_encrypted": true,
            "os_patches_current": true,
            "antivirus_enabled": true,
            "firewall_enabled": true,
        });
        for (k, v) in patch.as_object().expect("patch is an object") {
            body[k] = v.clone();
        }
        let response = device
            .client
            .post(format!("{}/api/v1/health", self.api.device_api))
            .json(&body)
            .send()
            .await
            .expect("health report");
        assert_eq!(response.status(), StatusCode::OK, "health report accepted");
        response.json().await.expect("verdict")
    }

    /// GET `path` through Envoy as `device`.
    pub async fn get(&self, device: &Device, path: &str) -> Answer {
        self.get_with(device, path, &[]).await
    }

    /// GET after a change the control API committed: the change reaches ext-authz by a NOTIFY, which
    /// usually lands before the next request but, on a loaded machine, can trail it by milliseconds.
    /// Asks until the answer has `status`, for at most [`PROPAGATION_BOUND`]; answers the last one.
    pub async fn get_after_change(
        &self,
        device: &Device,
        path: &str,
        status: StatusCode,
    ) -> Answer {
        let started = std::time::Instant::now();
        loop {
            let answer = self.get(device, path).await;
            if answer.status == status || started.elapsed() > PROPAGATION_BOUND {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn get_with(&self, device: &Device, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = device.client.get(format!("{}{path}", self.envoy_url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request through Envoy");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        Answer {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    /// ext-authz's Prometheus exposition.
    pub async fn ext_authz_metrics(&self) -> String {
        reqwest::get(format!(
            "http://127.0.0.1:{}/metrics",
            self.ext_authz.metrics_port
        ))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
    }

    /// Envoy's counter `name` (0 if absent).
    pub async fn envoy_stat(&self, name: &str) -> u64 {
        let text = reqwest::get(format!("{}/stats?filter=^{name}$", self.envoy_admin))
            .await
            .expect("stats")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

pub struct Device {
    pub client: reqwest::Client,
    /// The agent's state directory (key, certificate, CA).
    pub dir: tempfile::TempDir,
}

impl Device {
    /// The device an agent enrolled in `dir`: a client presenting its certificate.
    pub fn from_dir(dir: tempfile::TempDir) -> Self {
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect(name);
        let client = device_client(&read("ca.pem"), Some((&read("cert.pem"), &read("key.pem"))));
        Self { client, dir }
    }
}

/// A client that trusts the EdgeMesh CA and presents `identity`, if any.
pub fn device_client(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(
            edgemesh_core::tls::client_config(ca_pem, identity).expect("tls config"),
        )
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The deny reasons of a 403.
    pub fn reasons(&self) -> Vec<String> {
        self.body["reasons"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}
