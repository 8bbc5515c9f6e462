//! Request and response bodies of the control API that its clients (agent, simulator) share.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// `POST /api/v1/enroll`, authenticated by an enrollment token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub device_id: String,
    pub device_type: String,
    pub os: String,
    pub os_version: String,
    pub csr_pem: String,
}

/// A certificate issued to a device, by enrollment or renewal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedCertificate {
    pub device_id: String,
    pub certificate_pem: String,
    pub ca_pem: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// `POST /api/v1/renew`, authenticated by the device's current certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_pem: String,
}

/// The body of every refusal: a stable machine-readable code and a sentence for humans.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub detail: String,
}
