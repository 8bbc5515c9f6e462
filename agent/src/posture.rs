//! What the agent measures on the device. Each probe reads the kernel's or the package manager's own
//! data through [`Host`] (whose roots tests point at fixture trees) and answers `None` when it cannot
//! tell: an unknown value is reported as `null`, never guessed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgemesh_core::api::HealthReport;
use time::OffsetDateTime;

use crate::os_release;

/// Daemons whose running process counts as an enabled antivirus.
const ANTIVIRUS_DAEMONS: [&str; 8] = [
    "clamd",
    "clamonacc",
    "savd",
    "sophos_threat_d",
    "wdavdaemon",
    "falcon-sensor",
    "esets_daemon",
    "bdsecd",
];

/// Where the probes look: `/proc`, `/sys` and `/etc` on a real host.
#[derive(Debug, Clone)]
pub struct Host {
    pub proc: PathBuf,
    pub sys: PathBuf,
    pub etc: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Self {
            proc: "/proc".into(),
            sys: "/sys".into(),
            etc: "/etc".into(),
        }
    }
}

impl Host {
    fn read(&self, base: &Path, rel: &str) -> Option<String> {
        std::fs::read_to_string(base.join(rel)).ok()
    }
}

/// Measures everything once. CPU usage is sampled over `cpu_window`.
pub async fn collect(host: &Host, cpu_window: Duration, sequence: u64) -> HealthReport {
    let first = host.read(&host.proc, "stat").and_then(|s| cpu_times(&s));
    tokio::time::sleep(cpu_window).await;
    let second = host.read(&host.proc, "stat").and_then(|s| cpu_times(&s));
    let release = host
        .read(&host.etc, "os-release")
        .and_then(|t| os_release::parse(&t));
    let patches = tokio::task::spawn_blocking(patches_current)
        .await
        .ok()
        .flatten();
    HealthReport {
        device_id: None,
        sequence,
        collected_at: OffsetDateTime::now_utc(),
        agent_version: crate::VERSION.to_owned(),
        agent_target: Some(crate::TARGET.to_owned()),
        cpu_usage: first.zip(second).and_then(|(a, b)| cpu_usage(a, b)),
        memory_usage: host
            .read(&host.proc, "meminfo")
            .and_then(|m| memory_usage(&m)),
        disk_usage: disk_usage(Path::new("/")),
        os: release.as_ref().map(|r| r.id.clone()),
        os_version: release.and_then(|r| r.version_id),
        kernel: host
            .read(&host.proc, "sys/kernel/osrelease")
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty()),
        uptime_seconds: host.read(&host.proc, "uptime").and_then(|u| uptime(&u)),
        disk_encrypted: root_encrypted(host),
        os_patches_current: patches,
        antivirus_enabled: antivirus_running(host),
        firewall_enabled: firewall_enabled(host),
    }
}

/// (idle, total) jiffies from the aggregate `cpu` line of `/proc/stat`.
pub fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user and nice).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((idle, total))
}

/// Percentage of CPU time not idle between two samples.
pub fn cpu_usage(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let total = after.1.checked_sub(before.1)?;
    let idle = after.0.checked_sub(before.0)?;
    if total == 0 {
        return None;
    }
    Some(round(100.0 * (1.0 - idle as f64 / total as f64)))
}

/// Percentage of memory in use: `MemTotal` less `MemAvailable`, from `/proc/meminfo`.
pub fn memory_usage(meminfo: &str) -> Option<f64> {
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    (total > 0.0).then(|| round(100.0 * (total - available) / total))
}

/// Percentage of the filesystem at `path` in use, as `df` computes it (used / (used + available)).
pub fn disk_usage(path: &Path) -> Option<f64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    let used = stat.f_blocks.checked_sub(stat.f_bfree)?;
    let usable = used + stat.f_bavail;
    (usable > 0).then(|| round(100.0 * used as f64 / usable as f64))
}

/// Seconds since boot, from `/proc/uptime`.
pub fn uptime(text: &str) -> Option<u64> {
    let seconds: f64 = text.split_whitespace().next()?.parse().ok()?;
    (seconds >= 0.0).then_some(seconds as u64)
}

/// Whether the root filesystem sits on dm-crypt (LUKS), directly or under LVM. `None` when the root is
/// not a block device (a container's overlay, say).
pub fn root_encrypted(host: &Host) -> Option<bool> {
    let mountinfo = host.read(&host.proc, "self/mountinfo")?;
    let device = root_device(&mountinfo)?;
    let dev = host.sys.join("dev/block").join(&device);
    if !dev.exists() {
        return None;
    }
    Some(is_crypt(host, &dev, 0))
}

/// The `major:minor` of the filesystem mounted at `/`, from `/proc/self/mountinfo`.
pub fn root_device(mountinfo: &str) -> Option<String> {
    let line = mountinfo.lines().rev().find(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(4) == Some(&"/")
    })?;
    let device = line.split_whitespace().nth(2)?;
    // Major 0 is an anonymous device: overlay, tmpfs, btrfs subvolume… not a disk we can inspect.
    (!device.starts_with("0:")).then(|| device.to_owned())
}

fn is_crypt(host: &Host, dev: &Path, depth: u32) -> bool {
    if depth > 8 {
        return false;
    }
    let uuid = std::fs::read_to_string(dev.join("dm/uuid")).unwrap_or_default();
    if uuid.trim().starts_with("CRYPT-") {
        return true;
    }
    // LVM (or another mapping) over an encrypted device: look at what it is built on.
    let Ok(slaves) = std::fs::read_dir(dev.join("slaves")) else {
        return false;
    };
    slaves.filter_map(Result::ok).any(|slave| {
        let name = slave.file_name();
        is_crypt(host, &host.sys.join("class/block").join(name), depth + 1)
    })
}

