//! Exit statuses of every binary: bad configuration exits 64 with a one-line reason before anything
//! starts; a failure after start (here: PostgreSQL unreachable) exits 1.

use std::process::Command;

use crate::helpers::{bin, free_port, policies_dir};

/// Runs `name` with `args`; answers its exit status and its standard error.
fn run(name: &str, args: &[&str]) -> (Option<i32>, String) {
    let state = tempfile::tempdir().expect("tempdir");
    let output = Command::new(bin(name))
        .args(args)
        .current_dir(state.path())
        .env_remove("EDGEMESH_DATABASE_URL")
        .output()
        .expect("runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The reason, on one line, naming what is wrong.
fn assert_one_line(stderr: &str, names: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains(" INFO ")).collect();
    assert!(
        lines.len() == 1 || lines.iter().filter(|l| l.contains("error:")).count() == 1,
        "one line of reason expected:\n{stderr}"
    );
    assert!(stderr.contains(names), "{names:?} not named:\n{stderr}");
}

#[test]
fn bad_configuration_exits_64_with_its_reason_in_every_binary() {
    let policies = policies_dir();
    let policies = policies.to_str().expect("utf-8");
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "edgemesh-ext-authz",
            &["serve", "--trust-domain", "Edge Mesh"],
            "not a SPIFFE trust domain",
        ),
        (
            "edgemesh-ext-authz",
            &[
                "--policy-dir",
                policies,
                "serve",
                "--timezone",
                "Mars/Olympus",
            ],
            "unknown time zone",
        ),
        (
            "edgemesh-ext-authz",
            &[
                "--policy-dir",
                policies,
                "serve",
                "--ca-cert",
                "/nonexistent/ca.pem",
            ],
            "/nonexistent/ca.pem",
        ),
        (
            "edgemesh-ext-authz",
            &["serve", "--cache-ttl-secs", "0"],
            "--cache-ttl-secs",
        ),
        (
            "edgemesh-control-api",
            &["--trust-domain", "spiffe://x"],
            "not a SPIFFE trust domain",
        ),
        (
            "edgemesh-control-api",
            &["--database-url", "postgres://edgemesh@db:port/edgemesh"],
            "invalid database URL",
        ),
        (
            "edgemesh-agent",
            &["run", "--interval-secs", "soon"],
            "--interval-secs",
        ),
        (
            "edgemeshctl",
            &["devices", "list", "--limit", "many"],
            "--limit",
        ),
        (
            "edgemesh-simulator",
            &["--duration", "forever"],
            "not a duration",
        ),
    ];
    for (name, args, names) in cases {
        let (code, stderr) = run(name, args);
        assert_eq!(code, Some(64), "{name} {args:?}:\n{stderr}");
        assert_one_line(&stderr, names);
    }
}

#[test]
fn a_failure_after_start_exits_1() {
    // Configuration in order, PostgreSQL not there: the control API connects at start and gives up.
    let url = format!("postgres://edgemesh@127.0.0.1:{}/edgemesh", free_port());
    let (code, stderr) = run(
        "edgemesh-control-api",
        &[
            "--database-url",
            &url,
            "--api-listen",
            "127.0.0.1:0",
            "--device-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("failed to connect to PostgreSQL"),
        "{stderr}"
    );
}
