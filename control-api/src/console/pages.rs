//! The console's pages. Each one runs the admin API's own operation (the same validation, the same
//! audit events) and renders its answer; what devices wrote (ids, OS strings, reasons) reaches the page
//! only through the templates' HTML escaping.

use std::time::{Duration, SystemTime};

use askama::Template;
use axum::Form;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use edgemesh_core::id::DeviceId;
use edgemesh_core::policy::Reload;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use super::session::{self, Session};
use super::{Failure, check_form, exact, html, relative};
use crate::audit::{Event, EventType};
use crate::db;
use crate::http::extract::{Path, Peer, Query};
use crate::http::{AppState, admin, audit, health};

/// Devices per fleet page.
const FLEET_PAGE: i64 = 50;
/// How often the live feed looks for new decisions, and how far back it looks for them (a decision
/// is stored within a fraction of a second normally; one stored later is in the audit, not the feed).
const LIVE_EVERY: Duration = Duration::from_millis(500);
const LIVE_WINDOW_SECS: f64 = 10.0;
/// How often the live feed checks that its session still stands.
const LIVE_SESSION_EVERY: u32 = 10;

fn bad_filter(e: impl std::fmt::Display) -> Failure {
    Failure::Refused {
        status: StatusCode::BAD_REQUEST,
        detail: format!("bad filter: {e}"),
    }
}

/// A form's fields as the API's query type: empty fields are left out, the rest checked by the
/// API's own deserialisation.
fn api_query<T: serde::de::DeserializeOwned>(fields: &[(&str, &str)]) -> Result<T, Failure> {
    let map: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                serde_json::Value::String(v.trim().to_owned()),
            )
        })
        .collect();
    serde_json::from_value(serde_json::Value::Object(map)).map_err(bad_filter)
}

fn query_string(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// (relative, exact)
type When = (String, String);

fn when(at: &OffsetDateTime, now: OffsetDateTime) -> When {
    (relative(at, now), exact(at))
}

// ---- signing in and out

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    signed_in: bool,
    csrf: String,
    lifetime_hours: i64,
    error: Option<String>,
}

fn sign_in_form(state: &AppState, error: Option<String>) -> SignInPage {
    SignInPage {
        signed_in: false,
        csrf: String::new(),
        lifetime_hours: state.console_session_lifetime.whole_hours(),
        error,
    }
}

pub async fn sign_in_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    if Session::find(&state, &headers).await?.is_some() {
        return Ok(Redirect::to("/ui/fleet").into_response());
    }
    html(&sign_in_form(&state, None))
}

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
}

pub async fn sign_in(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Result<Response, Failure> {
    if !session::same_origin(&headers) {
        return Err(Failure::Refused {
            status: StatusCode::FORBIDDEN,
            detail: "sign in from the console's own sign-in page (cross-site request refused)"
                .to_owned(),
        });
    }
    let address = peer.map_or_else(|| "unknown".to_owned(), |p| p.ip().to_string());
    // Beyond the limit, a failed sign-in is neither checked nor audited (the audit cannot be grown
    // without bound by guessing).
    if let Some(retry_after) = state
        .console_sign_in_refusals
        .exhausted(&address, std::time::Instant::now())
    {
        return Err(Failure::Refused {
            status: StatusCode::TOO_MANY_REQUESTS,
            detail: format!("too many failed sign-ins from {address}; retry in {retry_after} s"),
        });
    }
    let presented = Sha256::digest(form.token.trim().as_bytes());
    if !bool::from(presented[..].ct_eq(&state.admin_token_sha256)) {
        let _ = state
            .console_sign_in_refusals
            .take(&address, std::time::Instant::now());
        let mut tx = state.db.begin().await?;
        Event::new(EventType::Console, "sign_in")
            .peer(peer)
            .refused(vec!["the admin token is not valid".to_owned()])
            .record(&mut tx)
            .await?;
        tx.commit().await?;
        tracing::warn!(%address, "console sign-in refused: wrong admin token");
        let page = sign_in_form(&state, Some("That is not the admin token.".to_owned()));
        return Ok((StatusCode::UNAUTHORIZED, html(&page)?).into_response());
    }
    // The session and its audit event are one transaction: no session goes unaudited.
    let mut tx = state.db.begin().await?;
    let (_, cookie) = Session::open(&state, &mut tx, peer).await?;
    Event::new(EventType::Console, "sign_in")
        .peer(peer)
        .record(&mut tx)
        .await?;
    tx.commit().await?;
    tracing::info!(%address, "console session opened");
    let mut response = Redirect::to("/ui/fleet").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| Failure::Internal(e.into()))?,
    );
    Ok(response)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn sign_out(
    State(state): State<AppState>,
    Peer(peer): Peer,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Failure> {
    check_form(&headers, &session, &form.csrf)?;
    let mut tx = state.db.begin().await?;
    session.close(&mut tx).await?;
    Event::new(EventType::Console, "sign_out")
        .peer(peer)
        .record(&mut tx)
        .await?;
    tx.commit().await?;
    let mut response = Redirect::to("/ui/sign-in").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&session::cleared_cookie())
            .map_err(|e| Failure::Internal(e.into()))?,
    );
    Ok(response)
}

