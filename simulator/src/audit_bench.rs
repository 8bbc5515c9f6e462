//! Benches of the audit trail, against a bench database (never the stack's own): the ext-authz audit
//! writer's throughput into Postgres, and audit queries over millions of records through the admin API.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use edgemesh_core::policy::input::Context as DecisionContext;
use edgemesh_ext_authz::audit::{self, ContextRef, Record};
use edgemesh_ext_authz::metrics::Metrics;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;

use crate::db;
use crate::fleet::Admin;
use crate::stats::percentile;

fn record(i: u64) -> Record {
    let deny = i.is_multiple_of(5);
    let context = format!("{{\"device\":{{\"id\":\"bench-{}\"}}}}", i % 10_000);
    Record {
        id: uuid::Uuid::new_v4(),
        at_us: Record::at(OffsetDateTime::now_utc()),
        device: Some(format!("bench-{}", i % 10_000)),
        user: Some(format!("owner-{}", i % 500)),
        role: Some("developer".to_owned()),
        service: Some("api".to_owned()),
        method: Some("GET".to_owned()),
        path: Some(format!("/api/items/{i}")),
        allow: !deny,
        reasons: if deny {
            vec!["antivirus is not enabled".to_owned()]
        } else {
            Vec::new()
        },
        policy_version: "0f".repeat(32),
        serial: Some(format!("{i:032x}")),
        latency_us: 85,
        peer: Some("127.0.0.1:40000".to_owned()),
        shadow: None,
        // One context per device, carried by its first record.
        context: Some(ContextRef {
            id: DecisionContext::id_of(&context),
            body: (i < 10_000).then_some(context),
        }),
        decided_at: None,
    }
}

async fn bench_pool(database_url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(8)
        .connect(database_url)
        .await
        .with_context(|| "cannot connect to the bench database".to_owned())
}

/// The writer alone: `records` decisions queued at once (its drain rate, batches always full), then a
/// fixed offered rate of half that for `secs` (does its queue stay short?).
pub async fn writer(database_url: &str, records: u64, secs: u64) -> anyhow::Result<()> {
    let db = bench_pool(database_url).await?;
    let metrics = Metrics::new()?;
    let spool = std::env::temp_dir().join(format!("edgemesh-bench-spool-{}", std::process::id()));
    let (stop, stopped) = watch::channel(false);
    let (log, done) = audit::start(
        db.clone(),
        &spool,
        usize::try_from(records)?.max(1),
        std::sync::Arc::clone(&metrics),
        stopped,
    )?;
    let written = || metrics.audit_written.get() + metrics.audit_replayed.get();

    let started = Instant::now();
    for i in 0..records {
        log.record(record(i));
    }
    let queued = started.elapsed();
    while written() < records {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let drain = records as f64 / elapsed.as_secs_f64();
    println!(
        "drain: {records} decisions queued in {:.2} s, all in Postgres after {:.2} s: {:.0} decisions/s \
         ({} from the spool)",
        queued.as_secs_f64(),
        elapsed.as_secs_f64(),
        drain,
        metrics.audit_replayed.get()
    );

    // Offered load at half the drain rate, in 10 ms ticks; the queue depth is sampled every tick.
    let rate = (drain / 2.0).max(100.0);
    let before = written();
    let mut max_depth = 0;
    let mut sent = 0u64;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while started.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            log.record(record(records + sent));
            sent += 1;
        }
        max_depth = max_depth.max(metrics.audit_queue_depth.get());
    }
    while written() < before + sent {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "steady: {sent} decisions at {rate:.0}/s for {secs} s: queue depth at most {max_depth}, \
         {} from the spool, {} write failures",
        metrics.audit_replayed.get(),
        metrics.audit_write_failures.get()
    );
    let _ = stop.send(true);
    let _ = done.await;
    let _ = std::fs::remove_dir_all(&spool);
    Ok(())
}

