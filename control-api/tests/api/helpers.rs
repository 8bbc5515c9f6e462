use edgemesh_control_api::{Application, Config};
use edgemesh_core::client::DeviceKey;
use edgemesh_core::id::DeviceId;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::oneshot;

pub struct TestApp {
    pub api: String,
    pub device_api: String,
    /// `http://127.0.0.1:<port>/metrics`.
    pub metrics: String,
    pub db: PgPool,
    pub admin_token: String,
    pub ca_pem: String,
    pub http: Client,
    pub state_dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

pub async fn spawn_app(db: PgPool) -> TestApp {
    // Tests of other things enrol (and refuse) many devices from one address (127.0.0.1), and send
    // many admin requests (schemathesis).
    spawn_app_with(
        db,
        &[
            "--enroll-refusal-burst",
            "100000",
            "--enroll-burst",
            "100000",
            "--admin-burst",
            "100000",
        ],
    )
    .await
}

/// `spawn_app` with more command-line flags.
pub async fn spawn_app_with(db: PgPool, flags: &[&str]) -> TestApp {
    let state_dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec![
        "--state-dir",
        state_dir.path().to_str().expect("utf-8 path"),
        "--api-listen",
        "127.0.0.1:0",
        "--device-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    if !flags.contains(&"--policy-dir") {
        args.extend([
            "--policy-dir",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"),
        ]);
    }
    args.extend_from_slice(flags);
    let config = Config::try_parse_from_args(&args);
    let app = Application::build_with_pool(&config, db.clone())
        .await
        .expect("build app");
    let api = format!("https://127.0.0.1:{}", app.api_addr().port());
    let device_api = format!("https://127.0.0.1:{}", app.device_addr().port());
    let metrics = format!("http://127.0.0.1:{}/metrics", app.metrics_addr().port());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let admin_token = std::fs::read_to_string(state_dir.path().join("admin-token"))
        .expect("admin token file")
        .trim()
        .to_owned();
    let ca_pem = std::fs::read_to_string(state_dir.path().join("ca.pem")).expect("ca.pem");
    let http = https_client(&ca_pem, None);
    TestApp {
        api,
        device_api,
        metrics,
        db,
        admin_token,
        ca_pem,
        http,
        state_dir,
        _stop: stop,
    }
}

/// A client trusting only the EdgeMesh CA, optionally presenting a device identity.
pub fn https_client(ca_pem: &str, identity: Option<(&str, &str)>) -> Client {
    Client::builder()
        .use_preconfigured_tls(
            edgemesh_core::tls::client_config(ca_pem, identity).expect("tls config"),
        )
        .build()
        .expect("client")
}

trait ConfigExt {
    fn try_parse_from_args(args: &[&str]) -> Config;
}

impl ConfigExt for Config {
    fn try_parse_from_args(args: &[&str]) -> Config {
        use clap::Parser;
        Config::try_parse_from(std::iter::once(&"edgemesh-control-api").chain(args))
            .expect("config")
    }
}

/// An enrolled device: its key and certificate.
pub struct Enrolled {
    pub key_pem: String,
    pub cert_pem: String,
}

impl TestApp {
    pub async fn admin_post(&self, path: &str, body: Value) -> Response {
        self.http
            .post(format!("{}/api/v1/admin{path}", self.api))
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn admin_get(&self, path: &str) -> Response {
        self.http
            .get(format!("{}/api/v1/admin{path}", self.api))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .expect("request")
    }

    pub async fn create_user(&self, id: &str, role: &str) {
        let response = self
            .admin_post(
                "/users",
                json!({"id": id, "email": format!("{id}@example.com"), "role": role}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "create user {id}");
    }

    /// Creates a token for `owner` (created as a developer if missing) and answers the token.
    pub async fn create_token(&self, owner: &str, max_uses: i32) -> String {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
            .bind(owner)
            .fetch_one(&self.db)
            .await
            .expect("query");
        if !exists {
            self.create_user(owner, "developer").await;
        }
        let response = self
            .admin_post(
                "/tokens",
                json!({"owner": owner, "ttl_seconds": 3600, "max_uses": max_uses}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "create token");
        let body: Value = response.json().await.expect("json");
        body["token"].as_str().expect("token").to_owned()
    }

    pub async fn enroll_raw(&self, token: Option<&str>, body: &Value) -> Response {
        let mut request = self
            .http
            .post(format!("{}/api/v1/enroll", self.api))
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request")
    }

    /// Enrolls `device_id` with a fresh key through the API and answers its identity.
    pub async fn enroll(&self, token: &str, device_id: &str) -> Enrolled {
        let key = DeviceKey::generate().expect("key");
        let csr = key
            .csr_pem(&DeviceId::parse(device_id).expect("id"))
            .expect("csr");
        let response = self
            .enroll_raw(Some(token), &enroll_body(device_id, &csr))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "enroll {device_id}");
        let body: Value = response.json().await.expect("json");
        Enrolled {
            key_pem: key.to_pem(),
            cert_pem: body["certificate_pem"]
                .as_str()
                .expect("certificate")
                .to_owned(),
        }
    }

    /// A digest of every row of every identity table: equal digests mean nothing was written.
    pub async fn snapshot(&self) -> Vec<Option<String>> {
        let mut digests = Vec::new();
        for query in [
            "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM users t",
            "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM devices t",
            "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM certificates t",
            "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM enrollment_tokens t",
            "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM health_reports t",
        ] {
            let digest: Option<String> = sqlx::query_scalar(query)
                .fetch_one(&self.db)
                .await
                .expect("snapshot");
            digests.push(digest);
        }
        digests
    }
}

/// A health report's sequence number: increasing across the whole test binary, so that no two reports
/// share one.
pub fn next_sequence() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub fn enroll_body(device_id: &str, csr_pem: &str) -> Value {
    json!({
        "device_id": device_id,
        "device_type": "raspberrypi",
        "os": "debian",
        "os_version": "12",
        "csr_pem": csr_pem,
    })
}

pub async fn error_code(response: Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("error body is JSON");
    assert!(
        body["detail"].is_string(),
        "error body has a detail: {body}"
    );
    (
        status,
        body["error"].as_str().expect("error code").to_owned(),
    )
}