// ---- fleet

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FleetFilter {
    id_prefix: String,
    status: String,
    health: String,
    owner: String,
    cursor: Option<String>,
}

impl FleetFilter {
    fn query(&self, cursor: Option<&String>) -> String {
        query_string(&[
            ("id_prefix", &self.id_prefix),
            ("status", &self.status),
            ("health", &self.health),
            ("owner", &self.owner),
            ("cursor", cursor.map_or("", String::as_str)),
        ])
    }
}

struct FleetRow {
    id: String,
    owner: String,
    role: String,
    device_type: String,
    os: String,
    status: String,
    verdict: String,
    reasons: String,
    last_seen: Option<When>,
    expiry: Option<When>,
    expiring: bool,
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    signed_in: bool,
    csrf: String,
    counts: Vec<(String, i64)>,
    filter: FleetFilter,
    rows: Vec<FleetRow>,
    next_cursor: Option<String>,
    expiry_warning_days: i64,
    expiring: Vec<String>,
    expiring_more: i64,
}

pub async fn fleet(
    State(state): State<AppState>,
    session: Session,
    Query(filter): Query<FleetFilter>,
) -> Result<Response, Failure> {
    let mut query: admin::DeviceListQuery = api_query(&[
        ("id_prefix", &filter.id_prefix),
        ("status", &filter.status),
        ("health", &filter.health),
        ("owner", &filter.owner),
        ("cursor", filter.cursor.as_deref().unwrap_or("")),
    ])?;
    query.limit = Some(FLEET_PAGE);
    let axum::Json(page) = admin::list_devices(State(state.clone()), Query(query)).await?;
    let axum::Json(summary) = admin::fleet_summary(State(state.clone())).await?;
    let now = OffsetDateTime::now_utc();
    let rows = page
        .devices
        .into_iter()
        .map(|d| FleetRow {
            expiring: d
                .certificate_expires_at
                .is_some_and(|at| d.status == "active" && at - now < state.expiry_warning),
            expiry: d.certificate_expires_at.map(|at| when(&at, now)),
            last_seen: d.last_seen_at.map(|at| when(&at, now)),
            reasons: d.health_reasons.join("; "),
            verdict: d.health_status,
            id: d.id,
            owner: d.owner,
            role: d.role,
            device_type: d.device_type,
            os: format!("{} {}", d.os, d.os_version),
            status: d.status,
        })
        .collect();
    let mut counts = vec![
        ("devices".to_owned(), summary.devices),
        ("active".to_owned(), summary.active),
        ("revoked".to_owned(), summary.revoked),
    ];
    let v = &summary.verdicts;
    counts.extend([
        ("healthy".to_owned(), v.healthy),
        ("unhealthy".to_owned(), v.unhealthy),
        ("stale".to_owned(), v.stale),
        ("unknown".to_owned(), v.unknown),
    ]);
    counts.push((
        format!(
            "certificates expiring within {} days",
            summary.expiry_warning_days
        ),
        summary.certificates_expiring,
    ));
    html(&FleetPage {
        signed_in: true,
        csrf: session.csrf,
        counts,
        filter,
        rows,
        next_cursor: page.next_cursor,
        expiry_warning_days: summary.expiry_warning_days,
        expiring_more: summary.certificates_expiring - summary.expiring_devices.len() as i64,
        expiring: summary.expiring_devices,
    })
}

