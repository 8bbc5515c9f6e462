//! Self-update. When the control API offers a release, the agent takes it only if its manifest is
//! signed by a key this agent pins, is not expired, is for this target, is above every version this
//! device has run, and the binary is the one the manifest names (size, then SHA-256).
//!
//! The new binary is written beside the running one (`edgemesh-agent.next`, fsynced, renamed into
//! place) and put on probation: the running agent starts it as a child and waits for it to report to
//! the control API with a verdict no worse than the last one. A child that crashes `MAX_CRASHES` times
//! or does not report within the probation time is stopped, deleted and its version pinned as bad: the
//! running binary was never touched, so that is the rollback. A child that reports is made the running
//! binary (the previous one is kept as `edgemesh-agent.previous`), its version is recorded as the
//! highest run, and the agent restarts into it (exec, same pid). Every step is logged and reported.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use edgemesh_core::api::{HealthVerdict, UpdateEvent, UpdateOffer, UpdateStep};
use edgemesh_core::client::ControlApi;
use edgemesh_core::files::write_atomic;
use edgemesh_core::release::{self, Judge, PublicKey, Refusal};
use time::OffsetDateTime;

use crate::{State, TARGET, VERSION};

/// Exits of the new version during its probation before it is rolled back.
pub const MAX_CRASHES: u32 = 3;
/// Set for a new version on probation: the file it writes its first verdict to.
pub const PROBATION_ENV: &str = "EDGEMESH_AGENT_PROBATION";

pub struct Settings {
    /// The keys releases must be signed by; none: self-update is off.
    pub keys: Vec<PublicKey>,
    pub probation: Duration,
    /// The running binary's path.
    pub install: PathBuf,
}

impl Settings {
    /// Reads each pinned public key file.
    pub fn new(key_files: &[PathBuf], probation: Duration) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for path in key_files {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read release key {}", path.display()))?;
            keys.push(
                PublicKey::parse(&text)
                    .with_context(|| format!("release key {}", path.display()))?,
            );
        }
        let install = std::env::current_exe().context("cannot find the running binary")?;
        Ok(Self {
            keys,
            probation,
            install,
        })
    }
}

/// What became of an offer.
pub enum Outcome {
    /// The new version passed its probation and is in place: restart into it.
    Restart,
    /// Not taken (refused, pinned bad, or rolled back); the agent goes on as it is.
    Stay,
    /// SIGTERM during the probation.
    Stopped,
}

/// The versions this device must not take again, kept on disk.
impl State {
    fn highest_path(&self) -> PathBuf {
        self.dir.join("highest-version")
    }

    fn bad_path(&self) -> PathBuf {
        self.dir.join("bad-versions")
    }

    /// The highest version this device has run (this one, at least).
    pub fn highest_run(&self) -> String {
        std::fs::read_to_string(self.highest_path())
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|v| release::is_newer(v, VERSION))
            .unwrap_or_else(|| VERSION.to_owned())
    }

    /// Records `version` as run, if it is the highest (written and fsynced).
    pub fn record_run(&self, version: &str) -> anyhow::Result<()> {
        let highest = self.highest_run();
        let keep = if release::is_newer(version, &highest) {
            version
        } else {
            &highest
        };
        let kept = std::fs::read_to_string(self.highest_path()).unwrap_or_default();
        if kept.trim() != keep {
            write_atomic(&self.highest_path(), format!("{keep}\n").as_bytes(), 0o600)?;
        }
        Ok(())
    }

    /// Whether `version` was pinned as bad (refused or rolled back before).
    pub fn pinned_bad(&self, version: &str) -> bool {
        std::fs::read_to_string(self.bad_path())
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().next() == Some(version))
    }

    fn pin_bad(&self, version: &str, reason: &str) -> anyhow::Result<()> {
        let mut text = std::fs::read_to_string(self.bad_path()).unwrap_or_default();
        text.push_str(&format!("{version} {reason}\n"));
        write_atomic(&self.bad_path(), text.as_bytes(), 0o600)
    }
}

