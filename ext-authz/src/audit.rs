//! The decision audit trail, written without ever making a Check wait and without losing a record.
//!
//! The Check path hands each decision to [`AuditLog::record`], which puts it on a bounded queue (never
//! waiting). One writer task takes what is queued, up to a batch at a time (waiting a moment for a
//! batch to fill), and copies the batch into `audit_log` with one `COPY`. When Postgres is unreachable
//! or slow (no answer within [`WRITE_TIMEOUT`]), the batch is appended to a local append-only spool file instead; while the
//! spool holds anything, new batches go behind it, so the order is kept. A replay task inserts the
//! spool's records in file order once Postgres answers again, and records how far it got in an offset
//! file, so a restart continues where it stopped. Records carry their decision id and time, which are
//! the table's primary key: a batch that is written twice (a timeout after the commit, a replay after
//! a crash) is stored once. If the queue is full, the record goes straight to the spool.
//!
//! What the queue, the spool and the replay do is in the metrics (`edgemesh_audit_*`); a record that
//! could not even be spooled (a full disk) is counted as lost and logged as an error.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::metrics::Metrics;

/// A batch not written within this time is spooled instead.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Records per insert statement.
const BATCH: usize = 1000;
/// How long one `COPY` stays open for records to stream into it before it is committed.
const LINGER: Duration = Duration::from_millis(100);
/// How often, within that time, the records that arrived are sent. PostgreSQL inserts each piece
/// when it comes: every 3 ms that is a fraction of a millisecond of its work, where every 10 ms it was
/// 0.7-0.9 ms at a time and the proxy's p99 showed it (BENCHMARKS.md).
const STREAM_EVERY: Duration = Duration::from_millis(3);
/// How often the replay task looks at the spool.
const REPLAY_EVERY: Duration = Duration::from_millis(500);
/// Longest path kept in a record (a request path can be tens of kilobytes).
const MAX_PATH_CHARS: usize = 2048;

/// One authorization decision, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The decision id (also sent to the client and the upstream).
    pub id: Uuid,
    /// Microseconds since the Unix epoch: Postgres's precision, so a replayed record's key is equal.
    pub at_us: i64,
    pub device: Option<String>,
    pub user: Option<String>,
    pub role: Option<String>,
    pub service: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub allow: bool,
    pub reasons: Vec<String>,
    pub policy_version: String,
    pub serial: Option<String>,
    pub latency_us: i64,
    pub peer: Option<String>,
}

impl Record {
    pub fn at(now: OffsetDateTime) -> i64 {
        i64::try_from(now.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
    }

    /// Bounds a request path for storage.
    pub fn bounded_path(path: &str) -> String {
        match path.char_indices().nth(MAX_PATH_CHARS) {
            Some((cut, _)) => format!("{}…", &path[..cut]),
            None => path.to_owned(),
        }
    }
}

/// The Check path's handle.
pub struct AuditLog {
    queue: mpsc::Sender<Record>,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
}

impl AuditLog {
    /// Queues a decision for writing; never waits.
    pub fn record(&self, record: Record) {
        match self.queue.try_send(record) {
            Ok(()) => self.metrics.audit_queue_depth.inc(),
            Err(
                mpsc::error::TrySendError::Full(record) | mpsc::error::TrySendError::Closed(record),
            ) => {
                spill(&self.spool, &self.metrics, &[record]);
            }
        }
    }
}

/// Starts the writer and the replay task; answers the handle for the Check path and a task that ends
/// once `stop` turned true and everything queued is written or spooled.
pub fn start(
    db: PgPool,
    spool_dir: &Path,
    capacity: usize,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(AuditLog, tokio::task::JoinHandle<()>)> {
    let spool = Arc::new(Spool::open(spool_dir)?);
    if spool.pending_bytes() > 0 {
        tracing::info!(
            bytes = spool.pending_bytes(),
            "audit spool holds records from before; replaying them when Postgres answers"
        );
    }
    metrics.audit_spool_bytes.set(spool.pending_bytes() as i64);
    let (queue, rx) = mpsc::channel(capacity);
    let writer = tokio::spawn(write(
        rx,
        db.clone(),
        Arc::clone(&spool),
        Arc::clone(&metrics),
        stop.clone(),
    ));
    let replay = tokio::spawn(replay(db, Arc::clone(&spool), Arc::clone(&metrics), stop));
    let done = tokio::spawn(async move {
        let _ = writer.await;
        let _ = replay.await;
    });
    Ok((
        AuditLog {
            queue,
            spool,
            metrics,
        },
        done,
    ))
}

/// Takes batches off the queue and writes them, or spools them. After `stop`, drains the queue.
async fn write(
    mut rx: mpsc::Receiver<Record>,
    db: PgPool,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let stopping = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n == 0,
            _ = stop.wait_for(|stop| *stop) => true,
        };
        metrics.audit_queue_depth.sub(batch.len() as i64);
        if stopping {
            // No new records from here on (a late one is spooled by `record`); drain the rest.
            rx.close();
            let room = BATCH - batch.len();
            if room > 0 {
                let n = rx.recv_many(&mut batch, room).await;
                metrics.audit_queue_depth.sub(n as i64);
            }
            if batch.is_empty() {
                return;
            }
        }
        // Behind a backlog, a batch joins the spool: records reach Postgres in order.
        if spool.pending_bytes() > 0 {
            spill(&spool, &metrics, &batch);
        } else {
            // This and what follows for a moment (nothing more once stopping), in one COPY.
            let outcome = stream(&db, &mut rx, &mut batch, &metrics, &mut stop).await;
            settle(&db, &spool, &metrics, &batch, outcome).await;
        }
        batch.clear();
    }
}

