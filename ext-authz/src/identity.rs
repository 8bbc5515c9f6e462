//! Who is calling: the device identity a peer certificate proves, parsed once at the edge into typed
//! values. Envoy verified the certificate's chain in the handshake; ext-authz makes sure again that a
//! caller that reaches the gRPC port directly cannot present a certificate of its own making and have
//! it decided (and audited) as a device's. It does so without checking the CA's signature on every
//! new certificate: a decision is only allowed for a certificate whose fingerprint (SHA-256 of its
//! whole DER, signature included) is one the directory holds for the device, and the directory
//! holds the certificates the control API issued, so such a certificate is the CA's, byte for byte.
//! The signature is checked ([`issued_by_ca`]) only for one the directory does not vouch for, to tell
//! a forgery (denied as no identity, naming no device) from a certificate of ours that is not on
//! record.

use edgemesh_core::cert::{CertInfo, Fingerprint, TrustDomain};
use edgemesh_core::id::DeviceId;
use time::OffsetDateTime;

/// The identity a peer certificate proves, and what the policy and the audit need of it.
#[derive(Debug)]
pub struct Peer {
    pub device: DeviceId,
    /// Lower-case hex of the serial number, as the directory stores it.
    pub serial: String,
    pub fingerprint: Fingerprint,
    pub not_after: OffsetDateTime,
}

impl Peer {
    /// The peer named by `encoded`, the certificate as Envoy sends it (URL-encoded PEM), if it
    /// parses and names exactly one device of `trust_domain`. Who signed it is not checked here (see
    /// the module's documentation). The error is the reason a deny gives.
    pub fn from_envoy(encoded: &[u8], trust_domain: &TrustDomain) -> Result<Self, String> {
        let der = der(encoded)?;
        let cert = CertInfo::from_der(&der)
            .map_err(|e| format!("the client certificate does not parse: {e}"))?;
        let device = cert.device_id(trust_domain).ok_or_else(|| {
            format!("the client certificate names no device of trust domain {trust_domain}")
        })?;
        Ok(Self {
            device,
            serial: cert.serial,
            fingerprint: cert.fingerprint,
            not_after: cert.not_after,
        })
    }
}

/// The reason a certificate the CA did not sign is denied for.
pub const NOT_ISSUED: &str = "the client certificate is not issued by the EdgeMesh CA";

/// Whether `encoded` (as Envoy sends it) is signed by the CA whose certificate is `ca_der`.
pub fn issued_by_ca(encoded: &[u8], ca_der: &[u8]) -> bool {
    der(encoded).is_ok_and(|der| edgemesh_core::cert::signed_by(&der, ca_der).unwrap_or(false))
}

/// The DER of the first certificate in `encoded`, URL-encoded PEM.
fn der(encoded: &[u8]) -> Result<Vec<u8>, String> {
    let pem = percent_encoding::percent_decode(encoded)
        .decode_utf8()
        .map_err(|_| "the client certificate is not valid PEM".to_owned())?;
    edgemesh_core::cert::first_pem_der(&pem)
        .map_err(|_| "the client certificate is not valid PEM".to_owned())
}
