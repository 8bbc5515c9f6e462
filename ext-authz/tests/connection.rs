//! ext-authz's PostgreSQL connections over TCP, against the real server: the server keeps TCP keepalive
//! on them, so a connection whose ext-authz end vanished is closed by PostgreSQL within seconds.

use edgemesh_ext_authz::startup::connect_options;
use sqlx::{ConnectOptions, Connection};

#[tokio::test]
async fn the_server_probes_ext_authz_connections_with_tcp_keepalive() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (a TCP URL; make test sets it)");
    let mut conn = connect_options(&url)
        .expect("options")
        .connect()
        .await
        .expect("connect");
    let mut settings = Vec::new();
    for name in [
        "tcp_keepalives_idle",
        "tcp_keepalives_interval",
        "tcp_keepalives_count",
    ] {
        // Over a Unix socket these read 0: the values are the TCP socket's, as the server applied them.
        let value: String = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .expect("show");
        settings.push(value);
    }
    assert_eq!(settings, ["10", "5", "3"]);
    conn.close().await.expect("close");
}

#[test]
fn a_malformed_database_url_is_refused_with_its_reason() {
    let err =
        connect_options("postgres://edgemesh@db:port/edgemesh").expect_err("not a PostgreSQL URL");
    assert!(err.to_string().contains("invalid database URL"), "{err:#}");
}
