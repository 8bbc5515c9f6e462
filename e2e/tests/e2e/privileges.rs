//! The services with least-privilege database roles, as `make up` runs them: everything works, and
//! neither role can rewrite the audit trail or the schema.

use reqwest::StatusCode;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::database_url;
use crate::proxy::{Options, Stack};

#[sqlx::test(migrations = false)]
async fn the_services_work_with_least_privilege_roles_that_cannot_rewrite_the_audit(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let url = database_url(&db);
    let options = Options {
        least_privilege: true,
        ..Options::default()
    };
    let stack = Stack::start(&url, options).await;
    // Enrolment, health, a decision, a renewal and a revocation, each with its audit record.
    let device = stack.device("root", "admin", "pc-root").await;
    stack.report(&device, json!({})).await;
    assert_eq!(stack.get(&device, "/api/x").await.status, StatusCode::OK);
    let renewed = crate::helpers::agent(
        device.dir.path(),
        &["renew", "--server", &stack.api.device_api],
        &[],
    )
    .await;
    assert!(renewed.success, "{}", renewed.stderr);
    stack
        .api
        .admin_post("/devices/pc-root/revoke", json!({}))
        .await;
    let pool = PgPoolOptions::new().connect(&url).await.expect("connect");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let kinds: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT event_type FROM audit_log ORDER BY 1")
                .fetch_all(&pool)
                .await
                .expect("audit");
        if kinds
            == [
                "authorization",
                "enrollment",
                "health",
                "renewal",
                "revocation",
                "token",
                "user",
            ]
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "audited: {kinds:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Neither role may change or remove an audit record, or the schema; ext-authz may not write
    // anything but decision records.
    let (api_url, authz_url) = stack.database_urls.clone();
    for (who, role_url, statements) in [
        (
            "control-api",
            api_url,
            vec![
                "UPDATE audit_log SET decision = 'allow'",
                "DELETE FROM audit_log",
                "TRUNCATE audit_log",
                "DROP TABLE audit_log",
                "ALTER TABLE devices ADD COLUMN x int",
                "DELETE FROM devices",
            ],
        ),
        (
            "ext-authz",
            authz_url,
            vec![
                "UPDATE audit_log SET decision = 'allow'",
                "DELETE FROM audit_log",
                "UPDATE devices SET status = 'active'",
                "INSERT INTO users (id, email, role) VALUES ('x', 'x@example.com', 'admin')",
                "UPDATE certificates SET revoked_at = NULL",
                "SELECT count(*) FROM enrollment_tokens",
            ],
        ),
    ] {
        let role = PgPoolOptions::new()
            .max_connections(1)
            .connect(&role_url)
            .await
            .expect("connect as the role");
        for statement in statements {
            let refused = sqlx::query(statement).execute(&role).await;
            let message = format!("{refused:?}");
            assert!(
                refused.is_err()
                    && (message.contains("permission denied") || message.contains("must be owner")),
                "{who} could: {statement}: {message}"
            );
        }
    }
}