// ---- one device

struct CertificateRow {
    serial: String,
    fingerprint: String,
    not_before: String,
    not_after: String,
    expiring: bool,
    expires_in: String,
    state: String,
    renewed_from: Option<String>,
}

struct ReportRow {
    collected: When,
    cpu: String,
    memory: String,
    disk: String,
    os: String,
    agent: String,
    status: String,
    reasons: Vec<String>,
}

struct DecisionRow {
    at: When,
    decision: String,
    service: String,
    request: String,
    reasons: String,
    id: String,
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    signed_in: bool,
    csrf: String,
    d: db::devices::Device,
    spiffe_id: String,
    verdict: String,
    enrolled: String,
    last_seen: Option<When>,
    certificates: Vec<CertificateRow>,
    reports: Vec<ReportRow>,
    chart: String,
    decisions: Vec<DecisionRow>,
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |v| format!("{v:.0} %"))
}

pub async fn device(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<DeviceId>,
) -> Result<Response, Failure> {
    let axum::Json(detail) = admin::get_device(State(state.clone()), Path(id.clone())).await?;
    let axum::Json(history) = health::history(
        State(state.clone()),
        Path(id.clone()),
        Query(health::HistoryQuery { limit: Some(100) }),
    )
    .await?;
    let decisions = db::audit::recent_decisions(&state.db, id.as_str(), 20).await?;
    let now = OffsetDateTime::now_utc();
    let certificates = detail
        .certificates
        .iter()
        .map(|c| CertificateRow {
            serial: c.serial.clone(),
            fingerprint: c.fingerprint.clone(),
            not_before: exact(&c.not_before),
            not_after: exact(&c.not_after),
            expiring: c.revoked_at.is_none()
                && c.not_after > now
                && c.not_after - now < state.expiry_warning,
            expires_in: relative(&c.not_after, now),
            state: match (c.revoked_at, &c.revocation_reason) {
                (Some(at), Some(reason)) if at <= now => {
                    format!("revoked {}: {reason}", exact(&at))
                }
                (Some(at), None) if at <= now => format!("retired {}", exact(&at)),
                (Some(at), _) => format!("retires {}", exact(&at)),
                (None, _) if c.not_after <= now => "expired".to_owned(),
                (None, _) => "in force".to_owned(),
            },
            renewed_from: c.renewed_from.clone(),
        })
        .collect();
    let chart = chart(&history.reports);
    let reports = history
        .reports
        .into_iter()
        .map(|r| ReportRow {
            collected: when(&r.collected_at, now),
            cpu: percent(r.cpu_usage),
            memory: percent(r.memory_usage),
            disk: percent(r.disk_usage),
            os: format!(
                "{} {}",
                r.os.unwrap_or_default(),
                r.os_version.unwrap_or_default()
            ),
            agent: r.agent_version,
            status: r.status,
            reasons: r.reasons,
        })
        .collect();
    let decisions = decisions
        .into_iter()
        .map(|r| decision_row(r, now))
        .collect();
    let d = detail.device;
    html(&DevicePage {
        signed_in: true,
        csrf: session.csrf,
        spiffe_id: format!("spiffe://{}/device/{}", state.trust_domain, d.id),
        verdict: d.health_status.clone(),
        enrolled: exact(&d.enrolled_at),
        last_seen: d.last_seen_at.map(|at| when(&at, now)),
        d,
        certificates,
        reports,
        chart,
        decisions,
    })
}

fn decision_row(r: db::audit::Record, now: OffsetDateTime) -> DecisionRow {
    DecisionRow {
        at: when(&r.occurred_at, now),
        decision: r.decision.unwrap_or_else(|| r.action.clone()),
        service: r.service.unwrap_or_default(),
        request: format!(
            "{} {}",
            r.method.unwrap_or_default(),
            r.path.unwrap_or_default()
        ),
        reasons: r.reasons.join("; "),
        id: r.id.to_string(),
    }
}

