//! The tamper-evident audit trail: records chained by hash in the order one sequencer gives them, and
//! checkpoints of the chain signed with a key that is not in the database (the migration
//! `20261203000002_audit_chain.sql` says how new rows are found).
//!
//! [`sequencer`] extends the chain and signs checkpoints; [`verify`] recomputes it. The hash of a
//! record is [`link`]: SHA-256 over its predecessor's hash and the record's fields, each
//! length-prefixed, so no two different records encode alike.

pub mod sequencer;
pub mod verify;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

/// The hash before the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// What the hash of a record covers before its fields (a version of this encoding).
const RECORD_TAG: &[u8] = b"edgemesh-audit-record-v1\0";

/// The stored fields of a record that its hash covers: all of them but when PostgreSQL stored it
/// (`written_at`) and the writing transaction (`tx`), which say where, not what.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ChainedFields {
    pub id: Uuid,
    pub occurred_at: OffsetDateTime,
    pub event_type: String,
    pub action: String,
    pub device_id: Option<String>,
    pub user_id: Option<String>,
    pub role: Option<String>,
    pub service: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub decision: Option<String>,
    pub reasons: Vec<String>,
    pub policy_version: Option<String>,
    pub certificate_serial: Option<String>,
    pub latency_us: Option<i64>,
    pub peer_address: Option<String>,
    /// `details` as PostgreSQL prints `jsonb` (its normal form: the same value prints the same).
    pub details: String,
    pub shadow_decision: Option<String>,
    pub shadow_reasons: Option<Vec<String>>,
    pub shadow_policy_version: Option<String>,
    pub context: Option<Vec<u8>>,
    pub decided_at: Option<i64>,
}

/// The hash of `record` after `prev`.
pub fn link(prev: &[u8; 32], record: &ChainedFields) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(prev);
    hash.update(RECORD_TAG);
    hash.update(record.id.as_bytes());
    let micros = record.occurred_at.unix_timestamp_nanos() / 1000;
    hash.update(i64::try_from(micros).unwrap_or(i64::MAX).to_be_bytes());
    let text = |hash: &mut Sha256, value: Option<&str>| match value {
        Some(value) => {
            hash.update([1]);
            hash.update(u32::try_from(value.len()).unwrap_or(u32::MAX).to_be_bytes());
            hash.update(value.as_bytes());
        }
        None => hash.update([0]),
    };
    let list = |hash: &mut Sha256, values: Option<&[String]>| match values {
        Some(values) => {
            hash.update([1]);
            hash.update(
                u32::try_from(values.len())
                    .unwrap_or(u32::MAX)
                    .to_be_bytes(),
            );
            for value in values {
                text(hash, Some(value));
            }
        }
        None => hash.update([0]),
    };
    text(&mut hash, Some(&record.event_type));
    text(&mut hash, Some(&record.action));
    for value in [
        &record.device_id,
        &record.user_id,
        &record.role,
        &record.service,
        &record.method,
        &record.path,
        &record.decision,
    ] {
        text(&mut hash, value.as_deref());
    }
    list(&mut hash, Some(&record.reasons));
    text(&mut hash, record.policy_version.as_deref());
    text(&mut hash, record.certificate_serial.as_deref());
    match record.latency_us {
        Some(latency) => {
            hash.update([1]);
            hash.update(latency.to_be_bytes());
        }
        None => hash.update([0]),
    }
    text(&mut hash, record.peer_address.as_deref());
    text(&mut hash, Some(&record.details));
    text(&mut hash, record.shadow_decision.as_deref());
    list(&mut hash, record.shadow_reasons.as_deref());
    text(&mut hash, record.shadow_policy_version.as_deref());
    match &record.context {
        Some(context) => {
            hash.update([1]);
            hash.update(
                u32::try_from(context.len())
                    .unwrap_or(u32::MAX)
                    .to_be_bytes(),
            );
            hash.update(context);
        }
        None => hash.update([0]),
    }
    match record.decided_at {
        Some(at) => {
            hash.update([1]);
            hash.update(at.to_be_bytes());
        }
        None => hash.update([0]),
    }
    hash.finalize().into()
}

/// What a checkpoint signs: the chain reached `seq` with `hash`, and what retention dropped since the
/// previous checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: i64,
    /// The hash of record `seq`, in hex.
    pub hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub signed_at: OffsetDateTime,
    /// Which key signed it.
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<Drop>,
}

/// One partition retention dropped, and the sequenced records that went with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drop {
    pub partition: String,
    /// RFC 3339, or `-infinity` for the default partition's rows before a cutoff.
    pub from: String,
    pub until: String,
    pub records: i64,
    pub min_seq: Option<i64>,
    pub max_seq: Option<i64>,
}

/// A checkpoint as stored and as written to the checkpoint files: the signed text and its signature
/// file's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    pub body: String,
    pub signature: String,
}

/// The comment line of the checkpoint signing key's files.
pub const KEY_COMMENT: &str = "untrusted comment: edgemesh audit checkpoint signing key";

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ChainedFields {
        ChainedFields {
            id: Uuid::nil(),
            occurred_at: OffsetDateTime::UNIX_EPOCH,
            event_type: "authorization".to_owned(),
            action: "check".to_owned(),
            device_id: Some("pi-1".to_owned()),
            user_id: None,
            role: None,
            service: Some("api".to_owned()),
            method: None,
            path: None,
            decision: Some("deny".to_owned()),
            reasons: vec!["a".to_owned(), "b".to_owned()],
            policy_version: None,
            certificate_serial: None,
            latency_us: Some(5),
            peer_address: None,
            details: "{}".to_owned(),
            shadow_decision: None,
            shadow_reasons: None,
            shadow_policy_version: None,
            context: None,
            decided_at: None,
        }
    }

    #[test]
    fn every_field_and_the_predecessor_change_the_hash() {
        let base = link(&GENESIS, &record());
        assert_eq!(base, link(&GENESIS, &record()), "deterministic");
        assert_ne!(base, link(&[1; 32], &record()), "the predecessor counts");
        type Change = Box<dyn Fn(&mut ChainedFields)>;
        let changes: Vec<Change> = vec![
            Box::new(|r| r.id = Uuid::from_u128(1)),
            Box::new(|r| r.occurred_at += time::Duration::microseconds(1)),
            Box::new(|r| r.action = "checks".to_owned()),
            Box::new(|r| r.device_id = None),
            Box::new(|r| r.user_id = Some(String::new())),
            Box::new(|r| r.decision = Some("allow".to_owned())),
            // Moving text between neighbours must not collide.
            Box::new(|r| r.reasons = vec!["ab".to_owned()]),
            Box::new(|r| r.reasons = vec!["a".to_owned(), "b".to_owned(), String::new()]),
            Box::new(|r| r.latency_us = None),
            Box::new(|r| r.details = "{\"a\": 1}".to_owned()),
            Box::new(|r| r.shadow_reasons = Some(Vec::new())),
            Box::new(|r| r.shadow_decision = Some("deny".to_owned())),
            Box::new(|r| r.context = Some(vec![0; 16])),
            Box::new(|r| r.decided_at = Some(0)),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut changed = record();
            change(&mut changed);
            assert_ne!(link(&GENESIS, &changed), base, "change {i}");
        }
    }
}
