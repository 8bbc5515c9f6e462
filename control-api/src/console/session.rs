//! Console sessions: the admin token, entered once, is exchanged for a random session id the browser
//! keeps in an HttpOnly, Secure, SameSite=Strict cookie. PostgreSQL holds the id's SHA-256, the admin
//! token's SHA-256 it was opened with (a control API started with another token ends it), the
//! per-session token forms post back, and the expiry. Signing out deletes the row.

use std::net::SocketAddr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use super::Failure;
use crate::db::sessions;
use crate::http::AppState;

/// The cookie's name. `__Host-` makes the browser refuse it unless it is Secure, has no Domain and has
/// Path=/, so no other host or path can set or shadow it.
pub const COOKIE: &str = "__Host-edgemesh-session";

/// A signed-in operator's session.
#[derive(Debug, Clone)]
pub struct Session {
    id_sha256: [u8; 32],
    /// What every state-changing form of this session carries back.
    pub csrf: String,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The session id in the request's cookies, if any.
fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

impl Session {
    /// Opens a session bound to the current admin token, in `tx` (with its audit event); answers it
    /// and the `Set-Cookie` value.
    pub async fn open(
        state: &AppState,
        tx: &mut PgConnection,
        peer: Option<SocketAddr>,
    ) -> Result<(Self, String), sqlx::Error> {
        let id = random_token();
        let id_sha256: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        let csrf = random_token();
        let lifetime = state.console_session_lifetime;
        // Expired sessions go when new ones come.
        sessions::open(
            tx,
            &id_sha256,
            &state.admin_token_sha256,
            &csrf,
            OffsetDateTime::now_utc() + lifetime,
            peer.map(|p| p.ip()),
        )
        .await?;
        let cookie = format!(
            "{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
            lifetime.whole_seconds()
        );
        Ok((Self { id_sha256, csrf }, cookie))
    }

    /// The request's session: its cookie names an unexpired session opened with the current admin
    /// token.
    pub async fn find(state: &AppState, headers: &HeaderMap) -> Result<Option<Self>, sqlx::Error> {
        let Some(id) = cookie_value(headers) else {
            return Ok(None);
        };
        let id_sha256: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        let csrf = sessions::csrf_of(&state.db, &id_sha256, &state.admin_token_sha256).await?;
        Ok(csrf.map(|csrf| Self { id_sha256, csrf }))
    }

    /// Ends the session, in `tx` (with its audit event): its cookie no longer works, whoever holds it.
    pub async fn close(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sessions::close(tx, &self.id_sha256).await
    }

    /// Whether a form's per-session token is this session's.
    pub fn csrf_matches(&self, presented: &str) -> bool {
        presented.len() == self.csrf.len()
            && bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// The `Set-Cookie` value that makes the browser forget the session.
pub fn cleared_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Ends every session opened with another admin token than the current one (at start: the token was
/// rotated). Answers how many.
pub async fn end_other_tokens(state: &AppState) -> Result<u64, sqlx::Error> {
    sessions::end_other_tokens(&state.db, &state.admin_token_sha256).await
}

/// Whether a state-changing request comes from the console's own pages. A browser says where a
/// request comes from: `Sec-Fetch-Site` (which a page cannot set) must be `same-origin`; `Origin`, when
/// it names an origin, must be this one. Under `Referrer-Policy: no-referrer` a browser sends
/// `Origin: null` even for a same-origin form, so `null` is taken only beside `Sec-Fetch-Site:
/// same-origin`. A request that says nothing of where it comes from is refused.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let fetch_site = header("sec-fetch-site");
    if fetch_site.is_some_and(|site| site != "same-origin") {
        return false;
    }
    let host = header(header::HOST.as_str());
    match header(header::ORIGIN.as_str()) {
        Some("null") | None => fetch_site.is_some(),
        Some(origin) => host.is_some_and(|host| origin == format!("https://{host}")),
    }
}

/// The session a page needs: without one, the page answers with the sign-in page's address.
impl FromRequestParts<AppState> for Session {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Failure> {
        match Session::find(state, &parts.headers).await {
            Ok(Some(session)) => Ok(session),
            Ok(None) => Err(Failure::SignIn),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; __Host-edgemesh-session=abc; b=2")]);
        assert_eq!(cookie_value(&h), Some("abc"));
        let h = headers(&[("cookie", "a=1"), ("cookie", "__Host-edgemesh-session=xyz")]);
        assert_eq!(cookie_value(&h), Some("xyz"));
        assert_eq!(
            cookie_value(&headers(&[("cookie", "edgemesh-session=abc")])),
            None
        );
    }

    #[test]
    fn only_same_origin_requests_change_state() {
        let ok = [
            headers(&[
                ("host", "127.0.0.1:8444"),
                ("origin", "https://127.0.0.1:8444"),
                ("sec-fetch-site", "same-origin"),
            ]),
            headers(&[
                ("host", "127.0.0.1:8444"),
                ("origin", "https://127.0.0.1:8444"),
            ]),
            headers(&[
                ("host", "127.0.0.1:8444"),
                ("origin", "null"),
                ("sec-fetch-site", "same-origin"),
            ]),
        ];
        for h in ok {
            assert!(same_origin(&h), "{h:?}");
        }
        let refused = [
            headers(&[
                ("host", "127.0.0.1:8444"),
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ]),
            headers(&[
                ("host", "127.0.0.1:8444"),
                ("origin", "https://127.0.0.1:8444"),
                ("sec-fetch-site", "same-site"),
            ]),
            headers(&[
                ("host", "127.0.0.1:8444"),
                ("origin", "http://127.0.0.1:8444"),
            ]),
            headers(&[("host", "127.0.0.1:8444"), ("origin", "null")]),
            headers(&[
                ("host", "127.0.0.1:8444"),
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "same-origin"),
            ]),
            headers(&[("host", "127.0.0.1:8444")]),
        ];
        for h in refused {
            assert!(!same_origin(&h), "{h:?}");
        }
    }
}
