//! The decision audit trail, written without ever making a Check wait and without losing a record.
//!
//! The Check path hands each decision to [`AuditLog::record`] before its answer leaves: the record is
//! appended to the local spool (a journal, [`crate::spool`]; a copy into a mapped file, no `fsync`) and queued for
//! the writer (never waiting). A record in the journal survives the process: after a SIGKILL or an
//! OOM kill, the next start ships what the journal holds beyond the last offset known to be in
//! PostgreSQL. One writer task ships the queue in order, streaming each [`LINGER`] window of records
//! into one `COPY`, and moves the shipped offset on. When PostgreSQL is unreachable or slow (no answer
//! within [`WRITE_TIMEOUT`]), or the queue was full, or at start, the writer catches up from the
//! journal instead (in journal order) until it reaches the records still queued. Records carry their
//! decision id and time, which are the table's primary key: a record shipped twice (a timeout after the
//! commit, a replay after a crash) is stored once.
//!
//! A crash of the whole machine can take what the kernel had not written to disk: the journal is
//! flushed every [`FLUSH_EVERY`], so at most that long of decisions, less what PostgreSQL had already
//! committed (it commits every [`LINGER`] while it is up). A record that could be neither journaled nor
//! shipped (a full disk, so no next journal segment, while PostgreSQL is away) is counted as lost and
//! logged as an error; so is an unreadable line in the journal.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::spool::{FLUSH_EVERY, Span, Spool};

/// A batch not written within this time is left to the catch-up from the journal.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Records per insert statement.
const BATCH: usize = 1000;
/// How long one `COPY` stays open for records to stream into it before it is committed.
const LINGER: Duration = Duration::from_millis(100);
/// How often, within that time, the records that arrived are sent. PostgreSQL inserts each piece
/// when it comes: every 3 ms that is a fraction of a millisecond of its work, where every 10 ms it was
/// 0.7-0.9 ms at a time and the proxy's p99 showed it (BENCHMARKS.md).
const STREAM_EVERY: Duration = Duration::from_millis(3);
/// How often catching up is tried again while PostgreSQL is away.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// How often the shipped offset is written down (a stale one only means a larger replay).
const SAVE_SHIPPED_EVERY: Duration = Duration::from_secs(1);
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

/// A queued record, with where the journal holds it (`None`: it could not be journaled).
struct Entry {
    record: Record,
    span: Option<Span>,
}

/// The Check path's handle.
pub struct AuditLog {
    queue: mpsc::Sender<Entry>,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
}

impl AuditLog {
    /// Journals a decision and queues it for writing; never waits on PostgreSQL or the disk.
    pub fn record(&self, record: Record) {
        let queued = self.spool.append(record, |record, span| {
            let journaled = span.is_some();
            (
                self.queue.try_send(Entry { record, span }).is_ok(),
                journaled,
            )
        });
        match queued {
            (true, _) => self.metrics.audit_queue_depth.inc(),
            // The writer finds the gap in the offsets and ships it from the journal.
            (false, true) => {}
            (false, false) => {
                self.metrics.audit_lost.inc();
                tracing::error!("AUDIT RECORD LOST: neither journaled nor queued");
            }
        }
    }
}

