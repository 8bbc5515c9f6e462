//! The tamper-evident audit against a real PostgreSQL: decisions through the real Envoy and ext-authz,
//! sequenced and chained by the real control API, its checkpoints signed into the database and into
//! files; then the log tampered with as someone with the database owner's rights would, and
//! `edgemesh-control-api audit verify` run on it.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::enforcement::WEDNESDAY_MORNING;
use crate::helpers::{ControlApi, bin, database_url};
use crate::proxy::{Options, Stack};

/// What `audit verify` said: success, and its output.
struct Verdict {
    ok: bool,
    out: String,
}

/// Runs `audit verify` with the key and checkpoint files of the control API whose state directory is
/// `state`, against its database, with the checkpoint files or without.
fn verify(state: &Path, superuser_url: &str, with_files: bool, from: Option<i64>) -> Verdict {
    let mut command = std::process::Command::new(bin("edgemesh-control-api"));
    command
        .args(["audit", "verify", "--public-key"])
        .arg(state.join("audit-signing.pub"))
        .env("EDGEMESH_DATABASE_URL", superuser_url)
        .env("EDGEMESH_LOG", "warn");
    if with_files {
        command
            .arg("--checkpoints")
            .arg(state.join("audit-checkpoints"));
    }
    if let Some(from) = from {
        command.args(["--from", &from.to_string()]);
    }
    let output = command.output().expect("audit verify");
    Verdict {
        ok: output.status.success(),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Waits until every stored record is sequenced and a signed checkpoint covers the last one;
/// answers the chain's length.
async fn sequenced(db: &PgPool) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (records, chained, checkpointed): (i64, i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM audit_log), (SELECT count(*) FROM audit_chain),
                    (SELECT max(seq) FROM audit_checkpoints)",
        )
        .fetch_one(db)
        .await
        .expect("counts");
        if records > 0 && records == chained && checkpointed == Some(chained) {
            return chained;
        }
        assert!(
            Instant::now() < deadline,
            "not sequenced within 20 s: {records} records, {chained} chained, checkpoint {checkpointed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The id of the record at `seq`.
async fn id_at(db: &PgPool, seq: i64) -> String {
    sqlx::query_scalar("SELECT id::text FROM audit_chain WHERE seq = $1")
        .bind(seq)
        .fetch_one(db)
        .await
        .expect("a chained record")
}

/// Runs `sql` as the owner with triggers off (`session_replication_role = replica`: what an owner or
/// superuser can do, and what `audit verify` exists for).
async fn tamper(db: &PgPool, sql: &str) {
    let mut conn = db.acquire().await.expect("connection");
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .expect("set role");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    sqlx::query("SET session_replication_role = DEFAULT")
        .execute(&mut *conn)
        .await
        .expect("reset role");
}

/// A stack with some traffic through Envoy (allowed and denied), all of it sequenced.
async fn audited_stack(db: &PgConnectOptions, least_privilege: bool) -> (Stack, PgPool, i64) {
    let options = Options {
        clock: Some(WEDNESDAY_MORNING),
        least_privilege,
        ..Options::default()
    };
    let stack = Stack::start(&database_url(db), options).await;
    let admin = stack.device("ada", "admin", "pi-ada").await;
    let analyst = stack.device("ann", "analyst", "pi-ann").await;
    stack.report(&admin, json!({})).await;
    stack.report(&analyst, json!({})).await;
    for i in 0..20 {
        let answer = stack.get(&admin, &format!("/api/items/{i}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        let answer = stack.get(&analyst, &format!("/database/orders/{i}")).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{answer:?}");
    }
    let pool = PgPool::connect(&database_url(db)).await.expect("connect");
    let length = sequenced(&pool).await;
    assert!(
        length >= 40,
        "the decisions and the control API's events: {length}"
    );
    (stack, pool, length)
}

#[sqlx::test(migrations = false)]
async fn an_untouched_log_verifies_and_each_kind_of_tampering_is_named(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (stack, pool, length) = audited_stack(&db, false).await;
    let url = database_url(&db);
    let clean = verify(stack.state_dir.path(), &url, true, None);
    assert!(clean.ok, "{}", clean.out);
    assert!(
        clean
            .out
            .contains(&format!("audit verified: {length} records up to {length}")),
        "{}",
        clean.out
    );
    // From a checkpoint: only what follows it.
    let first_checkpoint: i64 =
        sqlx::query_scalar("SELECT min(seq) FROM audit_checkpoints WHERE seq < $1")
            .bind(length)
            .fetch_optional(&pool)
            .await
            .expect("checkpoints")
            .flatten()
            .unwrap_or(length);
    let partial = verify(stack.state_dir.path(), &url, true, Some(first_checkpoint));
    assert!(partial.ok, "{}", partial.out);
    assert!(
        partial.out.contains(&format!(
            "audit verified: {} records",
            length - first_checkpoint
        )),
        "{}",
        partial.out
    );

    let middle = length / 2;
    let id = id_at(&pool, middle).await;

    // A reason altered, then put back as it was: the hash is of the content, so the restored record
    // verifies again.
    tamper(
        &pool,
        &format!("CREATE TABLE saved AS SELECT id, reasons FROM audit_log WHERE id = '{id}'"),
    )
    .await;
    tamper(
        &pool,
        &format!("UPDATE audit_log SET reasons = array['nothing to see'] WHERE id = '{id}'"),
    )
    .await;
    let found = verify(stack.state_dir.path(), &url, true, None);
    assert!(!found.ok, "{}", found.out);
    assert!(
        found
            .out
            .contains(&format!("record {middle} (id {id}) was altered")),
        "{}",
        found.out
    );
    tamper(
        &pool,
        "UPDATE audit_log l SET reasons = s.reasons FROM saved s WHERE l.id = s.id",
    )
    .await;
    let restored = verify(stack.state_dir.path(), &url, true, None);
    assert!(restored.ok, "{}", restored.out);

    // A record deleted in the middle (its chain entry left), then one deleted with its chain entry.
    tamper(&pool, &format!("DELETE FROM audit_log WHERE id = '{id}'")).await;
    let found = verify(stack.state_dir.path(), &url, true, None);
    assert!(!found.ok);
    assert!(
        found
            .out
            .contains(&format!("record {middle} (id {id}) was removed")),
        "{}",
        found.out
    );
    tamper(&pool, &format!("DELETE FROM audit_chain WHERE id = '{id}'")).await;
    let found = verify(stack.state_dir.path(), &url, true, None);
    assert!(!found.ok);
    assert!(
        found.out.contains(&format!(
            "records {middle} to {middle} are missing from the chain"
        )),
        "{}",
        found.out
    );
}

#[sqlx::test(migrations = false)]
async fn reordering_forging_and_removing_the_newest_records_are_named(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (stack, pool, length) = audited_stack(&db, false).await;
    let url = database_url(&db);
    assert!(verify(stack.state_dir.path(), &url, true, None).ok);

    // Two records swapped in the chain's order.
    let (a, b) = (length / 3, length / 3 + 1);
    let id_b = id_at(&pool, b).await;
    let swap = |x: i64, y: i64| {
        format!(
            "UPDATE audit_chain SET seq = CASE seq WHEN {x} THEN -1 ELSE seq END WHERE seq = {x};
             UPDATE audit_chain SET seq = {x} WHERE seq = {y};
             UPDATE audit_chain SET seq = {y} WHERE seq = -1;"
        )
    };
    // seq > 0 is checked: the swap goes through a number the check allows.
    let swap = swap(a, b).replace("-1", "999999999");
    tamper(&pool, &swap).await;
    let found = verify(stack.state_dir.path(), &url, true, None);
    assert!(!found.ok, "{}", found.out);
    assert!(
        found
            .out
            .contains(&format!("record {a} (id {id_b}) is out of place")),
        "{}",
        found.out
    );
    tamper(&pool, &swap).await;
    assert!(
        verify(stack.state_dir.path(), &url, true, None).ok,
        "swapped back"
    );

    // A forged record slipped in behind the sequencer (an old transaction id, so it is never
    // sequenced).
    tamper(
        &pool,
        "INSERT INTO audit_log (id, occurred_at, event_type, action, device_id, decision, tx)
         VALUES ('00000000-0000-0000-0000-00000000f0f0', now() - interval '1 minute',
                 'authorization', 'check', 'pi-ada', 'allow', '3')",
    )
    .await;
    let found = verify(stack.state_dir.path(), &url, true, None);
    assert!(!found.ok, "{}", found.out);
    assert!(
        found
            .out
            .contains("record id 00000000-0000-0000-0000-00000000f0f0"),
        "{}",
        found.out
    );
    assert!(
        found.out.contains("inserted behind the sequencer"),
        "{}",
        found.out
    );
    tamper(
        &pool,
        "DELETE FROM audit_log WHERE id = '00000000-0000-0000-0000-00000000f0f0'",
    )
    .await;
    assert!(verify(stack.state_dir.path(), &url, true, None).ok);

    // A forged record put into the chain's middle, the later ones renumbered to keep it gap-free.
    let at = length / 2;
    tamper(
        &pool,
        &format!(
            "UPDATE audit_chain SET seq = seq + 1000000 WHERE seq >= {at};
             UPDATE audit_chain SET seq = seq - 1000000 + 1 WHERE seq >= 1000000;
             INSERT INTO audit_log (id, occurred_at, event_type, action, device_id, decision)
             VALUES ('00000000-0000-0000-0000-00000000beef', now() - interval '1 minute',
                     'authorization', 'check', 'pi-ann', 'allow');
             INSERT INTO audit_chain (seq, occurred_at, id, prev, hash)
             SELECT {at}, occurred_at, id, (SELECT hash FROM audit_chain WHERE seq = {at} - 1),
                    sha256('forged') FROM audit_log WHERE id = '00000000-0000-0000-0000-00000000beef';"
        ),
    )
    .await;
    let found = verify(stack.state_dir.path(), &url, true, None);
    assert!(!found.ok, "{}", found.out);
    assert!(
        found.out.contains(&format!(
            "record {at} (id 00000000-0000-0000-0000-00000000beef) was altered"
        )),
        "{}",
        found.out
    );
    tamper(
        &pool,
        &format!(
            "DELETE FROM audit_chain WHERE id = '00000000-0000-0000-0000-00000000beef';
             DELETE FROM audit_log WHERE id = '00000000-0000-0000-0000-00000000beef';
             UPDATE audit_chain SET seq = seq + 1000000 WHERE seq > {at};
             UPDATE audit_chain SET seq = seq - 1000000 - 1 WHERE seq >= 1000000;"
        ),
    )
    .await;
    assert!(
        verify(stack.state_dir.path(), &url, true, None).ok,
        "put back"
    );

    // The newest five records removed with their chain entries and the database's checkpoints, and
    // the sequencer moved back: only the checkpoint files know.
    let keep = length - 5;
    tamper(
        &pool,
        &format!(
            "DELETE FROM audit_log l USING audit_chain c
               WHERE c.occurred_at = l.occurred_at AND c.id = l.id AND c.seq > {keep};
             DELETE FROM audit_chain WHERE seq > {keep};
             DELETE FROM audit_checkpoints WHERE seq > {keep};
             UPDATE audit_sequencer s SET seq = c.seq, hash = c.hash, after_tx = l.tx,
                    after_at = c.occurred_at, after_id = c.id
               FROM audit_chain c JOIN audit_log l USING (occurred_at, id) WHERE c.seq = {keep};"
        ),
    )
    .await;
    let without_files = verify(stack.state_dir.path(), &url, false, None);
    assert!(
        without_files.ok,
        "without a copy outside the database it cannot be seen: {}",
        without_files.out
    );
    let found = verify(stack.state_dir.path(), &url, true, None);
    assert!(!found.ok, "{}", found.out);
    assert!(
        found.out.contains(&format!(
            "records {} to {length} were removed: the chain ends at {keep}",
            keep + 1
        )),
        "{}",
        found.out
    );
    // The sequencer noticed too: it signs neither the cut chain nor anything added to it, and no
    // control API leads it any more (the alert EdgeMeshAuditUnsequenced watches that).
    let deadline = Instant::now() + Duration::from_secs(10);
    while leads(&stack.api).await {
        assert!(
            Instant::now() < deadline,
            "the sequencer still leads a cut chain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!leads(&stack.api).await, "it took the cut chain up again");
    let signed: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM audit_checkpoints")
        .fetch_one(&pool)
        .await
        .expect("checkpoints");
    assert!(
        signed.is_none_or(|s| s <= keep),
        "signed {signed:?} after the cut at {keep}"
    );
}

#[sqlx::test(migrations = false)]
async fn the_services_cannot_change_a_sequenced_record_and_retention_is_signed(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (stack, pool, _) = audited_stack(&db, true).await;
    let url = database_url(&db);
    let (control_api_url, ext_authz_url) = stack.database_urls.clone();
    let id: String = id_at(&pool, 1).await;
    for role_url in [&control_api_url, &ext_authz_url] {
        let role = PgPool::connect(role_url)
            .await
            .expect("connect as a service");
        for sql in [
            format!("UPDATE audit_log SET reasons = '{{}}' WHERE id = '{id}'"),
            format!("DELETE FROM audit_log WHERE id = '{id}'"),
            format!("DELETE FROM audit_chain WHERE id = '{id}'"),
        ] {
            let refused = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&role)
                .await
                .expect_err(&sql);
            assert!(
                refused.to_string().contains("permission denied"),
                "{sql}: {refused}"
            );
        }
    }
    // The owner is refused by the trigger.
    for sql in [
        format!("UPDATE audit_log SET reasons = '{{}}' WHERE id = '{id}'"),
        format!("DELETE FROM audit_log WHERE id = '{id}'"),
        format!("UPDATE audit_chain SET hash = sha256('x') WHERE id = '{id}'"),
        "DELETE FROM audit_checkpoints".to_owned(),
    ] {
        let refused = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&pool)
            .await
            .expect_err(&sql);
        assert!(
            refused
                .to_string()
                .contains("is sequenced: it cannot be changed or deleted"),
            "{sql}: {refused}"
        );
    }

    // Records of an old month, sequenced, then dropped by retention: verification knows.
    sqlx::query("SELECT edgemesh_audit_partition('2026-01-01')")
        .execute(&pool)
        .await
        .expect("an old month");
    sqlx::query(
        "INSERT INTO audit_log (id, occurred_at, event_type, action, device_id, decision)
         SELECT gen_random_uuid(), '2026-01-15T10:00:00Z'::timestamptz + n * interval '1 s',
                'authorization', 'check', 'pi-old', 'allow'
         FROM generate_series(1, 25) AS n",
    )
    .execute(&pool)
    .await
    .expect("old records");
    let before = sequenced(&pool).await;
    let dropped: Vec<String> = sqlx::query_scalar("SELECT edgemesh_audit_retain('2026-02-01')")
        .fetch_all(&pool)
        .await
        .expect("retention");
    assert_eq!(dropped, ["audit_log_p202601"]);
    // The drop is named in the next signed checkpoint.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let signed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM audit_checkpoints WHERE body LIKE '%audit_log_p202601%')",
        )
        .fetch_one(&pool)
        .await
        .expect("checkpoints");
        if signed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the drop was not signed within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let verified = verify(stack.state_dir.path(), &url, true, None);
    assert!(verified.ok, "{}", verified.out);
    assert!(
        verified.out.contains(&format!(
            "audit verified: {} records up to {before}",
            before - 25
        )) && verified.out.contains("25 records dropped by retention"),
        "{}",
        verified.out
    );
}

/// The leader gauge of a control API: whether it sequences.
async fn leads(api: &ControlApi) -> bool {
    let metrics = reqwest::get(&api.metrics)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("edgemesh_control_api_audit_sequencer_leader "))
        .map(|v| v.trim() == "1")
        .expect("the leader gauge")
}

/// Two control APIs on one database and the same key files: one sequences; when it stops, the other
/// takes over where it left off, and the whole chain verifies, checkpoints of both included.
#[sqlx::test(migrations = false)]
async fn one_replica_sequences_and_another_takes_over(_pool: PgPoolOptions, db: PgConnectOptions) {
    let url = database_url(&db);
    let state = tempfile::tempdir().expect("state");
    let first = ControlApi::start(&url, state.path()).await;
    let second = ControlApi::start(&url, state.path()).await;
    let pool = PgPool::connect(&url).await.expect("connect");
    let mut users = 0;
    let mut add_users = async |api: &ControlApi, n: usize| {
        for _ in 0..n {
            users += 1;
            api.admin_post(
                "/users",
                json!({"id": format!("u{users}"), "email": format!("u{users}@example.com"), "role": "analyst"}),
            )
            .await;
        }
    };
    add_users(&first, 5).await;
    add_users(&second, 5).await;
    let before = sequenced(&pool).await;
    assert!(before >= 10, "{before}");
    let (a, b) = (leads(&first).await, leads(&second).await);
    assert!(a ^ b, "exactly one sequencer: {a} {b}");
    let (leader, other) = if a { (first, second) } else { (second, first) };
    assert!(leader.stop().await, "a graceful stop");
    // The other takes the lock (it tries every 2 s) and goes on from the chain's end.
    add_users(&other, 5).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !leads(&other).await {
        assert!(Instant::now() < deadline, "no replica took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = sequenced(&pool).await;
    assert!(after >= before + 5, "{before} then {after}");
    let verified = verify(state.path(), &url, true, None);
    assert!(verified.ok, "{}", verified.out);
    assert!(
        verified
            .out
            .contains(&format!("audit verified: {after} records up to {after}")),
        "{}",
        verified.out
    );
}
