//! `users`: the people devices belong to, and their roles.

use serde::Serialize;
use sqlx::PgExecutor;
use time::OffsetDateTime;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub role: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    id: &str,
    email: &str,
    role: &str,
) -> Result<User, sqlx::Error> {
    sqlx::query_as!(
        User,
        "INSERT INTO users (id, email, role) VALUES ($1, $2, $3) RETURNING id, email, role, created_at",
        id,
        email,
        role
    )
    .fetch_one(db)
    .await
}

/// Every user, by id.
pub async fn all(db: impl PgExecutor<'_>) -> Result<Vec<User>, sqlx::Error> {
    sqlx::query_as!(
        User,
        "SELECT id, email, role, created_at FROM users ORDER BY id"
    )
    .fetch_all(db)
    .await
}

pub async fn exists(db: impl PgExecutor<'_>, id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM users WHERE id = $1) AS "exists!""#,
        id
    )
    .fetch_one(db)
    .await
}