/// Starts the writer and the journal's flushing; answers the handle for the Check path and a task
/// that ends once `stop` turned true and everything queued is shipped or left in the journal.
pub fn start(
    db: PgPool,
    spool_dir: &Path,
    capacity: usize,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(AuditLog, tokio::task::JoinHandle<()>)> {
    let (spool, opened) = Spool::open(spool_dir)?;
    let spool = Arc::new(spool);
    if opened.torn_bytes > 0 {
        // A crash in the middle of an append: that decision's answer never left.
        metrics.audit_torn.inc();
        tracing::warn!(
            bytes = opened.torn_bytes,
            "cut a torn record off the audit spool's end (a crash mid-append)"
        );
    }
    let behind = spool.end() - spool.shipped();
    if behind > 0 {
        tracing::info!(
            bytes = behind,
            "the audit spool holds records PostgreSQL may not have; shipping them first"
        );
    }
    metrics
        .audit_spool_bytes
        .set(i64::try_from(behind).unwrap_or(i64::MAX));
    let (queue, rx) = mpsc::channel(capacity);
    let writer = tokio::spawn(ship(
        rx,
        db,
        Arc::clone(&spool),
        Arc::clone(&metrics),
        stop.clone(),
    ));
    let flusher = tokio::spawn(flush(Arc::clone(&spool), stop));
    let done = tokio::spawn(async move {
        let _ = writer.await;
        let _ = flusher.await;
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

/// Flushes the journal to disk every [`FLUSH_EVERY`], and once more at `stop`.
async fn flush(spool: Arc<Spool>, mut stop: watch::Receiver<bool>) {
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(FLUSH_EVERY) => false,
            _ = stop.wait_for(|stop| *stop) => true,
        };
        let spool = Arc::clone(&spool);
        match tokio::task::spawn_blocking(move || spool.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the audit spool could not be flushed to disk")
            }
            Err(e) => tracing::error!(error = %e, "the audit spool flush did not finish"),
        }
        if stopping {
            return;
        }
    }
}

/// The writer's position: everything before `shipped` is in PostgreSQL.
struct Shipping {
    db: PgPool,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    shipped: u64,
    saved: tokio::time::Instant,
}

impl Shipping {
    fn advance(&mut self, to: u64) {
        if to <= self.shipped {
            return;
        }
        self.shipped = to;
        self.spool.set_shipped(to);
        if self.saved.elapsed() >= SAVE_SHIPPED_EVERY {
            self.save();
        }
    }

    fn save(&mut self) {
        if let Err(e) = self.spool.save_shipped() {
            tracing::warn!(error = %e, "the audit spool's shipped offset could not be saved");
        }
        self.saved = tokio::time::Instant::now();
    }

    /// Ships from the journal, in order, until it reaches its end or PostgreSQL does not answer.
    /// Answers whether it reached the end.
    async fn catch_up(&mut self, stop: &watch::Receiver<bool>) -> bool {
        loop {
            let behind = self.spool.end().saturating_sub(self.shipped);
            self.metrics
                .audit_spool_bytes
                .set(i64::try_from(behind).unwrap_or(i64::MAX));
            if behind == 0 {
                return true;
            }
            if *stop.borrow() {
                return false;
            }
            let (records, end, corrupt) = match self.spool.read(self.shipped, BATCH) {
                Ok(read) => read,
                Err(e) => {
                    tracing::error!(error = %e, "the audit spool could not be read");
                    return false;
                }
            };
            if corrupt > 0 {
                self.metrics.audit_lost.inc_by(corrupt);
                tracing::error!(
                    lines = corrupt,
                    "AUDIT RECORDS LOST: unreadable lines in the spool"
                );
            }
            if end == self.shipped {
                // Nothing whole after the shipped offset (appends are whole, so only a journal
                // changed behind ext-authz's back): nothing to ship.
                return false;
            }
            match bounded(insert(&self.db, &records)).await {
                Ok(inserted) => {
                    self.metrics.audit_replayed.inc_by(records.len() as u64);
                    self.metrics
                        .audit_duplicates
                        .inc_by(records.len() as u64 - inserted);
                    self.advance(end);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "PostgreSQL does not take the audit spool yet");
                    return false;
                }
            }
            // Yield between batches, whatever the runtime: the Check path shares the thread.
            tokio::task::yield_now().await;
        }
    }
}

