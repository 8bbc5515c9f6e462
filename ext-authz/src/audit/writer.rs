//! The writer: ships the queue to PostgreSQL in order, streaming each [`LINGER`] window of records
//! into one `COPY`, and catches up from the journal whenever the queue alone would leave a gap.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

use super::copy::{
    COPY_HEADER, COPY_TRAILER, copy_row, copy_rows, copy_statement, insert, insert_contexts,
    insert_skipping_stored,
};
use super::spool::Spool;
use super::{Entry, Record};
use crate::metrics::Metrics;

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
pub(super) async fn ship(
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
/// each row as it arrives (the migration that adds it says why). Over TCP the pieces do not wait for
/// acknowledgements: sqlx (since 0.9.1) sets `TCP_NODELAY` on its connections.
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
    // The contexts the batch carries, stored (on another connection) before its records commit.
    bounded(insert_contexts(db, batch.iter().map(|e| &e.record))).await?;
    // The trailer goes with the last rows: one message fewer (it once waited for the previous one's
    // acknowledgement, when sqlx 0.9.0 left Nagle's algorithm on).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::spool::Span;
    use crate::audit::tests::record;

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
}