/// CPU, memory and disk over the reports (newest first), as an SVG drawn here: no script, no
/// library, and nothing from the device reaches it but numbers.
fn chart(reports: &[db::health::StoredReport]) -> String {
    const W: f64 = 640.0;
    const H: f64 = 160.0;
    let n = reports.len();
    if n == 0 {
        return String::new();
    }
    let x = |i: usize| {
        if n == 1 {
            W
        } else {
            // Oldest on the left.
            W * (n - 1 - i) as f64 / (n - 1) as f64
        }
    };
    let y = |v: f64| H - H * v.clamp(0.0, 100.0) / 100.0;
    let line = |pick: fn(&db::health::StoredReport) -> Option<f64>, class: &str| {
        let points: Vec<String> = reports
            .iter()
            .enumerate()
            .filter_map(|(i, r)| pick(r).map(|v| format!("{:.1},{:.1}", x(i), y(v))))
            .collect();
        // A dot at each report too: a single report, or a gap, still shows.
        let dots: String = points
            .iter()
            .filter_map(|p| p.split_once(','))
            .map(|(x, y)| format!(r#"<circle class="{class}" cx="{x}" cy="{y}" r="3"/>"#))
            .collect();
        format!(
            r#"<polyline class="{class}" fill="none" stroke-width="2" points="{}"/>{dots}"#,
            points.join(" ")
        )
    };
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="-4 -4 {} {}" role="img" aria-label="CPU, memory and disk usage over time" id="health-chart"><rect class="frame" x="0" y="0" width="{W}" height="{H}" fill="none"/>{}{}{}</svg>"#,
        W + 8.0,
        H + 8.0,
        line(|r| r.cpu_usage, "cpu"),
        line(|r| r.memory_usage, "memory"),
        line(|r| r.disk_usage, "disk"),
    )
}

#[derive(Template)]
#[template(path = "revoke.html")]
struct RevokePage {
    signed_in: bool,
    csrf: String,
    device: String,
}

pub async fn revoke_page(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<DeviceId>,
) -> Result<Response, Failure> {
    // An unknown device is a 404 here, not at the confirmation.
    let _ = admin::get_device(State(state), Path(id.clone())).await?;
    html(&RevokePage {
        signed_in: true,
        csrf: session.csrf,
        device: id.to_string(),
    })
}

#[derive(Deserialize)]
pub struct RevokeForm {
    csrf: String,
    reason: String,
}

pub async fn revoke(
    State(state): State<AppState>,
    session: Session,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<DeviceId>,
    Form(form): Form<RevokeForm>,
) -> Result<Response, Failure> {
    check_form(&headers, &session, &form.csrf)?;
    let body = serde_json::json!({ "reason": form.reason.trim() }).to_string();
    let _ = admin::revoke_device(State(state), peer, Path(id.clone()), Bytes::from(body)).await?;
    Ok(Redirect::to(&format!("/ui/devices/{id}")).into_response())
}

// ---- enrolment tokens

struct TokenRow {
    id: String,
    owner: String,
    uses: i32,
    max_uses: i32,
    expires: When,
    state: &'static str,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    signed_in: bool,
    csrf: String,
    users: Vec<db::users::User>,
    tokens: Vec<TokenRow>,
    created: Option<admin::CreatedToken>,
    enroll_command: String,
}

async fn tokens_page(
    state: &AppState,
    session: Session,
    headers: &HeaderMap,
    created: Option<admin::CreatedToken>,
) -> Result<Response, Failure> {
    let axum::Json(users) = admin::list_users(State(state.clone())).await?;
    let axum::Json(list) = admin::list_tokens(State(state.clone())).await?;
    let now = OffsetDateTime::now_utc();
    let tokens = list
        .tokens
        .into_iter()
        .map(|t| TokenRow {
            state: if t.revoked_at.is_some() {
                "revoked"
            } else if t.expires_at <= now {
                "expired"
            } else if t.uses >= t.max_uses {
                "used up"
            } else {
                "usable"
            },
            id: t.id.to_string(),
            owner: t.owner,
            uses: t.uses,
            max_uses: t.max_uses,
            expires: when(&t.expires_at, now),
        })
        .collect();
    let enroll_command = created.as_ref().map_or_else(String::new, |c| {
        format!(
            "edgemesh-agent enroll --server {} --ca-fingerprint {} --token-file enrollment-token --device-id DEVICE_ID",
            server_url(headers),
            c.ca_fingerprint
        )
    });
    html(&TokensPage {
        signed_in: true,
        csrf: session.csrf,
        users: users.users,
        tokens,
        created,
        enroll_command,
    })
}

/// The control API's address as the browser reached it: the one a device on the same network enrols
/// with.
fn server_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("CONTROL_API_HOST:8444");
    format!("https://{host}")
}

