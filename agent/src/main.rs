//! `edgemesh-agent`: the device daemon. It enrolls with a key generated on the device (the key never
//! leaves it), shows its identity, reports the device's measured health and renews its certificate, all
//! over mTLS. `run` is the daemon (under systemd: `agent/edgemesh-agent.service`); with a release key
//! pinned it also takes the signed updates its channel rolls out (`update`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use edgemesh_core::api::{EnrollRequest, HealthReport, IssuedCertificate};
use edgemesh_core::cert::CertInfo;
use edgemesh_core::client::{ClientError, ControlApi, DeviceKey, fetch_pinned_ca};
use edgemesh_core::files::write_atomic;
use edgemesh_core::id::DeviceId;
use time::OffsetDateTime;

mod daemon;
mod os_release;
mod posture;
mod update;

/// This build's version: `EDGEMESH_AGENT_VERSION` at build time, or the crate's.
pub const VERSION: &str = match option_env!("EDGEMESH_AGENT_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};
/// The target triple this build runs on.
pub const TARGET: &str = env!("EDGEMESH_AGENT_TARGET");

#[derive(Debug, Parser)]
#[command(name = "edgemesh-agent", version = VERSION, about = "EdgeMesh device agent")]
struct Cli {
    /// Where the device key, certificate and CA are kept.
    #[arg(
        long,
        global = true,
        env = "EDGEMESH_AGENT_STATE_DIR",
        default_value = "/var/lib/edgemesh-agent"
    )]
    state_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a key on this device and enroll it with a one-time token.
    Enroll {
        /// The control API's enrollment URL.
        #[arg(
            long,
            env = "EDGEMESH_SERVER",
            default_value = "https://127.0.0.1:8444"
        )]
        server: String,
        /// A file holding the enrollment token. Without it, the token is read from the environment
        /// variable EDGEMESH_ENROLLMENT_TOKEN; it is never taken from the command line, where other
        /// users of the machine could read it (`ps`, /proc/PID/cmdline, shell history).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// SHA-256 fingerprint of the EdgeMesh CA, given with the token; the CA is refused unless it matches.
        #[arg(long, env = "EDGEMESH_CA_FINGERPRINT")]
        ca_fingerprint: String,
        /// This device's id: 1–64 of [A-Za-z0-9._-].
        #[arg(long, env = "EDGEMESH_DEVICE_ID")]
        device_id: String,
        /// Kind of device.
        #[arg(long, default_value = default_device_type())]
        device_type: String,
        /// Operating system; read from /etc/os-release when not given.
        #[arg(long)]
        os: Option<String>,
        /// Operating system version; read from /etc/os-release when not given.
        #[arg(long)]
        os_version: Option<String>,
        /// Replace an existing identity in the state directory.
        #[arg(long)]
        force: bool,
    },
    /// Print this device's identity (device id, serial, validity) and whether the control API still
    /// accepts it (asked over mTLS; exit status 1 if it refuses: revoked, unknown, expired).
    Status {
        /// The control API's device (mTLS) URL.
        #[arg(
            long,
            env = "EDGEMESH_DEVICE_SERVER",
            default_value = "https://127.0.0.1:8443"
        )]
        server: String,
    },
    /// Renew the certificate over mTLS with a new key.
    Renew {
        /// The control API's device (mTLS) URL.
        #[arg(
            long,
            env = "EDGEMESH_DEVICE_SERVER",
            default_value = "https://127.0.0.1:8443"
        )]
        server: String,
    },
    /// Measure this device's health, send one report and print the verdict.
    Report {
        #[arg(
            long,
            env = "EDGEMESH_DEVICE_SERVER",
            default_value = "https://127.0.0.1:8443"
        )]
        server: String,
        /// Send one report and exit (the only mode of `report`; `run` reports continuously).
        #[arg(long, default_value_t = true)]
        once: bool,
    },
    /// The daemon: report health every interval, renew the certificate at two thirds of its lifetime,
    /// take the signed updates it is offered (with --release-key), back off (with jitter) while the
    /// control API is away; stop on SIGTERM.
    Run {
        #[arg(
            long,
            env = "EDGEMESH_DEVICE_SERVER",
            default_value = "https://127.0.0.1:8443"
        )]
        server: String,
        /// Seconds between reports.
        #[arg(long, env = "EDGEMESH_REPORT_INTERVAL_SECS", default_value_t = 30,
              value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval_secs: u64,
        /// Longest wait between attempts while the control API is away.
        #[arg(long, env = "EDGEMESH_MAX_BACKOFF_SECS", default_value_t = 30,
              value_parser = clap::value_parser!(u64).range(1..=3600))]
        max_backoff_secs: u64,
        /// A public key file releases may be signed by (`edgemeshctl release keygen` writes one);
        /// give it more than once to pin several (a key rotation). Without one, the agent never
        /// updates itself.
        #[arg(
            long = "release-key",
            env = "EDGEMESH_RELEASE_KEYS",
            value_delimiter = ','
        )]
        release_keys: Vec<PathBuf>,
        /// Seconds a new version has to report to the control API before it is rolled back.
        #[arg(long, env = "EDGEMESH_UPDATE_PROBATION_SECS", default_value_t = 120,
              value_parser = clap::value_parser!(u64).range(5..=3600))]
        probation_secs: u64,
    },
}

