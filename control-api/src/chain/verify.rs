//! `edgemesh-control-api audit verify`: recomputes the chain from the records, checks it against the
//! signed checkpoints (in the database and in the checkpoint files), and names the first record that
//! was altered, removed, inserted or moved.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::Context;
use edgemesh_core::release::{AUDIT_CHECKPOINT_PREFIX, PublicKey, Signature};
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{ChainedFields, Checkpoint, GENESIS, SignedCheckpoint, link};

/// Chain entries read per query.
const PAGE: i64 = 50_000;

/// What verification found.
#[derive(Debug)]
pub struct Report {
    /// Records whose hash was recomputed and matched.
    pub verified: u64,
    /// The last sequence number of the chain.
    pub last_seq: i64,
    /// Signed checkpoints checked (database and files, each once).
    pub checkpoints: usize,
    /// Sequenced records retention dropped (named in signed checkpoints).
    pub dropped: i64,
    /// The first problem, if any.
    pub problem: Option<Problem>,
}

/// The first thing that is not as the chain and the checkpoints say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A checkpoint whose signature does not verify with the key.
    BadCheckpoint { place: String, detail: String },
    /// A checkpoint of the files that the database no longer has.
    CheckpointRemoved { seq: i64, place: String },
    /// The record's fields do not hash to what the chain holds.
    Altered { seq: i64, id: Uuid },
    /// The chain holds the record; the log does not.
    Removed { seq: i64, id: Uuid },
    /// Sequence numbers missing from the chain, and no signed retention drop covers them.
    Missing { from: i64, to: i64 },
    /// The record's predecessor is not the record before it in the chain.
    OutOfPlace { seq: i64, id: Uuid },
    /// The chain at a checkpoint's sequence number does not hash to what it signed.
    CheckpointMismatch { seq: i64 },
    /// The newest records are gone: a checkpoint says the chain reached further.
    Truncated {
        last: i64,
        signed: i64,
        place: String,
    },
    /// A record the sequencer has passed but which is not in the chain.
    Unsequenced {
        id: Uuid,
        occurred_at: OffsetDateTime,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadCheckpoint { place, detail } => {
                write!(f, "a checkpoint in {place} does not verify: {detail}")
            }
            Self::CheckpointRemoved { seq, place } => write!(
                f,
                "the checkpoint of record {seq} in {place} is not in the database: it was deleted"
            ),
            Self::Altered { seq, id } => write!(
                f,
                "record {seq} (id {id}) was altered: its fields do not hash to the chain's hash"
            ),
            Self::Removed { seq, id } => write!(
                f,
                "record {seq} (id {id}) was removed: the chain holds it, the audit log does not"
            ),
            Self::Missing { from, to } => write!(
                f,
                "records {from} to {to} are missing from the chain, and no signed retention drop covers them"
            ),
            Self::OutOfPlace { seq, id } => write!(
                f,
                "record {seq} (id {id}) is out of place: its predecessor's hash is not the one of \
                 record {} (a record was inserted, removed or moved before it)",
                seq - 1
            ),
            Self::CheckpointMismatch { seq } => write!(
                f,
                "the chain at record {seq} does not match its signed checkpoint: records up to \
                 {seq} were altered and the chain's hashes rewritten"
            ),
            Self::Truncated {
                last,
                signed,
                place,
            } => write!(
                f,
                "records {} to {signed} were removed: the chain ends at {last}, but a checkpoint in \
                 {place} says it reached {signed}",
                last + 1
            ),
            Self::Unsequenced { id, occurred_at } => write!(
                f,
                "record id {id} (occurred {occurred_at}) is not in the chain though the sequencer has \
                 passed it: it was inserted behind the sequencer"
            ),
        }
    }
}

/// A checkpoint that verified, and where it was found.
struct Verified {
    checkpoint: Checkpoint,
    place: String,
}

/// Parses and checks `signed`; `Err` says why it does not verify.
fn check(key: &PublicKey, signed: &SignedCheckpoint) -> Result<Checkpoint, String> {
    let signature = Signature::parse(&signed.signature).map_err(|e| e.to_string())?;
    if signature.key_id != key.id {
        return Err(format!(
            "signed by key {}, not by the given key {}",
            signature.key_id, key.id
        ));
    }
    if !key.verifies(AUDIT_CHECKPOINT_PREFIX, &signed.body, &signature) {
        return Err("the signature does not match its text".to_owned());
    }
    serde_json::from_str(&signed.body).map_err(|e| format!("its text does not parse: {e}"))
}

