//! The decision audit trail end to end: requests through the real Envoy, decisions by the real
//! ext-authz, records in the real Postgres, found through the real audit API — and none lost while
//! Postgres is down.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::{database_url, metric};
use crate::postgres::Cluster;
use crate::proxy::{Answer, Options, Stack};

/// The decision id the client can see: the upstream's echo of its header, or the 403's body.
fn decision_id(answer: &Answer) -> String {
    let id = if answer.status == StatusCode::OK {
        answer.body["headers"]["x-edgemesh-decision-id"].as_str()
    } else {
        answer.body["decision_id"].as_str()
    };
    id.unwrap_or_else(|| panic!("no decision id in {answer:?}"))
        .to_owned()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("format")
}

/// The ids of the authorization records, once there are at least `n` (bounded wait).
async fn authorization_ids(db: &PgPool, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id::text FROM audit_log WHERE event_type = 'authorization'")
                .fetch_all(db)
                .await
                .expect("audit query");
        if ids.len() >= n || Instant::now() > deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn every_decision_through_envoy_is_audited_once_and_found_by_the_audit_api(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    audited_once_and_found(&database_url(&db)).await;
}

/// 60 decisions through Envoy, each stored once, found page by page and in the export; the audit
/// writer's metrics moved with them. Also run with PostgreSQL across a network (remote.rs).
pub async fn audited_once_and_found(url: &str) {
    let stack = Stack::start(url, Options::default()).await;
    let admin = stack.device("ada", "admin", "pi-ada").await;
    let analyst = stack.device("ann", "analyst", "pi-ann").await;
    stack.report(&admin, json!({})).await;
    stack.report(&analyst, json!({})).await;

    let since = OffsetDateTime::now_utc();
    let (mut allowed, mut denied) = (Vec::new(), Vec::new());
    for i in 0..30 {
        let answer = stack.get(&admin, &format!("/api/items/{i}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        allowed.push(decision_id(&answer));
        let answer = stack.get(&analyst, &format!("/database/orders/{i}")).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{answer:?}");
        denied.push(decision_id(&answer));
    }
    let until = OffsetDateTime::now_utc() + time::Duration::seconds(1);

    // Exactly the decisions the clients saw, each once.
    let pool = PgPool::connect(url).await.expect("connect");
    let stored = authorization_ids(&pool, 60).await;
    let made: HashSet<&String> = allowed.iter().chain(&denied).collect();
    assert_eq!(stored.len(), 60, "one record per decision");
    assert_eq!(stored.iter().collect::<HashSet<_>>(), made);
    // Each record also says when PostgreSQL stored it: after the decision, within the run.
    let (unversioned, unexplained, untimed): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE coalesce(policy_version, '') = ''),
                count(*) FILTER (WHERE decision = 'deny' AND cardinality(reasons) = 0),
                count(*) FILTER (WHERE written_at IS NULL OR written_at < occurred_at
                                       OR written_at > now() + interval '1 second')
         FROM audit_log WHERE event_type = 'authorization'",
    )
    .fetch_one(&pool)
    .await
    .expect("query");
    assert_eq!((unversioned, unexplained, untimed), (0, 0, 0));

    // The analyst's denies in the window, page by page: newest first, no gaps, no repeats.
    let filter = format!(
        "device=pi-ann&decision=deny&since={}&until={}",
        rfc3339(since),
        rfc3339(until)
    );
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/audit?{filter}&limit=7");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = stack.api.admin_get(&path).await;
        for record in page["records"].as_array().expect("records") {
            assert_eq!(record["event_type"], "authorization");
            assert_eq!(record["service"], "database");
            assert_eq!(record["user_id"], "ann");
            assert_eq!(record["method"], "GET");
            let reasons = record["reasons"].to_string();
            assert!(
                reasons.contains("analyst may not use service database"),
                "{reasons}"
            );
            paged.push(record["id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let newest_first: Vec<String> = denied.iter().rev().cloned().collect();
    assert_eq!(paged, newest_first);

    // The CSV export holds the same rows in the same order.
    let csv = stack
        .api
        .http
        .get(format!(
            "{}/api/v1/admin/audit?{filter}&format=csv",
            stack.api.api
        ))
        .bearer_auth(&stack.api.admin_token)
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("csv");
    let exported: Vec<String> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().expect("id").to_owned())
        .collect();
    assert_eq!(exported, newest_first);

    // The audit writer's metrics moved with the traffic; nothing needed shipping from the spool.
    let metrics = stack.ext_authz_metrics().await;
    assert_eq!(
        metric(&metrics, "edgemesh_ext_authz_audit_records_written_total"),
        60.0
    );
    assert_eq!(
        metric(&metrics, "edgemesh_ext_authz_audit_records_replayed_total"),
        0.0
    );
    assert_eq!(
        metric(&metrics, "edgemesh_ext_authz_audit_queue_depth"),
        0.0
    );
    assert_eq!(
        metric(
            &metrics,
            "edgemesh_ext_authz_decisions_total{decision=\"deny\",reason=\"role\",service=\"database\"}"
        ),
        30.0
    );
}

#[tokio::test]
async fn decisions_made_while_postgres_is_down_are_spooled_and_replayed_exactly_once() {
    let cluster = Cluster::start();
    let stack = Stack::start(&cluster.url(), Options::default()).await;
    let device = stack.device("olga", "admin", "pi-olga").await;
    stack.report(&device, json!({})).await;

    let started = Instant::now();
    let (mut stopped, mut restarted) = (None, None);
    let mut decisions: Vec<String> = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    while started.elapsed() < Duration::from_secs(40) {
        if stopped.is_none() && started.elapsed() > Duration::from_secs(3) {
            cluster.stop_server();
            stopped = Some(Instant::now());
        }
        if let Some(at) = stopped
            && restarted.is_none()
            && at.elapsed() >= Duration::from_secs(30)
        {
            cluster.start_server();
            restarted = Some(Instant::now());
        }
        let answer = stack.get(&device, "/api/ping").await;
        *statuses.entry(answer.status.as_u16()).or_default() += 1;
        // Every answer is a decision of ext-authz: an allow, or a deny while the directory is away.
        assert!(
            matches!(answer.status, StatusCode::OK | StatusCode::FORBIDDEN),
            "Envoy answered without a decision: {answer:?}"
        );
        decisions.push(decision_id(&answer));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(restarted.is_some());
    assert!(statuses.get(&200).is_some_and(|n| *n > 10), "{statuses:?}");
    assert!(statuses.get(&403).is_some_and(|n| *n > 10), "{statuses:?}");

    // After the replay, the records are exactly the decisions.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let metrics = stack.ext_authz_metrics().await;
        if metric(&metrics, "edgemesh_ext_authz_audit_spool_bytes") == 0.0
            && metric(&metrics, "edgemesh_ext_authz_audit_records_replayed_total") > 0.0
        {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "the spool was not replayed:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pool = PgPool::connect(&cluster.url()).await.expect("connect");
    let stored = authorization_ids(&pool, decisions.len()).await;
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "no decision is stored twice");
    assert_eq!(stored.len(), decisions.len(), "one record per decision");
    assert_eq!(unique, decisions.iter().collect::<HashSet<_>>());
    let replayed = metric(&metrics, "edgemesh_ext_authz_audit_records_replayed_total");
    assert!(
        replayed > 0.0,
        "the outage was shipped from the spool:\n{metrics}"
    );
    assert_eq!(
        metric(&metrics, "edgemesh_ext_authz_audit_records_lost_total"),
        0.0
    );
    eprintln!(
        "postgres outage: {} decisions ({statuses:?}), {replayed} shipped from the spool",
        decisions.len()
    );
}

/// A spool whose last line is torn (an ext-authz of an earlier release that crashed mid-append): the
/// torn line is cut off and counted, the whole records before it are shipped, and ext-authz goes on
/// answering, on the one worker thread `make up` gives it.
#[sqlx::test(migrations = false)]
async fn a_spool_with_a_torn_last_line_is_trimmed_and_ext_authz_keeps_answering(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let now_us =
        i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).expect("now");
    let ids = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
    let mut spool = String::new();
    for (i, id) in ids.iter().enumerate() {
        spool.push_str(
            &json!({
                "id": id, "at_us": now_us + i as i64, "device": "pi-before", "user": null,
                "role": null, "service": "api", "method": "GET", "path": "/api/x", "allow": false,
                "reasons": ["from before the crash"], "policy_version": "v0", "serial": null,
                "latency_us": 90, "peer": null
            })
            .to_string(),
        );
        spool.push('\n');
    }
    spool.push_str(r#"{"id":"5b0c9d1e-"#);
    let options = Options {
        ext_authz_env: vec![("EDGEMESH_EXT_AUTHZ_WORKERS", "1".to_owned())],
        audit_spool_files: vec![("audit.spool", spool.into_bytes())],
        ..Options::default()
    };
    let stack = Stack::start(&database_url(&db), options).await;
    let device = stack.device("olga", "admin", "pi-olga").await;
    stack.report(&device, json!({})).await;
    for _ in 0..5 {
        let answer = stack.get(&device, "/api/x").await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    let pool = PgPool::connect(&database_url(&db)).await.expect("connect");
    let stored = authorization_ids(&pool, 7).await;
    for id in ids {
        assert!(
            stored.contains(&id.to_string()),
            "{id} from the spool: {stored:?}"
        );
    }
    assert_eq!(stored.len(), 7, "two from the spool, five new");
    let metrics = stack.ext_authz_metrics().await;
    assert_eq!(
        metric(&metrics, "edgemesh_ext_authz_audit_spool_torn_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "edgemesh_ext_authz_audit_records_lost_total"),
        0.0
    );
}

/// `kill -9` of ext-authz under load through Envoy, then a restart: every decision whose answer a
/// client received is in the audit log, exactly once.
#[sqlx::test(migrations = false)]
async fn no_decision_a_client_saw_is_lost_when_ext_authz_is_killed_under_load(
    _pool: PgPoolOptions,
    db: PgConnectOptions,
) {
    let mut stack = Stack::start(&database_url(&db), Options::default()).await;
    let device = stack.device("olga", "admin", "pi-olga").await;
    stack.report(&device, json!({})).await;
    const CLIENTS: usize = 8;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (client, url) = (
            device.client.clone(),
            format!("{}/api/load", stack.envoy_url),
        );
        let (seen, stop) = (std::sync::Arc::clone(&seen), std::sync::Arc::clone(&stop));
        clients.spawn(async move {
            let mut unanswered = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(response) = client.get(&url).send().await else {
                    unanswered += 1;
                    continue;
                };
                let status = response.status();
                let header = response
                    .headers()
                    .get("x-edgemesh-decision-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                // A 503 is Envoy's own answer while ext-authz is away: no decision was made.
                let id = match status {
                    StatusCode::OK => body["headers"]["x-edgemesh-decision-id"]
                        .as_str()
                        .map(str::to_owned),
                    StatusCode::FORBIDDEN => header,
                    _ => None,
                };
                match id {
                    Some(id) => seen.lock().expect("seen").push(id),
                    None => unanswered += 1,
                }
            }
            unanswered
        });
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.ext_authz.process.kill().await;
    let killed = seen.lock().expect("seen").len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.ext_authz.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    let seen = seen.lock().expect("seen").clone();
    assert!(
        killed > 100 && seen.len() > killed + 100,
        "load before and after: {killed}, {}",
        seen.len()
    );

    let pool = PgPool::connect(&database_url(&db)).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let stored = authorization_ids(&pool, seen.len()).await;
        let set: HashSet<&String> = stored.iter().collect();
        if seen.iter().all(|id| set.contains(id)) || Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "no decision is stored twice");
    let missing: Vec<&String> = seen.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} decisions the clients saw are not in the audit log: {:?}",
        missing.len(),
        seen.len(),
        &missing[..missing.len().min(5)]
    );
    // Beyond those: at most the decisions journaled in the instant of the kill, whose answers never
    // left (one per client at most).
    assert!(
        stored.len() <= seen.len() + CLIENTS,
        "{} stored for {} seen",
        stored.len(),
        seen.len()
    );
    eprintln!(
        "kill -9 under load: {} decisions seen, {} stored, {killed} before the kill",
        seen.len(),
        stored.len()
    );
}
