//! The sequencer: one control API at a time (the holder of a PostgreSQL advisory lock) gives the
//! records their sequence numbers and hashes, in order, and about once a second signs a checkpoint,
//! stored in `audit_checkpoints` and appended to a file outside the database.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use edgemesh_core::release::{AUDIT_CHECKPOINT_PREFIX, SigningKey};
use sqlx::{Acquire, PgPool};
use time::OffsetDateTime;
use tokio::sync::watch;
use uuid::Uuid;

use super::{ChainedFields, Checkpoint, Drop, KEY_COMMENT, SignedCheckpoint, link};
use crate::metrics::Metrics;

/// Records sequenced per transaction.
pub const BATCH: i64 = 10_000;
/// How often a checkpoint is signed (when the chain moved on or retention dropped something).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// How long the sequencer waits when it has caught up. Each step has a fixed cost in PostgreSQL
/// (planning a query over every audit partition, a transaction of five statements) whether it finds
/// ten records or ten thousand: at a step every 100 ms that was about 1.6 ms of PostgreSQL CPU each,
/// a sixth of its work per audited decision through Envoy (BENCHMARKS.md). Once a second, records
/// are sequenced about a second after they are stored, as the README says.
const IDLE: Duration = Duration::from_secs(1);
/// How often a replica that is not the sequencer tries to become it.
const ELECTION_EVERY: Duration = Duration::from_secs(2);
/// The advisory lock whose holder sequences.
const LOCK: &str = "SELECT pg_try_advisory_lock(hashtext('edgemesh_audit_sequencer'))";

/// The checkpoint signing key, and where checkpoints are written outside the database.
pub struct Signer {
    key: SigningKey,
    dir: PathBuf,
    /// The newest checkpoint this key signed (its sequence number and hash), as far as this process
    /// and the checkpoint files know: a chain that is shorter, or holds another hash there, was cut or
    /// rewritten, and is not signed.
    signed: Mutex<(i64, String)>,
}

impl Signer {
    /// Reads the signing key from `key_path`, or generates one there (mode 0600, with its public key
    /// beside it as `.pub`) if the file does not exist; checkpoints go to `dir` (created, 0700).
    pub fn load_or_create(key_path: &Path, dir: &Path) -> anyhow::Result<Self> {
        let key = match std::fs::read_to_string(key_path) {
            Ok(text) => SigningKey::parse(&text)
                .with_context(|| format!("{} is not an audit signing key", key_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate()?;
                edgemesh_core::files::write_atomic(
                    key_path,
                    key.to_text_with_comment(KEY_COMMENT).as_bytes(),
                    0o600,
                )?;
                tracing::info!(key = %key_path.display(), "generated the audit checkpoint signing key");
                key
            }
            Err(e) => {
                return Err(e).with_context(|| format!("failed to read {}", key_path.display()));
            }
        };
        // The public key is what `audit verify` needs: written (again) beside the key.
        edgemesh_core::files::write_atomic(
            &key_path.with_extension("pub"),
            key.public_key().to_text().as_bytes(),
            0o644,
        )?;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        Ok(Self {
            key,
            dir: dir.to_owned(),
            signed: Mutex::new(last_signed(dir)),
        })
    }

    pub fn key_id(&self) -> String {
        self.key.public_key().id.to_string()
    }

    /// Appends `checkpoint` to the day's file (`checkpoints-YYYY-MM-DD.jsonl`) and syncs it.
    fn append(&self, checkpoint: &SignedCheckpoint, at: OffsetDateTime) -> anyhow::Result<()> {
        let name = format!(
            "checkpoints-{:04}-{:02}-{:02}.jsonl",
            at.year(),
            u8::from(at.month()),
            at.day()
        );
        let path = self.dir.join(name);
        let mut line = serde_json::to_vec(checkpoint)?;
        line.push(b'\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        file.write_all(&line)?;
        file.sync_data()?;
        Ok(())
    }
}

/// The newest checkpoint of `dir`'s files, (seq, hash): the highest of the newest file that has one;
/// (0, "") if none.
fn last_signed(dir: &Path) -> (i64, String) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, String::new());
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for file in files.iter().rev() {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let newest = text
            .lines()
            .filter_map(|line| serde_json::from_str::<SignedCheckpoint>(line).ok())
            .filter_map(|signed| serde_json::from_str::<Checkpoint>(&signed.body).ok())
            .max_by_key(|checkpoint| checkpoint.seq);
        if let Some(checkpoint) = newest {
            return (checkpoint.seq, checkpoint.hash);
        }
    }
    (0, String::new())
}

