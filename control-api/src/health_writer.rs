//! Accepted health reports are stored in batches. A fleet of 100,000 devices reporting every 30 s
//! sends 3,334 reports a second; stored one by one, each would take a transaction of its own (a lock,
//! an insert, an update, a commit: six round trips) and PostgreSQL's per-statement work would be most
//! of the cost. Here every report waiting when the writer is free goes into one statement
//! ([`db::health::write_batch`]) in one transaction with the audit records of the verdicts it
//! changes; the handler answers once that transaction has committed. Nothing waits on a timer: a
//! report alone is written at once, and under load the batch is what arrived during the previous one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

use prometheus::Histogram;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::audit::{Event, EventType};
use crate::db;
use crate::db::health::{Judged, Written};
use crate::db::releases::Rollout;

/// The most reports in one statement.
const MAX_BATCH: usize = 512;
/// Reports waiting for the writer; a handler waits for room beyond it.
const QUEUE: usize = 8192;

/// What became of a report.
pub enum Outcome {
    Stored {
        /// The verdict in force before it (`unknown` before the first report).
        previous_status: String,
        /// Whether the verdict or its reasons changed (and the change was audited).
        changed: bool,
        /// The rollout of the device's channel for the target it reported, if it has a release.
        rollout: Option<Rollout>,
    },
    /// The device is revoked (or gone).
    Revoked,
    /// The sequence is not above `last`, the last one accepted.
    Stale { last: i64 },
}

struct Job {
    judged: Judged,
    peer: Option<SocketAddr>,
    answer: oneshot::Sender<Result<Outcome, sqlx::Error>>,
}

/// The handle the handlers submit reports to; the writer runs until every handle is dropped.
#[derive(Clone)]
pub struct HealthWriter {
    jobs: mpsc::Sender<Job>,
}

impl HealthWriter {
    /// Starts the writer; `batches` observes the reports of each statement.
    pub fn start(db: PgPool, batches: Histogram) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(db, queue, batches));
        Self { jobs }
    }

    /// Stores `judged` (from `peer`), once its batch has committed.
    pub async fn write(
        &self,
        judged: Judged,
        peer: Option<SocketAddr>,
    ) -> Result<Outcome, sqlx::Error> {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            judged,
            peer,
            answer,
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answered.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

async fn run(db: PgPool, mut queue: mpsc::Receiver<Job>, batches: Histogram) {
    // Reports of a device already in the batch being formed wait for the next one (a statement
    // updates a device once).
    let mut deferred: VecDeque<Job> = VecDeque::new();
    loop {
        if deferred.is_empty() {
            match queue.recv().await {
                Some(job) => deferred.push_back(job),
                None => return,
            }
        }
        while deferred.len() < MAX_BATCH
            && let Ok(job) = queue.try_recv()
        {
            deferred.push_back(job);
        }
        let mut devices = HashSet::new();
        let mut batch = Vec::new();
        let mut later = VecDeque::new();
        for job in deferred.drain(..) {
            if batch.len() < MAX_BATCH && devices.insert(job.judged.device.clone()) {
                batch.push(job);
            } else {
                later.push_back(job);
            }
        }
        deferred = later;
        batches.observe(batch.len() as f64);
        write(&db, batch).await;
    }
}

/// Writes `batch` and answers each job; if the batch fails, each report is tried alone, so that one
/// PostgreSQL refuses fails only itself.
async fn write(db: &PgPool, batch: Vec<Job>) {
    match transaction(db, &batch).await {
        Ok(outcomes) => answer(batch, outcomes),
        Err(e) if batch.len() == 1 => {
            if let Some(job) = batch.into_iter().next() {
                let _ = job.answer.send(Err(e));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, reports = batch.len(), "a batch of health reports failed; writing each alone");
            for job in batch {
                let outcome = transaction(db, std::slice::from_ref(&job))
                    .await
                    .map(|mut o| o.remove(0));
                let _ = job.answer.send(outcome);
            }
        }
    }
}

fn answer(batch: Vec<Job>, outcomes: Vec<Outcome>) {
    for (job, outcome) in batch.into_iter().zip(outcomes) {
        // A handler that gave up (its client went away) does not want the answer; the report is
        // stored all the same.
        let _ = job.answer.send(Ok(outcome));
    }
}

/// One transaction: the batch's statement, then an audit record for each verdict it changed.
async fn transaction(db: &PgPool, batch: &[Job]) -> Result<Vec<Outcome>, sqlx::Error> {
    let judged: Vec<&Judged> = batch.iter().map(|j| &j.judged).collect();
    let mut tx = db.begin().await?;
    let written: HashMap<String, Written> = db::health::write_batch(&mut *tx, &judged)
        .await?
        .into_iter()
        .map(|w| (w.device_id.clone(), w))
        .collect();
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        let row = written
            .get(&job.judged.device)
            .ok_or(sqlx::Error::RowNotFound)?;
        let outcome = outcome(&job.judged, row);
        if let Outcome::Stored {
            changed: true,
            previous_status,
            ..
        } = &outcome
        {
            Event::new(EventType::Health, "verdict")
                .device(&job.judged.device)
                .serial(&job.judged.serial)
                .peer(job.peer)
                .reasons(job.judged.reasons.clone())
                .details(serde_json::json!({
                    "status": job.judged.status,
                    "previous": previous_status,
                }))
                .record(&mut tx)
                .await?;
        }
        outcomes.push(outcome);
    }
    tx.commit().await?;
    Ok(outcomes)
}

fn outcome(judged: &Judged, row: &Written) -> Outcome {
    if row.device_status.as_deref() != Some("active") {
        return Outcome::Revoked;
    }
    if !row.stored {
        return Outcome::Stale {
            last: row.health_sequence.unwrap_or_default(),
        };
    }
    let previous_status = row.health_status.clone().unwrap_or_default();
    let changed = previous_status != judged.status
        || row.health_reasons.as_deref() != Some(judged.reasons.as_slice());
    let rollout = match (
        &row.rollout_channel,
        &row.rollout_version,
        row.rollout_percent,
        row.rollout_updated_at,
    ) {
        (Some(channel), Some(version), Some(percent), Some(updated_at)) => Some(Rollout {
            channel: channel.clone(),
            version: version.clone(),
            percent,
            updated_at,
        }),
        _ => None,
    };
    Outcome::Stored {
        previous_status,
        changed,
        rollout,
    }
}
