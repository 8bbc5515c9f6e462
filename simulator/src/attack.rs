//! The `attack` scenario's battery: each is something a device or an outsider might try, and each must
//! be refused. An attack counts as refused when it got no answer from an upstream with an identity or a
//! right it should not have.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use serde_json::Value;
use time::OffsetDateTime;

use edgemesh_core::client::ClientError;

use crate::fleet::{Admin, SimDevice};
use crate::summary::Attack;

/// Where the attacks are aimed, and with what.
pub struct Targets<'a> {
    pub envoy: &'a str,
    pub device_api: &'a str,
    /// The control API's enrollment and admin URL, and its admin: the renewal attack enrols a
    /// device of its own.
    pub api: &'a str,
    pub admin: &'a Admin,
    pub trust_domain: &'a str,
    /// A device whose every request is allowed (a healthy admin's): the identity attackers want.
    pub privileged: &'a SimDevice,
    /// A device of a lesser role (an analyst's), which may not use the database.
    pub lesser: &'a SimDevice,
    /// The local stack's CA, to make a certificate that is genuine but expired.
    pub ca_cert: &'a Path,
    pub ca_key: &'a Path,
}

fn client(ca_pem: &str, identity: Option<(&str, &str)>) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(edgemesh_core::tls::client_config(ca_pem, identity)?)
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// A request that must not reach an upstream: refused if it failed (TLS) or answered anything but 200.
async fn must_not_pass(name: &str, client: &reqwest::Client, url: &str) -> Attack {
    match client.get(url).send().await {
        Err(e) => Attack {
            name: name.to_owned(),
            refused: true,
            detail: format!("refused: {}", short_error(&e)),
        },
        Ok(r) if r.status() == reqwest::StatusCode::OK => Attack {
            name: name.to_owned(),
            refused: false,
            detail: "reached the upstream (HTTP 200)".to_owned(),
        },
        Ok(r) => Attack {
            name: name.to_owned(),
            refused: true,
            detail: format!("refused: HTTP {}", r.status().as_u16()),
        },
    }
}

pub fn short_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        "TLS session refused".to_owned()
    }
}

fn spiffe(trust_domain: &str, device: &str) -> String {
    format!("spiffe://{trust_domain}/device/{device}")
}