/// The checkpoints of the files of `dir` (`*.jsonl`, one signed checkpoint per line), with where each
/// is.
fn file_checkpoints(dir: &Path) -> anyhow::Result<Vec<(SignedCheckpoint, String)>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("failed to read the checkpoint directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let place = format!("{} line {}", path.display(), n + 1);
            let signed: SignedCheckpoint = serde_json::from_str(line)
                .with_context(|| format!("{place} is not a signed checkpoint"))?;
            out.push((signed, place));
        }
    }
    Ok(out)
}

/// Verifies the chain from the start, or from the signed checkpoint at `from`.
pub async fn verify(
    db: &PgPool,
    key: &PublicKey,
    dir: Option<&Path>,
    from: Option<i64>,
) -> anyhow::Result<Report> {
    let mut report = Report {
        verified: 0,
        last_seq: 0,
        checkpoints: 0,
        dropped: 0,
        problem: None,
    };
    // The checkpoints, each verified; the database's and the files' are the same ones.
    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT body, signature FROM audit_checkpoints ORDER BY seq, signed_at")
            .fetch_all(db)
            .await?;
    let mut signed: Vec<(SignedCheckpoint, String)> = stored
        .into_iter()
        .map(|(body, signature)| {
            (
                SignedCheckpoint { body, signature },
                "the database".to_owned(),
            )
        })
        .collect();
    let in_database: std::collections::HashSet<String> =
        signed.iter().map(|(s, _)| s.body.clone()).collect();
    if let Some(dir) = dir {
        for (checkpoint, place) in file_checkpoints(dir)? {
            if !in_database.contains(&checkpoint.body) {
                signed.push((checkpoint, place));
            }
        }
    }
    let mut at: BTreeMap<i64, Verified> = BTreeMap::new();
    // Reported only if the chain itself shows nothing worse (the removed newest records, say).
    let mut removed_checkpoint = None;
    for (checkpoint, place) in &signed {
        match check(key, checkpoint) {
            Ok(verified) => {
                if place != "the database" && removed_checkpoint.is_none() {
                    removed_checkpoint = Some(Problem::CheckpointRemoved {
                        seq: verified.seq,
                        place: place.clone(),
                    });
                }
                at.insert(
                    verified.seq,
                    Verified {
                        checkpoint: verified,
                        place: place.clone(),
                    },
                );
            }
            Err(detail) => {
                report.problem = Some(Problem::BadCheckpoint {
                    place: place.clone(),
                    detail,
                });
                return Ok(report);
            }
        }
    }
    report.checkpoints = signed.len();
    let drops: Vec<(i64, i64)> = at
        .values()
        .flat_map(|v| &v.checkpoint.dropped)
        .filter_map(|d| Some((d.min_seq?, d.max_seq?)))
        .collect();
    let dropped_records: i64 = at
        .values()
        .flat_map(|v| &v.checkpoint.dropped)
        .map(|d| d.records)
        .sum();
    report.dropped = dropped_records;

    let (mut expected, mut prev) = match from {
        None => (1, GENESIS),
        Some(seq) => {
            let start = at.get(&seq).with_context(|| {
                format!("--from {seq}: no signed checkpoint at that sequence number")
            })?;
            let hash = hex::decode(&start.checkpoint.hash)
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .context("the checkpoint's hash is not 32 bytes of hex")?;
            (seq + 1, hash)
        }
    };
    let mut missing = 0i64;
    #[derive(sqlx::FromRow)]
    struct Entry {
        seq: i64,
        prev: Vec<u8>,
        hash: Vec<u8>,
        chain_id: Uuid,
        present: bool,
        #[sqlx(flatten)]
        fields: Nullable,
    }
    'pages: loop {
        let page: Vec<Entry> = sqlx::query_as(
            "SELECT c.seq, c.prev, c.hash, c.id AS chain_id, r.r_id IS NOT NULL AS present, r.*
             FROM audit_chain c
             LEFT JOIN LATERAL (
                 SELECT l.id AS r_id, l.occurred_at AS r_occurred_at, l.event_type, l.action,
                        l.device_id, l.user_id, l.role, l.service, l.method, l.path, l.decision,
                        l.reasons, l.policy_version, l.certificate_serial, l.latency_us,
                        l.peer_address, l.details::text AS details, l.shadow_decision,
                        l.shadow_reasons, l.shadow_policy_version, l.context, l.decided_at
                 FROM audit_log l WHERE l.occurred_at = c.occurred_at AND l.id = c.id) r ON true
             WHERE c.seq >= $1 ORDER BY c.seq LIMIT $2",
        )
        .bind(expected)
        .bind(PAGE)
        .fetch_all(db)
        .await?;
        let full = page.len() as i64 == PAGE;
        for entry in page {
            if entry.seq != expected {
                let (gap_from, gap_to) = (expected, entry.seq - 1);
                let covered = drops
                    .iter()
                    .any(|(lo, hi)| *lo <= gap_from && gap_to <= *hi);
                missing += gap_to - gap_from + 1;
                if !covered || missing > dropped_records {
                    report.problem = Some(Problem::Missing {
                        from: gap_from,
                        to: gap_to,
                    });
                    break 'pages;
                }
                // The predecessor was dropped: the record's own link is still checked below.
                prev = entry.prev.clone().try_into().unwrap_or(GENESIS);
            }
            if entry.prev != prev {
                report.problem = Some(Problem::OutOfPlace {
                    seq: entry.seq,
                    id: entry.chain_id,
                });
                break 'pages;
            }
            let Some(fields) = entry.fields.into_fields().filter(|_| entry.present) else {
                report.problem = Some(Problem::Removed {
                    seq: entry.seq,
                    id: entry.chain_id,
                });
                break 'pages;
            };
            let computed = link(&prev, &fields);
            if computed.as_slice() != entry.hash.as_slice() {
                report.problem = Some(Problem::Altered {
                    seq: entry.seq,
                    id: entry.chain_id,
                });
                break 'pages;
            }
            if let Some(checkpoint) = at.get(&entry.seq)
                && checkpoint.checkpoint.hash != hex::encode(computed)
            {
                report.problem = Some(Problem::CheckpointMismatch { seq: entry.seq });
                break 'pages;
            }
            prev = computed;
            report.verified += 1;
            report.last_seq = entry.seq;
            expected = entry.seq + 1;
        }
        if !full {
            break;
        }
    }
    if report.problem.is_some() {
        return Ok(report);
    }
    report.last_seq = expected - 1;
    // The newest records: a signed checkpoint further than the chain, unless retention dropped them.
    if let Some((&signed_seq, verified)) = at.last_key_value()
        && signed_seq > report.last_seq
    {
        let (gap_from, gap_to) = (report.last_seq + 1, signed_seq);
        let covered = drops
            .iter()
            .any(|(lo, hi)| *lo <= gap_from && gap_to <= *hi);
        if !covered || missing + gap_to - gap_from + 1 > dropped_records {
            report.problem = Some(Problem::Truncated {
                last: report.last_seq,
                signed: signed_seq,
                place: verified.place.clone(),
            });
            return Ok(report);
        }
        report.last_seq = signed_seq;
    }
    // A record behind the sequencer's position that the chain does not hold.
    let unsequenced: Option<(Uuid, OffsetDateTime)> = sqlx::query_as(
        "SELECT l.id, l.occurred_at FROM audit_log l
         WHERE (l.tx, l.occurred_at, l.id) <= (SELECT after_tx, after_at, after_id FROM audit_sequencer)
           AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.occurred_at = l.occurred_at AND c.id = l.id)
         ORDER BY l.occurred_at, l.id LIMIT 1",
    )
    .fetch_optional(db)
    .await?;
    report.problem = unsequenced
        .map(|(id, occurred_at)| Problem::Unsequenced { id, occurred_at })
        .or(removed_checkpoint);
    Ok(report)
}