/// Refuses a chain that ends before the newest checkpoint this key signed, or holds another hash at
/// it: its newest records were removed, or it was rewritten. (A record retention dropped is no
/// longer there to compare: `audit verify` checks those against the signed drops.)
async fn check_not_cut(db: &PgPool, signer: &Signer, seq: i64) -> anyhow::Result<()> {
    let (signed, hash) = signer
        .signed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    anyhow::ensure!(
        seq >= signed,
        "the audit chain ends at record {seq}, but this key signed a checkpoint at record {signed}: \
         records were removed; not sequencing or signing (run `edgemesh-control-api audit verify`)"
    );
    if signed > 0 {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT encode(hash, 'hex') FROM audit_chain WHERE seq = $1")
                .bind(signed)
                .fetch_optional(db)
                .await?;
        anyhow::ensure!(
            stored.is_none_or(|stored| stored == hash),
            "the audit chain's record {signed} is not the one this key signed: the chain was \
             rewritten; not sequencing or signing (run `edgemesh-control-api audit verify`)"
        );
    }
    Ok(())
}

/// Sequences and signs while this replica holds the lock; tries to take it over otherwise.
pub async fn run(
    db: PgPool,
    signer: Arc<Signer>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match lead(&db, &signer, &metrics, &mut stop).await {
            Ok(()) => {}
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "the audit sequencer stopped; trying again"
            ),
        }
        metrics.audit_sequencer_leader.set(0);
        tokio::select! {
            () = tokio::time::sleep(ELECTION_EVERY) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// Takes the lock if it is free, then sequences until `stop` or until the lock's connection fails.
async fn lead(
    db: &PgPool,
    signer: &Signer,
    metrics: &Metrics,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // The lock lives as long as this connection, taken out of the pool for that.
    let mut lock = db.acquire().await?.detach();
    let held: bool = sqlx::query_scalar(LOCK).fetch_one(&mut lock).await?;
    if !held {
        return Ok(());
    }
    // Nothing is added to a chain that was cut or rewritten.
    let seq: i64 = sqlx::query_scalar("SELECT seq FROM audit_sequencer")
        .fetch_one(db)
        .await?;
    check_not_cut(db, signer, seq).await?;
    tracing::info!(key_id = %signer.key_id(), "this control API sequences the audit trail");
    metrics.audit_sequencer_leader.set(1);
    let mut signed = tokio::time::Instant::now();
    loop {
        let sequenced = step(db, BATCH).await.context("sequencing failed")?;
        metrics.audit_sequenced.inc_by(sequenced as u64);
        if signed.elapsed() >= CHECKPOINT_EVERY {
            // Still the holder? A lost connection released the lock.
            sqlx::query("SELECT 1").execute(&mut lock).await?;
            if checkpoint(db, signer)
                .await
                .context("signing a checkpoint failed")?
                .is_some()
            {
                metrics.audit_checkpoints.inc();
            }
            signed = tokio::time::Instant::now();
        }
        if sequenced < BATCH as usize {
            tokio::select! {
                () = tokio::time::sleep(IDLE) => {}
                _ = stop.wait_for(|stop| *stop) => return Ok(()),
            }
        } else if *stop.borrow() {
            return Ok(());
        }
    }
}

/// Sequences up to `limit` records, the next ones in (tx, occurred_at, id) order whose writing
/// transaction has ended; answers how many. Safe to run from several places at once: the state row
/// is locked for the transaction.
pub async fn step(db: &PgPool, limit: i64) -> Result<usize, sqlx::Error> {
    let mut conn = db.acquire().await?;
    let mut tx = conn.begin().await?;
    let (seq, hash): (i64, Vec<u8>) =
        sqlx::query_as("SELECT seq, hash FROM audit_sequencer FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    // Every transaction with a lower id has ended: no row with a lower `tx` can appear any more.
    let horizon: String =
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
            .fetch_one(&mut *tx)
            .await?;
    #[derive(sqlx::FromRow)]
    struct Row {
        tx: String,
        #[sqlx(flatten)]
        fields: ChainedFields,
    }
    // The columns of `ChainedFields`.
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT l.tx::text AS tx, l.id, l.occurred_at, l.event_type, l.action, l.device_id,
                l.user_id, l.role, l.service, l.method, l.path, l.decision, l.reasons,
                l.policy_version, l.certificate_serial, l.latency_us, l.peer_address,
                l.details::text AS details, l.shadow_decision, l.shadow_reasons,
                l.shadow_policy_version, l.context, l.decided_at
         FROM audit_log l
         WHERE (l.tx, l.occurred_at, l.id) >
               (SELECT after_tx, after_at, after_id FROM audit_sequencer)
           AND l.tx < $1::xid8
         ORDER BY l.tx, l.occurred_at, l.id LIMIT $2",
    )
    .bind(&horizon)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let Some(last) = rows.last() else {
        return Ok(0);
    };
    let mut prev: [u8; 32] = hash.try_into().unwrap_or(super::GENESIS);
    let (mut seqs, mut times, mut ids, mut prevs, mut hashes) = (
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
    );
    for (n, row) in rows.iter().enumerate() {
        let next = link(&prev, &row.fields);
        seqs.push(seq + 1 + n as i64);
        times.push(row.fields.occurred_at);
        ids.push(row.fields.id);
        prevs.push(prev.to_vec());
        hashes.push(next.to_vec());
        prev = next;
    }
    sqlx::query(
        "INSERT INTO audit_chain (seq, occurred_at, id, prev, hash)
         SELECT * FROM unnest($1::int8[], $2::timestamptz[], $3::uuid[], $4::bytea[], $5::bytea[])",
    )
    .bind(&seqs)
    .bind(&times)
    .bind(&ids)
    .bind(&prevs)
    .bind(&hashes)
    .execute(&mut *tx)
    .await?;
    let (last_at, last_id): (OffsetDateTime, Uuid) = (last.fields.occurred_at, last.fields.id);
    sqlx::query(
        "UPDATE audit_sequencer SET seq = $1, hash = $2, after_tx = $3::xid8, after_at = $4,
                after_id = $5",
    )
    .bind(seq + rows.len() as i64)
    .bind(prev.to_vec())
    .bind(&last.tx)
    .bind(last_at)
    .bind(last_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows.len())
}

/// Signs a checkpoint of the chain's end if it moved on since the last one, or if retention dropped
/// partitions no checkpoint names yet; stores it and appends it to the checkpoint files.
pub async fn checkpoint(db: &PgPool, signer: &Signer) -> anyhow::Result<Option<Checkpoint>> {
    let mut conn = db.acquire().await?;
    let mut tx = conn.begin().await?;
    let (seq, hash, drops_signed): (i64, Vec<u8>, i64) =
        sqlx::query_as("SELECT seq, hash, drops_signed FROM audit_sequencer FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    let last: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM audit_checkpoints")
        .fetch_one(&mut *tx)
        .await?;
    #[derive(sqlx::FromRow)]
    struct Dropped {
        id: i64,
        partition: String,
        from_time: String,
        until_time: String,
        records: i64,
        min_seq: Option<i64>,
        max_seq: Option<i64>,
    }
    let dropped: Vec<Dropped> = sqlx::query_as(
        "SELECT id, partition, to_json(from_time) #>> '{}' AS from_time,
                to_json(until_time) #>> '{}' AS until_time, records, min_seq, max_seq
         FROM audit_retention WHERE id > $1 ORDER BY id",
    )
    .bind(drops_signed)
    .fetch_all(&mut *tx)
    .await?;
    // Signing a cut or rewritten chain would vouch for it (checked every time: a cut to a checkpoint
    // the database still has leaves nothing new to sign).
    check_not_cut(db, signer, seq).await?;
    if dropped.is_empty() && (seq == 0 || last == Some(seq)) {
        return Ok(None);
    }
    let signed_at = OffsetDateTime::now_utc();
    let body = Checkpoint {
        seq,
        hash: hex::encode(&hash),
        signed_at,
        key_id: signer.key_id(),
        dropped: dropped
            .iter()
            .map(|d| Drop {
                partition: d.partition.clone(),
                from: d.from_time.clone(),
                until: d.until_time.clone(),
                records: d.records,
                min_seq: d.min_seq,
                max_seq: d.max_seq,
            })
            .collect(),
    };
    let text = serde_json::to_string(&body)?;
    let signed = SignedCheckpoint {
        signature: signer
            .key
            .sign_with_prefix(AUDIT_CHECKPOINT_PREFIX, &text)
            .to_text(),
        body: text,
    };
    sqlx::query(
        "INSERT INTO audit_checkpoints (seq, signed_at, body, signature) VALUES ($1, $2, $3, $4)",
    )
    .bind(seq)
    .bind(signed_at)
    .bind(&signed.body)
    .bind(&signed.signature)
    .execute(&mut *tx)
    .await?;
    if let Some(newest) = dropped.last() {
        sqlx::query("UPDATE audit_sequencer SET drops_signed = $1")
            .bind(newest.id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    *signer
        .signed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = (seq, body.hash.clone());
    // Outside the database too: without a copy elsewhere, deleting the newest records together with
    // their checkpoints could not be told from a quiet hour.
    if let Err(e) = signer.append(&signed, signed_at) {
        tracing::error!(
            error = format!("{e:#}"),
            seq,
            "the audit checkpoint could not be written to the checkpoint directory"
        );
    }
    Ok(Some(body))
}
