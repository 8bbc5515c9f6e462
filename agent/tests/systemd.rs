//! The shipped systemd unit: its hardening (always checked), and `systemd-analyze verify` (where systemd
//! is installed) with its `ExecStart` pointed at the binary this build produced.

use std::process::Command;

fn unit() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/edgemesh-agent.service"
    ))
    .expect("unit file")
}

/// The unit runs the daemon unprivileged and confined, wherever the tests run.
#[test]
fn the_systemd_unit_runs_the_agent_confined() {
    let unit = unit();
    // It runs (and updates) the copy in its state directory, seeded from /usr/local/bin.
    assert!(unit.contains("ExecStart=/var/lib/edgemesh-agent/bin/edgemesh-agent run"));
    assert!(unit.contains("install -D -m 0755 /usr/local/bin/edgemesh-agent /var/lib/edgemesh-agent/bin/edgemesh-agent"));
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/edgemesh-agent",
        "Restart=on-failure",
        "User=edgemesh-agent",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == hardening),
            "{hardening} is a line of the unit"
        );
    }
}

#[test]
fn the_systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed here: only the unit's text was checked");
        return;
    }
    let unit = unit();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edgemesh-agent.service");
    std::fs::write(
        &path,
        unit.replace(
            "/var/lib/edgemesh-agent/bin/edgemesh-agent",
            env!("CARGO_BIN_EXE_edgemesh-agent"),
        )
        .replace(
            "/usr/local/bin/edgemesh-agent",
            env!("CARGO_BIN_EXE_edgemesh-agent"),
        ),
    )
    .expect("write");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        !stderr.contains("edgemesh-agent.service"),
        "warnings about the unit: {stderr}"
    );
}
