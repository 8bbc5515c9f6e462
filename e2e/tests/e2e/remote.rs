//! PostgreSQL on another host: the cluster in a network namespace of the test's own, reached over TCP
//! across a veth pair through a relay that adds the round trip of a network between two machines
//! (scripts/remote-postgres.sh). Revocations still reach every ext-authz replica, and every decision
//! is still audited once, with every round trip to the database that far away.

use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::postgres::Remote;

/// The round trip the relay adds, in milliseconds.
const RTT_MS: u32 = 4;

/// Starts the remote cluster and checks that a query's round trip really crosses the delay.
async fn remote() -> Remote {
    let remote = Remote::start(RTT_MS);
    let mut connection = sqlx::PgConnection::connect(&remote.url)
        .await
        .expect("connect across the veth");
    let mut took = Vec::new();
    for _ in 0..21 {
        let since = Instant::now();
        sqlx::query("SELECT 1")
            .execute(&mut connection)
            .await
            .expect("SELECT 1");
        took.push(since.elapsed());
    }
    took.sort();
    eprintln!(
        "PostgreSQL across the veth and the relay: SELECT 1 p50 {:?}, max {:?}",
        took[10], took[20]
    );
    assert!(
        took[0] >= Duration::from_millis(RTT_MS.into()),
        "a round trip took {:?}, less than the relay's {RTT_MS} ms",
        took[0]
    );
    remote
}

#[tokio::test]
async fn revocations_reach_every_replica_with_postgres_across_a_network() {
    let remote = remote().await;
    crate::replicas::revocations_reach_every_replica(&remote.url).await;
}

#[tokio::test]
async fn every_decision_is_audited_once_with_postgres_across_a_network() {
    let remote = remote().await;
    crate::audit::audited_once_and_found(&remote.url).await;
}
