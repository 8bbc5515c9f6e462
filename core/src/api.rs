//! Request and response bodies of the control API that its clients (agent, simulator) share.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A user's role: what the policies grant its devices.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Developer,
    Analyst,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Developer => "developer",
            Self::Analyst => "analyst",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
/// `POST /api/v1/enroll`, authenticated by an enrollment token.
pub struct EnrollRequest {
    #[cfg_attr(feature = "openapi", schema(value_type = crate::id::DeviceId))]
    pub device_id: String,
    /// Free text, 1 to 64 characters without control characters (as are `os` and `os_version`).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub device_type: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub os: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub os_version: String,
    /// A PKCS#10 request for the device's own key (ECDSA P-256 or Ed25519), PEM-encoded, whose subject
    /// names the device.
    pub csr_pem: String,
}

/// A certificate issued to a device, by enrollment or renewal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IssuedCertificate {
    pub device_id: String,
    pub certificate_pem: String,
    pub ca_pem: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// `POST /api/v1/renew`, authenticated by the device's current certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenewRequest {
    pub csr_pem: String,
}

/// The body of every refusal: a stable machine-readable code and a sentence for humans.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: String,
    pub detail: String,
}

/// `POST /api/v1/health`, authenticated by the device's certificate: what the agent measured. A value
/// the agent could not determine is `null`, never a guess.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HealthReport {
    /// Optional; when present it must be the certificate's device (a device reports only for itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::id::DeviceId>))]
    pub device_id: Option<String>,
    /// Above the sequence of every report accepted before from this enrolment (the agent keeps a
    /// counter on disk): a report sent again is refused (409 `stale_sequence`). 1 to 2^63 - 1.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 9223372036854775807_i64)
    )]
    pub sequence: u64,
    #[serde(with = "time::serde::rfc3339")]
    /// No later than five minutes ahead of the server's clock.
    pub collected_at: OffsetDateTime,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub agent_version: String,
    /// The target triple the agent was built for (`aarch64-unknown-linux-gnu`): which build of a
    /// release it can take. Without it the device is offered no update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub agent_target: Option<String>,
    /// Percentages, 0 to 100.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    pub cpu_usage: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    pub memory_usage: Option<f64>,
    /// Of the root filesystem.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    pub disk_usage: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub os: Option<String>,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub os_version: Option<String>,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub kernel: Option<String>,
    /// At most 2^63 - 1.
    pub uptime_seconds: Option<u64>,
    pub disk_encrypted: Option<bool>,
    pub os_patches_current: Option<bool>,
    pub antivirus_enabled: Option<bool>,
    pub firewall_enabled: Option<bool>,
}

impl HealthReport {
    /// The sequence number to send after `last`: one above it, or the clock's microseconds since the
    /// Unix epoch if they are further on. So a sender that lost its count (or a second sender, a test
    /// beside the agent) still counts upwards while the clock does.
    pub fn sequence_after(last: u64) -> u64 {
        let now = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
        last.saturating_add(1)
            .max(u64::try_from(now).unwrap_or(0))
            .min(i64::MAX as u64)
    }
}

/// What the control API knows of the device presenting its certificate (`GET /api/v1/device`): it
/// answers only while the certificate is on record, unrevoked and its device active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceStanding {
    pub device_id: String,
    pub serial: String,
    pub status: String,
}

/// The compliance verdict on a health report: `healthy`, or `unhealthy` with the reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthVerdict {
    pub status: String,
    pub reasons: Vec<String>,
    /// The agent release this device should run, when its channel's rollout includes it and it runs
    /// another version. The agent checks the release's signature itself before it takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateOffer>,
}

/// An agent release offered to a device: fetch `manifest_path` (a signed manifest) and `binary_path`
/// from the device listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateOffer {
    pub version: String,
    pub target: String,
    pub channel: String,
    pub manifest_path: String,
    pub binary_path: String,
}

/// `POST /api/v1/update-events`: a step of an agent's update, for the operator watching a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateEvent {
    /// The version the step is about.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub version: String,
    /// The version running when the step happened.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub running_version: String,
    pub step: UpdateStep,
    /// For a refusal or a rollback: the reason's code (`bad_signature`, `hash_mismatch`,
    /// `downgrade`, `expired`, `probation_failed`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub reason: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 512))]
    pub detail: String,
}

/// The steps of an update an agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UpdateStep {
    /// Verified and installed beside the running binary; the new version is on probation.
    Installed,
    /// The new version reported to the control API within its probation: the update is complete.
    Completed,
    /// Not taken: the reason says why (a bad signature, a hash mismatch, a downgrade, ...).
    Refused,
    /// The new version failed its probation; the previous binary is back and the version pinned bad.
    RolledBack,
}

impl UpdateStep {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Installed => "installed",
            Self::Completed => "completed",
            Self::Refused => "refused",
            Self::RolledBack => "rolled_back",
        }
    }
}