/// Streams `batch`, then whatever arrives during the next [`LINGER`] (sent every [`STREAM_EVERY`], up
/// to a whole [`BATCH`]), into one `COPY`, and commits it. Everything taken off the queue is in
/// `batch`, to be spooled if the copy fails. Sending as records come spreads PostgreSQL's work over the
/// window instead of a burst at its end (a burst takes a core from Envoy on a small machine): the
/// table's volatile `written_at` default makes PostgreSQL insert each row as it arrives (the migration
/// that adds it says why). Over TCP, sqlx 0.9.0 leaves Nagle's algorithm on, so the pieces reach
/// PostgreSQL only as fast as it acknowledges them (up to 40 ms); over a Unix socket they do not wait.
async fn stream(
    db: &PgPool,
    rx: &mut mpsc::Receiver<Record>,
    batch: &mut Vec<Record>,
    metrics: &Metrics,
    stop: &mut watch::Receiver<bool>,
) -> Result<u64, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut conn = bounded(db.acquire()).await?;
    let mut copy = bounded(conn.copy_in_raw(&copy_statement("audit_log"))).await?;
    let mut rows = Vec::with_capacity(BATCH * 256);
    rows.extend_from_slice(COPY_HEADER);
    let mut sent = 0;
    loop {
        for record in &batch[sent..] {
            copy_row(&mut rows, record);
        }
        sent = batch.len();
        if batch.len() >= BATCH {
            break;
        }
        if !rows.is_empty() {
            bounded(copy.send(rows.as_slice())).await?;
            rows.clear();
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            () = tokio::time::sleep(STREAM_EVERY) => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        let before = batch.len();
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        metrics.audit_queue_depth.sub((batch.len() - before) as i64);
    }
    // The trailer goes with the last rows: a message of its own would wait for the previous one's
    // acknowledgement (Nagle's algorithm; sqlx's connections do not set TCP_NODELAY).
    rows.extend_from_slice(COPY_TRAILER);
    bounded(copy.send(rows.as_slice())).await?;
    bounded(copy.finish()).await
}

/// `what`, or a timed-out error if PostgreSQL does not answer within [`WRITE_TIMEOUT`].
async fn bounded<T>(what: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, sqlx::Error> {
    tokio::time::timeout(WRITE_TIMEOUT, what)
        .await
        .unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {WRITE_TIMEOUT:?}"),
            )))
        })
}

/// Counts a written batch; a batch that met records already stored is inserted again skipping them;
/// any other failure spools it.
async fn settle(
    db: &PgPool,
    spool: &Spool,
    metrics: &Metrics,
    batch: &[Record],
    outcome: Result<u64, sqlx::Error>,
) {
    let outcome = match outcome {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            bounded(insert_skipping_stored(db, &copy_rows(batch))).await
        }
        outcome => outcome,
    };
    match outcome {
        Ok(_) => metrics.audit_written.inc_by(batch.len() as u64),
        Err(e) => {
            tracing::warn!(error = %e, records = batch.len(), "audit write failed; spooling");
            metrics.audit_write_failures.inc();
            spill(spool, metrics, batch);
        }
    }
}