/// A record's fields as a left join gives them (all absent when the record is gone).
#[derive(sqlx::FromRow)]
struct Nullable {
    r_id: Option<Uuid>,
    r_occurred_at: Option<OffsetDateTime>,
    event_type: Option<String>,
    action: Option<String>,
    device_id: Option<String>,
    user_id: Option<String>,
    role: Option<String>,
    service: Option<String>,
    method: Option<String>,
    path: Option<String>,
    decision: Option<String>,
    reasons: Option<Vec<String>>,
    policy_version: Option<String>,
    certificate_serial: Option<String>,
    latency_us: Option<i64>,
    peer_address: Option<String>,
    details: Option<String>,
    shadow_decision: Option<String>,
    shadow_reasons: Option<Vec<String>>,
    shadow_policy_version: Option<String>,
    context: Option<Vec<u8>>,
    decided_at: Option<i64>,
}

impl Nullable {
    fn into_fields(self) -> Option<ChainedFields> {
        Some(ChainedFields {
            id: self.r_id?,
            occurred_at: self.r_occurred_at?,
            event_type: self.event_type?,
            action: self.action?,
            device_id: self.device_id,
            user_id: self.user_id,
            role: self.role,
            service: self.service,
            method: self.method,
            path: self.path,
            decision: self.decision,
            reasons: self.reasons?,
            policy_version: self.policy_version,
            certificate_serial: self.certificate_serial,
            latency_us: self.latency_us,
            peer_address: self.peer_address,
            details: self.details?,
            shadow_decision: self.shadow_decision,
            shadow_reasons: self.shadow_reasons,
            shadow_policy_version: self.shadow_policy_version,
            context: self.context,
            decided_at: self.decided_at,
        })
    }
}
