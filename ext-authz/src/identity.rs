//! Who is calling: the device identity a peer certificate proves, parsed once at the edge into typed
//! values. Envoy verified the certificate's chain in the handshake; this checks the CA's signature
//! again, so a caller that reaches the gRPC port directly cannot present a certificate of its own
//! making and have it decided (and audited) as a device's.

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
    /// The peer named by `encoded`, the certificate as Envoy sends it (URL-encoded PEM), if it is
    /// signed by the CA whose certificate is `ca_der` and names exactly one device of `trust_domain`.
    /// The error is the reason a deny gives.
    pub fn from_envoy(
        encoded: &[u8],
        ca_der: &[u8],
        trust_domain: &TrustDomain,
    ) -> Result<Self, String> {
        let pem = percent_encoding::percent_decode(encoded)
            .decode_utf8()
            .map_err(|_| "the client certificate is not valid PEM".to_owned())?;
        let der = edgemesh_core::cert::first_pem_der(&pem)
            .map_err(|_| "the client certificate is not valid PEM".to_owned())?;
        let cert = CertInfo::from_der(&der)
            .map_err(|e| format!("the client certificate does not parse: {e}"))?;
        if !edgemesh_core::cert::signed_by(&der, ca_der).unwrap_or(false) {
            return Err("the client certificate is not issued by the EdgeMesh CA".to_owned());
        }
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
