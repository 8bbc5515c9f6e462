//! `console_sessions`: the operator console's sign-ins, stored by the hash of their cookie.

use std::net::IpAddr;

use sqlx::PgExecutor;
use time::OffsetDateTime;

/// A new session; the expired ones go first (they go when new ones come).
pub async fn open(
    db: &mut sqlx::PgConnection,
    id_sha256: &[u8],
    admin_token_sha256: &[u8],
    csrf: &str,
    expires_at: OffsetDateTime,
    peer: Option<IpAddr>,
) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM console_sessions WHERE expires_at <= now()")
        .execute(&mut *db)
        .await?;
    sqlx::query!(
        "INSERT INTO console_sessions (id_sha256, admin_token_sha256, csrf_token, expires_at, peer)
         VALUES ($1, $2, $3, $4, $5::text::inet)",
        id_sha256,
        admin_token_sha256,
        csrf,
        expires_at,
        peer.map(|ip| ip.to_string())
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The per-session CSRF token of the unexpired session with this id, opened with this admin token.
pub async fn csrf_of(
    db: impl PgExecutor<'_>,
    id_sha256: &[u8],
    admin_token_sha256: &[u8],
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT csrf_token FROM console_sessions
         WHERE id_sha256 = $1 AND admin_token_sha256 = $2 AND expires_at > now()",
        id_sha256,
        admin_token_sha256
    )
    .fetch_optional(db)
    .await
}

pub async fn close(db: impl PgExecutor<'_>, id_sha256: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM console_sessions WHERE id_sha256 = $1",
        id_sha256
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Ends every session opened with another admin token than this one, and the expired ones; answers
/// how many.
pub async fn end_other_tokens(
    db: impl PgExecutor<'_>,
    admin_token_sha256: &[u8],
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "DELETE FROM console_sessions WHERE admin_token_sha256 <> $1 OR expires_at <= now()",
        admin_token_sha256
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