/// The apt data `patches_current` depends on: when neither changed, neither did its answer.
const APT_STATE: [&str; 2] = ["/var/lib/dpkg/status", "/var/lib/apt/lists"];

/// The last answer of the apt simulation and the modification times of [`APT_STATE`] it was based on.
type PatchCache = Option<(Vec<Option<std::time::SystemTime>>, Option<bool>)>;
static PATCHES: std::sync::Mutex<PatchCache> = std::sync::Mutex::new(None);

/// Whether no security update is pending, from apt's own simulation of an upgrade (seconds of CPU on a
/// Pi, so it runs again only when dpkg's status or apt's lists change). `None` where apt is not the
/// package manager or cannot tell.
pub fn patches_current() -> Option<bool> {
    let stamps: Vec<_> = APT_STATE
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect();
    let mut cache = PATCHES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((seen, answer)) = cache.as_ref()
        && *seen == stamps
    {
        return *answer;
    }
    let answer = simulate_upgrade();
    *cache = Some((stamps, answer));
    answer
}

fn simulate_upgrade() -> Option<bool> {
    let output = std::process::Command::new("apt-get")
        .args([
            "--simulate",
            "-o",
            "Debug::NoLocking=true",
            "-o",
            "Dir::Cache::pkgcache=",
            "-o",
            "Dir::Cache::srcpkgcache=",
            "upgrade",
        ])
        .env("LC_ALL", "C")
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    Some(pending_security_updates(&String::from_utf8_lossy(&output.stdout)) == 0)
}

/// Security updates in `apt-get --simulate upgrade` output: `Inst` lines from a security archive.
pub fn pending_security_updates(simulation: &str) -> usize {
    simulation
        .lines()
        .filter(|l| l.starts_with("Inst ") && l.to_ascii_lowercase().contains("security"))
        .count()
}

/// Whether a known antivirus daemon runs, from `/proc/<pid>/comm`. `None` if `/proc` is unreadable.
pub fn antivirus_running(host: &Host) -> Option<bool> {
    let entries = std::fs::read_dir(&host.proc).ok()?;
    Some(entries.filter_map(Result::ok).any(|entry| {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        is_pid
            && std::fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| ANTIVIRUS_DAEMONS.contains(&comm.trim()))
    }))
}

/// Whether ufw says it is enabled (`/etc/ufw/ufw.conf`). Other firewalls need root to inspect, so
/// without ufw the answer is `None`.
pub fn firewall_enabled(host: &Host) -> Option<bool> {
    let conf = host.read(&host.etc, "ufw/ufw.conf")?;
    conf.lines().find_map(
        |l| match l.trim().strip_prefix("ENABLED=")?.trim_matches('"') {
            "yes" => Some(true),
            "no" => Some(false),
            _ => None,
        },
    )
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
    }

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(fixtures().join(name)).expect(name)
    }

    fn host(name: &str) -> Host {
        let root = fixtures().join(name);
        Host {
            proc: root.join("proc"),
            sys: root.join("sys"),
            etc: root.join("etc"),
        }
    }

    #[test]
    fn cpu_usage_from_two_captured_samples() {
        let before = cpu_times(&fixture("proc-stat-1")).expect("sample");
        let after = cpu_times(&fixture("proc-stat-2")).expect("sample");
        // 400 jiffies elapsed, of which 100 idle (90) or iowait (10): 75 % busy.
        assert_eq!(after.1 - before.1, 400);
        assert_eq!(cpu_usage(before, after), Some(75.0));
        assert_eq!(cpu_usage(after, after), None, "no time elapsed: unknown");
        assert_eq!(cpu_times("intr 1 2 3"), None);
    }

    #[test]
    fn memory_usage_counts_available_memory_as_free() {
        assert_eq!(memory_usage(&fixture("meminfo")), Some(37.5));
        assert_eq!(
            memory_usage("MemTotal: 100 kB\n"),
            None,
            "no MemAvailable: unknown"
        );
    }

    #[test]
    fn uptime_and_kernel() {
        assert_eq!(uptime("12345.67 23456.78\n"), Some(12345));
        assert_eq!(uptime("garbage"), None);
    }

    #[test]
    fn the_root_device_comes_from_mountinfo() {
        assert_eq!(
            root_device(&fixture("mountinfo-plain")),
            Some("254:0".into())
        );
        assert_eq!(
            root_device(&fixture("mountinfo-overlay")),
            None,
            "overlay: unknown"
        );
    }

    #[test]
    fn root_on_luks_under_lvm_is_encrypted() {
        assert_eq!(root_encrypted(&host("luks-lvm")), Some(true));
    }

    #[test]
    fn root_on_a_plain_partition_is_not_encrypted() {
        assert_eq!(root_encrypted(&host("plain")), Some(false));
    }

    #[test]
    fn pending_security_updates_are_counted_from_apts_simulation() {
        assert_eq!(
            pending_security_updates(&fixture("apt-simulate-pending")),
            2
        );
        assert_eq!(pending_security_updates(&fixture("apt-simulate-clean")), 0);
    }

    #[test]
    fn an_antivirus_daemon_is_found_by_its_process_name() {
        assert_eq!(
            antivirus_running(&host("luks-lvm")),
            Some(true),
            "clamd runs there"
        );
        assert_eq!(antivirus_running(&host("plain")), Some(false));
        assert_eq!(
            antivirus_running(&host("missing")),
            None,
            "no /proc: unknown"
        );
    }

    #[test]
    fn ufw_says_whether_the_firewall_is_on() {
        assert_eq!(firewall_enabled(&host("luks-lvm")), Some(true));
        assert_eq!(firewall_enabled(&host("plain")), None, "no ufw: unknown");
    }
}
