//! Agent self-update end to end: two real agent builds that differ in version (the second built by
//! `scripts/test.sh` with `EDGEMESH_AGENT_VERSION`), releases signed with `edgemeshctl release sign`,
//! published and rolled out through the real control API, taken over the device listener's mTLS.
//! Bad releases reach the agent the way an attacker with the control API's database would send them
//! (rows written straight into `agent_releases`): the control API holds no key, so the agent's checks
//! are what stand between them and the device.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use edgemesh_core::release::{Manifest, SigningKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::process::Command;

use crate::helpers::{ControlApi, Process, bin, database_url};

/// The second agent build: `target/agent-next/edgemesh-agent`, which `scripts/test.sh` builds with a
/// higher version.
fn next_agent() -> PathBuf {
    let path = std::env::var_os("EDGEMESH_AGENT_NEXT").map_or_else(
        || {
            bin("edgemesh-agent")
                .parent()
                .and_then(Path::parent)
                .expect("target directory")
                .join("agent-next/edgemesh-agent")
        },
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: scripts/test.sh builds it (EDGEMESH_AGENT_VERSION=… cargo build)",
        path.display()
    );
    path
}

/// `BINARY --version`'s version.
fn version_of(binary: &Path) -> String {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .env("QEMU_LD_PREFIX", "/usr/aarch64-linux-gnu")
        .output()
        .expect("--version");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .last()
        .expect("a version")
        .to_owned()
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read")))
}

/// A control API, a pinned signing key, and one device enrolled with a copy of the current agent in
/// an install directory of its own (which the agent updates).
struct Fleet {
    api: ControlApi,
    pool: PgPool,
    server: tempfile::TempDir,
    work: tempfile::TempDir,
    device: tempfile::TempDir,
}

impl Fleet {
    async fn start(db: &PgConnectOptions, device_id: &str) -> Self {
        Self::start_with(db, device_id, &bin("edgemesh-agent")).await
    }

    /// With `agent` (a build for another target runs under qemu, through binfmt_misc).
    async fn start_with(db: &PgConnectOptions, device_id: &str, agent: &Path) -> Self {
        let server = tempfile::tempdir().expect("tempdir");
        // The simulated fleet of the rollout test enrolls from one address with one token.
        let api = ControlApi::start_with(
            &database_url(db),
            server.path(),
            (crate::helpers::free_port(), crate::helpers::free_port()),
            &[
                ("EDGEMESH_ENROLL_BURST", "1000"),
                ("EDGEMESH_ENROLL_RATE", "1000"),
            ],
        )
        .await;
        let pool = PgPoolOptions::new()
            .connect_with(db.clone())
            .await
            .expect("pool");
        let work = tempfile::tempdir().expect("tempdir");
        let fleet = Self {
            api,
            pool,
            server,
            work,
            device: tempfile::tempdir().expect("tempdir"),
        };
        let out = fleet
            .ctl(&[
                "release",
                "keygen",
                "--out",
                &fleet.path("release").to_string_lossy(),
            ])
            .await;
        assert!(out.0, "keygen: {}", out.2);
        std::fs::create_dir(fleet.path("bin")).expect("install dir");
        std::fs::copy(agent, fleet.installed()).expect("install the agent");
        let (token, fingerprint) = fleet.api.token_for("uma").await;
        let out = fleet
            .agent(&[
                "enroll",
                "--server",
                &fleet.api.api,
                "--ca-fingerprint",
                &fingerprint,
            ])
            .args(["--device-id", device_id])
            .env("EDGEMESH_ENROLLMENT_TOKEN", token)
            .output()
            .await
            .expect("enroll");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fleet
    }

    /// The installed agent with this device's state directory.
    fn agent(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.installed());
        command
            .arg("--state-dir")
            .arg(self.device.path())
            .args(args)
            .env("QEMU_LD_PREFIX", "/usr/aarch64-linux-gnu");
        command
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn installed(&self) -> PathBuf {
        self.path("bin/edgemesh-agent")
    }

