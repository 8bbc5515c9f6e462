//! The admin API over HTTPS, trusting only the EdgeMesh CA; answers are JSON values, shown as given.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::config::Settings;
use crate::failure::Failure;

pub struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    pub fn connect(settings: &Settings) -> Result<Self, Failure> {
        let ca = settings.ca_pem()?;
        let token = settings.admin_token()?;
        let tls = edgemesh_core::tls::client_config(&ca, None)
            .map_err(|e| Failure::Usage(format!("the CA certificate: {e:#}")))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| Failure::Unreachable(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: format!("{}/api/v1/admin", settings.server),
            token,
        })
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Failure> {
        self.send(Method::GET, path, query, None).await
    }

    /// A GET whose answer is read as it comes (an NDJSON export): the response of a success, or
    /// the server's refusal.
    pub async fn stream(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<reqwest::Response, Failure> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .query(query)
            .send()
            .await
            .map_err(|e| Failure::Unreachable(format!("{url}: {}", error_chain(&e))))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(answer(response).await.err().unwrap_or_else(|| {
            Failure::Unreachable(format!("{url}: an error status with a JSON body"))
        }))
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, Failure> {
        self.send(Method::POST, path, &[], Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Result<Value, Failure> {
        self.send(Method::PUT, path, &[], Some(body)).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .query(query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Unreachable(format!("{url}: {}", error_chain(&e))))?;
        answer(response).await
    }
}

/// The JSON of a success, or the server's refusal.
pub async fn answer(response: reqwest::Response) -> Result<Value, Failure> {
    let status = response.status();
    let url = response.url().to_string();
    let text = response
        .text()
        .await
        .map_err(|e| Failure::Unreachable(format!("{url}: {}", error_chain(&e))))?;
    let value: Option<Value> = serde_json::from_str(&text).ok();
    if status.is_success() {
        return value.ok_or_else(|| {
            Failure::Unreachable(format!("{url}: the answer is not JSON: {text:.200}"))
        });
    }
    match value {
        Some(Value::Object(body)) if body.get("error").is_some_and(Value::is_string) => {
            Err(Failure::Refused {
                status: status.as_u16(),
                error: body["error"].as_str().unwrap_or_default().to_owned(),
                detail: body
                    .get("detail")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            })
        }
        _ => Err(Failure::Unreachable(format!(
            "{url}: HTTP {status} without the API's error body: {text:.200}"
        ))),
    }
}

/// An error with its causes, which say why a connection failed (refused, TLS, DNS).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