fn spill(spool: &Spool, metrics: &Metrics, records: &[Record]) {
    match spool.append(records) {
        Ok(()) => {
            metrics.audit_spooled.inc_by(records.len() as u64);
            metrics.audit_spool_bytes.set(spool.pending_bytes() as i64);
        }
        Err(e) => {
            metrics.audit_lost.inc_by(records.len() as u64);
            tracing::error!(error = %e, records = records.len(), "AUDIT RECORDS LOST: the spool could not be written");
        }
    }
}

/// Replays the spool into Postgres whenever it holds anything, until `stop`.
async fn replay(
    db: PgPool,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        while spool.pending_bytes() > 0 && !*stop.borrow() {
            let (records, end, corrupt) = match spool.read(BATCH) {
                Ok(read) => read,
                Err(e) => {
                    tracing::error!(error = %e, "audit spool unreadable");
                    break;
                }
            };
            if corrupt > 0 {
                metrics.audit_lost.inc_by(corrupt);
                tracing::error!(
                    lines = corrupt,
                    "AUDIT RECORDS LOST: unreadable lines in the spool"
                );
            }
            match bounded(insert(&db, &records)).await {
                Ok(inserted) => {
                    if let Err(e) = spool.commit(end) {
                        tracing::error!(error = %e, "audit spool offset not saved");
                        break;
                    }
                    metrics.audit_replayed.inc_by(records.len() as u64);
                    metrics
                        .audit_duplicates
                        .inc_by(records.len() as u64 - inserted);
                    metrics.audit_spool_bytes.set(spool.pending_bytes() as i64);
                    if spool.pending_bytes() == 0 {
                        tracing::info!("audit spool replayed");
                    }
                }
                // Postgres is still away: try again later.
                Err(_) => break,
            }
        }
        tokio::select! {
            () = tokio::time::sleep(REPLAY_EVERY) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// Inserts the records; a record already stored is skipped. Answers how many were new.
///
/// A batch is sent with `COPY` (about half PostgreSQL's CPU per row of an `INSERT`, measured in
/// BENCHMARKS.md). Only a batch holding a record already stored (a replay after a write that timed
/// out but committed, or after a crash) fails it; that batch is copied into a temporary table and
/// moved over with `ON CONFLICT DO NOTHING`, whose speculative insertion would cost every batch more.
pub async fn insert(db: &PgPool, records: &[Record]) -> Result<u64, sqlx::Error> {
    if records.is_empty() {
        return Ok(0);
    }
    let rows = copy_rows(records);
    match copy_in(&mut *db.acquire().await?, "audit_log", &rows).await {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            insert_skipping_stored(db, &rows).await
        }
        done => done,
    }
}

/// Stores [`copy_rows`] some of which are already stored (so a plain `COPY` fails): through a
/// temporary table and `ON CONFLICT DO NOTHING`. Answers how many were new.
async fn insert_skipping_stored(db: &PgPool, rows: &[u8]) -> Result<u64, sqlx::Error> {
    let mut conn = db.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query(
        "CREATE TEMPORARY TABLE audit_incoming (LIKE audit_log INCLUDING DEFAULTS) ON COMMIT DROP",
    )
    .execute(&mut *tx)
    .await?;
    copy_in(&mut tx, "audit_incoming", rows).await?;
    let done =
        sqlx::query("INSERT INTO audit_log SELECT * FROM audit_incoming ON CONFLICT DO NOTHING")
            .execute(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}

/// The start of a binary `COPY`: signature, flags, header extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The end of a binary `COPY`.
const COPY_TRAILER: &[u8] = &(-1i16).to_be_bytes();
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const POSTGRES_EPOCH_US: i64 = 946_684_800_000_000;
/// The OID of PostgreSQL's `text` type, named in a binary array.
const TEXT_OID: i32 = 25;

/// `records` as a whole binary `COPY` (header, rows, trailer).
fn copy_rows(records: &[Record]) -> Vec<u8> {
    let mut rows = Vec::with_capacity(COPY_HEADER.len() + records.len() * 256 + 2);
    rows.extend_from_slice(COPY_HEADER);
    for record in records {
        copy_row(&mut rows, record);
    }
    rows.extend_from_slice(COPY_TRAILER);
    rows
}

/// The binary `COPY` of [`copy_row`]s into `table`: each value in PostgreSQL's own binary form, so
/// neither side formats or parses text.
fn copy_statement(table: &'static str) -> String {
    format!(
        "COPY {table} (id, occurred_at, event_type, action, device_id, user_id, role, service,
             method, path, decision, reasons, policy_version, certificate_serial, latency_us,
             peer_address) FROM STDIN (FORMAT binary)"
    )
}

/// `COPY`s [`copy_rows`] into `table`; answers the rows copied.
async fn copy_in(
    conn: &mut sqlx::PgConnection,
    table: &'static str,
    rows: &[u8],
) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(&copy_statement(table)).await?;
    copy.send(rows).await?;
    copy.finish().await
}