    /// `edgemeshctl ARGS` as the operator: (success, stdout, stderr).
    async fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin("edgemeshctl"))
            .args(args)
            .current_dir(self.work.path())
            .env("HOME", self.work.path())
            .env_remove("EDGEMESH_CONFIG")
            .env("EDGEMESH_SERVER", &self.api.api)
            .env("EDGEMESH_CA_FILE", self.server.path().join("ca.pem"))
            .env(
                "EDGEMESH_ADMIN_TOKEN_FILE",
                self.server.path().join("admin-token"),
            )
            .output()
            .await
            .expect("edgemeshctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Signs `binary` as `version` with the pinned key and publishes it, as the README says.
    async fn sign_and_publish(&self, binary: &Path, version: &str) {
        self.sign_and_publish_for(binary, version, target()).await;
    }

    /// `sign_and_publish` of a build for `target`.
    async fn sign_and_publish_for(&self, binary: &Path, version: &str, target: &str) {
        let copy = self.path(&format!("edgemesh-agent-{version}"));
        std::fs::copy(binary, &copy).expect("copy");
        let copy = copy.to_string_lossy().into_owned();
        let key = self.path("release.key").to_string_lossy().into_owned();
        let signed = self
            .ctl(&[
                "release",
                "sign",
                "--key",
                &key,
                "--binary",
                &copy,
                "--version",
                version,
                "--target",
                target,
            ])
            .await;
        assert!(signed.0, "sign: {}", signed.2);
        let published = self.ctl(&["release", "publish", "--binary", &copy]).await;
        assert!(published.0, "publish: {}", published.2);
    }

    async fn roll_out(&self, version: &str, percent: u8) {
        let out = self
            .ctl(&[
                "rollout",
                "set",
                "stable",
                "--version",
                version,
                "--percent",
                &percent.to_string(),
            ])
            .await;
        assert!(out.0, "rollout set: {}", out.2);
    }

    /// Stores a release row as it is given (the row's size is its binary's), past every check the
    /// admin API makes.
    async fn plant(
        &self,
        manifest: &Manifest,
        manifest_text: &str,
        signature: &str,
        binary: &[u8],
    ) {
        sqlx::query(
            "INSERT INTO agent_releases (version, target, manifest, signature, key_id, sha256, size,
                 min_version, expires_at, content)
             VALUES ($1, $2, $3, $4, '0000000000000000', $5, $6, $7, $8, $9)",
        )
        .bind(&manifest.version)
        .bind(&manifest.target)
        .bind(manifest_text)
        .bind(signature)
        .bind(&manifest.sha256)
        .bind(i64::try_from(binary.len()).expect("size"))
        .bind(&manifest.min_version)
        .bind(manifest.expires_at)
        .bind(binary)
        .execute(&self.pool)
        .await
        .expect("plant a release");
    }

    fn signing_key(&self) -> SigningKey {
        SigningKey::parse(&std::fs::read_to_string(self.path("release.key")).expect("key"))
            .expect("signing key")
    }

    /// `edgemesh-agent run` from the install directory, pinning the release key; its log in a file.
    fn run_agent(&self, probation_secs: u64) -> (Process, PathBuf) {
        let log = self.path("agent.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = self
            .agent(&[
                "run",
                "--server",
                &self.api.device_api,
                "--interval-secs",
                "1",
            ])
            .arg("--release-key")
            .arg(self.path("release.pub"))
            .args(["--probation-secs", &probation_secs.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("agent");
        (Process::from_child(child), log)
    }

    async fn device(&self, id: &str) -> Value {
        self.api.admin_get(&format!("/devices/{id}")).await
    }

    /// The stable rollout's status.
    async fn rollout(&self) -> Value {
        let all = self.api.admin_get("/rollouts").await;
        all["rollouts"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["channel"] == "stable"))
            .cloned()
            .unwrap_or(Value::Null)
    }
}

fn target() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "aarch64-unknown-linux-gnu"
    } else {
        "x86_64-unknown-linux-gnu"
    }
}

