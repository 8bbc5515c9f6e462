//! The audit writer's insert against a real PostgreSQL (the schema's migrations): a batch is stored
//! once however often it is written, and reasons keep their text.

use edgemesh_core::policy::input::Context;
use edgemesh_ext_authz::audit::{ContextRef, Record, Shadow, insert};
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
        shadow: None,
        context: None,
        decided_at: None,
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
async fn every_field_is_stored_as_given(db: PgPool) {
    let awkward = "a \"quoted\", {braced} back\\slash\nnew line \u{1f} and NUL\0 ✓";
    let mut odd = record(2, &[awkward, "", "antivirus is not enabled"]);
    odd.path = Some(format!("/api/{awkward}"));
    odd.method = Some("PROPFIND".to_owned());
    let mut unknown = record(3, &["no client certificate was presented"]);
    (
        unknown.device,
        unknown.user,
        unknown.role,
        unknown.serial,
        unknown.peer,
        unknown.service,
        unknown.method,
        unknown.path,
    ) = (None, None, None, None, None, None, None, None);
    let mut shadowed = record(0, &[]);
    shadowed.shadow = Some(Shadow {
        allow: false,
        reasons: vec!["a shadow reason".to_owned(), awkward.to_owned()],
        policy_version: "candidate".to_owned(),
    });
    // A context carried by the first record that refers to it, referred to by another without it; a
    // record decided at another second than its own.
    let body = r#"{"device":{"id":"pi-1"}}"#;
    let context = ContextRef {
        id: Context::id_of(body),
        body: Some(body.to_owned()),
    };
    shadowed.context = Some(context.clone());
    let mut referring = record(1, &["role analyst may not use service database"]);
    referring.context = Some(ContextRef {
        body: None,
        ..context.clone()
    });
    referring.decided_at = Some(1_794_997_800);
    let records = vec![shadowed, referring, odd, unknown];
    assert_eq!(insert(&db, &records).await.expect("insert"), 4);
    type Row = (
        uuid::Uuid,
        OffsetDateTime,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
        Vec<String>,
        String,
        Option<String>,
        i64,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, occurred_at, device_id, user_id, role, service, path, decision, reasons,
                policy_version, certificate_serial, latency_us, peer_address
         FROM audit_log WHERE event_type = 'authorization' AND action = 'check' ORDER BY occurred_at",
    )
    .fetch_all(&db)
    .await
    .expect("stored records");
    assert_eq!(rows.len(), 4);
    // PostgreSQL text cannot hold NUL: it is stored as U+FFFD.
    let stored_awkward = awkward.replace('\0', "\u{fffd}");
    for r in &records {
        let row = rows
            .iter()
            .find(|row| row.0 == r.id)
            .expect("every record stored");
        assert_eq!(Record::at(row.1), r.at_us);
        assert_eq!(
            (&row.2, &row.3, &row.4, &row.5),
            (&r.device, &r.user, &r.role, &r.service)
        );
        assert_eq!(row.6, r.path.as_ref().map(|p| p.replace('\0', "\u{fffd}")));
        assert_eq!(row.7, if r.allow { "allow" } else { "deny" });
        assert_eq!(
            row.8,
            r.reasons
                .iter()
                .map(|x| x.replace('\0', "\u{fffd}"))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            (&row.9, &row.10, row.11, &row.12),
            (&r.policy_version, &r.serial, r.latency_us, &r.peer)
        );
    }
    // The rest of each row: its method, its kind, when PostgreSQL stored it, and its shadow decision.
    type Rest = (
        uuid::Uuid,
        Option<String>,
        String,
        String,
        bool,
        Option<String>,
        Option<Vec<String>>,
        Option<String>,
    );
    let rest: Vec<Rest> = sqlx::query_as(
        "SELECT id, method, event_type, action, written_at IS NOT NULL, shadow_decision,
                shadow_reasons, shadow_policy_version FROM audit_log",
    )
    .fetch_all(&db)
    .await
    .expect("stored records");
    assert_eq!(rest.len(), 4);
    for r in &records {
        let row = rest.iter().find(|row| row.0 == r.id).expect("stored");
        assert_eq!(row.1, r.method);
        assert_eq!(
            (row.2.as_str(), row.3.as_str(), row.4),
            ("authorization", "check", true)
        );
        let shadow = r.shadow.as_ref().map(|s| {
            (
                if s.allow { "allow" } else { "deny" }.to_owned(),
                s.reasons
                    .iter()
                    .map(|x| x.replace('\0', "\u{fffd}"))
                    .collect::<Vec<_>>(),
                s.policy_version.clone(),
            )
        });
        assert_eq!(
            (row.5.clone(), row.6.clone(), row.7.clone()),
            match shadow {
                Some((d, reasons, v)) => (Some(d), Some(reasons), Some(v)),
                None => (None, None, None),
            }
        );
    }
    let odd = rows
        .iter()
        .find(|row| row.0 == records[2].id)
        .expect("stored");
    assert_eq!(odd.8[0], stored_awkward);
    // The references and the policy clock's second, and the context stored once, as given.
    for r in &records {
        let (reference, decided_at): (Option<Vec<u8>>, Option<i64>) =
            sqlx::query_as("SELECT context, decided_at FROM audit_log WHERE id = $1")
                .bind(r.id)
                .fetch_one(&db)
                .await
                .expect("stored");
        assert_eq!(reference, r.context.as_ref().map(|c| c.id.to_vec()));
        assert_eq!(decided_at, r.decided_at);
    }
    let contexts: Vec<(Vec<u8>, String)> = sqlx::query_as("SELECT id, body FROM decision_contexts")
        .fetch_all(&db)
        .await
        .expect("contexts");
    assert_eq!(contexts, [(context.id.to_vec(), body.to_owned())]);
    // Stored again with its batch (a replay from the journal): still once, no error.
    assert_eq!(insert(&db, &records).await.expect("insert again"), 0);
}
