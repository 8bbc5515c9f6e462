//! `enrollment_tokens`: stored by their hash, used up one enrolment at a time.

use serde::Serialize;
use sqlx::PgExecutor;
use time::OffsetDateTime;
use uuid::Uuid;

/// An enrollment token as stored: its hash, never the token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenRecord {
    pub id: Uuid,
    pub owner: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub max_uses: i32,
    pub uses: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// A new token for `owner`; `false` when there is no such user.
pub async fn insert(
    db: impl PgExecutor<'_>,
    id: Uuid,
    token_sha256: &[u8],
    owner: &str,
    expires_at: OffsetDateTime,
    max_uses: i32,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        "INSERT INTO enrollment_tokens (id, token_hash, owner_id, expires_at, max_uses)
         SELECT $1, $2, id, $4, $5 FROM users WHERE id = $3",
        id,
        token_sha256,
        owner,
        expires_at,
        max_uses
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Every token, newest first.
pub async fn all(db: impl PgExecutor<'_>) -> Result<Vec<TokenRecord>, sqlx::Error> {
    sqlx::query_as!(
        TokenRecord,
        r#"SELECT id, owner_id AS owner, expires_at, max_uses, uses, created_at, revoked_at
           FROM enrollment_tokens ORDER BY created_at DESC"#
    )
    .fetch_all(db)
    .await
}

/// Revokes the token (a revoked one keeps its first revocation); `None` when there is none.
pub async fn revoke(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<TokenRecord>, sqlx::Error> {
    sqlx::query_as!(
        TokenRecord,
        r#"UPDATE enrollment_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
           RETURNING id, owner_id AS owner, expires_at, max_uses, uses, created_at, revoked_at"#,
        id
    )
    .fetch_optional(db)
    .await
}

/// The owner of the token with this hash, if it can enroll a device now (unrevoked, unexpired, a
/// use left). Takes no lock: [`consume`] decides.
pub async fn usable_owner(
    db: impl PgExecutor<'_>,
    token_sha256: &[u8],
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT owner_id FROM enrollment_tokens
         WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now() AND uses < max_uses",
        token_sha256
    )
    .fetch_optional(db)
    .await
}

/// Takes one use of the token, if it still has one: one conditional UPDATE, so that concurrent
/// enrolments with a one-use token serialise on its row lock and exactly one sees `uses < max_uses`.
/// Answers the token's id.
pub async fn consume(
    db: impl PgExecutor<'_>,
    token_sha256: &[u8],
    owner: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "UPDATE enrollment_tokens SET uses = uses + 1
         WHERE token_hash = $1 AND owner_id = $2 AND revoked_at IS NULL AND expires_at > now()
           AND uses < max_uses
         RETURNING id",
        token_sha256,
        owner
    )
    .fetch_optional(db)
    .await
}

/// Why a known token cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub revoked: bool,
    pub expired: bool,
}

/// The standing of the token with this hash; `None` when no token has it.
pub async fn standing(
    db: impl PgExecutor<'_>,
    token_sha256: &[u8],
) -> Result<Option<Standing>, sqlx::Error> {
    sqlx::query_as!(
        Standing,
        r#"SELECT revoked_at IS NOT NULL AS "revoked!", expires_at <= now() AS "expired!"
           FROM enrollment_tokens WHERE token_hash = $1"#,
        token_sha256
    )
    .fetch_optional(db)
    .await
}