async fn eventually<F, Fut>(what: &str, secs: u64, mut check: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn an_update_is_verified_taken_and_the_agent_restarts_into_it(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let fleet = Fleet::start(&db, "pi-update").await;
    let next = next_agent();
    let (current, new) = (version_of(&fleet.installed()), version_of(&next));
    assert_ne!(current, new, "the two builds differ in version");
    let original = sha256_file(&fleet.installed());
    fleet.sign_and_publish(&next, &new).await;
    fleet.roll_out(&new, 100).await;

    let (mut agent, log) = fleet.run_agent(60);
    let pid = agent.pid();
    // The new version reports first on probation (as a child of the running agent), then the agent
    // switches: the same process (an exec, not a new one) runs the new binary.
    let next_sha = sha256_file(&next);
    eventually("the agent restarts into the new version", 90, || async {
        let running = std::fs::read(format!("/proc/{pid}/exe")).ok()?;
        (hex::encode(Sha256::digest(&running)) == next_sha).then_some(Value::Null)
    })
    .await;
    assert!(agent.running(), "the agent runs on");
    assert_eq!(agent.pid(), pid);
    // The new binary is in place, the previous one is kept beside it, nothing is left half-written.
    assert_eq!(sha256_file(&fleet.installed()), sha256_file(&next));
    assert_eq!(
        sha256_file(&fleet.installed().with_file_name("edgemesh-agent.previous")),
        original
    );
    assert!(
        !fleet
            .installed()
            .with_file_name("edgemesh-agent.next")
            .exists()
    );
    let highest =
        std::fs::read_to_string(fleet.device.path().join("highest-version")).expect("kept");
    assert_eq!(highest.trim(), new);

    let status = fleet.rollout().await;
    assert_eq!(status["updated"], 1, "{status}");
    assert_eq!(status["failures"], json!([]), "{status}");
    let audit = fleet
        .api
        .admin_get("/audit?device=pi-update&event_type=agent_update&limit=10")
        .await;
    let steps: Vec<&str> = audit["records"]
        .as_array()
        .expect("records")
        .iter()
        .rev()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(steps, ["installed", "completed"], "{audit}");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("update complete; restarting into it"),
        "{text}"
    );
    // The restarted agent reports as the new version, and is offered nothing more.
    let before = fleet.device("pi-update").await["last_seen_at"].clone();
    let device = eventually("the new version reports", 30, || async {
        let device = fleet.device("pi-update").await;
        (device["last_seen_at"] != before).then_some(device)
    })
    .await;
    assert_eq!(device["agent_version"], new.as_str());
    assert!(
        agent.stop().await,
        "the updated agent stops cleanly on SIGTERM"
    );
}

