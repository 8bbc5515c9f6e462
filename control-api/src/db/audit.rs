//! `audit_log`: the control plane's events (written in the transaction of the change they describe),
//! the monthly partitions, and the reads of the trail (pages, exports, the console's live feed).
//! ext-authz writes the authorization decisions, by `COPY`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, Postgres, QueryBuilder};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

/// A control-plane event to store.
pub struct Entry<'a> {
    pub event_type: &'a str,
    pub action: &'a str,
    pub device: Option<&'a str>,
    pub user: Option<&'a str>,
    pub role: Option<&'a str>,
    pub certificate_serial: Option<&'a str>,
    pub decision: Option<&'a str>,
    pub reasons: &'a [String],
    pub peer: Option<String>,
    pub details: &'a serde_json::Value,
}

/// Stores `entry` at the current time, with a new id.
pub async fn insert(db: &mut PgConnection, entry: &Entry<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO audit_log (id, occurred_at, event_type, action, device_id, user_id, role,
             certificate_serial, decision, reasons, peer_address, details)
         VALUES ($1, clock_timestamp(), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        Uuid::new_v4(),
        entry.event_type,
        entry.action,
        entry.device,
        entry.user,
        entry.role,
        entry.certificate_serial,
        entry.decision,
        entry.reasons,
        entry.peer,
        entry.details
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Creates the partition of the month `first` starts (as the tables' owner: the function is
/// SECURITY DEFINER); `false` when it existed.
pub async fn create_partition(db: impl PgExecutor<'_>, first: Date) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT edgemesh_audit_partition($1) AS "created!""#,
        first
    )
    .fetch_one(db)
    .await
}

/// Drops the partitions wholly before `cutoff` and the default partition's rows before it, as the
/// tables' owner (the control API's own role may not drop or delete audit records); answers the
/// partitions dropped.
pub async fn retain(
    db: impl PgExecutor<'_>,
    cutoff: OffsetDateTime,
) -> Result<Vec<String>, sqlx::Error> {
    let dropped = sqlx::query_scalar!("SELECT edgemesh_audit_retain($1)", cutoff)
        .fetch_all(db)
        .await?;
    Ok(dropped.into_iter().flatten().collect())
}

/// One audited event: a decision (`authorization`) or a control-plane event.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Record {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
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
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// What the shadow (candidate) policies would have decided, on a route that evaluates them.
    pub shadow_decision: Option<String>,
    pub shadow_reasons: Option<Vec<String>>,
    pub shadow_policy_version: Option<String>,
    /// The record's place in the tamper-evident chain, once the sequencer reached it (about a second
    /// after it was stored), and its chained hash in hex.
    pub seq: Option<i64>,
    pub hash: Option<String>,
    /// A decision's context (hex; `GET /decisions/{id}` shows it), and the policy clock's second
    /// when it is not the record's: what a replay evaluates again. None for a deny made before the
    /// policies ran.
    pub context: Option<String>,
    pub decided_at: Option<i64>,
}

const COLUMNS: &str = "id, occurred_at, event_type, action, device_id, user_id, role, service, method, \
     path, decision, reasons, policy_version, certificate_serial, latency_us, peer_address, details, \
     shadow_decision, shadow_reasons, shadow_policy_version, seq, encode(hash, 'hex') AS hash, \
     encode(context, 'hex') AS context, decided_at";

/// The records with their place in the chain (`USING` merges the key columns, so the rest of the
/// queries names them unqualified).
const FROM: &str = " FROM audit_log LEFT JOIN audit_chain USING (occurred_at, id)";

/// Which records a read answers: every part that is set must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub device: Option<String>,
    pub user: Option<String>,
    pub service: Option<String>,
    pub decision: Option<&'static str>,
    pub event_type: Option<&'static str>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
}

/// Where a page ends: the (time, id) of its last record; the next page starts strictly after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    occurred_at: OffsetDateTime,
    id: Uuid,
}

impl Cursor {
    /// The cursor after `record`.
    pub fn after(record: &Record) -> Self {
        Self {
            occurred_at: record.occurred_at,
            id: record.id,
        }
    }

    /// Opaque to clients: base64 of the time in microseconds and the id.
    pub fn encode(self) -> String {
        let micros = self.occurred_at.unix_timestamp_nanos() / 1000;
        URL_SAFE_NO_PAD.encode(format!("{micros}.{}", self.id))
    }

    pub fn decode(s: &str) -> Option<Self> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let (micros, id) = raw.split_once('.')?;
        let micros: i128 = micros.parse().ok()?;
        Some(Self {
            occurred_at: OffsetDateTime::from_unix_timestamp_nanos(micros.checked_mul(1000)?)
                .ok()?,
            id: Uuid::parse_str(id).ok()?,
        })
    }
}

/// One page of the records that match, newest first, strictly after `cursor`.
pub async fn page(
    db: impl PgExecutor<'_>,
    filter: &Filter,
    cursor: Option<Cursor>,
    limit: i64,
) -> Result<Vec<Record>, sqlx::Error> {
    let mut sql = QueryBuilder::<Postgres>::new("SELECT ");
    sql.push(COLUMNS).push(FROM).push(" WHERE true");
    push_filter(&mut sql, filter);
    if let Some(cursor) = cursor {
        sql.push(" AND (occurred_at, id) < (")
            .push_bind(cursor.occurred_at)
            .push(", ")
            .push_bind(cursor.id)
            .push(")");
    }
    sql.push(" ORDER BY occurred_at DESC, id DESC LIMIT ")
        .push_bind(limit);
    sql.build_query_as().fetch_all(db).await
}

