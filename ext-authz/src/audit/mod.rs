//! The decision audit trail, written without ever making a Check wait and without losing a record.
//!
//! The Check path hands each decision to [`AuditLog::record`] before its answer leaves: the record is
//! appended to the local spool (a journal, [`spool`]; a copy into a mapped file, no `fsync`) and queued for
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

//!
//! The parts: [`spool`] is the journal, [`writer`] ships it to PostgreSQL, [`copy`] encodes records
//! for PostgreSQL's binary `COPY`.

mod copy;
pub mod spool;
mod writer;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::metrics::Metrics;
use spool::{FLUSH_EVERY, Span, Spool};

pub use copy::insert;
pub use writer::WRITE_TIMEOUT;

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
    /// What the shadow policies would have decided (a route that asks for it, a candidate set
    /// configured). Absent from records journaled before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Shadow>,
    /// The decision's context (`decision_contexts`), for a replay; none for a deny made before the
    /// policies ran, and absent from records journaled before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ContextRef>,
    /// The policy clock's second, when it is not the record's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<i64>,
}

/// A record's reference to its decision's context, with the context itself in the first record that
/// refers to it (the writer stores it with that record's batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextRef {
    #[serde(with = "hex::serde")]
    pub id: [u8; 16],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// A shadow decision, as stored beside the enforced one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shadow {
    pub allow: bool,
    pub reasons: Vec<String>,
    pub policy_version: String,
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
    let writer = tokio::spawn(writer::ship(
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
            shadow: n.is_multiple_of(3).then(|| Shadow {
                allow: false,
                reasons: vec!["a shadow reason".to_owned()],
                policy_version: "candidate".to_owned(),
            }),
            context: Some(ContextRef {
                id: [u8::try_from(n % 256).unwrap_or_default(); 16],
                body: n.is_multiple_of(5).then(|| format!("{{\"n\":{n}}}")),
            }),
            decided_at: n.is_multiple_of(7).then_some(1_763_800_000),
        }
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
