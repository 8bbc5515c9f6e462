//! A simulated fleet: devices enrolled through the real CSR flow (each its own key), their owners, and
//! their health reports over the real mTLS device API.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, ensure};
use edgemesh_core::api::{EnrollRequest, HealthReport, HealthVerdict};
use edgemesh_core::client::{ControlApi, DeviceKey, fetch_pinned_ca};
use edgemesh_core::id::DeviceId;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

/// Admin calls the simulator needs to set up a run. The admin API is served with a certificate of the
/// EdgeMesh CA, which the simulator takes from the control API itself (it holds the admin token, so it
/// is the operator, not a device bootstrapping trust).
pub struct Admin {
    http: reqwest::Client,
    ca_pem: String,
    base: String,
    token: String,
}

impl Admin {
    pub async fn connect(base: &str, token: &str) -> anyhow::Result<Self> {
        let ca_http = reqwest::Client::builder()
            .use_preconfigured_tls(edgemesh_core::tls::unverified_client_config())
            .build()?;
        let ca_pem = ca_http
            .get(format!("{base}/api/v1/ca.pem"))
            .send()
            .await
            .with_context(|| format!("cannot reach the control API at {base}"))?
            .error_for_status()?
            .text()
            .await?;
        Ok(Self {
            http: reqwest::Client::builder()
                .use_preconfigured_tls(edgemesh_core::tls::client_config(&ca_pem, None)?)
                .build()?,
            ca_pem,
            base: base.to_owned(),
            token: token.to_owned(),
        })
    }

    /// A client for the console's pages, trusting the same CA: it follows no redirect (a redirect to
    /// the sign-in page is an answer to see, not to follow).
    pub fn browser(&self) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(edgemesh_core::tls::client_config(&self.ca_pem, None)?)
            .redirect(reqwest::redirect::Policy::none())
            .build()?)
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!("{}/api/v1/admin{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "POST {path} answered {status}: {body}");
        Ok(body)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}/api/v1/admin{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "GET {path} answered {status}: {body}");
        Ok(body)
    }

    /// Creates user `owner` with `role` and a token for `uses` enrollments; answers (token, CA pin).
    pub async fn owner_with_token(
        &self,
        owner: &str,
        role: &str,
        uses: u32,
    ) -> anyhow::Result<(String, String)> {
        self.post(
            "/users",
            json!({"id": owner, "email": format!("{owner}@sim.invalid"), "role": role}),
        )
        .await?;
        let created = self
            .post(
                "/tokens",
                json!({"owner": owner, "ttl_seconds": 3600, "max_uses": uses}),
            )
            .await?;
        Ok((
            created["token"]
                .as_str()
                .context("no token in answer")?
                .to_owned(),
            created["ca_fingerprint"]
                .as_str()
                .context("no fingerprint")?
                .to_owned(),
        ))
    }
}

/// A run's unique prefix, so runs against the same database do not collide.
pub fn run_id() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    )
}

/// An enrolled simulated device.
#[derive(Clone)]
pub struct SimDevice {
    pub id: String,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

impl SimDevice {
    /// A client presenting this device's certificate and trusting only the EdgeMesh CA.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(edgemesh_core::tls::client_config(
                &self.ca_pem,
                Some((&self.cert_pem, &self.key_pem)),
            )?)
            .timeout(std::time::Duration::from_secs(10))
            .build()?)
    }

    /// Reports `report` to the device listener at `device_api` over this device's mTLS identity.
    pub async fn report(
        &self,
        device_api: &str,
        report: &HealthReport,
    ) -> anyhow::Result<HealthVerdict> {
        let api = ControlApi::new(
            device_api,
            &self.ca_pem,
            Some((&self.cert_pem, &self.key_pem)),
        )?;
        Ok(api.report_health(report).await?)
    }
}

/// What `edgemesh-agent enroll` does: pin the CA, generate a key, send a CSR with the token.
pub async fn enroll_like_the_agent(
    base: &str,
    token: &str,
    fingerprint: &str,
    device: &DeviceId,
) -> anyhow::Result<SimDevice> {
    let ca_pem = fetch_pinned_ca(base, fingerprint).await?;
    let key = DeviceKey::generate()?;
    let request = EnrollRequest {
        device_id: device.to_string(),
        device_type: "simulated".into(),
        os: "debian".into(),
        os_version: "12".into(),
        csr_pem: key.csr_pem(device)?,
    };
    let issued = ControlApi::new(base, &ca_pem, None)?
        .enroll(token, &request)
        .await?;
    Ok(SimDevice {
        id: device.to_string(),
        key_pem: key.to_pem(),
        cert_pem: issued.certificate_pem,
        ca_pem,
    })
}

/// Enrolls `ids` concurrently (at most `concurrency` at once) with one token.
pub async fn enroll_all(
    base: &str,
    token: &str,
    fingerprint: &str,
    ids: Vec<DeviceId>,
    concurrency: usize,
) -> anyhow::Result<Vec<SimDevice>> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids {
        let permit = permits.clone().acquire_owned().await?;
        let (base, token, fingerprint) =
            (base.to_owned(), token.to_owned(), fingerprint.to_owned());
        tasks.spawn(async move {
            let result = enroll_like_the_agent(&base, &token, &fingerprint, &id).await;
            drop(permit);
            result.with_context(|| format!("enrolling {id}"))
        });
    }
    let mut devices = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        devices.push(joined??);
    }
    devices.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(devices)
}

/// A healthy report, measured now.
/// The next health report's sequence number, for the whole simulated fleet: increasing across every
/// device, and above any a previous run sent (see `HealthReport::sequence_after`).
pub fn next_sequence() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = HealthReport::sequence_after(last);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(now) => last = now,
        }
    }
}

/// A healthy report with the next sequence number.
pub fn healthy_report() -> HealthReport {
    HealthReport {
        device_id: None,
        sequence: next_sequence(),
        collected_at: OffsetDateTime::now_utc(),
        agent_version: format!("simulator/{}", env!("CARGO_PKG_VERSION")),
        agent_target: None,
        cpu_usage: Some(25.0),
        memory_usage: Some(45.0),
        disk_usage: Some(50.0),
        os: Some("debian".into()),
        os_version: Some("12".into()),
        kernel: Some("6.1.0-simulated".into()),
        uptime_seconds: Some(3600),
        disk_encrypted: Some(true),
        os_patches_current: Some(true),
        antivirus_enabled: Some(true),
        firewall_enabled: Some(true),
    }
}
