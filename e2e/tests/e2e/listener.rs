//! ext-authz's change listener across a connection that silently stops: a TCP relay between ext-authz
//! and PostgreSQL is frozen (SIGSTOP), as a NAT dropping the connection or a failover would leave it.
//! A revocation made meanwhile must be enforced within the heartbeat bound, not the cache's TTL.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

use crate::helpers::{Process, database_url, free_port};
use crate::proxy::{Options, Stack};

/// The relay process (scripts/relay.py) from `listen` to PostgreSQL's `target` port.
async fn relay(listen: u16, target: u16) -> (Process, u32) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/relay.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args([listen.to_string(), target.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the relay");
    let pid = child.id().expect("pid");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
    assert!(
        matches!(ready, Ok(Ok(Some(ref l))) if l == "ready"),
        "relay not ready: {ready:?}"
    );
    (Process::from_child(child), pid)
}

fn signal(pid: u32, name: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -{name}");
}

#[sqlx::test(migrations = false)]
async fn a_revocation_behind_a_frozen_listener_is_enforced_within_the_heartbeat_bound(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let url = database_url(&db);
    // postgres://user@host:port/db → the same through the relay.
    let (prefix, rest) = url.split_once('@').expect("url has a user");
    let (authority, database) = rest.split_once('/').expect("url has a database");
    let pg_port: u16 = authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("url has a port");
    let relay_port = free_port();
    let (_relay, relay_pid) = relay(relay_port, pg_port).await;
    let options = Options {
        ext_authz_database_url: Some(format!("{prefix}@127.0.0.1:{relay_port}/{database}")),
        // A TTL far beyond the bound asserted: only the heartbeat can explain a deny in time.
        ext_authz_env: vec![
            ("EDGEMESH_CACHE_TTL_SECS", "3600".to_owned()),
            ("EDGEMESH_NOTIFY_HEARTBEAT_MS", "500".to_owned()),
        ],
        ..Options::default()
    };
    let stack = Stack::start(&url, options).await;
    let device = stack.device("root", "admin", "pc-frozen").await;
    stack.report(&device, json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.get(&device, "/api/x").await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "never allowed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = stack.ext_authz_metrics().await;
    assert!(
        metrics.contains("edgemesh_ext_authz_notify_heartbeat_age_seconds"),
        "{metrics}"
    );

    signal(relay_pid, "STOP");
    stack
        .api
        .admin_post("/devices/pc-frozen/revoke", json!({"reason": "lost"}))
        .await;
    let revoked = Instant::now();
    // The heartbeat's timeout is 1.5 s; allow generously for a loaded machine, far below the TTL.
    let bound = Duration::from_secs(20);
    let answer = loop {
        let answer = stack.get(&device, "/api/x").await;
        if answer.status != StatusCode::OK {
            break answer;
        }
        assert!(
            revoked.elapsed() < bound,
            "still allowed {bound:?} after the revocation behind a frozen listener"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{answer:?}");

    // Back: the revocation itself is what denies.
    signal(relay_pid, "CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = stack.get(&device, "/api/x").await;
        if answer
            .reasons()
            .iter()
            .any(|r| r.contains("revoked") || r.contains("not active"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "last answer: {answer:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