/// Seeds `rows` authorization records over the last 90 days for `devices` devices (unless the bench
/// database already holds them), then times `queries` admin API queries for one device and a one-day
/// window.
pub async fn query(
    database_url: &str,
    control_api: &str,
    admin_token_file: &Path,
    rows: u64,
    devices: u32,
    queries: u32,
) -> anyhow::Result<()> {
    let db = bench_pool(database_url).await?;
    seed(
        &db,
        rows,
        devices,
        OffsetDateTime::now_utc() - time::Duration::days(90),
    )
    .await?;
    let token = std::fs::read_to_string(admin_token_file)
        .with_context(|| format!("cannot read {}", admin_token_file.display()))?;
    let admin = Admin::connect(control_api, token.trim()).await?;
    let now = OffsetDateTime::now_utc();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut latencies = Vec::with_capacity(queries as usize);
    let mut found = 0usize;
    for _ in 0..queries {
        let device = rng.random_range(0..devices);
        let day = rng.random_range(1..89);
        let since = now - time::Duration::days(day);
        let until = since + time::Duration::days(1);
        let path = format!(
            "/audit?device=bench-{device}&since={}&until={}&limit=100",
            since.format(&Rfc3339)?,
            until.format(&Rfc3339)?
        );
        let started = Instant::now();
        let page = admin.get(&path).await?;
        latencies.push(started.elapsed());
        found += page["records"].as_array().map_or(0, Vec::len);
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "audit queries over {rows} records ({devices} devices, 90 days): {queries} queries for one \
         device and one day, {:.1} records each: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
         (client-side, through HTTPS)",
        found as f64 / f64::from(queries),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
    );
    Ok(())
}

async fn seed(db: &PgPool, rows: u64, devices: u32, since: OffsetDateTime) -> anyhow::Result<()> {
    let have = db::bench_records(db, since).await?;
    if u64::try_from(have)? >= rows {
        println!("bench database already holds {have} records");
        return Ok(());
    }
    // The months the records fall in get their partitions, as they would have in production.
    db::recent_partitions(db).await?;
    let started = Instant::now();
    let chunk = 1_000_000u64;
    let mut done = u64::try_from(have)?;
    while done < rows {
        let n = chunk.min(rows - done);
        db::insert_bench_records(
            db,
            i64::try_from(done)?,
            i64::from(devices),
            i64::try_from(n)?,
            since,
        )
        .await?;
        done += n;
        eprintln!(
            "seeded {done} of {rows} records ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    db::analyze_audit(db).await?;
    Ok(())
}

/// Fills the audit of `database_url` (the stack's: through-Envoy benches measure its services) to at
/// least `rows` records in this month's partition, the one the decisions measured go to, as at the
/// end of a busy month: 10,000 devices, the time since the month began. Waits for the sequencer (a
/// control API on that database) to chain them and vacuums, so that neither runs during the
/// measurement.
pub async fn fill_this_month(database_url: &str, rows: u64) -> anyhow::Result<()> {
    let db = bench_pool(database_url).await?;
    let now = OffsetDateTime::now_utc();
    let month = now.replace_day(1)?.replace_time(time::Time::MIDNIGHT);
    seed(&db, rows, 10_000, month).await?;
    let (records, _, _) = db::audit_size(&db).await?;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let sequenced = db::sequenced(&db).await?;
        if sequenced >= records {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the audit sequencer chained {sequenced} of {records} records in 15 minutes: is a control API running on this database?"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    db::vacuum_audit(&db).await?;
    Ok(())
}

/// The audit's size, as a line of a bench's report.
pub async fn describe(database_url: &str) -> anyhow::Result<String> {
    let db = bench_pool(database_url).await?;
    let (records, bytes, current) = db::audit_size(&db).await?;
    Ok(format!(
        "{records} records ({current} in this month's partition), {:.2} GiB with indexes",
        bytes as f64 / f64::from(1u32 << 30)
    ))
}
