//! Records in PostgreSQL's binary `COPY` format, and inserting them.

use sqlx::PgPool;

use super::Record;

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
    insert_contexts(db, records.iter()).await?;
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
pub(super) async fn insert_skipping_stored(db: &PgPool, rows: &[u8]) -> Result<u64, sqlx::Error> {
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

/// Stores the decision contexts the records carry (each in the first record that refers to it), a
/// context already stored skipped: contexts are content-addressed, so the same id is the same text.
/// Stored before the records that refer to them (a replay of a batch carries them again).
pub(super) async fn insert_contexts(
    db: &PgPool,
    records: impl Iterator<Item = &Record>,
) -> Result<(), sqlx::Error> {
    let (ids, bodies): (Vec<&[u8]>, Vec<&str>) = records
        .filter_map(|r| r.context.as_ref())
        .filter_map(|c| Some((&c.id[..], c.body.as_deref()?)))
        .unzip();
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO decision_contexts (id, body)
         SELECT * FROM unnest($1::bytea[], $2::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(ids)
    .bind(bodies)
    .execute(db)
    .await?;
    Ok(())
}

/// The start of a binary `COPY`: signature, flags, header extension length.
pub(super) const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The end of a binary `COPY`.
pub(super) const COPY_TRAILER: &[u8] = &(-1i16).to_be_bytes();
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const POSTGRES_EPOCH_US: i64 = 946_684_800_000_000;
/// The OID of PostgreSQL's `text` type, named in a binary array.
const TEXT_OID: i32 = 25;

/// `records` as a whole binary `COPY` (header, rows, trailer).
pub(super) fn copy_rows(records: &[Record]) -> Vec<u8> {
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
pub(super) fn copy_statement(table: &'static str) -> String {
    format!(
        "COPY {table} (id, occurred_at, event_type, action, device_id, user_id, role, service,
             method, path, decision, reasons, policy_version, certificate_serial, latency_us,
             peer_address, shadow_decision, shadow_reasons, shadow_policy_version, context,
             decided_at)
             FROM STDIN (FORMAT binary)"
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
pub(super) fn copy_row(out: &mut Vec<u8>, r: &Record) {
    out.extend_from_slice(&21i16.to_be_bytes());
    field(out, r.id.as_bytes());
    field(out, &(r.at_us - POSTGRES_EPOCH_US).to_be_bytes());
    field(out, b"authorization");
    field(out, b"check");
    for value in [&r.device, &r.user, &r.role, &r.service, &r.method, &r.path] {
        optional_text(out, value.as_deref());
    }
    field(out, decision(r.allow));
    text_array(out, &r.reasons);
    text(out, &r.policy_version);
    optional_text(out, r.serial.as_deref());
    field(out, &r.latency_us.to_be_bytes());
    optional_text(out, r.peer.as_deref());
    match &r.shadow {
        Some(shadow) => {
            field(out, decision(shadow.allow));
            text_array(out, &shadow.reasons);
            text(out, &shadow.policy_version);
        }
        None => {
            for _ in 0..3 {
                null(out);
            }
        }
    }
    match &r.context {
        Some(context) => field(out, &context.id),
        None => null(out),
    }
    match r.decided_at {
        Some(at) => field(out, &at.to_be_bytes()),
        None => null(out),
    }
}

fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i32).to_be_bytes());
}

fn decision(allow: bool) -> &'static [u8] {
    if allow { b"allow" } else { b"deny" }
}

/// A `text[]`: dimensions, has-nulls flag, element type, each dimension's length and lower bound,
/// then the elements.
fn text_array(out: &mut Vec<u8>, values: &[String]) {
    let start = begin_field(out);
    let dimensions = i32::from(!values.is_empty());
    out.extend_from_slice(&dimensions.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&TEXT_OID.to_be_bytes());
    if dimensions == 1 {
        let count = i32::try_from(values.len()).unwrap_or(i32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
        for value in values {
            text(out, value);
        }
    }
    end_field(out, start);
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&i32::try_from(bytes.len()).unwrap_or(i32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn optional_text(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => text(out, value),
        None => null(out),
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
