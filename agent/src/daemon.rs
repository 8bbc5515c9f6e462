//! `edgemesh-agent run`: report health every interval, renew the certificate at about two thirds of its
//! lifetime, and ride out a control API that is away (exponential back-off with jitter, capped) without
//! ever exiting on a transient error. Only a refusal of the device itself (revoked, unknown) ends it.

use std::future::Future;
use std::time::Duration;

use edgemesh_core::cert::CertInfo;
use edgemesh_core::client::ClientError;
use rand::Rng;
use time::OffsetDateTime;

use crate::posture::{self, Host};
use crate::{State, update};

/// CPU usage is measured over this window before each report.
pub const CPU_WINDOW: Duration = Duration::from_millis(500);

/// Refusals that no retry can cure: the device or its certificate is not (or no longer) admitted.
const PERMANENT: [&str; 4] = [
    "certificate_revoked",
    "device_revoked",
    "unknown_certificate",
    "no_device_identity",
];

pub struct Settings {
    pub server: String,
    pub interval: Duration,
    pub max_backoff: Duration,
    /// Self-update: `None` when no release key is pinned.
    pub update: Option<update::Settings>,
}

/// Why the daemon returned.
pub enum Exit {
    /// SIGTERM.
    Stopped,
    /// A new version is in place: restart into it.
    Restart,
}

/// The control API refuses this device for good; the daemon stops (exit status 78, which the systemd
/// unit does not restart).
#[derive(Debug, thiserror::Error)]
#[error("the control API refuses this device: {0}")]
pub struct Refused(pub String);

pub async fn run(
    state: &State,
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Exit> {
    tokio::pin!(shutdown);
    let host = Host::default();
    let mut failures = 0u32;
    let probation = update::on_probation();
    // A version on probation has not proved itself: the agent that started it records it once it has.
    if !probation && let Err(e) = state.record_run(crate::VERSION) {
        tracing::warn!(
            error = format!("{e:#}"),
            "cannot record the running version"
        );
    }
    match &settings.update {
        None => tracing::info!("self-update is off: no release key is pinned"),
        Some(u) if probation => tracing::info!(
            version = crate::VERSION,
            keys = u.keys.len(),
            "on probation: reporting once for the agent that started this version"
        ),
        Some(u) => {
            tracing::info!(keys = u.keys.len(), binary = %u.install.display(), "self-update is on")
        }
    }
    tracing::info!(server = %settings.server, interval_s = settings.interval.as_secs(), version = crate::VERSION, "agent running");
    loop {
        let info = state.certificate()?;
        if renewal_due(&info, OffsetDateTime::now_utc()) {
            match state.renew(&settings.server).await {
                Ok((device, new)) => {
                    tracing::info!(%device, serial = %new.serial, not_after = %new.not_after, "certificate renewed");
                }
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "certificate renewal failed; retrying later"
                    );
                }
            }
        }
        let sequence = match state.next_sequence() {
            Ok(sequence) => sequence,
            Err(e) => {
                // Never a report whose number is not kept: it could repeat one already sent.
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot keep the report's sequence; retrying later"
                );
                tokio::select! {
                    () = tokio::time::sleep(settings.interval) => continue,
                    () = &mut shutdown => return Ok(Exit::Stopped),
                }
            }
        };
        // SIGTERM is answered at once, not after a measurement or a report in flight (a slow control
        // API would otherwise hold the stop for the client's whole timeout).
        let report = tokio::select! {
            report = posture::collect(&host, CPU_WINDOW, sequence) => report,
            () = &mut shutdown => return Ok(Exit::Stopped),
        };
        let api = state.api(&settings.server)?;
        let outcome = tokio::select! {
            outcome = api.report_health(&report) => outcome,
            () = &mut shutdown => return Ok(Exit::Stopped),
        };
        let wait = match outcome {
            Ok(verdict) => {
                failures = 0;
                tracing::info!(
                    status = %verdict.status,
                    reasons = ?verdict.reasons,
                    cpu = ?report.cpu_usage,
                    memory = ?report.memory_usage,
                    disk = ?report.disk_usage,
                    "health reported"
                );
                if probation {
                    update::mark_reported(&verdict.status);
                } else if let (Some(offer), Some(updater)) = (&verdict.update, &settings.update) {
                    match update::take(state, updater, &api, offer, &verdict, &mut shutdown).await {
                        update::Outcome::Restart => return Ok(Exit::Restart),
                        update::Outcome::Stopped => return Ok(Exit::Stopped),
                        update::Outcome::Stay => {}
                    }
                }
                settings.interval
            }
            Err(ClientError::Refused { error, detail, .. })
                if PERMANENT.contains(&error.as_str()) =>
            {
                return Err(Refused(format!("{error}: {detail}")).into());
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = backoff(failures, settings.max_backoff, rand::rng().random());
                tracing::warn!(
                    error = %e,
                    failures,
                    retry_in_ms = wait.as_millis() as u64,
                    "health report failed"
                );
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => {
                tracing::info!("stopping");
                return Ok(Exit::Stopped);
            }
        }
    }
}

/// Whether the certificate has lived two thirds of its validity.
pub fn renewal_due(info: &CertInfo, now: OffsetDateTime) -> bool {
    let lifetime = info.not_after - info.not_before;
    now >= info.not_before + lifetime * 2 / 3
}

/// The wait after `failures` consecutive failures: 1 s doubling up to `max`, then scaled by a jitter
/// factor in [0.5, 1.0] (`jitter` is uniform in [0, 1)) so a fleet does not retry in lockstep.
pub fn backoff(failures: u32, max: Duration, jitter: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let base = Duration::from_secs(1u64 << exponent).min(max);
    base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_below_it() {
        let max = Duration::from_secs(30);
        assert_eq!(backoff(1, max, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(2, max, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(5, max, 1.0), Duration::from_secs(16));
        assert_eq!(backoff(6, max, 1.0), Duration::from_secs(30), "capped");
        assert_eq!(backoff(1000, max, 1.0), Duration::from_secs(30));
        assert_eq!(
            backoff(6, max, 0.0),
            Duration::from_secs(15),
            "jitter halves at most"
        );
        for jitter in [0.0, 0.3, 0.99] {
            let wait = backoff(40, max, jitter);
            assert!(wait >= Duration::from_secs(15) && wait <= max, "{wait:?}");
        }
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        let info = CertInfo {
            serial: "01".into(),
            fingerprint: edgemesh_core::cert::Fingerprint::of(b""),
            not_before: datetime!(2026-11-01 00:00 UTC),
            not_after: datetime!(2026-12-01 00:00 UTC),
            uri_sans: vec![],
        };
        assert!(!renewal_due(&info, datetime!(2026-11-20 23:59 UTC)));
        assert!(renewal_due(&info, datetime!(2026-11-21 00:00 UTC)));
        assert!(
            renewal_due(&info, datetime!(2026-12-05 00:00 UTC)),
            "expired: renew"
        );
    }
}
