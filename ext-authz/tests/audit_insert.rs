//! The audit writer's insert against a real PostgreSQL (the schema's migrations): a batch is stored
//! once however often it is written, and reasons keep their text.

use edgemesh_ext_authz::audit::{Record, insert};
use sqlx::PgPool;
use time::OffsetDateTime;

fn record(n: u32, reasons: &[&str]) -> Record {
    Record {
        id: uuid::Uuid::new_v4(),
        at_us: Record::at(OffsetDateTime::now_utc()) + i64::from(n),
        device: Some(format!("pi-{n}")),
        user: Some("alice".to_owned()),
        role: Some("analyst".to_owned()),
        service: Some("database".to_owned()),
        method: Some("GET".to_owned()),
        path: Some("/database/orders".to_owned()),
        allow: reasons.is_empty(),
        reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
        policy_version: "0123456789abcdef".to_owned(),
        serial: Some("4132f0bb".to_owned()),
        latency_us: 40,
        peer: Some("127.0.0.1:50000".to_owned()),
    }
}

async fn stored(db: &PgPool) -> Vec<(uuid::Uuid, Vec<String>)> {
    sqlx::query_as(
        "SELECT id, reasons FROM audit_log WHERE event_type = 'authorization' ORDER BY occurred_at",
    )
    .fetch_all(db)
    .await
    .expect("stored records")
}

#[sqlx::test(migrations = "../migrations")]
async fn a_batch_written_again_is_stored_once(db: PgPool) {
    let first: Vec<Record> = (0..3).map(|n| record(n, &[])).collect();
    assert_eq!(insert(&db, &first).await.expect("insert"), 3);
    // The same batch again (a write that timed out after its commit, replayed): nothing new, no error.
    assert_eq!(insert(&db, &first).await.expect("insert"), 0);
    // A batch with stored and new records: only the new ones count.
    let mut mixed = first[1..].to_vec();
    mixed.push(record(3, &[]));
    assert_eq!(insert(&db, &mixed).await.expect("insert"), 1);
    let ids: Vec<uuid::Uuid> = stored(&db).await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        ids,
        first
            .iter()
            .chain(&mixed[2..])
            .map(|r| r.id)
            .collect::<Vec<_>>()
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn reasons_are_stored_as_given(db: PgPool) {
    let records = vec![
        record(0, &[]),
        record(1, &["role analyst may not use service database"]),
        record(
            2,
            &["antivirus is not enabled", "", "disk, \"encryption\" {off}"],
        ),
        // The one character the writer uses to separate reasons cannot split a reason.
        record(3, &["a\u{1f}b"]),
    ];
    assert_eq!(insert(&db, &records).await.expect("insert"), 4);
    let reasons: Vec<Vec<String>> = stored(&db).await.into_iter().map(|(_, r)| r).collect();
    assert_eq!(
        reasons,
        vec![
            vec![],
            vec!["role analyst may not use service database".to_owned()],
            vec![
                "antivirus is not enabled".to_owned(),
                String::new(),
                "disk, \"encryption\" {off}".to_owned()
            ],
            vec!["a\u{fffd}b".to_owned()],
        ]
    );
}
