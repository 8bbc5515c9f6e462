//! Facts about an X.509 certificate that EdgeMesh relies on: serial, SHA-256 fingerprint, validity and the
//! device identity carried in the SPIFFE URI SAN `spiffe://<trust-domain>/device/<id>`.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::id::DeviceId;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("not a PEM certificate")]
    NotPem,
    #[error("certificate does not parse: {0}")]
    Malformed(String),
}

/// A SPIFFE trust domain: 1 to 255 characters of lower-case letters, digits, `.`, `-` and `_`
/// (the SPIFFE ID standard, section 2.1), such as `edgemesh.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let valid = !s.is_empty()
            && s.len() <= 255
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a SPIFFE trust domain (1 to 255 characters of a-z, 0-9, '.', '-' \
                 and '_', such as edgemesh.local)"
            ))
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SPIFFE ID of a device in a trust domain.
pub fn spiffe_id(trust_domain: &TrustDomain, device: &DeviceId) -> String {
    format!("spiffe://{trust_domain}/device/{device}")
}

/// The device named by a SPIFFE ID, if the ID is a device of exactly this trust domain.
pub fn device_from_spiffe_id(trust_domain: &TrustDomain, uri: &str) -> Option<DeviceId> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (domain, path) = rest.split_once('/')?;
    if domain != trust_domain.as_str() {
        return None;
    }
    DeviceId::parse(path.strip_prefix("device/")?).ok()
}

/// A certificate's SHA-256 fingerprint: the digest of its DER encoding. Shown (and stored) as 64
/// lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// From 64 hex digits (either case), as stored.
    pub fn from_hex(hex_digits: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; 64];
        // Cannot fail: the buffer is exactly twice the input.
        let _ = hex::encode_to_slice(self.0, &mut text);
        f.write_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

/// Normalises a user-supplied SHA-256 fingerprint: accepts upper or lower case, `:` separators and a
/// `sha256:` prefix; answers 64 lowercase hex digits.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s
        .strip_prefix("sha256:")
        .or_else(|| s.strip_prefix("SHA256:"))
        .unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// The DER of the first certificate in a PEM text.
pub fn first_pem_der(pem: &str) -> Result<Vec<u8>, CertError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    match CertificateDer::pem_slice_iter(pem.as_bytes()).next() {
        Some(Ok(der)) => Ok(der.to_vec()),
        _ => Err(CertError::NotPem),
    }
}

/// Whether the certificate `der` carries a valid signature of the CA certificate `ca_der`'s key.
pub fn signed_by(der: &[u8], ca_der: &[u8]) -> Result<bool, CertError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::Malformed(e.to_string()))?;
    let (_, ca) =
        X509Certificate::from_der(ca_der).map_err(|e| CertError::Malformed(e.to_string()))?;
    Ok(cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok())
}

/// What EdgeMesh reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Lowercase hex of the serial number's DER content bytes.
    pub serial: String,
    pub fingerprint: Fingerprint,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub uri_sans: Vec<String>,
}

impl CertInfo {
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| CertError::Malformed(e.to_string()))?;
        let uri_sans = cert
            .subject_alternative_name()
            .map_err(|e| CertError::Malformed(e.to_string()))?
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::URI(uri) => Some((*uri).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            serial: hex::encode(cert.raw_serial()),
            fingerprint: Fingerprint::of(der),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            uri_sans,
        })
    }

    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        Self::from_der(&first_pem_der(pem)?)
    }

    /// The device this certificate names in the trust domain; `None` unless exactly one URI SAN
    /// names a device there.
    pub fn device_id(&self, trust_domain: &TrustDomain) -> Option<DeviceId> {
        let mut devices = self
            .uri_sans
            .iter()
            .filter_map(|uri| device_from_spiffe_id(trust_domain, uri));
        let first = devices.next()?;
        devices.next().is_none().then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_round_trip_only_in_their_trust_domain() {
        let id = DeviceId::parse("pi-7").expect("valid id");
        let domain: TrustDomain = "edgemesh.local".parse().expect("valid trust domain");
        let uri = spiffe_id(&domain, &id);
        assert_eq!(uri, "spiffe://edgemesh.local/device/pi-7");
        assert_eq!(device_from_spiffe_id(&domain, &uri), Some(id));
        let refused = [
            ("spiffe://other.local/device/pi-7", "another trust domain"),
            (
                "spiffe://EdgeMesh.local/device/pi-7",
                "trust domains are lower case",
            ),
            ("spiffe://edgemesh.local/user/pi-7", "not a device path"),
            ("spiffe://edgemesh.local/device/pi-7/x", "nested path"),
            ("spiffe://edgemesh.local/device/", "empty id"),
            ("https://edgemesh.local/device/pi-7", "not spiffe"),
        ];
        for (uri, why) in refused {
            assert_eq!(device_from_spiffe_id(&domain, uri), None, "{why}");
        }
    }

    #[test]
    fn trust_domains_are_spiffe_trust_domains() {
        for valid in ["edgemesh.local", "a", "prod-eu_1.example.com"] {
            assert!(valid.parse::<TrustDomain>().is_ok(), "{valid}");
        }
        let long = "a".repeat(256);
        for invalid in [
            "",
            "EdgeMesh.local",
            "edge mesh",
            "spiffe://x",
            "x/y",
            "x:8080",
            &long,
        ] {
            assert!(invalid.parse::<TrustDomain>().is_err(), "{invalid:?}");
        }
    }

    #[test]
    fn fingerprints_show_as_the_hex_they_are_stored_as() {
        let fingerprint = Fingerprint::of(b"certificate");
        let hex = fingerprint.to_string();
        assert_eq!(hex, hex::encode(Sha256::digest(b"certificate")));
        assert_eq!(Fingerprint::from_hex(&hex), Some(fingerprint));
        assert_eq!(
            Fingerprint::from_hex(&hex.to_uppercase()),
            Some(fingerprint)
        );
        assert_eq!(Fingerprint::from_hex(&hex[2..]), None);
    }

    #[test]
    fn fingerprints_are_normalised() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        for input in [
            hex.clone(),
            colons,
            format!("sha256:{hex}"),
            format!(" {hex} "),
        ] {
            assert_eq!(
                normalize_fingerprint(&input).as_deref(),
                Some(hex.as_str()),
                "{input}"
            );
        }
        assert_eq!(normalize_fingerprint("abcd"), None, "too short");
        assert_eq!(normalize_fingerprint(&"zz".repeat(32)), None, "not hex");
    }
}
