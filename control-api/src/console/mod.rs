//! The operator console: HTML pages for people, served on the admin listener under `/ui/`, rendered on
//! the server from the same operations the admin API runs (`crate::http::admin`, `audit`, `health`).
//! A page needs a session ([`session`]); a state-changing form needs the session's token and a request
//! from the console's own origin. Every answer carries a strict Content-Security-Policy: the pages load
//! their stylesheet and script from here, and nothing from anywhere else.

use askama::Template;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use time::OffsetDateTime;

use crate::http::{ApiError, AppState};

mod assets;
mod pages;
pub mod session;

use session::Session;

/// What every console answer carries.
const SECURITY_HEADERS: [(&str, &str); 7] = [
    (
        "content-security-policy",
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; \
         base-uri 'none'; object-src 'none'",
    ),
    ("strict-transport-security", "max-age=31536000"),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cache-control", "no-store"),
];

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/fleet") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/fleet") }))
        .route("/ui/sign-in", get(pages::sign_in_page).post(pages::sign_in))
        .route("/ui/sign-out", axum::routing::post(pages::sign_out))
        .route("/ui/fleet", get(pages::fleet))
        .route("/ui/devices/{id}", get(pages::device))
        .route(
            "/ui/devices/{id}/revoke",
            get(pages::revoke_page).post(pages::revoke),
        )
        .route("/ui/tokens", get(pages::tokens).post(pages::create_token))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/audit.csv", get(pages::audit_csv))
        .route("/ui/live", get(pages::live))
        .route("/ui/live/events", get(pages::live_events))
        .route("/ui/policies", get(pages::policies))
        .route("/ui/static/{file}", get(assets::serve))
        // Anything else under /ui is a console page that does not exist: a 404 page, with the headers.
        .route("/ui/{*rest}", axum::routing::any(not_found))
        .layer(middleware::from_fn_with_state(state, around_every_page))
}

/// Around every console request: the host named as `Host`, and the answer with the security headers
/// and the server's time.
async fn around_every_page(
    State(_): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    // HTTP/2 names the host in `:authority`, not `Host`; the origin check and the enrol command read
    // `Host`, so it is set from the authority when the request has none.
    if !request.headers().contains_key(header::HOST)
        && let Some(authority) = request.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(header::HOST, host);
    }
    let started = std::time::Instant::now();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    // How long the server took to answer (to the headers, for the live feed): what the console bench
    // reads, and what a browser's developer tools show.
    if let Ok(timing) = HeaderValue::from_str(&format!(
        "app;dur={:.3}",
        started.elapsed().as_secs_f64() * 1000.0
    )) {
        headers.insert("server-timing", timing);
    }
    for (name, value) in SECURITY_HEADERS {
        // An asset may be cached; a page never is.
        if name == "cache-control" && headers.contains_key(header::CACHE_CONTROL) {
            continue;
        }
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn not_found() -> Failure {
    Failure::Refused {
        status: StatusCode::NOT_FOUND,
        detail: "there is no such console page".to_owned(),
    }
}

/// Why a console request was not answered with its page.
#[derive(Debug)]
pub enum Failure {
    /// No session: the browser is sent to sign in.
    SignIn,
    /// A refusal shown as a page: the status, and what to tell the operator.
    Refused { status: StatusCode, detail: String },
    /// Logged once, shown as a bare error page.
    Internal(anyhow::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(anyhow::Error::new(e).context("database error"))
    }
}

impl From<askama::Error> for Failure {
    fn from(e: askama::Error) -> Self {
        Self::Internal(anyhow::Error::new(e).context("rendering a console page"))
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Refused { status, detail, .. } => Self::Refused { status, detail },
            ApiError::TooManyRequests {
                retry_after,
                detail,
            } => Self::Refused {
                status: StatusCode::TOO_MANY_REQUESTS,
                detail: format!("{detail} (retry in {retry_after} s)"),
            },
            ApiError::Internal(e) => Self::Internal(e),
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    title: String,
    detail: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, detail) = match self {
            Self::SignIn => return Redirect::to("/ui/sign-in").into_response(),
            Self::Refused { status, detail } => (status, detail),
            Self::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "console request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "something went wrong on the server; the control API's log says what"
                        .to_owned(),
                )
            }
        };
        let page = ErrorPage {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            detail,
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => status.into_response(),
        }
    }
}

/// An HTML answer.
pub struct Html(pub String);

impl IntoResponse for Html {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], self.0).into_response()
    }
}

/// Renders a page.
fn html(page: &impl Template) -> Result<Response, Failure> {
    Ok(Html(page.render()?).into_response())
}

/// Refuses a state-changing request that does not come from a console page of this session.
fn check_form(headers: &HeaderMap, session: &Session, csrf: &str) -> Result<(), Failure> {
    if !session::same_origin(headers) || !session.csrf_matches(csrf) {
        return Err(Failure::Refused {
            status: StatusCode::FORBIDDEN,
            detail: "this form did not come from a console page of your session (cross-site \
                     request refused); reload the page and try again"
                .to_owned(),
        });
    }
    Ok(())
}

/// Times as the console shows them: an exact UTC time, and how long ago (or ahead) it is.
pub(crate) fn exact(at: &OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    at.to_offset(time::UtcOffset::UTC)
        .format(&f)
        .unwrap_or_default()
}

pub(crate) fn relative(at: &OffsetDateTime, now: OffsetDateTime) -> String {
    let seconds = (now - *at).whole_seconds();
    let (ahead, s) = (seconds < 0, seconds.unsigned_abs());
    let amount = match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    };
    if ahead {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_an_operator_says_them() {
        let now = time::macros::datetime!(2026-12-02 10:00:00 UTC);
        let cases = [
            (time::macros::datetime!(2026-12-02 09:59:30 UTC), "30 s ago"),
            (
                time::macros::datetime!(2026-12-02 09:57:00 UTC),
                "3 min ago",
            ),
            (time::macros::datetime!(2026-12-02 07:00:00 UTC), "3 h ago"),
            (
                time::macros::datetime!(2026-11-29 10:00:00 UTC),
                "3 days ago",
            ),
            (
                time::macros::datetime!(2026-12-08 10:00:00 UTC),
                "in 6 days",
            ),
        ];
        for (at, shown) in cases {
            assert_eq!(relative(&at, now), shown);
        }
        assert_eq!(exact(&now), "2026-12-02 10:00:00 UTC");
    }
}
