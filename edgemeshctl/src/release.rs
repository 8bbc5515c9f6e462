//! `edgemeshctl release` and `edgemeshctl rollout`: signing agent releases on the operator's machine
//! (the signing key never leaves it), publishing them, and rolling a version out to a channel.

use std::path::{Path, PathBuf};

use base64::Engine;
use clap::Subcommand;
use edgemesh_core::release::{Manifest, SigningKey, parse_version};
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::Output;
use crate::client::Admin;
use crate::commands::{emit, segment};
use crate::failure::Failure;
use crate::table;

#[derive(Debug, Subcommand)]
pub enum Release {
    /// Generate a signing key pair: PREFIX.key (the signing key, mode 0600: keep it offline) and
    /// PREFIX.pub (the public key agents pin with --release-key). No server is involved.
    Keygen {
        /// Where to write the two files (PREFIX.key, PREFIX.pub); existing files are not replaced.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a release of the agent binary: writes BINARY.manifest and BINARY.manifest.sig. Run it on
    /// the machine that holds the signing key; no server is involved.
    Sign {
        /// The signing key file (from `release keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The agent binary.
        #[arg(long)]
        binary: PathBuf,
        /// The version the binary reports (`edgemesh-agent --version`).
        #[arg(long)]
        version: String,
        /// The target triple it was built for.
        #[arg(long, default_value = "x86_64-unknown-linux-gnu")]
        target: String,
        /// The lowest running version that may update to it.
        #[arg(long, default_value = "0.0.0")]
        min_version: String,
        /// Days until the manifest expires (agents refuse it afterwards): 1 to 3650.
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u16).range(1..=3650))]
        expires_in_days: u16,
    },
    /// Publish a signed release: the binary with its manifest and signature (BINARY.manifest and
    /// BINARY.manifest.sig unless given).
    Publish {
        #[arg(long)]
        binary: PathBuf,
        #[arg(long)]
        manifest: Option<PathBuf>,
        #[arg(long)]
        signature: Option<PathBuf>,
    },
    /// List the published releases.
    List,
}

#[derive(Debug, Subcommand)]
pub enum Rollout {
    /// Offer a version to a share of a channel's devices (the same devices first for every release:
    /// raising the percentage keeps those already in).
    Set {
        /// The channel (every device starts in `stable`).
        channel: String,
        #[arg(long)]
        version: String,
        /// 0 to 100.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: u8,
    },
    /// Each rollout's progress: devices offered the version, updated, and those that refused it or
    /// rolled it back (with the reason).
    Status,
    /// Move a device to another channel.
    Channel { device: String, channel: String },
}

const RELEASE_FIELDS: [&str; 7] = [
    "version",
    "target",
    "size",
    "sha256",
    "key_id",
    "expires_at",
    "published_at",
];

