//! What keeps the control API's side of health bounded at fleet scale: the history partitioned by
//! day and dropped after its retention, the latest facts on the device row, notifications only for
//! what a decision reads, and maintenance done once however many replicas run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use edgemesh_control_api::maintenance::{Outcome, health_partitions, run_if_due};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use time::macros::datetime;

use crate::health::{device, healthy_report};
use crate::helpers::{next_sequence, spawn_app};

async fn partitions(db: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'health_reports'::regclass ORDER BY 1",
    )
    .fetch_all(db)
    .await
    .expect("partitions")
}

#[sqlx::test(migrations = "../migrations")]
async fn the_health_history_is_kept_by_day_and_dropped_after_its_retention(db: PgPool) {
    sqlx::query(
        "INSERT INTO users (id, email, role) VALUES ('ann', 'ann@example.com', 'developer')",
    )
    .execute(&db)
    .await
    .expect("user");
    sqlx::query(
        "INSERT INTO devices (id, owner_id, device_type, os, os_version)
         VALUES ('pi-days', 'ann', 'raspberrypi', 'debian', '12')",
    )
    .execute(&db)
    .await
    .expect("device");
    // A report of a day without a partition lands in the default partition ...
    for received in ["2031-03-01T23:59:00Z", "2031-03-02T00:00:00Z"] {
        sqlx::query(
            "INSERT INTO health_reports (device_id, certificate_serial, received_at, collected_at,
                 agent_version, status)
             VALUES ('pi-days', '01', $1::timestamptz, $1::timestamptz, '0.1.0', 'healthy')",
        )
        .bind(received)
        .execute(&db)
        .await
        .expect("report");
    }
    let done = health_partitions(&db, Some(14), datetime!(2031-03-01 08:00 UTC))
        .await
        .expect("maintain");
    assert_eq!(
        done.created,
        [
            "health_reports_p20310301",
            "health_reports_p20310302",
            "health_reports_p20310303"
        ]
    );
    // ... and moves into its day's partition when that is made.
    let homes: Vec<String> = sqlx::query_scalar(
        "SELECT tableoid::regclass::text FROM health_reports ORDER BY received_at",
    )
    .fetch_all(&db)
    .await
    .expect("rows");
    assert_eq!(
        homes,
        ["health_reports_p20310301", "health_reports_p20310302"]
    );
    // The days the migration made (today and the next two) are far older than 14 days by then.
    assert_eq!(done.dropped.len(), 3, "{:?}", done.dropped);

    // Fourteen days after the 2nd began, the 1st is wholly older than the retention and goes, with its
    // report; the 2nd, which ends at midnight, stays.
    let later = health_partitions(&db, Some(14), datetime!(2031-03-16 00:30 UTC))
        .await
        .expect("maintain");
    assert_eq!(later.dropped, ["health_reports_p20310301"]);
    let left: Vec<String> = sqlx::query_scalar("SELECT received_at::text FROM health_reports")
        .fetch_all(&db)
        .await
        .expect("rows");
    assert_eq!(left, ["2031-03-02 00:00:00+00"]);
    let names = partitions(&db).await;
    assert_eq!(
        names.first().map(String::as_str),
        Some("health_reports_default")
    );
    assert!(!names.contains(&"health_reports_p20310301".to_owned()));
    assert!(
        names.contains(&"health_reports_p20310318".to_owned()),
        "made ahead: {names:?}"
    );

    let again = health_partitions(&db, Some(14), datetime!(2031-03-16 00:30 UTC))
        .await
        .expect("maintain");
    assert_eq!(again, Default::default(), "maintenance is idempotent");
}

/// The notifications on `edgemesh_changes` other than listeners' heartbeats, within `wait`.
async fn notifications(listener: &mut PgListener, wait: Duration) -> Vec<String> {
    let mut heard = Vec::new();
    while let Ok(Ok(Some(n))) = tokio::time::timeout(wait, listener.try_recv()).await {
        if !n.payload().starts_with("heartbeat:") {
            heard.push(n.payload().to_owned());
        }
    }
    heard
}