/// Handles an offer that came with `verdict`.
pub async fn take(
    state: &State,
    settings: &Settings,
    api: &ControlApi,
    offer: &UpdateOffer,
    verdict: &HealthVerdict,
    shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> Outcome {
    // The offered version names what gets pinned: it must be a version (no line of its own in the
    // file of bad versions), whatever the control API sent.
    if release::parse_version(&offer.version).is_err() {
        tracing::warn!(version = %offer.version, "offered something that is not a version; ignored");
        return Outcome::Stay;
    }
    if state.pinned_bad(&offer.version) {
        tracing::debug!(version = %offer.version, "offered a version pinned as bad; not taking it");
        return Outcome::Stay;
    }
    tracing::info!(version = %offer.version, channel = %offer.channel, running = VERSION, "update offered");
    let binary = match fetch_and_check(state, settings, api, offer).await {
        Ok(binary) => binary,
        Err(Fault::Refused(refusal)) => {
            tracing::warn!(version = %offer.version, reason = refusal.code, detail = %refusal.detail, "update refused");
            finish(
                state,
                api,
                &offer.version,
                UpdateStep::Refused,
                Some(&refusal),
            )
            .await;
            return Outcome::Stay;
        }
        Err(Fault::Transient(e)) => {
            tracing::warn!(version = %offer.version, error = format!("{e:#}"), "update not fetched; retrying at the next offer");
            return Outcome::Stay;
        }
    };
    let next = settings.install.with_file_name("edgemesh-agent.next");
    if let Err(e) = write_atomic(&next, &binary, 0o755) {
        tracing::warn!(error = format!("{e:#}"), path = %next.display(), "cannot write the new binary; retrying at the next offer");
        return Outcome::Stay;
    }
    tracing::info!(version = %offer.version, path = %next.display(), "update verified and written; starting it on probation");
    report(api, &offer.version, UpdateStep::Installed, None).await;
    match probation(state, settings, &next, verdict, shutdown).await {
        Trial::Passed(version) if version == offer.version => {}
        Trial::Passed(version) => {
            let refusal = Refusal::new(
                "version_mismatch",
                format!(
                    "the binary runs as {version}, its manifest says {}",
                    offer.version
                ),
            );
            return roll_back(state, api, &next, &offer.version, &refusal).await;
        }
        Trial::Failed(refusal) => {
            return roll_back(state, api, &next, &offer.version, &refusal).await;
        }
        Trial::Stopped => {
            let _ = std::fs::remove_file(&next);
            return Outcome::Stopped;
        }
    }
    if let Err(e) = switch(state, settings, &next, &offer.version) {
        let refusal = Refusal::new("install_failed", format!("{e:#}"));
        return roll_back(state, api, &next, &offer.version, &refusal).await;
    }
    tracing::info!(version = %offer.version, previous = VERSION, "update complete; restarting into it");
    report(api, &offer.version, UpdateStep::Completed, None).await;
    Outcome::Restart
}

enum Fault {
    Refused(Refusal),
    Transient(anyhow::Error),
}

async fn fetch_and_check(
    state: &State,
    settings: &Settings,
    api: &ControlApi,
    offer: &UpdateOffer,
) -> Result<Vec<u8>, Fault> {
    let transient = |e: edgemesh_core::client::ClientError| Fault::Transient(e.into());
    let signed = api
        .release_manifest(&offer.manifest_path)
        .await
        .map_err(transient)?;
    let highest = state.highest_run();
    let judge = Judge {
        pinned: &settings.keys,
        target: TARGET,
        running: VERSION,
        highest_run: &highest,
        now: OffsetDateTime::now_utc(),
    };
    let manifest = judge
        .manifest(&signed, &offer.version)
        .map_err(Fault::Refused)?;
    let binary = api
        .release_binary(&offer.binary_path, manifest.size)
        .await
        .map_err(transient)?;
    manifest.check_binary(&binary).map_err(Fault::Refused)?;
    Ok(binary)
}

enum Trial {
    /// The new binary reported; it runs as this version.
    Passed(String),
    Failed(Refusal),
    Stopped,
}

/// Runs the new binary as a child (the same arguments, `PROBATION_ENV` set) until it reports a
/// verdict no worse than `before`, crashes `MAX_CRASHES` times, or the probation time is up.
async fn probation(
    state: &State,
    settings: &Settings,
    next: &Path,
    before: &HealthVerdict,
    shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> Trial {
    let marker = state.dir.join("probation");
    let _ = std::fs::remove_file(&marker);
    let deadline = tokio::time::Instant::now() + settings.probation;
    let mut crashes = 0;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    while crashes < MAX_CRASHES {
        let mut child = match tokio::process::Command::new(next)
            .args(&args)
            .env(PROBATION_ENV, &marker)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                return Trial::Failed(Refusal::new(
                    "probation_failed",
                    format!("the new binary does not start: {e}"),
                ));
            }
        };
        loop {
            tokio::select! {
                exit = child.wait() => {
                    crashes += 1;
                    let status = exit.map_or_else(|e| e.to_string(), |s| s.to_string());
                    tracing::warn!(crashes, %status, "the new version exited during its probation");
                    break;
                }
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Some(reported) = read_marker(&marker) {
                        let _ = std::fs::remove_file(&marker);
                        stop(&mut child).await;
                        let (status, version) = reported;
                        return if status == "healthy" || before.status != "healthy" {
                            Trial::Passed(version)
                        } else {
                            Trial::Failed(Refusal::new(
                                "probation_failed",
                                format!("the new version reported {status}; this one was {}", before.status),
                            ))
                        };
                    }
                    if tokio::time::Instant::now() >= deadline {
                        stop(&mut child).await;
                        return Trial::Failed(Refusal::new(
                            "probation_failed",
                            format!("the new version did not report within {} s", settings.probation.as_secs()),
                        ));
                    }
                }
                () = &mut *shutdown => {
                    stop(&mut child).await;
                    return Trial::Stopped;
                }
            }
        }
    }
    Trial::Failed(Refusal::new(
        "probation_failed",
        format!("the new version exited {crashes} times during its probation"),
    ))
}

