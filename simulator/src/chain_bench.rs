//! The tamper-evident audit at scale, in a bench database of its own: ROWS decisions (each with a
//! replayable context) stored in bulk, then sequenced and chained by the control API's sequencer (the
//! same code, run here, with a checkpoint signed every second), then verified with `audit verify`'s
//! code. Writes the window of the newest million decisions for the replay bench.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use edgemesh_control_api::chain::sequencer::{self, BATCH, Signer};
use edgemesh_control_api::chain::verify;
use edgemesh_core::policy::Value;
use edgemesh_core::policy::input::Context;
use edgemesh_core::release::PublicKey;
use serde::Deserialize;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::db;

/// Devices (one context each) the decisions are spread over.
const CONTEXTS: usize = 10_000;
/// How far back the decisions go.
const SPAN_DAYS: i64 = 10;
/// Decisions in the replay window.
const REPLAY: u64 = 1_000_000;

/// The context of device `n`: a developer's Raspberry Pi that reported healthy at `measured`.
fn context(n: usize, measured: OffsetDateTime) -> anyhow::Result<Context> {
    let document = json!({
        "device": {"id": format!("bench-{n}"), "type": "raspberrypi", "status": "active",
                   "os": "debian", "os_version": "12"},
        "certificate": {"serial": format!("{n:032x}"), "fingerprint": format!("{n:064x}"),
                        "not_after": "2027-12-01T00:00:00Z", "revoked": false},
        "health": {"age_seconds": 0, "cpu_usage": 0.25, "memory_usage": 0.5, "disk_usage": 0.4,
                   "os_patches_current": true, "antivirus_enabled": true, "disk_encrypted": true,
                   "firewall_enabled": true, "collected_at": measured.format(&Rfc3339)?,
                   "status": "healthy"},
        "user": {"id": format!("owner-{n}"), "role": "developer"},
        "service": null,
        "request": {"method": null, "path": null, "host": "edgemesh.local",
                    "headers": {"user-agent": "edgemesh-agent/0.1.0"}},
        "time": {"now_ns": 0, "rfc3339": "", "timezone": "UTC"},
        // Fresh for the whole window: the decisions go through every check.
        "config": {"max_health_age_seconds": (SPAN_DAYS + 1) * 86_400},
    });
    Context::of(&Value::deserialize(&document)?, Some(measured))
}

pub async fn run(database_url: &str, rows: u64, window_file: &Path) -> anyhow::Result<()> {
    let db = PgPoolOptions::new()
        .max_connections(4)
        .connect(database_url)
        .await
        .context("cannot connect to the chain bench database")?;
    let now = OffsetDateTime::now_utc();
    let from = now - time::Duration::days(SPAN_DAYS);
    db::recent_partitions(&db).await?;
    let contexts: Vec<Context> = (0..CONTEXTS)
        .map(|n| context(n, from))
        .collect::<anyhow::Result<_>>()?;
    let ids: Vec<Vec<u8>> = contexts.iter().map(|c| c.id.to_vec()).collect();
    let bodies: Vec<String> = contexts.iter().map(|c| c.body.clone()).collect();
    db::insert_contexts(&db, &ids, &bodies).await?;
    let started = Instant::now();
    let chunk = 1_000_000u64;
    let mut done = 0u64;
    let span = (SPAN_DAYS * 86_400) as f64;
    while done < rows {
        let n = chunk.min(rows - done);
        db::insert_replayable_records(
            &db,
            &ids,
            from,
            span,
            i64::try_from(done)?,
            i64::try_from(n)?,
            i64::try_from(rows)?,
        )
        .await?;
        done += n;
        eprintln!(
            "stored {done} of {rows} decisions ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    db::analyze_audit(&db).await?;
    let stored = started.elapsed().as_secs_f64();
    println!(
        "stored {rows} decisions in bulk in {stored:.1} s ({:.0}/s; {CONTEXTS} contexts, {} bytes each on average)",
        rows as f64 / stored,
        bodies.iter().map(String::len).sum::<usize>() / CONTEXTS
    );

    // The sequencer, as the control API runs it: batches of BATCH, a checkpoint every second.
    let keys = tempfile_dir()?;
    let key = keys.join("audit-signing.key");
    let checkpoints = keys.join("checkpoints");
    let signer = Signer::load_or_create(&key, &checkpoints)?;
    let started = Instant::now();
    let mut signed = Instant::now();
    let (mut sequenced, mut signatures) = (0usize, 0usize);
    loop {
        let n = sequencer::step(&db, BATCH).await?;
        sequenced += n;
        if signed.elapsed().as_secs_f64() >= 1.0 || n == 0 {
            signatures += usize::from(sequencer::checkpoint(&db, &signer).await?.is_some());
            signed = Instant::now();
        }
        if n == 0 {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sequencer: {sequenced} records chained in {secs:.1} s: {:.0} records/s (batches of {BATCH}, \
         {signatures} signed checkpoints)",
        sequenced as f64 / secs
    );

    let public = PublicKey::parse(&std::fs::read_to_string(key.with_extension("pub"))?)?;
    let started = Instant::now();
    let report = verify::verify(&db, &public, Some(&checkpoints), None).await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.problem.is_none(),
        "the bench's own chain does not verify: {:?}",
        report.problem
    );
    println!(
        "audit verify: {} records up to {} in {secs:.1} s: {:.0} records/s ({} checkpoints)",
        report.verified,
        report.last_seq,
        report.verified as f64 / secs,
        report.checkpoints
    );

    // The newest million decisions (or all), for `policy replay`.
    let replayed = REPLAY.min(rows);
    let since = from + time::Duration::seconds_f64(span * (rows - replayed) as f64 / rows as f64);
    let until = now + time::Duration::minutes(1);
    std::fs::write(
        window_file,
        format!("{} {}\n", since.format(&Rfc3339)?, until.format(&Rfc3339)?),
    )
    .with_context(|| format!("cannot write {}", window_file.display()))?;
    println!(
        "replay window: the newest {replayed} decisions, in {}",
        window_file.display()
    );
    std::fs::remove_dir_all(&keys).ok();
    Ok(())
}

/// A fresh directory for the bench's signing key and checkpoints.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("edgemesh-chain-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
