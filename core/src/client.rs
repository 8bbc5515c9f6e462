//! The device side of enrollment and renewal, shared by the agent and the simulator: a key generated on
//! the device, a CSR, trust in the control API bootstrapped from a pinned CA fingerprint.

use std::time::Duration;

use anyhow::Context;
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    DeviceStanding, EnrollRequest, ErrorBody, HealthReport, HealthVerdict, IssuedCertificate,
    RenewRequest, UpdateEvent,
};
use crate::cert::{Fingerprint, normalize_fingerprint};
use crate::id::DeviceId;
use crate::release::SignedManifest;
use crate::tls;

/// A device's private key (ECDSA P-256). It is generated here and never sent anywhere.
pub struct DeviceKey(KeyPair);

impl DeviceKey {
    pub fn generate() -> anyhow::Result<Self> {
        Ok(Self(
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("failed to generate key")?,
        ))
    }

    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        Ok(Self(
            KeyPair::from_pem(pem).context("failed to read device key")?,
        ))
    }

    /// PKCS#8 PEM; store it readable by the owner only.
    pub fn to_pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// A PKCS#10 request for the device's identity. The control API decides what the certificate says;
    /// the CN here only helps a human reading the request.
    pub fn csr_pem(&self, device: &DeviceId) -> anyhow::Result<String> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, device.as_str());
        Ok(params.serialize_request(&self.0)?.pem()?)
    }
}

/// A refusal or failure from the control API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("control API refused ({status}): {error}: {detail}")]
    Refused {
        status: u16,
        error: String,
        detail: String,
    },
    #[error("control API unreachable or answered badly: {0}")]
    Transport(#[from] reqwest::Error),
}

/// Fetches the CA certificate from `server` and accepts it only if its SHA-256 fingerprint is `pin`.
/// The connection used is unauthenticated; the pin is what makes the answer trustworthy.
pub async fn fetch_pinned_ca(server: &str, pin: &str) -> anyhow::Result<String> {
    let pin = normalize_fingerprint(pin).context(
        "CA fingerprint must be 64 hex digits (SHA-256), optionally with ':' separators",
    )?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls::unverified_client_config())
        .timeout(Duration::from_secs(15))
        .build()?;
    let url = format!("{}/api/v1/ca.pem", server.trim_end_matches('/'));
    let pem = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("failed to fetch {url}"))?
        .error_for_status()?
        .text()
        .await?;
    pinned_ca(pem, &pin)
}

/// `pem` if it holds exactly one PEM item, a certificate whose SHA-256 fingerprint is `pin` (64
/// lowercase hex digits). Whatever is trusted afterwards is built from this text, so a bundle with
/// anything beside the pinned certificate (a second CA appended by a server in the path) is refused.
fn pinned_ca(pem: String, pin: &str) -> anyhow::Result<String> {
    use rustls::pki_types::pem::{PemObject, SectionKind};
    let items = <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the control API served a CA bundle that is not valid PEM")?;
    let der = match items.as_slice() {
        [(SectionKind::Certificate, der)] => der,
        [] => anyhow::bail!("the control API served no CA certificate"),
        [_] => {
            anyhow::bail!("the control API served a PEM item that is not a certificate as its CA")
        }
        more => anyhow::bail!(
            "the control API served {} PEM items where the pinned CA certificate alone was expected: \
             refusing to trust any of them",
            more.len()
        ),
    };
    let got = Fingerprint::of(der).to_string();
    anyhow::ensure!(
        got == pin,
        "CA certificate fingerprint {got} does not match the expected {pin}: refusing to trust it"
    );
    Ok(pem)
}

/// A client of the control API that trusts only the EdgeMesh CA.
#[derive(Clone)]
pub struct ControlApi {
    http: reqwest::Client,
    base: String,
}

impl ControlApi {
    /// `identity` is the device's certificate and key PEM, for the device (mTLS) listener.
    pub fn new(base: &str, ca_pem: &str, identity: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls::client_config(ca_pem, identity)?)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    pub async fn enroll(
        &self,
        token: &str,
        request: &EnrollRequest,
    ) -> Result<IssuedCertificate, ClientError> {
        self.post("/api/v1/enroll", Some(token), request).await
    }