/// One record as a binary `COPY` row of the columns of [`copy_statement`]: the field count, then each
/// field's length (-1 for NULL) and bytes.
fn copy_row(out: &mut Vec<u8>, r: &Record) {
    out.extend_from_slice(&16i16.to_be_bytes());
    field(out, r.id.as_bytes());
    field(out, &(r.at_us - POSTGRES_EPOCH_US).to_be_bytes());
    field(out, b"authorization");
    field(out, b"check");
    for value in [&r.device, &r.user, &r.role, &r.service, &r.method, &r.path] {
        optional_text(out, value.as_deref());
    }
    field(out, if r.allow { b"allow" } else { b"deny" });
    // text[]: dimensions, has-nulls flag, element type, each dimension's length and lower bound,
    // then the elements.
    let start = begin_field(out);
    let dimensions = i32::from(!r.reasons.is_empty());
    out.extend_from_slice(&dimensions.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&TEXT_OID.to_be_bytes());
    if dimensions == 1 {
        let count = i32::try_from(r.reasons.len()).unwrap_or(i32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
        for reason in &r.reasons {
            text(out, reason);
        }
    }
    end_field(out, start);
    text(out, &r.policy_version);
    optional_text(out, r.serial.as_deref());
    field(out, &r.latency_us.to_be_bytes());
    optional_text(out, r.peer.as_deref());
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&i32::try_from(bytes.len()).unwrap_or(i32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn optional_text(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => text(out, value),
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

/// A text value; NUL, which PostgreSQL text cannot hold, becomes U+FFFD.
fn text(out: &mut Vec<u8>, value: &str) {
    if value.contains('\0') {
        field(out, value.replace('\0', "\u{fffd}").as_bytes());
    } else {
        field(out, value.as_bytes());
    }
}

/// Reserves a field's length, to be filled in by [`end_field`] once its bytes are written.
fn begin_field(out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(&[0; 4]);
    out.len()
}

fn end_field(out: &mut [u8], start: usize) {
    let len = i32::try_from(out.len() - start).unwrap_or(i32::MAX);
    out[start - 4..start].copy_from_slice(&len.to_be_bytes());
}

/// The append-only spool: one JSON record per line in `audit.spool`, and in `audit.offset` how many of
/// its bytes are already in Postgres. Emptied (truncated) once everything is replayed.
pub struct Spool {
    path: PathBuf,
    offset_path: PathBuf,
    state: Mutex<SpoolState>,
}

struct SpoolState {
    file: File,
    len: u64,
    replayed: u64,
}

impl Spool {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "failed to create the audit spool directory {}",
                dir.display()
            )
        })?;
        let path = dir.join("audit.spool");
        let offset_path = dir.join("audit.offset");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .with_context(|| format!("failed to open the audit spool {}", path.display()))?;
        let len = file.metadata()?.len();
        let replayed = match std::fs::read_to_string(&offset_path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .with_context(|| format!("{} is not a byte offset", offset_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).context("failed to read the audit spool offset"),
        };
        anyhow::ensure!(
            replayed <= len,
            "{} says {replayed} bytes were replayed, but the spool has {len}",
            offset_path.display()
        );
        Ok(Self {
            path,
            offset_path,
            state: Mutex::new(SpoolState {
                file,
                len,
                replayed,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpoolState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes not yet replayed.
    pub fn pending_bytes(&self) -> u64 {
        let state = self.lock();
        state.len - state.replayed
    }

    /// Appends the records and flushes them to disk.
    pub fn append(&self, records: &[Record]) -> std::io::Result<()> {
        let mut buffer = Vec::with_capacity(records.len() * 400);
        for record in records {
            serde_json::to_writer(&mut buffer, record)?;
            buffer.push(b'\n');
        }
        let mut state = self.lock();
        state.file.write_all(&buffer)?;
        state.file.sync_data()?;
        state.len += buffer.len() as u64;
        Ok(())
    }

    /// Up to `max` records after the replayed offset: the records, the offset after them, and how many
    /// lines could not be read (skipped).
    pub fn read(&self, max: usize) -> std::io::Result<(Vec<Record>, u64, u64)> {
        let (start, len) = {
            let state = self.lock();
            (state.replayed, state.len)
        };
        let mut reader = BufReader::new(File::open(&self.path)?);
        reader.seek(SeekFrom::Start(start))?;
        let mut records = Vec::new();
        let mut corrupt = 0;
        let mut offset = start;
        let mut line = String::new();
        while records.len() < max && offset < len {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            offset += n as u64;
            match serde_json::from_str::<Record>(&line) {
                Ok(record) => records.push(record),
                Err(_) => corrupt += 1,
            }
        }
        Ok((records, offset, corrupt))
    }

    /// Marks everything before `offset` as replayed; empties the spool once all of it is.
    pub fn commit(&self, offset: u64) -> std::io::Result<()> {
        let mut state = self.lock();
        if offset >= state.len {
            state.file.set_len(0)?;
            state.file.sync_data()?;
            state.len = 0;
            state.replayed = 0;
            match std::fs::remove_file(&self.offset_path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        } else {
            edgemesh_core::files::write_atomic(
                &self.offset_path,
                offset.to_string().as_bytes(),
                0o600,
            )
            .map_err(std::io::Error::other)?;
            state.replayed = offset;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u32) -> Record {
        Record {
            id: Uuid::new_v4(),
            at_us: 1_763_800_000_000_000 + i64::from(n),
            device: Some(format!("pi-{n}")),
            user: None,
            role: None,
            service: Some("api".to_owned()),
            method: Some("GET".to_owned()),
            path: Some("/api/x".to_owned()),
            allow: n.is_multiple_of(2),
            reasons: vec!["a reason, with \"quotes\"\nand a newline".to_owned()],
            policy_version: "v1".to_owned(),
            serial: None,
            latency_us: 80,
            peer: None,
        }
    }

    #[test]
    fn the_spool_gives_back_records_in_order_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written: Vec<Record> = (0..5).map(record).collect();
        {
            let spool = Spool::open(dir.path()).expect("open");
            spool.append(&written[..3]).expect("append");
            spool.append(&written[3..]).expect("append");
            let (first, end, corrupt) = spool.read(2).expect("read");
            assert_eq!((first.as_slice(), corrupt), (&written[..2], 0));
            spool.commit(end).expect("commit");
        }
        // Reopened: the two replayed records are not read again.
        let spool = Spool::open(dir.path()).expect("reopen");
        let (rest, end, _) = spool.read(100).expect("read");
        assert_eq!(rest, written[2..]);
        spool.commit(end).expect("commit");
        assert_eq!(spool.pending_bytes(), 0);
        assert_eq!(
            std::fs::metadata(dir.path().join("audit.spool"))
                .expect("spool")
                .len(),
            0,
            "emptied once replayed"
        );
    }

    #[test]
    fn an_unreadable_line_is_counted_and_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        spool.append(&[record(1)]).expect("append");
        {
            let mut state = spool.lock();
            state.file.write_all(b"{not json\n").expect("write");
            state.len += 10;
        }
        spool.append(&[record(2)]).expect("append");
        let (records, _, corrupt) = spool.read(10).expect("read");
        assert_eq!(records.len(), 2);
        assert_eq!(corrupt, 1);
    }

    #[test]
    fn long_paths_are_bounded() {
        assert_eq!(Record::bounded_path("/api/x"), "/api/x");
        let long = "/".repeat(5000);
        assert_eq!(
            Record::bounded_path(&long).chars().count(),
            MAX_PATH_CHARS + 1
        );
    }
}