#[sqlx::test(migrations = false)]
async fn unsigned_forged_tampered_expired_and_downgraded_releases_are_refused(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let fleet = Fleet::start(&db, "pi-guarded").await;
    let original = sha256_file(&fleet.installed());
    let key = fleet.signing_key();
    let payload = b"#!/bin/sh\necho this must never run\n".to_vec();
    let manifest = |version: &str| Manifest {
        version: version.into(),
        target: target().into(),
        sha256: hex::encode(Sha256::digest(&payload)),
        size: payload.len() as u64,
        min_version: "0.0.0".into(),
        expires_at: time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("now")
            + time::Duration::days(1),
    };
    let (mut agent, log) = fleet.run_agent(30);

    let cases: [(&str, &str); 7] = [
        ("9.0.1", "unsigned"),
        ("9.0.2", "unknown_key"),
        ("9.0.3", "bad_signature"),
        ("9.0.4", "hash_mismatch"),
        ("9.0.5", "size_mismatch"),
        ("9.0.6", "expired"),
        ("9.0.7", "downgrade"),
    ];
    for (version, reason) in cases {
        let m = manifest(version);
        let text = m.to_text();
        match reason {
            "unsigned" => fleet.plant(&m, &text, "", &payload).await,
            "unknown_key" => {
                // Signed, but by a key no agent pins; the admin API takes it (it trusts no key).
                let other = SigningKey::generate().expect("key");
                fleet
                    .api
                    .admin_post(
                        "/releases",
                        json!({
                            "manifest": text,
                            "signature": other.sign(&text).to_text(),
                            "binary": base64::engine::general_purpose::STANDARD.encode(&payload),
                        }),
                    )
                    .await;
            }
            "bad_signature" => {
                // The pinned key's signature over another manifest: this one was edited after signing.
                let signed_for = manifest("9.0.0").to_text();
                fleet
                    .plant(&m, &text, &key.sign(&signed_for).to_text(), &payload)
                    .await;
            }
            "hash_mismatch" => {
                let mut tampered = payload.clone();
                tampered[12] ^= 0x20;
                fleet
                    .plant(&m, &text, &key.sign(&text).to_text(), &tampered)
                    .await;
            }
            "size_mismatch" => {
                // A binary longer than the manifest says: the agent reads one byte past it, no more.
                let mut longer = payload.clone();
                longer.extend(std::iter::repeat_n(b'#', 4 << 20));
                fleet
                    .plant(&m, &text, &key.sign(&text).to_text(), &longer)
                    .await;
            }
            "expired" => {
                let expired = Manifest {
                    expires_at: time::OffsetDateTime::now_utc()
                        .replace_nanosecond(0)
                        .expect("now")
                        - time::Duration::hours(1),
                    ..m.clone()
                };
                let text = expired.to_text();
                fleet
                    .plant(&expired, &text, &key.sign(&text).to_text(), &payload)
                    .await;
            }
            _ => {
                // This device once ran a higher version: anything at or below it is a rollback.
                edgemesh_core::files::write_atomic(
                    &fleet.device.path().join("highest-version"),
                    b"9.1.0\n",
                    0o600,
                )
                .expect("highest version");
                fleet
                    .plant(&m, &text, &key.sign(&text).to_text(), &payload)
                    .await;
            }
        }
        fleet.roll_out(version, 100).await;
        let failure = eventually(&format!("{version} refused as {reason}"), 30, || async {
            let status = fleet.rollout().await;
            status["failures"]
                .as_array()
                .and_then(|f| f.iter().find(|f| f["version"] == version).cloned())
        })
        .await;
        assert_eq!(failure["device_id"], "pi-guarded");
        assert_eq!(failure["step"], "refused");
        assert_eq!(failure["reason"], reason, "{failure}");
        // Logs reach stderr in batches, at most 50 ms after the line.
        eventually(
            &format!("a log line refusing {version} ({reason})"),
            5,
            || async {
                let text = std::fs::read_to_string(&log).ok()?;
                text.lines()
                    .any(|l| {
                        l.contains("update refused") && l.contains(version) && l.contains(reason)
                    })
                    .then_some(Value::Null)
            },
        )
        .await;
    }
    assert!(agent.running(), "the agent runs on");
    assert_eq!(
        sha256_file(&fleet.installed()),
        original,
        "the binary is untouched"
    );
    assert!(
        !fleet
            .installed()
            .with_file_name("edgemesh-agent.next")
            .exists()
    );
    let device = fleet.device("pi-guarded").await;
    assert_eq!(
        device["agent_version"].as_str(),
        Some(version_of(&fleet.installed()).as_str())
    );
    let refusals = fleet
        .api
        .admin_get("/audit?device=pi-guarded&event_type=agent_update&limit=50")
        .await;
    assert_eq!(
        refusals["records"].as_array().map(Vec::len),
        Some(cases.len()),
        "{refusals}"
    );
    assert!(agent.stop().await);
}