/// Ships the queue, or catches up from the journal whenever the queue alone would leave a gap (at
/// start, after a failed write, after a full queue). After `stop`, ships what is queued once more;
/// whatever that leaves is in the journal for the next start.
async fn ship(
    mut rx: mpsc::Receiver<Entry>,
    db: PgPool,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut shipping = Shipping {
        shipped: spool.shipped(),
        db,
        spool,
        metrics,
        saved: tokio::time::Instant::now(),
    };
    let mut catching_up = true;
    let mut batch: Vec<Entry> = Vec::with_capacity(BATCH);
    // An entry taken off the queue that the last batch could not take (it follows a gap).
    let mut held: Option<Entry> = None;
    loop {
        if catching_up {
            if shipping.catch_up(&stop).await {
                catching_up = false;
            } else if *stop.borrow() {
                break;
            } else {
                // Away or slow: the queue's records are in the journal, drop them and try again.
                drop_queued(&mut rx, &shipping.metrics, &mut held);
                tokio::select! {
                    () = tokio::time::sleep(RETRY_EVERY) => {}
                    _ = stop.wait_for(|stop| *stop) => {}
                }
                continue;
            }
        }
        if let Some(entry) = held.take() {
            batch.push(entry);
        }
        let stopping = if batch.is_empty() {
            let received = tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => Some(n),
                _ = stop.wait_for(|stop| *stop) => None,
            };
            if let Some(n) = received {
                shipping.metrics.audit_queue_depth.sub(n as i64);
            }
            received.is_none_or(|n| n == 0)
        } else {
            *stop.borrow()
        };
        if stopping {
            // No new records from here on (a late one is journaled by `record`); take the rest.
            rx.close();
            let room = BATCH.saturating_sub(batch.len());
            if room > 0 {
                let n = rx.recv_many(&mut batch, room).await;
                shipping.metrics.audit_queue_depth.sub(n as i64);
            }
        }
        // What catching up shipped already is left out. A record after a gap (the queue was full)
        // means the journal holds records the queue does not: the batch ends there, and the rest is
        // shipped from the journal.
        batch.retain(|e| e.span.is_none_or(|s| s.end > shipping.shipped));
        if let Some(gap) = first_gap(&batch, shipping.shipped) {
            batch.truncate(gap);
            catching_up = true;
        }
        if !batch.is_empty() {
            let outcome = stream(
                &shipping.db,
                &mut rx,
                &mut batch,
                &mut held,
                shipping.shipped,
                &shipping.metrics,
                &mut stop,
            )
            .await;
            settle(&mut shipping, &batch, outcome, &mut catching_up).await;
        }
        batch.clear();
        if stopping {
            break;
        }
    }
    shipping.save();
}

/// Takes everything queued off the queue (it is in the journal), keeping the depth right.
fn drop_queued(rx: &mut mpsc::Receiver<Entry>, metrics: &Metrics, held: &mut Option<Entry>) {
    *held = None;
    let mut n = 0;
    while let Ok(entry) = rx.try_recv() {
        n += 1;
        if entry.span.is_none() {
            metrics.audit_lost.inc();
            tracing::error!("AUDIT RECORD LOST: not journaled, and PostgreSQL is away");
        }
    }
    metrics.audit_queue_depth.sub(n);
}

/// The index of the first journaled entry that does not follow on from `shipped` and the journaled
/// entries before it.
fn first_gap(batch: &[Entry], shipped: u64) -> Option<usize> {
    let mut next = shipped;
    for (i, entry) in batch.iter().enumerate() {
        if let Some(span) = entry.span {
            if span.start != next {
                return Some(i);
            }
            next = span.end;
        }
    }
    None
}

