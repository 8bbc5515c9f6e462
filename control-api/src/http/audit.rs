//! `GET /api/v1/admin/audit`: the audit trail, newest first, filtered by device, user, service,
//! decision, event type and time window; keyset pagination with an opaque cursor (`format=json`, the
//! default) or a streamed export of everything that matches (`format=ndjson` or `format=csv`).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use edgemesh_core::api::ErrorBody;
use edgemesh_core::id::{DeviceId, UserId};
use futures_util::stream;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::admin::ADMIN_401;
use super::extract::{Path, Query};
use super::{ApiError, AppState};
use crate::audit::EventType;
use crate::db::audit::{self, Cursor, Filter, Record, StoredContext};
use uuid::Uuid;

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;
/// Rows fetched per round trip while an export streams.
const EXPORT_CHUNK: i64 = 1000;
const MAX_EXPORT: i64 = 10_000_000;

pub fn admin_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(query))
        .routes(routes!(contexts))
        .routes(routes!(decision))
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum Decision {
    Allow,
    Deny,
}

/// `json`: a page with a cursor; `ndjson` or `csv`: everything that matches, streamed.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Json,
    Ndjson,
    Csv,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    device: Option<DeviceId>,
    user: Option<UserId>,
    /// 1 to 64 letters, digits, '.', '_' or '-'.
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    service: Option<String>,
    #[param(inline)]
    decision: Option<Decision>,
    #[param(inline)]
    event_type: Option<EventType>,
    /// Inclusive lower bound (RFC 3339; in a URL write the offset as `Z` or `%2B01:00`).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Exclusive upper bound (RFC 3339), later than `since`.
    #[param(format = DateTime)]
    until: Option<String>,
    /// `json`: 1 to 1000 (default 100); an export: 1 to 10,000,000 (default: everything).
    #[param(minimum = 1, maximum = 10000000)]
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    #[param(max_length = 200)]
    cursor: Option<String>,
    #[serde(default)]
    #[param(inline)]
    format: Format,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AuditPage {
    records: Vec<Record>,
    /// The `cursor` of the next page; `null` on the last.
    next_cursor: Option<String>,
}

const CSV_HEADER: &str = "id,occurred_at,event_type,action,device_id,user_id,role,service,method,path,\
     decision,reasons,policy_version,certificate_serial,latency_us,peer_address,details,\
     shadow_decision,shadow_reasons,shadow_policy_version,seq,hash,context,decided_at\r\n";

fn parse_instant(field: &str, value: Option<&str>) -> Result<Option<OffsetDateTime>, ApiError> {
    value
        .map(|v| {
            OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
                ApiError::bad_request(
                    "invalid_time",
                    format!(
                        "{field} must be an RFC 3339 instant such as 2026-11-22T09:00:00Z \
                         (in a URL, write the offset as Z or %2B01:00)"
                    ),
                )
            })
        })
        .transpose()
}

/// The filters both queries take, checked (the event type is the caller's).
fn filter(
    device: Option<&DeviceId>,
    user: Option<&UserId>,
    service: Option<&str>,
    decision: Option<Decision>,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<Filter, ApiError> {
    if let Some(service) = service
        && (service.is_empty()
            || service.len() > 64
            || !service
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
    {
        return Err(ApiError::bad_request(
            "invalid_service",
            "service must be 1 to 64 letters, digits, '.', '_' or '-'",
        ));
    }
    let since = parse_instant("since", since)?;
    let until = parse_instant("until", until)?;
    if let (Some(since), Some(until)) = (since, until)
        && since >= until
    {
        return Err(ApiError::bad_request(
            "invalid_time_range",
            "since must be earlier than until",
        ));
    }
    Ok(Filter {
        device: device.map(|d| d.as_str().to_owned()),
        user: user.map(|u| u.as_str().to_owned()),
        service: service.map(str::to_owned),
        decision: decision.map(|d| match d {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }),
        event_type: None,
        since,
        until,
    })
}

impl AuditQuery {
    fn validate(&self) -> Result<(Filter, Option<Cursor>, Option<i64>), ApiError> {
        let mut filter = filter(
            self.device.as_ref(),
            self.user.as_ref(),
            self.service.as_deref(),
            self.decision,
            self.since.as_deref(),
            self.until.as_deref(),
        )?;
        filter.event_type = self.event_type.map(EventType::as_str);
        let max = if self.format == Format::Json {
            MAX_PAGE
        } else {
            MAX_EXPORT
        };
        let limit = match (self.limit, self.format) {
            (Some(limit), _) if !(1..=max).contains(&limit) => {
                return Err(ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be between 1 and {max}"),
                ));
            }
            (Some(limit), _) => Some(limit),
            (None, Format::Json) => Some(DEFAULT_PAGE),
            // An export streams everything that matches.
            (None, _) => None,
        };
        let cursor = self
            .cursor
            .as_deref()
            .map(|c| {
                Cursor::decode(c).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_cursor",
                        "the cursor is not one this API returned",
                    )
                })
            })
            .transpose()?;
        Ok((filter, cursor, limit))
    }
}