pub async fn tokens(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    tokens_page(&state, session, &headers, None).await
}

#[derive(Deserialize)]
pub struct TokenForm {
    csrf: String,
    owner: String,
    ttl_seconds: i64,
    max_uses: i32,
}

pub async fn create_token(
    State(state): State<AppState>,
    session: Session,
    peer: Peer,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Result<Response, Failure> {
    check_form(&headers, &session, &form.csrf)?;
    let body = admin::CreateToken {
        owner: edgemesh_core::id::UserId::parse(form.owner.trim()).map_err(bad_filter)?,
        ttl_seconds: form.ttl_seconds,
        max_uses: form.max_uses,
    };
    let (_, axum::Json(created)) =
        admin::create_token(State(state.clone()), peer, crate::http::extract::Json(body)).await?;
    tokens_page(&state, session, &headers, Some(created)).await
}

// ---- audit

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AuditFilter {
    device: String,
    event_type: String,
    decision: String,
    since: String,
    until: String,
    cursor: Option<String>,
}

impl AuditFilter {
    fn fields(&self) -> [(&'static str, &str); 5] {
        [
            ("device", &self.device),
            ("event_type", &self.event_type),
            ("decision", &self.decision),
            ("since", &self.since),
            ("until", &self.until),
        ]
    }

    fn query(&self) -> String {
        query_string(&self.fields())
    }
}

struct AuditRow {
    at: When,
    event: String,
    device: String,
    user: String,
    decision: String,
    request: String,
    reasons: String,
    id: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    signed_in: bool,
    csrf: String,
    filter: AuditFilter,
    records: Vec<AuditRow>,
    next_cursor: Option<String>,
}

pub async fn audit(
    State(state): State<AppState>,
    session: Session,
    Query(filter): Query<AuditFilter>,
) -> Result<Response, Failure> {
    let mut fields = filter.fields().to_vec();
    fields.push(("cursor", filter.cursor.as_deref().unwrap_or("")));
    let query: audit::AuditQuery = api_query(&fields)?;
    let (records, next_cursor) = audit::page(&state.db, &query).await?;
    let now = OffsetDateTime::now_utc();
    let records = records
        .into_iter()
        .map(|r| AuditRow {
            at: when(&r.occurred_at, now),
            event: format!("{} {}", r.event_type, r.action),
            device: r.device_id.unwrap_or_default(),
            user: r.user_id.unwrap_or_default(),
            decision: r.decision.unwrap_or_default(),
            request: format!(
                "{} {}",
                r.method.unwrap_or_default(),
                r.path.unwrap_or_default()
            ),
            reasons: r.reasons.join("; "),
            id: r.id.to_string(),
        })
        .collect();
    html(&AuditPage {
        signed_in: true,
        csrf: session.csrf,
        filter,
        records,
        next_cursor,
    })
}

/// The audit page's records as the API's CSV export (every record that matches, streamed).
pub async fn audit_csv(
    State(state): State<AppState>,
    _session: Session,
    Query(filter): Query<AuditFilter>,
) -> Result<Response, Failure> {
    let mut fields = filter.fields().to_vec();
    fields.push(("format", "csv"));
    let query: audit::AuditQuery = api_query(&fields)?;
    let mut response = audit::query(State(state), Query(query)).await?;
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"edgemesh-audit.csv\""),
    );
    Ok(response)
}