/// The commands that need no server.
pub fn local(command: &Release) -> Option<anyhow::Result<()>> {
    match command {
        Release::Keygen { out } => Some(keygen(out)),
        Release::Sign {
            key,
            binary,
            version,
            target,
            min_version,
            expires_in_days,
        } => Some(sign(
            key,
            binary,
            version,
            target,
            min_version,
            *expires_in_days,
        )),
        Release::Publish { .. } | Release::List => None,
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    let (secret, public) = (with_suffix(out, ".key"), with_suffix(out, ".pub"));
    for path in [&secret, &public] {
        anyhow::ensure!(
            !path.exists(),
            "{} exists; not replacing a key",
            path.display()
        );
    }
    let key = SigningKey::generate()?;
    edgemesh_core::files::write_atomic(&secret, key.to_text().as_bytes(), 0o600)?;
    edgemesh_core::files::write_atomic(&public, key.public_key().to_text().as_bytes(), 0o644)?;
    eprintln!(
        "signing key {} written to {} (keep it offline) and its public key to {} (pin it in each agent: --release-key)",
        key.public_key().id,
        secret.display(),
        public.display()
    );
    Ok(())
}

fn sign(
    key: &Path,
    binary: &Path,
    version: &str,
    target: &str,
    min_version: &str,
    expires_in_days: u16,
) -> anyhow::Result<()> {
    parse_version(version).map_err(anyhow::Error::msg)?;
    parse_version(min_version).map_err(anyhow::Error::msg)?;
    let key_text = std::fs::read_to_string(key)
        .map_err(|e| anyhow::anyhow!("failed to read the signing key {}: {e}", key.display()))?;
    let key = SigningKey::parse(&key_text)?;
    let bytes = std::fs::read(binary)
        .map_err(|e| anyhow::anyhow!("failed to read {}: {e}", binary.display()))?;
    let manifest = Manifest {
        version: version.to_owned(),
        target: target.to_owned(),
        sha256: hex::encode(Sha256::digest(&bytes)),
        size: bytes.len() as u64,
        min_version: min_version.to_owned(),
        expires_at: OffsetDateTime::now_utc().replace_nanosecond(0)?
            + time::Duration::days(i64::from(expires_in_days)),
    };
    let text = manifest.to_text();
    Manifest::parse(&text).map_err(|r| anyhow::anyhow!("{r}"))?;
    let signature = key.sign(&text);
    let (manifest_path, signature_path) = (
        with_suffix(binary, ".manifest"),
        with_suffix(binary, ".manifest.sig"),
    );
    edgemesh_core::files::write_atomic(&manifest_path, text.as_bytes(), 0o644)?;
    edgemesh_core::files::write_atomic(&signature_path, signature.to_text().as_bytes(), 0o644)?;
    eprintln!(
        "signed {version} for {target} with key {}: {} and {}",
        signature.key_id,
        manifest_path.display(),
        signature_path.display()
    );
    Ok(())
}

pub async fn release(api: &Admin, command: Release, out: Output) -> Result<(), Failure> {
    match command {
        Release::Publish {
            binary,
            manifest,
            signature,
        } => {
            let manifest = manifest.unwrap_or_else(|| with_suffix(&binary, ".manifest"));
            let signature = signature.unwrap_or_else(|| with_suffix(&binary, ".manifest.sig"));
            let read = |path: &Path| {
                std::fs::read(path)
                    .map_err(|e| Failure::Usage(format!("failed to read {}: {e}", path.display())))
            };
            let text = |path: &Path| {
                String::from_utf8(read(path)?)
                    .map_err(|_| Failure::Usage(format!("{} is not text", path.display())))
            };
            let body = json!({
                "manifest": text(&manifest)?,
                "signature": text(&signature)?,
                "binary": base64::engine::general_purpose::STANDARD.encode(read(&binary)?),
            });
            let published = api.post("/releases", body).await?;
            emit(out, &published, |r| table::record(r, &RELEASE_FIELDS));
        }
        Release::List => {
            let list = api.get("/releases", &[]).await?;
            emit(out, &list, |l| {
                table::print(
                    &RELEASE_FIELDS,
                    &table::rows(&l["releases"], &RELEASE_FIELDS),
                );
            });
        }
        Release::Keygen { .. } | Release::Sign { .. } => unreachable!("local commands"),
    }
    Ok(())
}

pub async fn rollout(api: &Admin, command: Rollout, out: Output) -> Result<(), Failure> {
    match command {
        Rollout::Set {
            channel,
            version,
            percent,
        } => {
            let set = api
                .put(
                    &format!("/rollouts/{}", segment(&channel)),
                    json!({"version": version, "percent": percent}),
                )
                .await?;
            emit(out, &set, |r| {
                table::record(r, &["channel", "version", "percent", "updated_at"]);
            });
        }
        Rollout::Status => {
            let list = api.get("/rollouts", &[]).await?;
            emit(out, &list, |l| {
                let fields = [
                    "channel", "version", "percent", "devices", "offered", "updated",
                ];
                table::print(&fields, &table::rows(&l["rollouts"], &fields));
                for rollout in l["rollouts"].as_array().into_iter().flatten() {
                    let failures = &rollout["failures"];
                    if failures.as_array().is_some_and(|f| !f.is_empty()) {
                        println!(
                            "\n{} {}: devices that refused it or rolled it back",
                            rollout["channel"].as_str().unwrap_or_default(),
                            rollout["version"].as_str().unwrap_or_default()
                        );
                        let fields = ["device_id", "step", "reason", "detail", "occurred_at"];
                        table::print(&fields, &table::rows(failures, &fields));
                    }
                }
            });
        }
        Rollout::Channel { device, channel } => {
            let set = api
                .put(
                    &format!("/devices/{}/channel", segment(&device)),
                    json!({"channel": channel}),
                )
                .await?;
            emit(out, &set, |r| table::record(r, &["channel"]));
        }
    }
    Ok(())
}