/// The audit trail, newest first: a page (`format=json`) or an export of everything that matches.
#[utoipa::path(get, path = "/audit", tag = "admin",
    security(("admin_token" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "The records.",
            content(
                (AuditPage = "application/json"),
                (String = "application/x-ndjson"),
                (String = "text/csv; charset=utf-8"),
            )),
        (status = 400, description = "`invalid_query`, `invalid_service`, `invalid_time`, `invalid_time_range`, `invalid_limit`, `invalid_cursor`.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
    ))]
pub(crate) async fn query(
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let (filter, cursor, limit) = query.validate()?;
    match (query.format, limit) {
        (Format::Json, Some(limit)) => {
            let records = audit::page(&state.db, &filter, cursor, limit).await?;
            let next_cursor = (records.len() as i64 == limit)
                .then(|| records.last().map(|r| Cursor::after(r).encode()))
                .flatten();
            Ok(axum::Json(AuditPage {
                records,
                next_cursor,
            })
            .into_response())
        }
        (format, limit) => {
            // The first chunk is read before answering, so a failing query is an error status rather
            // than a truncated 200.
            let first = audit::page(
                &state.db,
                &filter,
                cursor,
                limit.unwrap_or(i64::MAX).min(EXPORT_CHUNK),
            )
            .await?;
            Ok(export(state.db.clone(), filter, first, limit, format))
        }
    }
}

/// Which decisions' contexts `GET /decision-contexts` answers: the filters of `GET /audit`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ContextsQuery {
    device: Option<DeviceId>,
    user: Option<UserId>,
    /// 1 to 64 letters, digits, '.', '_' or '-'.
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    service: Option<String>,
    #[param(inline)]
    decision: Option<Decision>,
    /// Inclusive lower bound (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Exclusive upper bound (RFC 3339), later than `since`.
    #[param(format = DateTime)]
    until: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ContextList {
    contexts: Vec<StoredContext>,
}

/// The contexts the matching decisions were made on, each once: with the records of
/// `GET /audit?event_type=authorization&format=ndjson`, what a replay evaluates again
/// (`edgemeshctl policy replay`). A context's `id` is the first 16 bytes of the SHA-256 of its
/// `body`, in hex.
#[utoipa::path(get, path = "/decision-contexts", tag = "admin",
    security(("admin_token" = [])),
    params(ContextsQuery),
    responses(
        (status = 200, description = "The contexts.", body = ContextList),
        (status = 400, description = "`invalid_query`, `invalid_service`, `invalid_time`, `invalid_time_range`.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
    ))]
