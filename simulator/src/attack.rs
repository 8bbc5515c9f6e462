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

use crate::fleet::SimDevice;
use crate::summary::Attack;

/// Where the attacks are aimed, and with what.
pub struct Targets<'a> {
    pub envoy: &'a str,
    pub device_api: &'a str,
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
    Ok(attacks)
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