/// `(verdict, version)` the new version wrote once it reported.
fn read_marker(marker: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(marker).ok()?;
    let (status, version) = text.trim().split_once(' ')?;
    Some((status.to_owned(), version.to_owned()))
}

/// Called by a version on probation after a report the control API accepted.
pub fn mark_reported(status: &str) {
    if let Some(marker) = std::env::var_os(PROBATION_ENV) {
        let _ = write_atomic(
            Path::new(&marker),
            format!("{status} {VERSION}\n").as_bytes(),
            0o600,
        );
    }
}

/// Whether this process is a new version on probation (it then takes no update itself).
pub fn on_probation() -> bool {
    std::env::var_os(PROBATION_ENV).is_some()
}

async fn stop(child: &mut tokio::process::Child) {
    // It has reported (or is past its time): its state files are written atomically, so a kill loses
    // nothing.
    let _ = child.kill().await;
}

/// Puts the new binary in place: the running one is kept as `edgemesh-agent.previous` (a hard link:
/// the same file, never written), the new one renamed over the running path (the running process
/// keeps its own file), the directory fsynced, and the new version recorded as the highest run.
fn switch(state: &State, settings: &Settings, next: &Path, version: &str) -> anyhow::Result<()> {
    let previous = settings.install.with_file_name("edgemesh-agent.previous");
    let _ = std::fs::remove_file(&previous);
    std::fs::hard_link(&settings.install, &previous)
        .with_context(|| format!("failed to keep {}", previous.display()))?;
    std::fs::rename(next, &settings.install)
        .with_context(|| format!("failed to install {}", settings.install.display()))?;
    if let Some(dir) = settings.install.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    state.record_run(version)
}

async fn roll_back(
    state: &State,
    api: &ControlApi,
    next: &Path,
    version: &str,
    refusal: &Refusal,
) -> Outcome {
    let _ = std::fs::remove_file(next);
    tracing::warn!(%version, reason = refusal.code, detail = %refusal.detail, running = VERSION, "update rolled back; the version is pinned as bad");
    finish(state, api, version, UpdateStep::RolledBack, Some(refusal)).await;
    Outcome::Stay
}

/// Pins a refused or rolled back version as bad and reports it.
async fn finish(
    state: &State,
    api: &ControlApi,
    version: &str,
    step: UpdateStep,
    refusal: Option<&Refusal>,
) {
    if let Err(e) = state.pin_bad(version, refusal.map_or("-", |r| r.code)) {
        tracing::warn!(error = format!("{e:#}"), "cannot pin the version as bad");
    }
    report(api, version, step, refusal).await;
}

async fn report(api: &ControlApi, version: &str, step: UpdateStep, refusal: Option<&Refusal>) {
    let event = UpdateEvent {
        version: version.to_owned(),
        running_version: VERSION.to_owned(),
        step,
        reason: refusal.map(|r| r.code.to_owned()),
        detail: refusal
            .map(|r| r.detail.chars().take(512).collect())
            .unwrap_or_default(),
    };
    if let Err(e) = api.report_update(&event).await {
        tracing::warn!(error = %e, step = step.as_str(), "cannot report the update step");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_version_run_only_goes_up_and_bad_versions_stay_pinned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = State {
            dir: dir.path().to_owned(),
        };
        assert_eq!(state.highest_run(), VERSION, "at least the running one");
        state.record_run("99.0.0").expect("record");
        assert_eq!(state.highest_run(), "99.0.0");
        state.record_run("1.0.0").expect("record");
        assert_eq!(state.highest_run(), "99.0.0", "never lowered");
        let restarted = State {
            dir: dir.path().to_owned(),
        };
        assert_eq!(restarted.highest_run(), "99.0.0", "kept on disk");

        assert!(!state.pinned_bad("2.0.0"));
        state.pin_bad("2.0.0", "hash_mismatch").expect("pin");
        state.pin_bad("2.1.0", "probation_failed").expect("pin");
        assert!(state.pinned_bad("2.0.0") && state.pinned_bad("2.1.0"));
        assert!(!state.pinned_bad("2.0"), "whole versions only");
    }
}