/// The conditions of `filter`, each after an `AND`.
fn push_filter(sql: &mut QueryBuilder<Postgres>, filter: &Filter) {
    if let Some(device) = &filter.device {
        sql.push(" AND device_id = ").push_bind(device);
    }
    if let Some(user) = &filter.user {
        sql.push(" AND user_id = ").push_bind(user);
    }
    if let Some(service) = &filter.service {
        sql.push(" AND service = ").push_bind(service);
    }
    if let Some(decision) = filter.decision {
        sql.push(" AND decision = ").push_bind(decision);
    }
    if let Some(event_type) = filter.event_type {
        sql.push(" AND event_type = ").push_bind(event_type);
    }
    if let Some(since) = filter.since {
        sql.push(" AND occurred_at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        sql.push(" AND occurred_at < ").push_bind(until);
    }
}

/// A stored decision context: its id (hex) and its text, verbatim.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct StoredContext {
    pub id: String,
    pub body: String,
}

/// The contexts the records that match refer to.
pub async fn contexts(
    db: impl PgExecutor<'_>,
    filter: &Filter,
) -> Result<Vec<StoredContext>, sqlx::Error> {
    let mut sql = QueryBuilder::<Postgres>::new(
        "SELECT encode(c.id, 'hex') AS id, c.body FROM decision_contexts c WHERE c.id IN \
         (SELECT DISTINCT context FROM audit_log WHERE context IS NOT NULL",
    );
    push_filter(&mut sql, filter);
    sql.push(")");
    sql.build_query_as().fetch_all(db).await
}

/// The record `id`, its context's text and the files of the policy version that decided.
pub async fn decision(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<(Record, Option<String>, Option<serde_json::Value>)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        record: Record,
        context_body: Option<String>,
        policy_files: Option<serde_json::Value>,
    }
    let mut sql = QueryBuilder::<Postgres>::new("SELECT ");
    sql.push(COLUMNS)
        .push(
            ", (SELECT body FROM decision_contexts c WHERE c.id = audit_log.context) AS context_body, \
             (SELECT files FROM policy_versions v WHERE v.version = audit_log.policy_version) \
             AS policy_files",
        )
        .push(FROM)
        .push(" WHERE id = ")
        .push_bind(id);
    let row: Option<Row> = sql.build_query_as().fetch_optional(db).await?;
    Ok(row.map(|r| (r.record, r.context_body, r.policy_files)))
}

/// A device's latest authorization decisions, newest first.
pub async fn recent_decisions(
    db: impl PgExecutor<'_>,
    device: &str,
    limit: i64,
) -> Result<Vec<Record>, sqlx::Error> {
    let filter = Filter {
        device: Some(device.to_owned()),
        event_type: Some("authorization"),
        ..Filter::default()
    };
    page(db, &filter, None, limit).await
}

/// Where a live feed is: the last decision it sent, by when PostgreSQL stored it.
#[derive(Debug, Clone)]
pub struct LiveCursor {
    written_at: OffsetDateTime,
    id: Uuid,
}

impl LiveCursor {
    /// A feed that starts with what is stored from now on.
    pub async fn now(db: impl PgExecutor<'_>) -> Result<Self, sqlx::Error> {
        Ok(Self {
            written_at: sqlx::query_scalar!(r#"SELECT clock_timestamp() AS "now!""#)
                .fetch_one(db)
                .await?,
            id: Uuid::nil(),
        })
    }
}

/// How long after being stored a decision is shown live (see [`live`]).
const LIVE_LAG_SECS: f64 = 0.3;

/// The authorization decisions stored after `cursor`, oldest first, that match; moves the cursor on.
/// Only decisions that happened within the last `window_secs` are looked at, so that the read stays
/// on the primary key's newest entries however large the month's partition is. A row is read once it
/// was stored [`LIVE_LAG_SECS`] ago: a writer's `COPY` commits its rows together, up to a window
/// after the first was stored, and a feed that moved past them before the commit would never see them.
pub async fn live(
    db: impl PgExecutor<'_>,
    cursor: &mut LiveCursor,
    window_secs: f64,
    device: Option<&str>,
    decision: Option<&str>,
) -> Result<Vec<Record>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        record: Record,
        written_at: OffsetDateTime,
    }
    let mut sql = QueryBuilder::<Postgres>::new("SELECT ");
    sql.push(COLUMNS)
        .push(", written_at")
        .push(FROM)
        .push(
            " WHERE event_type = 'authorization' AND occurred_at > now() - make_interval(secs => ",
        )
        .push_bind(window_secs)
        .push(") AND (written_at, id) > (")
        .push_bind(cursor.written_at)
        .push(", ")
        .push_bind(cursor.id)
        .push(") AND written_at <= clock_timestamp() - make_interval(secs => ")
        .push_bind(LIVE_LAG_SECS)
        .push(")");
    if let Some(device) = device {
        sql.push(" AND device_id = ").push_bind(device);
    }
    if let Some(decision) = decision {
        sql.push(" AND decision = ").push_bind(decision);
    }
    sql.push(" ORDER BY written_at, id LIMIT 500");
    let rows: Vec<Row> = sql.build_query_as().fetch_all(db).await?;
    if let Some(last) = rows.last() {
        cursor.written_at = last.written_at;
        cursor.id = last.record.id;
    }
    Ok(rows.into_iter().map(|row| row.record).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = Cursor {
            occurred_at: OffsetDateTime::from_unix_timestamp_nanos(1_763_800_000_123_456_000)
                .expect("valid"),
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in ["", "not base64!", &URL_SAFE_NO_PAD.encode("12.not-a-uuid")] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }
}