/// A client certificate for `device`'s identity, signed by `issuer`, valid from `not_before` to
/// `not_after`; answers (certificate PEM, key PEM).
fn forge(
    issuer: &Issuer<'_, KeyPair>,
    trust_domain: &str,
    device: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, device);
    params.subject_alt_names = vec![SanType::URI(spiffe(trust_domain, device).try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

pub async fn run(t: &Targets<'_>) -> anyhow::Result<Vec<Attack>> {
    let now = OffsetDateTime::now_utc();
    let url = format!("{}/database/attack", t.envoy);
    let ca_pem = &t.privileged.ca_pem;
    let mut attacks = Vec::new();

    attacks.push(must_not_pass("no client certificate", &client(ca_pem, None)?, &url).await);

    // Another CA vouching for the privileged device's identity.
    let rogue_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut rogue = CertificateParams::new(Vec::<String>::new())?;
    rogue
        .distinguished_name
        .push(DnType::CommonName, "EdgeMesh CA (rogue)");
    rogue.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let rogue = Issuer::new(rogue, rogue_key);
    let (cert, key) = forge(
        &rogue,
        t.trust_domain,
        &t.privileged.id,
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    )?;
    attacks.push(
        must_not_pass(
            "certificate from another CA",
            &client(ca_pem, Some((&cert, &key)))?,
            &url,
        )
        .await,
    );

    // The real CA's signature, expired yesterday.
    let ca_cert = std::fs::read_to_string(t.ca_cert).with_context(|| {
        format!(
            "the expired-certificate attack needs the CA certificate {}",
            t.ca_cert.display()
        )
    })?;
    let ca_key = std::fs::read_to_string(t.ca_key).with_context(|| {
        format!(
            "the expired-certificate attack needs the CA key {}",
            t.ca_key.display()
        )
    })?;
    let real = Issuer::from_ca_cert_pem(&ca_cert, KeyPair::from_pem(&ca_key)?)?;
    let (cert, key) = forge(
        &real,
        t.trust_domain,
        &t.privileged.id,
        now - time::Duration::days(2),
        now - time::Duration::days(1),
    )?;
    attacks.push(
        must_not_pass(
            "expired certificate of the EdgeMesh CA",
            &client(ca_pem, Some((&cert, &key)))?,
            &url,
        )
        .await,
    );

    attacks.push(spoofed_headers(t).await?);
    attacks.push(health_for_another_device(t).await?);
    attacks.extend(path_spellings(t).await?);
    attacks.push(underscore_headers(t).await?);
    attacks.push(renewed_certificate_survival(t).await?);
    Ok(attacks)
}

/// Sends one request written byte for byte (no HTTP library normalising its path first) as `device`
/// through Envoy; answers the status and the body.
async fn raw_request(
    envoy: &str,
    device: &SimDevice,
    target: &str,
    header: Option<(&str, &str)>,
) -> anyhow::Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = edgemesh_core::tls::client_config(
        &device.ca_pem,
        Some((&device.cert_pem, &device.key_pem)),
    )?;
    let authority = envoy.trim_start_matches("https://");
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot reach Envoy at {envoy}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())?;
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await?;
    let mut request = format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    if let Some((name, value)) = header {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    // Envoy closes after answering (connection: close); a close without close_notify is fine.
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("Envoy sent no status line")?;
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// The lesser device spells a path to the database as a path under `/api`. Envoy decides and routes
/// on the path it forwards, so the spelling is harmless when the upstream receives a canonical path
/// (what it serves is then what was decided); it succeeds when a raw one gets through.
async fn path_spellings(t: &Targets<'_>) -> anyhow::Result<Vec<Attack>> {
    let mut attacks = Vec::new();
    for target in [
        "/api/../database/attack",
        "/api/%2e%2e/database/attack",
        "/api/..%2fdatabase/attack",
        "/api/..%5cdatabase/attack",
        "//database/attack",
    ] {
        let (status, body) = raw_request(t.envoy, t.lesser, target, None).await?;
        let served = body["service"].as_str().unwrap_or_default();
        let path = body["path"].as_str().unwrap_or_default();
        attacks.push(Attack {
            name: format!("path spelling {target}"),
            refused: status != 200 || canonical(path),
            detail: if status == 200 {
                format!("served {path} as {served}")
            } else {
                format!("refused: HTTP {status}")
            },
        });
    }
    Ok(attacks)
}

/// Whether `path` has nothing a normalising upstream would read differently: no dot segments, no
/// escaped dots or (back)slashes, no empty segments.
fn canonical(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    path.starts_with('/')
        && !["%2e", "%2f", "%5c", "\\", "//"]
            .iter()
            .any(|s| lower.contains(s))
        && path.split('/').skip(1).all(|seg| seg != "." && seg != "..")
}

/// The lesser device sends `x_edgemesh_role: admin`, which a CGI-style upstream reads as
/// HTTP_X_EDGEMESH_ROLE, the variable of EdgeMesh's own header.
async fn underscore_headers(t: &Targets<'_>) -> anyhow::Result<Attack> {
    let (status, body) = raw_request(
        t.envoy,
        t.lesser,
        "/api/attack",
        Some(("x_edgemesh_role", "admin")),
    )
    .await?;
    let passed = body["headers"].get("x_edgemesh_role").is_some();
    Ok(Attack {
        name: "identity header spelt with underscores".to_owned(),
        refused: status != 200 || !passed,
        detail: if passed {
            "the upstream received x_edgemesh_role".to_owned()
        } else {
            format!("refused: HTTP {status}")
        },
    })
}

/// A device renews its certificate; its original serial is revoked (as if its key were stolen
/// before the renewal). The renewed certificate must stop working too.
async fn renewed_certificate_survival(t: &Targets<'_>) -> anyhow::Result<Attack> {
    let name = "renewed certificate outliving its revoked original".to_owned();
    let owner = format!("sim-{}-renewal-attack", crate::fleet::run_id());
    let (token, pin) = t.admin.owner_with_token(&owner, "admin", 1).await?;
    let id = edgemesh_core::id::DeviceId::parse(&format!("{owner}-pi"))
        .map_err(|e| anyhow::anyhow!("device id: {e}"))?;
    let original = crate::fleet::enroll_like_the_agent(t.api, &token, &pin, &id).await?;
    original
        .report(t.device_api, &crate::fleet::healthy_report())
        .await?;
    let key = edgemesh_core::client::DeviceKey::generate()?;
    let issued = edgemesh_core::client::ControlApi::new(
        t.device_api,
        &original.ca_pem,
        Some((&original.cert_pem, &original.key_pem)),
    )?
    .renew(key.csr_pem(&id)?)
    .await?;
    let renewed = SimDevice {
        id: original.id.clone(),
        key_pem: key.to_pem(),
        cert_pem: issued.certificate_pem,
        ca_pem: original.ca_pem.clone(),
    };
    let serial = edgemesh_core::cert::CertInfo::from_pem(&original.cert_pem)?.serial;
    t.admin
        .post(
            &format!("/certificates/{serial}/revoke"),
            serde_json::json!({"reason": "attack scenario: key stolen before renewal"}),
        )
        .await?;
    // Revocation reaches enforcement within a second; give it five.
    let client = renewed.client()?;
    let url = format!("{}/api/attack", t.envoy);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let attack = must_not_pass(&name, &client, &url).await;
        if attack.refused || std::time::Instant::now() >= deadline {
            return Ok(attack);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lesser device claims the privileged one's identity in headers EdgeMesh sets for upstreams.
async fn spoofed_headers(t: &Targets<'_>) -> anyhow::Result<Attack> {
    let name = "spoofed identity headers";
    let claimed = &t.privileged.id;
    let response = t
        .lesser
        .client()?
        .get(format!("{}/database/attack", t.envoy))
        .header("x-edgemesh-device-id", claimed)
        .header("x-edgemesh-role", "admin")
        .header("x-edgemesh-user-id", "someone-else")
        .header(
            "x-forwarded-client-cert",
            format!("By=spiffe://x;URI={}", spiffe(t.trust_domain, claimed)),
        )
        .send()
        .await;
    let attack = |refused: bool, detail: String| Attack {
        name: name.to_owned(),
        refused,
        detail,
    };
    let response = response.context("the spoofed-headers attack could not reach Envoy")?;
    Ok(match response {
        r if r.status() == reqwest::StatusCode::OK => {
            // Allowed: only acceptable if the upstream saw the device's real identity.
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let seen = body["headers"]["x-edgemesh-device-id"]
                .as_str()
                .unwrap_or("");
            if seen == t.lesser.id && body["headers"]["x-edgemesh-role"] != "admin" {
                attack(true, format!("allowed as itself ({seen})"))
            } else {
                attack(
                    false,
                    format!(
                        "the upstream saw {seen:?} with role {}",
                        body["headers"]["x-edgemesh-role"]
                    ),
                )
            }
        }
        r => attack(true, format!("refused: HTTP {}", r.status().as_u16())),
    })
}

/// The lesser device reports health in the privileged device's name.
async fn health_for_another_device(t: &Targets<'_>) -> anyhow::Result<Attack> {
    let mut report = crate::fleet::healthy_report();
    report.device_id = Some(t.privileged.id.clone());
    let name = "health report for another device".to_owned();
    match t.lesser.report(t.device_api, &report).await {
        Ok(verdict) => Ok(Attack {
            name,
            refused: false,
            detail: format!("accepted ({})", verdict.status),
        }),
        Err(e) => match e.downcast_ref::<ClientError>() {
            Some(ClientError::Refused { status, error, .. }) => Ok(Attack {
                name,
                refused: true,
                detail: format!("refused: HTTP {status} {error}"),
            }),
            // Not an answer: the attack could not be tried.
            _ => Err(e.context("the health-report attack could not reach the control API")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn only_paths_a_normalising_upstream_reads_the_same_are_canonical() {
        for (path, expected) in [
            ("/database/attack", true),
            ("/api/attack", true),
            ("/api/../database/attack", false),
            ("/api/./attack", false),
            ("/api/%2e%2e/database", false),
            ("/api/..%2Fdatabase", false),
            ("/api/..%5cdatabase", false),
            ("/api\\..\\database", false),
            ("//database/attack", false),
            ("/api/..x/attack", true),
        ] {
            assert_eq!(canonical(path), expected, "{path}");
        }
    }
}
