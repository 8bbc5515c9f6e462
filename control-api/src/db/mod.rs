//! Every query the control API makes, by the tables it reads and writes. The SQL is checked against
//! the migrations at compile time (`sqlx::query!` and its kin; the offline data is in `.sqlx/`, kept by
//! `scripts/query-data.sh`); a filter made of optional parts is a `QueryBuilder` with every value bound.
//! The HTTP modules call these functions and hold no SQL.

pub mod audit;
pub mod certificates;
pub mod devices;
pub mod health;
pub mod jobs;
pub mod releases;
pub mod sessions;
pub mod tokens;
pub mod users;

use sqlx::PgPool;

/// The server's version, which the liveness check reports (and which proves the database answers).
pub async fn server_version(db: &PgPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT current_setting('server_version') AS "version!""#)
        .fetch_one(db)
        .await
}

/// Applies the migrations the database lacks; answers how many it applied and how many it has now.
pub async fn migrate(db: &PgPool) -> Result<(i64, i64), sqlx::migrate::MigrateError> {
    // sqlx's own record of the migrations does not exist before the first one, nor in the schema the
    // queries are checked against: this one query is checked when it runs.
    let applied = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(db)
            .await
            .unwrap_or(0)
    };
    let before = applied().await;
    sqlx::migrate!("../migrations").run(db).await?;
    let after = applied().await;
    Ok((after - before, after))
}