// ---- live decisions

#[derive(Template)]
#[template(path = "live.html")]
struct LivePage {
    signed_in: bool,
    csrf: String,
}

pub async fn live(session: Session) -> Result<Response, Failure> {
    html(&LivePage {
        signed_in: true,
        csrf: session.csrf,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LiveFilter {
    device: String,
    decision: String,
}

/// Server-sent events: each decision stored from now on that matches, as a JSON object, until the
/// session ends.
pub async fn live_events(
    State(state): State<AppState>,
    _session: Session,
    headers: HeaderMap,
    Query(filter): Query<LiveFilter>,
) -> Result<Response, Failure> {
    let device = match filter.device.trim() {
        "" => None,
        d => Some(DeviceId::parse(d).map_err(bad_filter)?),
    };
    let decision = match filter.decision.as_str() {
        "" => None,
        d @ ("allow" | "deny") => Some(d.to_owned()),
        other => {
            return Err(bad_filter(format!(
                "decision {other:?} is not allow or deny"
            )));
        }
    };
    let start = db::audit::LiveCursor::now(&state.db).await?;
    struct Feed {
        state: AppState,
        headers: HeaderMap,
        cursor: db::audit::LiveCursor,
        device: Option<DeviceId>,
        decision: Option<String>,
        polls: u32,
        pending: std::collections::VecDeque<db::audit::Record>,
    }
    let feed = Feed {
        state,
        headers,
        cursor: start,
        device,
        decision,
        polls: 0,
        pending: Default::default(),
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(record) = feed.pending.pop_front() {
                let event = SseEvent::default()
                    .event("decision")
                    .json_data(live_record(&record))
                    .unwrap_or_default();
                return Some((Ok::<_, std::convert::Infallible>(event), feed));
            }
            tokio::time::sleep(LIVE_EVERY).await;
            feed.polls += 1;
            if feed.polls % LIVE_SESSION_EVERY == 0 {
                // Signed out, expired or the token rotated: the feed ends with the session.
                match Session::find(&feed.state, &feed.headers).await {
                    Ok(Some(_)) => {}
                    _ => return None,
                }
            }
            match db::audit::live(
                &feed.state.db,
                &mut feed.cursor,
                LIVE_WINDOW_SECS,
                feed.device.as_ref().map(DeviceId::as_str),
                feed.decision.as_deref(),
            )
            .await
            {
                Ok(records) => feed.pending.extend(records),
                Err(e) => tracing::warn!(error = %e, "the live feed could not read the audit"),
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn live_record(r: &db::audit::Record) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "occurred_at": exact(&r.occurred_at),
        "device": r.device_id,
        "decision": r.decision,
        "service": r.service,
        "request": format!("{} {}", r.method.as_deref().unwrap_or(""), r.path.as_deref().unwrap_or("")),
        "reasons": r.reasons,
    })
}

// ---- policies

#[derive(Template)]
#[template(path = "policies.html")]
struct PoliciesPage {
    signed_in: bool,
    csrf: String,
    version: String,
    dir: String,
    last_reload: String,
    refused: Option<String>,
    files: Vec<(String, String)>,
}

pub async fn policies(
    State(state): State<AppState>,
    session: Session,
) -> Result<Response, Failure> {
    let store = &state.policies;
    let files = store.files().map_err(|e| Failure::Refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        detail: format!("the policy files cannot be read: {e:#}"),
    })?;
    let (last_reload, refused) = match store.last_outcome() {
        None => ("none since the control API started".to_owned(), None),
        Some((at, outcome)) => {
            let at = exact(&OffsetDateTime::from(at.min(SystemTime::now())));
            match outcome {
                Reload::Replaced { version } => {
                    (format!("{at}: version {version} put in force"), None)
                }
                Reload::Refused { error } => (format!("{at}: refused"), Some(error)),
                Reload::Unchanged => (format!("{at}: unchanged"), None),
            }
        }
    };
    html(&PoliciesPage {
        signed_in: true,
        csrf: session.csrf,
        version: store.current().version().to_owned(),
        dir: store.dir().display().to_string(),
        last_reload,
        refused,
        files,
    })
}