/// Streams `batch`, then whatever arrives during the next [`LINGER`] (sent every [`STREAM_EVERY`], up
/// to a whole [`BATCH`]), into one `COPY`, and commits it. An entry that does not follow on from the
/// batch (a gap: the queue was full) ends the batch and is `held` for the next. Sending as records
/// come spreads PostgreSQL's work over the window instead of a burst at its end (a burst takes a core
/// from Envoy on a small machine): the table's volatile `written_at` default makes PostgreSQL insert
/// each row as it arrives (the migration that adds it says why). Over TCP, sqlx 0.9.0 leaves Nagle's
/// algorithm on, so the pieces reach PostgreSQL only as fast as it acknowledges them (up to 40 ms);
/// over a Unix socket they do not wait.
async fn stream(
    db: &PgPool,
    rx: &mut mpsc::Receiver<Entry>,
    batch: &mut Vec<Entry>,
    held: &mut Option<Entry>,
    shipped: u64,
    metrics: &Metrics,
    stop: &mut watch::Receiver<bool>,
) -> Result<u64, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut next = batch
        .iter()
        .rev()
        .find_map(|e| e.span)
        .map_or(shipped, |s| s.end);
    let mut conn = bounded(db.acquire()).await?;
    let mut copy = bounded(conn.copy_in_raw(&copy_statement("audit_log"))).await?;
    let mut rows = Vec::with_capacity(BATCH * 256);
    rows.extend_from_slice(COPY_HEADER);
    let mut sent = 0;
    loop {
        for entry in &batch[sent..] {
            copy_row(&mut rows, &entry.record);
        }
        sent = batch.len();
        if batch.len() >= BATCH || held.is_some() {
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
                Ok(entry) => match entry.span {
                    Some(span) if span.start != next => {
                        *held = Some(entry);
                        break;
                    }
                    Some(span) => {
                        next = span.end;
                        batch.push(entry);
                    }
                    None => batch.push(entry),
                },
                Err(_) => break,
            }
        }
        let taken = batch.len() - before + usize::from(held.is_some());
        metrics.audit_queue_depth.sub(taken as i64);
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

/// Counts a shipped batch and moves the shipped offset on; a batch that met records already stored
/// is inserted again skipping them; any other failure leaves the batch to the catch-up from the
/// journal (a record that is not in the journal is then lost).
async fn settle(
    shipping: &mut Shipping,
    batch: &[Entry],
    outcome: Result<u64, sqlx::Error>,
    catching_up: &mut bool,
) {
    let outcome = match outcome {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            let records: Vec<Record> = batch.iter().map(|e| e.record.clone()).collect();
            bounded(insert_skipping_stored(&shipping.db, &copy_rows(&records))).await
        }
        outcome => outcome,
    };
    match outcome {
        Ok(_) => {
            shipping.metrics.audit_written.inc_by(batch.len() as u64);
            if let Some(end) = batch.iter().rev().find_map(|e| e.span).map(|s| s.end) {
                shipping.advance(end);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, records = batch.len(), "audit write failed; shipping from the spool when PostgreSQL answers");
            shipping.metrics.audit_write_failures.inc();
            let unjournaled = batch.iter().filter(|e| e.span.is_none()).count();
            if unjournaled > 0 {
                shipping.metrics.audit_lost.inc_by(unjournaled as u64);
                tracing::error!(
                    records = unjournaled,
                    "AUDIT RECORDS LOST: not journaled, and PostgreSQL failed"
                );
            }
            *catching_up = true;
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A decision record for tests, told apart by `n`.
    pub(crate) fn record(n: u32) -> Record {
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

    fn entry(n: u32, span: Option<(u64, u64)>) -> Entry {
        Entry {
            record: record(n),
            span: span.map(|(start, end)| Span { start, end }),
        }
    }

    #[test]
    fn a_batch_ends_at_the_first_record_that_does_not_follow_on() {
        let contiguous = [
            entry(0, Some((10, 20))),
            entry(1, None),
            entry(2, Some((20, 35))),
        ];
        assert_eq!(first_gap(&contiguous, 10), None);
        assert_eq!(
            first_gap(&contiguous, 0),
            Some(0),
            "the journal holds 0..10 first"
        );
        let gap = [entry(0, Some((10, 20))), entry(1, Some((30, 40)))];
        assert_eq!(first_gap(&gap, 10), Some(1));
        assert_eq!(first_gap(&[entry(0, None)], 99), None);
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