#[sqlx::test(migrations = false)]
async fn a_new_version_that_never_reports_is_rolled_back(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let fleet = Fleet::start(&db, "pi-probation").await;
    let original = sha256_file(&fleet.installed());
    // Two signed builds that never report: one crashes at start, one hangs.
    let crashing = fleet.path("crashing");
    std::fs::write(&crashing, "#!/bin/sh\necho crashing >&2\nexit 3\n").expect("write");
    let hanging = fleet.path("hanging");
    std::fs::write(&hanging, "#!/bin/sh\nexec sleep 600\n").expect("write");
    let (mut agent, log) = fleet.run_agent(5);

    for (binary, version, why) in [
        (&crashing, "9.1.1", "exited 3 times"),
        (&hanging, "9.1.2", "did not report within 5 s"),
    ] {
        fleet.sign_and_publish(binary, version).await;
        fleet.roll_out(version, 100).await;
        let failure = eventually(&format!("{version} rolled back"), 60, || async {
            let status = fleet.rollout().await;
            status["failures"]
                .as_array()
                .and_then(|f| f.iter().find(|f| f["version"] == version).cloned())
        })
        .await;
        assert_eq!(failure["step"], "rolled_back", "{failure}");
        assert_eq!(failure["reason"], "probation_failed", "{failure}");
        assert!(
            failure["detail"].as_str().is_some_and(|d| d.contains(why)),
            "{failure}"
        );
        assert_eq!(
            sha256_file(&fleet.installed()),
            original,
            "the running binary stays"
        );
        assert!(
            !fleet
                .installed()
                .with_file_name("edgemesh-agent.next")
                .exists()
        );
        let bad =
            std::fs::read_to_string(fleet.device.path().join("bad-versions")).expect("pinned");
        assert!(bad.lines().any(|l| l.starts_with(version)), "{bad}");
    }
    eventually("a log line for each rollback", 5, || async {
        let text = std::fs::read_to_string(&log).ok()?;
        (text.matches("update rolled back").count() == 2).then_some(Value::Null)
    })
    .await;
    // The old version goes on reporting, and is offered the bad version without taking it again.
    let before = fleet.device("pi-probation").await["last_seen_at"].clone();
    eventually("the old version reports on", 30, || async {
        let device = fleet.device("pi-probation").await;
        (device["last_seen_at"] != before).then_some(device)
    })
    .await;
    assert!(agent.running());
    let highest =
        std::fs::read_to_string(fleet.device.path().join("highest-version")).expect("kept");
    assert_eq!(
        highest.trim(),
        version_of(&fleet.installed()),
        "a rolled back version was never run"
    );
    let audit = fleet
        .api
        .admin_get("/audit?device=pi-probation&event_type=agent_update&limit=50")
        .await;
    let actions: Vec<&str> = audit["records"]
        .as_array()
        .expect("records")
        .iter()
        .rev()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["installed", "rolled_back", "installed", "rolled_back"],
        "{audit}"
    );
    assert!(agent.stop().await);
}