    pub async fn renew(&self, csr_pem: String) -> Result<IssuedCertificate, ClientError> {
        self.post("/api/v1/renew", None, &RenewRequest { csr_pem })
            .await
    }

    /// `POST /api/v1/health` on the device listener (the client must present the device's identity).
    pub async fn report_health(&self, report: &HealthReport) -> Result<HealthVerdict, ClientError> {
        self.post("/api/v1/health", None, report).await
    }

    /// `GET /api/v1/device` on the device listener: whether the control API still accepts this
    /// device's certificate (a refusal says why: revoked, unknown, expired).
    pub async fn standing(&self) -> Result<DeviceStanding, ClientError> {
        Self::answer(
            self.http
                .get(format!("{}/api/v1/device", self.base))
                .send()
                .await?,
        )
        .await
    }

    /// A release's signed manifest, at the path an update offer names (on the device listener).
    pub async fn release_manifest(&self, path: &str) -> Result<SignedManifest, ClientError> {
        Self::answer(self.http.get(self.release_url(path)).send().await?).await
    }

    /// A release's binary, at the path an update offer names, read up to `max_bytes` (the signed
    /// manifest's size) and one more: a longer answer is cut there, so a server cannot fill the
    /// device's memory. The caller checks it against the manifest; nothing about it is trusted before.
    pub async fn release_binary(&self, path: &str, max_bytes: u64) -> Result<Vec<u8>, ClientError> {
        let mut response = self
            .http
            .get(self.release_url(path))
            .timeout(Duration::from_secs(600))
            .send()
            .await?;
        if !response.status().is_success() {
            return Self::answer(response).await;
        }
        let cap = usize::try_from(max_bytes.saturating_add(1)).unwrap_or(usize::MAX);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            body.extend_from_slice(&chunk[..chunk.len().min(cap - body.len())]);
            if body.len() == cap {
                break;
            }
        }
        Ok(body)
    }

    /// `POST /api/v1/update-events`: a step of this device's update.
    pub async fn report_update(&self, event: &UpdateEvent) -> Result<(), ClientError> {
        let response = self
            .http
            .post(format!("{}/api/v1/update-events", self.base))
            .json(event)
            .send()
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        Self::answer(response).await
    }

    /// Offers name paths on this server, under `/api/v1/releases/`; anything else is not followed.
    fn release_url(&self, path: &str) -> String {
        let path = if path.starts_with("/api/v1/releases/") && !path.contains("..") {
            path
        } else {
            "/api/v1/releases/invalid-path"
        };
        format!("{}{path}", self.base)
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &B,
    ) -> Result<T, ClientError> {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        Self::answer(request.send().await?).await
    }

    async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response.json().await?);
        }
        let body = response.text().await.unwrap_or_default();
        let (error, detail) = match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) => (e.error, e.detail),
            Err(_) => ("unexpected_response".to_owned(), body),
        };
        Err(ClientError::Refused {
            status: status.as_u16(),
            error,
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(name: &str) -> String {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("self-signed").pem()
    }

    fn pin_of(pem: &str) -> String {
        Fingerprint::of(&crate::cert::first_pem_der(pem).expect("pem")).to_string()
    }

    #[test]
    fn the_pinned_certificate_alone_is_accepted() {
        let real = ca("real");
        assert_eq!(
            pinned_ca(real.clone(), &pin_of(&real)).expect("accepted"),
            real
        );
    }

    #[test]
    fn anything_beside_or_instead_of_the_pinned_certificate_is_refused() {
        let (real, other) = (ca("real"), ca("attacker"));
        let pin = pin_of(&real);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .expect("key")
            .serialize_pem();
        for (bundle, why) in [
            (format!("{real}{other}"), "PEM items"),
            (format!("{other}{real}"), "PEM items"),
            (format!("{real}{key}"), "PEM items"),
            (other.clone(), "does not match"),
            (key, "not a certificate"),
            (String::new(), "no CA certificate"),
        ] {
            let error = pinned_ca(bundle, &pin).expect_err("refused").to_string();
            assert!(error.contains(why), "{why}: {error}");
        }
    }
}