#[sqlx::test(migrations = "../migrations")]
async fn only_a_report_that_changes_what_a_decision_reads_notifies(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    let client = device(&app, "nora", "pi-quiet").await;
    let mut listener = PgListener::connect_with(&db).await.expect("listener");
    listener.listen("edgemesh_changes").await.expect("listen");
    let wait = Duration::from_millis(500);
    let send = |body: Value| {
        let client = client.clone();
        let url = format!("{}/api/v1/health", app.device_api);
        async move {
            let response = client.post(url).json(&body).send().await.expect("report");
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.expect("verdict")
        }
    };

    // The first report of the enrolment: its facts are new.
    send(healthy_report()).await;
    assert_eq!(
        notifications(&mut listener, wait).await,
        ["device:pi-quiet"]
    );
    // The same facts measured again: freshness only, nobody is told.
    for _ in 0..3 {
        send(healthy_report()).await;
    }
    assert_eq!(
        notifications(&mut listener, wait).await,
        Vec::<String>::new()
    );
    // A fact a policy may read changes, the verdict not: told.
    let mut busier = healthy_report();
    busier["cpu_usage"] = json!(50.0);
    send(busier.clone()).await;
    assert_eq!(
        notifications(&mut listener, wait).await,
        ["device:pi-quiet"]
    );
    // The verdict changes: told.
    let mut unpatched = busier.clone();
    unpatched["os_patches_current"] = json!(false);
    unpatched["sequence"] = json!(next_sequence());
    let verdict = send(unpatched.clone()).await;
    assert_eq!(verdict["status"], "unhealthy");
    assert_eq!(
        notifications(&mut listener, wait).await,
        ["device:pi-quiet"]
    );
    unpatched["sequence"] = json!(next_sequence());
    send(unpatched).await;
    assert_eq!(
        notifications(&mut listener, wait).await,
        Vec::<String>::new()
    );

    // Every report is in the history; the latest facts are on the device row.
    let (reports,): (i64,) = sqlx::query_as("SELECT count(*) FROM health_reports")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(reports, 7);
    let (status, cpu, patched): (String, f64, bool) = sqlx::query_as(
        "SELECT health_status, cpu_usage, os_patches_current FROM devices WHERE id = 'pi-quiet'",
    )
    .fetch_one(&db)
    .await
    .expect("device");
    assert_eq!((status.as_str(), cpu, patched), ("unhealthy", 50.0, false));
    // The audit keeps each change of verdict, not each report.
    let verdicts: Vec<(String, Value)> = sqlx::query_as(
        "SELECT action, details FROM audit_log WHERE event_type = 'health' ORDER BY occurred_at",
    )
    .fetch_all(&db)
    .await
    .expect("audit");
    assert_eq!(
        verdicts,
        [
            (
                "verdict".to_owned(),
                json!({"status": "healthy", "previous": "unknown"})
            ),
            (
                "verdict".to_owned(),
                json!({"status": "unhealthy", "previous": "healthy"})
            ),
        ]
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_maintenance_job_runs_once_however_many_replicas_look(db: PgPool) {
    let runs = Arc::new(AtomicUsize::new(0));
    let look = |replica: &'static str| {
        let (db, runs) = (db.clone(), Arc::clone(&runs));
        async move {
            let work = async {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(json!({ "by": replica }))
            };
            run_if_due(&db, "test_job", Duration::from_secs(3600), replica, work)
                .await
                .expect("job")
        }
    };
    // Five replicas look at once: one takes the lock and runs it, the others find it taken.
    let outcomes =
        futures_util::future::join_all(["a", "b", "c", "d", "e"].into_iter().map(look)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "{outcomes:?}");
    let ran: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Ran(_)))
        .collect();
    assert_eq!(ran.len(), 1);
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Ran(_) | Outcome::Busy))
    );
    // Looking again within the interval: not due, with what the run found.
    let Outcome::Ran(found) = ran[0] else {
        unreachable!()
    };
    match look("f").await {
        Outcome::NotDue { result, .. } => assert_eq!(&result, found),
        other => panic!("expected not due, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let (ran_by,): (String,) =
        sqlx::query_as("SELECT ran_by FROM control_jobs WHERE job = 'test_job'")
            .fetch_one(&db)
            .await
            .expect("row");
    assert_eq!(json!({ "by": ran_by }), *found);
}

/// The histogram's `_sum` and `_count` in `/metrics`.
async fn batches(app: &crate::helpers::TestApp) -> (f64, f64) {
    let text = app
        .http
        .get(&app.metrics)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let sample = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    (
        sample("edgemesh_control_api_health_batch_reports_sum"),
        sample("edgemesh_control_api_health_batch_reports_count"),
    )
}

#[sqlx::test(migrations = "../migrations")]
async fn reports_arriving_together_are_stored_together_each_with_its_own_answer(db: PgPool) {
    let app = spawn_app(db.clone()).await;
    const DEVICES: usize = 30;
    let mut clients = Vec::new();
    for n in 0..DEVICES {
        clients.push(device(&app, &format!("owner-{n}"), &format!("pi-batch-{n}")).await);
    }
    let (sum_before, _) = batches(&app).await;
    // Every device at once; the first also sends its report twice (a retry racing the original),
    // and the last an unhealthy one.
    let mut bodies: Vec<(usize, Value)> = (0..DEVICES).map(|n| (n, healthy_report())).collect();
    bodies.push((0, bodies[0].1.clone()));
    bodies[DEVICES - 1].1["os_patches_current"] = json!(false);
    let answers = futures_util::future::join_all(bodies.iter().map(|(n, body)| {
        let client = clients[*n].clone();
        let url = format!("{}/api/v1/health", app.device_api);
        async move {
            let response = client.post(url).json(body).send().await.expect("report");
            let status = response.status();
            (status, response.json::<Value>().await.expect("json"))
        }
    }))
    .await;
    for (n, (status, body)) in answers.iter().enumerate().take(DEVICES).skip(1) {
        assert_eq!(*status, StatusCode::OK, "device {n}: {body}");
    }
    assert_eq!(answers[DEVICES - 1].1["status"], "unhealthy");
    assert_eq!(answers[1].1["status"], "healthy");
    // Of the two copies of the first device's report, one is stored and the other refused.
    let mut first: Vec<_> = [&answers[0], &answers[DEVICES]]
        .iter()
        .map(|(status, body)| (*status, body["error"].as_str().map(str::to_owned)))
        .collect();
    first.sort_by_key(|(status, _)| status.as_u16());
    assert_eq!(
        first,
        [
            (StatusCode::OK, None),
            (StatusCode::CONFLICT, Some("stale_sequence".to_owned()))
        ]
    );

    let (reports, healthy, unhealthy): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM health_reports),
                count(*) FILTER (WHERE health_status = 'healthy'),
                count(*) FILTER (WHERE health_status = 'unhealthy')
         FROM devices",
    )
    .fetch_one(&db)
    .await
    .expect("counts");
    assert_eq!((reports, healthy, unhealthy), (DEVICES as i64, 29, 1));
    let verdicts: (i64,) = sqlx::query_as(
        "SELECT count(*) FROM audit_log WHERE event_type = 'health' AND action = 'verdict'",
    )
    .fetch_one(&db)
    .await
    .expect("audit");
    assert_eq!(verdicts.0, DEVICES as i64, "one verdict change per device");
    // Every report went through the writer, the refused copy included.
    let (sum, count) = batches(&app).await;
    assert_eq!(sum - sum_before, DEVICES as f64 + 1.0);
    eprintln!("{} reports in {count} statements", sum - sum_before);
}