#[sqlx::test(migrations = false)]
async fn a_ten_percent_rollout_updates_the_tenth_of_the_fleet_its_hash_picks(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let fleet = Fleet::start(&db, "pi-canary").await;
    let next = next_agent();
    let new = version_of(&next);
    fleet.sign_and_publish(&next, &new).await;
    fleet.roll_out(&new, 10).await;

    let out = Command::new(bin("edgemesh-simulator"))
        .args([
            "update-checks",
            "--devices",
            "200",
            "--agent-version",
            "0.0.1",
        ])
        .args(["--target", target()])
        .args([
            "--control-api",
            &fleet.api.api,
            "--device-api",
            &fleet.api.device_api,
        ])
        .arg("--admin-token-file")
        .arg(fleet.server.path().join("admin-token"))
        .output()
        .await
        .expect("simulator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    // Computed here from the ids alone: the first 4 bytes of SHA-256(id), big-endian, mod 10000, below
    // 1000.
    let in_first_tenth = |id: &str| {
        let d = Sha256::digest(id.as_bytes());
        u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % 10_000 < 1000
    };
    let fleet_ids: Vec<&str> = summary["fleet"]
        .as_array()
        .expect("fleet")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(fleet_ids.len(), 200);
    let expected: Vec<&str> = fleet_ids
        .iter()
        .copied()
        .filter(|id| in_first_tenth(id))
        .collect();
    let offered: Vec<&str> = summary["offered"]
        .as_array()
        .expect("offered")
        .iter()
        .filter_map(|o| o["device_id"].as_str())
        .collect();
    assert_eq!(offered, expected);
    assert!(
        (8..=35).contains(&offered.len()),
        "{} of 200 in a 10% rollout",
        offered.len()
    );
    assert_eq!(summary["updated"], offered.len());
    let status = fleet.rollout().await;
    // The simulated fleet and the enrolled agent device (which has not reported) are the channel.
    assert_eq!(status["devices"], 201, "{status}");
    assert_eq!(status["updated"], offered.len(), "{status}");
    assert_eq!(status["running"][&new], offered.len(), "{status}");
    assert_eq!(status["running"]["0.0.1"], 200 - offered.len(), "{status}");
}

/// The aarch64 builds (`scripts/aarch64.sh build`), when they are there; required with
/// `EDGEMESH_REQUIRE_TOOLS=1`.
fn aarch64_agents() -> Option<(PathBuf, PathBuf)> {
    let dir = bin("edgemesh-agent")
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("aarch64");
    let (current, next) = (dir.join("edgemesh-agent"), dir.join("edgemesh-agent-next"));
    if current.exists() && next.exists() {
        return Some((current, next));
    }
    assert!(
        std::env::var("EDGEMESH_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "{} is missing: scripts/aarch64.sh prepare && scripts/aarch64.sh build (make test runs them)",
        current.display()
    );
    eprintln!("the aarch64 agent is not built here: skipped");
    None
}

/// What a Raspberry Pi's agent does, run for real: the aarch64 build under qemu-user enrolls, reports
/// its health, renews its certificate and takes a signed update to the next aarch64 build (which it
/// starts on probation and restarts into, as the x86_64 one does).
#[sqlx::test(migrations = false)]
async fn the_aarch64_agent_enrolls_reports_renews_and_updates_under_qemu(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let Some((current, next)) = aarch64_agents() else {
        return;
    };
    let elf = std::fs::read(&current).expect("binary");
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(
        u16::from_le_bytes([elf[18], elf[19]]),
        183,
        "e_machine is EM_AARCH64"
    );
    let fleet = Fleet::start_with(&db, "pi-arm", &current).await;

    let out = fleet
        .agent(&["report", "--once", "--server", &fleet.api.device_api])
        .output()
        .await
        .expect("report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("verdict: "));
    let target: Option<String> =
        sqlx::query_scalar("SELECT agent_target FROM devices WHERE id = 'pi-arm'")
            .fetch_one(&fleet.pool)
            .await
            .expect("device");
    assert_eq!(target.as_deref(), Some("aarch64-unknown-linux-gnu"));

    let before = fleet.device("pi-arm").await["certificates"].clone();
    let out = fleet
        .agent(&["renew", "--server", &fleet.api.device_api])
        .output()
        .await
        .expect("renew");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("renewed pi-arm"));
    let after = fleet.device("pi-arm").await["certificates"].clone();
    assert_eq!(
        after.as_array().map(Vec::len),
        before.as_array().map(|c| c.len() + 1),
        "a new certificate"
    );

    let new = version_of(&next);
    fleet
        .sign_and_publish_for(&next, &new, "aarch64-unknown-linux-gnu")
        .await;
    fleet.roll_out(&new, 100).await;
    let (mut agent, log) = fleet.run_agent(120);
    let pid = agent.pid();
    eventually(
        "the aarch64 agent restarts into the new version",
        240,
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains("update complete; restarting into it")
                .then_some(Value::Null)
        },
    )
    .await;
    assert_eq!(sha256_file(&fleet.installed()), sha256_file(&next));
    let before = fleet.device("pi-arm").await["last_seen_at"].clone();
    let device = eventually("the new aarch64 version reports", 60, || async {
        let device = fleet.device("pi-arm").await;
        (device["last_seen_at"] != before).then_some(device)
    })
    .await;
    assert_eq!(device["agent_version"], new.as_str());
    assert!(agent.running());
    assert_eq!(agent.pid(), pid, "restarted in place");
    let stopped = agent.stop().await;
    assert!(
        stopped,
        "stops cleanly: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