async fn contexts(
    State(state): State<AppState>,
    Query(query): Query<ContextsQuery>,
) -> Result<axum::Json<ContextList>, ApiError> {
    let mut filter = filter(
        query.device.as_ref(),
        query.user.as_ref(),
        query.service.as_deref(),
        query.decision,
        query.since.as_deref(),
        query.until.as_deref(),
    )?;
    filter.event_type = Some("authorization");
    Ok(axum::Json(ContextList {
        contexts: audit::contexts(&state.db, &filter).await?,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DecisionDetail {
    record: Record,
    /// The text of the record's context, verbatim (`null`: none, such as a deny made before the
    /// policies ran).
    context: Option<String>,
    /// The files of the policy version that decided, as `[name, source]` pairs in load order
    /// (`null`: ext-authz did not store them).
    #[schema(value_type = Option<Vec<Vec<String>>>)]
    policy_files: Option<serde_json::Value>,
}

/// One decision with what it was made on: its record, its context and the policy files of the
/// version in force. `edgemeshctl policy explain` evaluates it again from these.
#[utoipa::path(get, path = "/decisions/{id}", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The decision id (sent to the client and the upstream as x-edgemesh-decision-id).")),
    responses(
        (status = 200, description = "The decision.", body = DecisionDetail),
        (status = 400, description = "`invalid_path`.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 404, description = "`unknown_decision`.", body = ErrorBody),
    ))]
async fn decision(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<DecisionDetail>, ApiError> {
    let (record, context, policy_files) = audit::decision(&state.db, id)
        .await?
        .filter(|(record, _, _)| record.event_type == "authorization")
        .ok_or_else(|| ApiError::not_found("unknown_decision", format!("no decision {id}")))?;
    Ok(axum::Json(DecisionDetail {
        record,
        context,
        policy_files,
    }))
}

/// A page of what `query` matches, as `format=json` answers it: the records and the next cursor.
pub(crate) async fn page(
    db: &PgPool,
    query: &AuditQuery,
) -> Result<(Vec<Record>, Option<String>), ApiError> {
    let (filter, cursor, limit) = query.validate()?;
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    let records = audit::page(db, &filter, cursor, limit).await?;
    let next_cursor = (records.len() as i64 == limit)
        .then(|| records.last().map(|r| Cursor::after(r).encode()))
        .flatten();
    Ok((records, next_cursor))
}

/// Streams `first` and the pages after it as NDJSON or CSV, at most `limit` records in all.
fn export(
    db: PgPool,
    filter: Filter,
    first: Vec<Record>,
    limit: Option<i64>,
    format: Format,
) -> Response {
    struct Export {
        db: PgPool,
        filter: Filter,
        page: Option<Vec<Record>>,
        remaining: i64,
        header: bool,
    }
    let state = Export {
        db,
        filter,
        remaining: limit.unwrap_or(i64::MAX),
        page: Some(first),
        header: format == Format::Csv,
    };
    let body = stream::unfold(state, move |mut state| async move {
        if state.header {
            state.header = false;
            return Some((Ok(Bytes::from_static(CSV_HEADER.as_bytes())), state));
        }
        let page = match state.page.take() {
            Some(page) => page,
            None => return None,
        };
        if page.is_empty() {
            return None;
        }
        state.remaining -= page.len() as i64;
        // A short page is the last one; so is the one that reaches the limit.
        let more = page.len() as i64 == EXPORT_CHUNK && state.remaining > 0;
        let mut chunk = String::with_capacity(page.len() * 300);
        for record in &page {
            match format {
                Format::Csv => csv_row(&mut chunk, record),
                _ => {
                    chunk.push_str(&serde_json::to_string(record).unwrap_or_default());
                    chunk.push('\n');
                }
            }
        }
        if more {
            let cursor = page.last().map(Cursor::after);
            match audit::page(
                &state.db,
                &state.filter,
                cursor,
                state.remaining.min(EXPORT_CHUNK),
            )
            .await
            {
                Ok(next) => state.page = Some(next),
                Err(e) => {
                    // The status is already sent: ending the body early is the only signal left.
                    tracing::error!(error = %e, "audit export failed part way");
                    return Some((Err(std::io::Error::other(e)), state));
                }
            }
        }
        Some((Ok(Bytes::from(chunk)), state))
    });
    let content_type = match format {
        Format::Csv => "text/csv; charset=utf-8",
        _ => "application/x-ndjson",
    };
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

/// Appends one RFC 4180 row. A cell that a spreadsheet would run as a formula is prefixed with `'`.
fn csv_row(out: &mut String, r: &Record) {
    let time = r.occurred_at.format(&Rfc3339).unwrap_or_default();
    let latency = r.latency_us.map(|l| l.to_string());
    let reasons = r.reasons.join("; ");
    let details = r.details.to_string();
    let id = r.id.to_string();
    let shadow_reasons = r.shadow_reasons.as_ref().map(|r| r.join("; "));
    let seq = r.seq.map(|s| s.to_string());
    let decided_at = r.decided_at.map(|s| s.to_string());
    let cells: [Option<&str>; 24] = [
        Some(&id),
        Some(&time),
        Some(&r.event_type),
        Some(&r.action),
        r.device_id.as_deref(),
        r.user_id.as_deref(),
        r.role.as_deref(),
        r.service.as_deref(),
        r.method.as_deref(),
        r.path.as_deref(),
        r.decision.as_deref(),
        Some(&reasons),
        r.policy_version.as_deref(),
        r.certificate_serial.as_deref(),
        latency.as_deref(),
        r.peer_address.as_deref(),
        Some(&details),
        r.shadow_decision.as_deref(),
        shadow_reasons.as_deref(),
        r.shadow_policy_version.as_deref(),
        seq.as_deref(),
        r.hash.as_deref(),
        r.context.as_deref(),
        decided_at.as_deref(),
    ];
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&csv_cell(cell.unwrap_or_default()));
    }
    out.push_str("\r\n");
}

fn csv_cell(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_formulas_neutralised() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=cmd()"), "'=cmd()");
    }
}