fn default_device_type() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" | "arm" => "linux-arm",
        _ => "linux",
    }
}

/// The files of an agent's identity.
pub struct State {
    dir: PathBuf,
}

impl State {
    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn read(&self, path: &Path) -> anyhow::Result<String> {
        std::fs::read_to_string(path).with_context(|| {
            format!(
                "failed to read {} (is this device enrolled? run 'edgemesh-agent enroll')",
                path.display()
            )
        })
    }

    /// A client of the device listener presenting the stored identity.
    fn api(&self, server: &str) -> anyhow::Result<ControlApi> {
        let cert_pem = self.read(&self.cert())?;
        let key_pem = self.read(&self.key())?;
        let ca_pem = self.read(&self.ca())?;
        ControlApi::new(server, &ca_pem, Some((&cert_pem, &key_pem)))
    }

    /// The sequence number of the next health report, kept on disk (written and fsynced) before the
    /// report leaves, so that no two reports of this state share one: one above the last, or the
    /// clock's microseconds if they are further on (a lost or restored file does not make the control
    /// API refuse every report as a replay).
    pub fn next_sequence(&self) -> anyhow::Result<u64> {
        let path = self.dir.join("health-sequence");
        let last = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
        };
        let next = HealthReport::sequence_after(last);
        write_atomic(&path, format!("{next}\n").as_bytes(), 0o600)?;
        Ok(next)
    }

    fn certificate(&self) -> anyhow::Result<CertInfo> {
        Ok(CertInfo::from_pem(&self.read(&self.cert())?)?)
    }

    /// Renews over mTLS with a new key; answers the device and its new certificate.
    async fn renew(&self, server: &str) -> anyhow::Result<(DeviceId, CertInfo)> {
        let info = self.certificate()?;
        let device = info
            .uri_sans
            .iter()
            .find_map(|uri| {
                uri.rsplit_once("/device/")
                    .and_then(|(_, id)| DeviceId::parse(id).ok())
            })
            .context("the stored certificate names no device")?;
        // The new key is kept until its certificate is stored: a renewal retried after a lost answer
        // sends the same key, and the control API (where a certificate renews once) answers with the
        // same certificate instead of refusing a second renewal.
        let pending = self.dir.join("key.next.pem");
        let new_key = match std::fs::read_to_string(&pending) {
            Ok(pem) => DeviceKey::from_pem(&pem)?,
            Err(_) => {
                let key = DeviceKey::generate()?;
                write_atomic(&pending, key.to_pem().as_bytes(), 0o600)?;
                key
            }
        };
        let issued = self.api(server)?.renew(new_key.csr_pem(&device)?).await?;
        self.store(&new_key, &issued)?;
        let _ = std::fs::remove_file(&pending);
        Ok((device, CertInfo::from_pem(&issued.certificate_pem)?))
    }

    /// Stores a new key and the certificate issued for it. The key is written first, readable by the
    /// owner only.
    fn store(&self, key: &DeviceKey, issued: &IssuedCertificate) -> anyhow::Result<()> {
        write_atomic(&self.key(), key.to_pem().as_bytes(), 0o600)?;
        write_atomic(&self.ca(), issued.ca_pem.as_bytes(), 0o644)?;
        write_atomic(&self.cert(), issued.certificate_pem.as_bytes(), 0o644)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let _log = edgemesh_core::telemetry::init();
    edgemesh_core::tls::install_crypto_provider();
    let cli: Cli = edgemesh_core::exit::parse_args("edgemesh-agent");
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // A device the control API refuses for good: 78 (EX_CONFIG), not restarted by systemd.
        Err(e) if e.downcast_ref::<daemon::Refused>().is_some() => {
            eprintln!("edgemesh-agent: error: {e:#}");
            ExitCode::from(78)
        }
        Err(e) => edgemesh_core::exit::failed("edgemesh-agent", &e),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let state = State { dir: cli.state_dir };
    match cli.command {
        Command::Enroll {
            server,
            token_file,
            ca_fingerprint,
            device_id,
            device_type,
            os,
            os_version,
            force,
        } => {
            let device = DeviceId::parse(&device_id)
                .map_err(|e| anyhow::anyhow!("device id {device_id:?} {e}"))?;
            let token = match (token_file, std::env::var("EDGEMESH_ENROLLMENT_TOKEN")) {
                (Some(path), _) => std::fs::read_to_string(&path)
                    .with_context(|| format!("failed to read {}", path.display()))?
                    .trim()
                    .to_owned(),
                (None, Ok(token)) => token.trim().to_owned(),
                (None, Err(_)) => bail!(
                    "give the enrollment token with --token-file or EDGEMESH_ENROLLMENT_TOKEN"
                ),
            };
            anyhow::ensure!(!token.is_empty(), "the enrollment token is empty");
            if state.cert().exists() && !force {
                bail!(
                    "{} already holds an identity; use --force to replace it",
                    state.dir.display()
                );
            }
            let release = os_release::read_host();
            let os = os
                .or_else(|| release.as_ref().map(|r| r.id.clone()))
                .unwrap_or_else(|| "linux".into());
            let os_version = os_version
                .or_else(|| release.as_ref().and_then(|r| r.version_id.clone()))
                .unwrap_or_else(|| "unknown".into());

            let ca_pem = fetch_pinned_ca(&server, &ca_fingerprint).await?;
            let key = DeviceKey::generate()?;
            let request = EnrollRequest {
                device_id: device.to_string(),
                device_type,
                os,
                os_version,
                csr_pem: key.csr_pem(&device)?,
            };
            let issued = ControlApi::new(&server, &ca_pem, None)?
                .enroll(&token, &request)
                .await?;
            state.store(&key, &issued)?;
            println!(
                "enrolled {} (certificate valid until {}); identity stored in {}",
                issued.device_id,
                format_time(issued.not_after),
                state.dir.display()
            );
        }
        Command::Status { server } => {
            let info = CertInfo::from_pem(&state.read(&state.cert())?)?;
            let ca = CertInfo::from_pem(&state.read(&state.ca())?)?;
            let remaining = info.not_after - OffsetDateTime::now_utc();
            let (validity, refused) = if remaining.is_negative() {
                ("EXPIRED".to_owned(), true)
            } else {
                let days = remaining.whole_days();
                match state.api(&server)?.standing().await {
                    Ok(_) => (
                        format!("valid for {days} more days; the control API accepts it"),
                        false,
                    ),
                    Err(ClientError::Refused { error, detail, .. }) => (
                        format!("REFUSED by the control API ({error}: {detail})"),
                        true,
                    ),
                    Err(e) => (
                        format!(
                            "valid for {days} more days; not checked with the control API ({e})"
                        ),
                        false,
                    ),
                }
            };
            let report = format!(
                "identity     {}\nserial       {}\nfingerprint  {}\nvalid from   {}\nvalid until  {}\nstatus       {validity}\nCA           {}\n",
                info.uri_sans.first().map_or("-", String::as_str),
                info.serial,
                info.fingerprint,
                format_time(info.not_before),
                format_time(info.not_after),
                ca.fingerprint,
            );
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(report.as_bytes());
            anyhow::ensure!(
                !refused,
                "this identity is no longer usable; enroll the device again"
            );
        }
        Command::Renew { server } => {
            let (device, new) = state.renew(&server).await?;
            println!(
                "renewed {device}: serial {} valid until {}",
                new.serial,
                format_time(new.not_after)
            );
        }
        Command::Report { server, once: _ } => {
            let sequence = state.next_sequence()?;
            let report =
                posture::collect(&posture::Host::default(), daemon::CPU_WINDOW, sequence).await;
            let verdict = state.api(&server)?.report_health(&report).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            println!(
                "verdict: {}{}",
                verdict.status,
                if verdict.reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", verdict.reasons.join("; "))
                }
            );
        }
        Command::Run {
            server,
            interval_secs,
            max_backoff_secs,
            release_keys,
            probation_secs,
        } => {
            let update = if release_keys.is_empty() {
                None
            } else {
                Some(update::Settings::new(
                    &release_keys,
                    std::time::Duration::from_secs(probation_secs),
                )?)
            };
            let install = update.as_ref().map(|u| u.install.clone());
            let settings = daemon::Settings {
                server,
                interval: std::time::Duration::from_secs(interval_secs),
                max_backoff: std::time::Duration::from_secs(max_backoff_secs),
                update,
            };
            let exit = daemon::run(&state, &settings, edgemesh_core::shutdown_signal()).await?;
            if let (daemon::Exit::Restart, Some(binary)) = (exit, install) {
                use std::os::unix::process::CommandExt;
                // exec keeps nothing of this process's memory: the log lines buffered go out first.
                edgemesh_core::telemetry::flush();
                // The same process (pid, arguments, environment), now running the new binary.
                let error = std::process::Command::new(&binary)
                    .args(std::env::args_os().skip(1))
                    .exec();
                return Err(error).with_context(|| {
                    format!(
                        "failed to restart into {}; systemd restarts it",
                        binary.display()
                    )
                });
            }
        }
    }
    Ok(())
}

fn format_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each report's number is above the last, across restarts (the count is on disk), and neither a
    /// lost nor a damaged count makes it go back below the clock.
    #[test]
    fn report_sequences_only_go_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = State {
            dir: dir.path().to_owned(),
        };
        let first = state.next_sequence().expect("first");
        let second = state.next_sequence().expect("second");
        assert!(second > first, "{second} after {first}");
        let restarted = State {
            dir: dir.path().to_owned(),
        };
        let third = restarted.next_sequence().expect("after a restart");
        assert!(third > second, "{third} after {second}");
        let kept: u64 = std::fs::read_to_string(dir.path().join("health-sequence"))
            .expect("kept")
            .trim()
            .parse()
            .expect("a number");
        assert_eq!(kept, third, "the number sent is the number kept");
        std::fs::write(dir.path().join("health-sequence"), "not a number").expect("damage it");
        let now =
            u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).expect("now");
        assert!(state.next_sequence().expect("after damage") >= now);
    }
}
