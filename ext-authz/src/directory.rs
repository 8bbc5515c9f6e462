//! The device directory: what a decision needs to know about a device (its record, its owner's role, its
//! certificates and its latest health), cached in memory and kept fresh by Postgres notifications.
//!
//! Triggers (see `migrations/`) send `device:<id>` or `user:<id>` on channel `edgemesh_changes` when a
//! commit changes what a decision reads of a device, its certificates or its owner (a health report
//! that only measures the same facts again notifies nobody). A notification invalidates the affected
//! entries, so the next request reloads them; the TTL is only a safety net. Freshness is not
//! notified: a cached device whose health measurement has turned stale is read again before it is
//! used (at most once a second), so a device that keeps reporting stays fresh on every replica and one
//! that stopped turns stale at the configured age, notification or not. While the listening connection
//! is down, notifications may be missed, so the cache is bypassed (every lookup reads Postgres) until it
//! is back: a revocation is never hidden behind a stale entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::time::Duration;

use edgemesh_core::cert::Fingerprint;
use moka::future::Cache;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use time::OffsetDateTime;

use crate::db;
use crate::metrics::Metrics;

pub const CHANNEL: &str = "edgemesh_changes";
/// Payloads of the listeners' heartbeats on `CHANNEL`: `heartbeat:<uuid of the sending process>`.
const HEARTBEAT_PREFIX: &str = "heartbeat:";

/// Entries loaded concurrently with a notification for the same stripe are not cached (see `lookup`).
const STRIPES: usize = 256;
/// Longest wait for Postgres in a Check: well under Envoy's ext_authz timeout (0.5 s).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRecord {
    pub id: String,
    /// The few distinct values of these fields are shared by every device that has them (see
    /// `Directory::intern`): 100,000 cached devices hold a handful of copies, not 100,000.
    pub device_type: Arc<str>,
    pub status: Arc<str>,
    pub os: Arc<str>,
    pub os_version: Arc<str>,
    /// Shared too: a user's devices name the same owner.
    pub owner_id: Arc<str>,
    pub role: Arc<str>,
    /// The device's certificates that have not expired.
    pub certificates: Vec<CertificateRecord>,
    pub health: Option<HealthRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    pub serial: String,
    /// SHA-256 of the certificate's DER (held as 32 bytes, not 64 hex characters).
    pub fingerprint: Fingerprint,
    /// When it is (or was) revoked or retired; a time still ahead is an overlap after a renewal.
    pub revoked_at: Option<OffsetDateTime>,
}

impl CertificateRecord {
    /// Whether it is revoked at `now` (the real clock: revocation is not a what-if).
    pub fn revoked(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_some_and(|at| at <= now)
    }
}

/// The device's latest health report.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthRecord {
    pub received_at: OffsetDateTime,
    pub collected_at: OffsetDateTime,
    pub cpu_usage: Option<f64>,
    pub memory_usage: Option<f64>,
    pub disk_usage: Option<f64>,
    pub disk_encrypted: Option<bool>,
    pub os_patches_current: Option<bool>,
    pub antivirus_enabled: Option<bool>,
    pub firewall_enabled: Option<bool>,
    pub status: Arc<str>,
}

impl HealthRecord {
    /// Seconds since the values were measured, on the server's clock: a device clock running ahead
    /// cannot make a report look fresher than its arrival.
    pub fn age_seconds(&self, now: OffsetDateTime) -> i64 {
        (now - self.measured_at()).whole_seconds().max(0)
    }

    /// When the values were measured, as far as the server can tell: the device's time, or the
    /// arrival if that is earlier.
    pub fn measured_at(&self) -> OffsetDateTime {
        self.collected_at.min(self.received_at)
    }
}

/// `None`: no such device (cached too, so unknown identities do not reach Postgres every time).
pub type Entry = Option<Arc<DeviceRecord>>;

/// A cached entry and when it was read.
#[derive(Clone)]
struct Cached {
    entry: Entry,
    read: std::time::Instant,
}

/// A cached device whose health turned stale is read again at most this often: a device that stopped
/// reporting costs one read a second, not one per request.
const STALE_REREAD: Duration = Duration::from_secs(1);

/// How the change listener proves it is alive: it notifies itself every `every` through another
/// connection, and a heartbeat not heard within `timeout` makes the cache untrusted (exactly like a
/// known disconnect) and the listener reconnect. A half-open connection (a NAT dropping it, a failover)
/// otherwise looks like a quiet one for as long as the kernel does not notice.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    pub every: Duration,
    pub timeout: Duration,
}

pub struct Directory {
    db: PgPool,
    heartbeat: Heartbeat,
    /// The policies' maximum health age: past it, a cached measurement is read again.
    stale_after: time::Duration,
    cache: Cache<String, Cached>,
    stripes: Vec<AtomicU64>,
    /// True while the notification listener is connected: only then may cached entries be used.
    listening: AtomicBool,
    metrics: Arc<Metrics>,
    /// Shared copies of low-cardinality values (see [`Directory::intern`]).
    names: std::sync::Mutex<std::collections::HashSet<Arc<str>>>,
}

/// More distinct values than this (OS versions reported by a large, varied fleet) and the set of shared
/// copies starts over; copies in use stay valid.
const MAX_NAMES: usize = 10_000;

impl Directory {
    pub fn new(
        db: PgPool,
        capacity: u64,
        ttl: Duration,
        heartbeat: Heartbeat,
        stale_after: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            .support_invalidation_closures()
            .build();
        Arc::new(Self {
            db,
            heartbeat,
            stale_after: time::Duration::try_from(stale_after).unwrap_or(time::Duration::MAX),
            cache,
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            listening: AtomicBool::new(false),
            metrics,
            names: std::sync::Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// The shared copy of `value`.
    fn intern(&self, value: String) -> Arc<str> {
        let mut names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(shared) = names.get(value.as_str()) {
            return Arc::clone(shared);
        }
        if names.len() >= MAX_NAMES {
            names.clear();
        }
        let shared: Arc<str> = Arc::from(value);
        names.insert(Arc::clone(&shared));
        shared
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    pub fn cached_entries(&self) -> u64 {
        self.cache.entry_count()
    }

    fn stripe(&self, device: &str) -> &AtomicU64 {
        let hash = device.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        &self.stripes[(hash % STRIPES as u64) as usize]
    }

    /// Looks `device` up: from the cache while the change listener runs, else from Postgres (bounded
    /// by [`LOOKUP_TIMEOUT`]).
    pub async fn lookup(&self, device: &str) -> Result<Entry, sqlx::Error> {
        let trusted = self.is_listening();
        if trusted && let Some(cached) = self.cache.get(device).await {
            if !self.turned_stale(&cached, OffsetDateTime::now_utc()) {
                self.metrics.cache_hits.inc();
                return Ok(cached.entry);
            }
            self.metrics.cache_stale_rereads.inc();
        }
        self.metrics.cache_misses.inc();
        // A notification for this device may arrive while it loads; the loaded entry may then predate
        // the change. The stripe counter, bumped before every invalidation, detects that: such an entry
        // is used for this request (it was current when read) but not cached.
        let stripe = self.stripe(device);
        let before = stripe.load(Ordering::SeqCst);
        // Answer (a deny) before Envoy's own timeout gives up on the Check, when Postgres is away.
        // Boxed: the load's future is kilobytes, and inline it would make every Check's future (and
        // what is copied to start one) that large, cache hit or not.
        let entry = tokio::time::timeout(LOOKUP_TIMEOUT, Box::pin(self.load(device)))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        if trusted && self.is_listening() && stripe.load(Ordering::SeqCst) == before {
            let cached = Cached {
                entry: entry.clone(),
                read: std::time::Instant::now(),
            };
            self.cache.insert(device.to_owned(), cached).await;
            if stripe.load(Ordering::SeqCst) != before {
                self.cache.invalidate(device).await;
            }
        }
        Ok(entry)
    }

    /// Whether `cached` holds a health measurement that is stale at `now` and was read more than
    /// [`STALE_REREAD`] ago: reports since may have refreshed it without a notification.
    fn turned_stale(&self, cached: &Cached, now: OffsetDateTime) -> bool {
        let measured = cached
            .entry
            .as_ref()
            .and_then(|d| d.health.as_ref())
            .map(HealthRecord::measured_at);
        measured.is_some_and(|at| now - at > self.stale_after)
            && cached.read.elapsed() >= STALE_REREAD
    }

    async fn load(&self, device: &str) -> Result<Entry, sqlx::Error> {
        // The pool does not ping a connection before lending it: one that broke while idle (a
        // restarted server, a dropped NAT entry) fails here and is dropped, and another is asked. After
        // a restart every idle connection is broken, so as many as the pool holds, and one more (a new
        // connection), may be asked.
        let mut broken = 0;
        let row = loop {
            match db::device(&self.db, device).await {
                Err(e) if db::connection_lost(&e) && broken <= self.db.size() => {
                    broken += 1;
                    tracing::debug!(error = %e, "a pooled connection was broken; asking another");
                }
                row => break row?,
            }
        };
        let Some(row) = row else {
            return Ok(None);
        };
        let certificates = row
            .serials
            .into_iter()
            .zip(row.fingerprints)
            .zip(row.revoked_at)
            // A fingerprint that is not 64 hex digits matches no presented certificate.
            .filter_map(|((serial, fingerprint), revoked_at)| {
                Some(CertificateRecord {
                    fingerprint: Fingerprint::from_hex(&fingerprint)?,
                    serial,
                    revoked_at,
                })
            })
            .collect();
        let health =
            row.health_received_at
                .zip(row.last_health_at)
                .map(|(received_at, collected_at)| HealthRecord {
                    received_at,
                    collected_at,
                    cpu_usage: row.cpu_usage,
                    memory_usage: row.memory_usage,
                    disk_usage: row.disk_usage,
                    disk_encrypted: row.disk_encrypted,
                    os_patches_current: row.os_patches_current,
                    antivirus_enabled: row.antivirus_enabled,
                    firewall_enabled: row.firewall_enabled,
                    status: self.intern(row.health_status),
                });
        Ok(Some(Arc::new(DeviceRecord {
            id: row.id,
            device_type: self.intern(row.device_type),
            status: self.intern(row.status),
            os: self.intern(row.os),
            os_version: self.intern(row.os_version),
            owner_id: self.intern(row.owner_id),
            role: self.intern(row.role),
            certificates,
            health,
        })))
    }

    /// Opens every connection of the pool and prepares the lookup on each (its first use does), so
    /// that a freshly started replica's first burst of misses, when every Check is one, waits for no
    /// connection's authentication (a SCRAM exchange costs milliseconds of CPU on both sides) and no
    /// statement's planning. A connection that cannot be opened is left to the lookups that need it.
    pub async fn warm_pool(&self) {
        // The change listener holds one of the pool's connections for as long as it listens: asking
        // for the whole pool would wait out the acquire timeout for the last one.
        let in_use = self.db.size() - u32::try_from(self.db.num_idle()).unwrap_or(u32::MAX);
        let free = self
            .db
            .options()
            .get_max_connections()
            .saturating_sub(in_use);
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..free {
            let db = self.db.clone();
            opening.spawn(async move { db.acquire().await });
        }
        let mut held = Vec::new();
        while let Some(opened) = opening.join_next().await {
            if let Ok(Ok(connection)) = opened {
                held.push(connection);
            }
        }
        for connection in &mut held {
            // No device has an empty id: the answer is `None`, the statement prepared.
            let _ = db::device(&mut **connection, "").await;
        }
    }

    /// Applies one notification payload.
    pub async fn invalidate(&self, payload: &str) {
        self.metrics.cache_invalidations.inc();
        match payload.split_once(':') {
            Some(("device", id)) => {
                self.stripe(id).fetch_add(1, Ordering::SeqCst);
                self.cache.invalidate(id).await;
            }
            Some(("user", id)) => {
                self.bump_all();
                let owner = id.to_owned();
                if self
                    .cache
                    .invalidate_entries_if(move |_, cached| {
                        cached.entry.as_ref().is_none_or(|d| *d.owner_id == *owner)
                    })
                    .is_err()
                {
                    self.cache.invalidate_all();
                }
            }
            _ => {
                tracing::warn!(
                    payload,
                    "unknown change notification; dropping the whole cache"
                );
                self.forget_all();
            }
        }
    }

    fn bump_all(&self) {
        for stripe in &self.stripes {
            stripe.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn forget_all(&self) {
        self.bump_all();
        self.cache.invalidate_all();
    }

    /// Listens for change notifications until `shutdown`, reconnecting with back-off. The cache is
    /// trusted only while listening, and emptied whenever listening (re)starts: notifications sent
    /// while nobody listened are lost (PgListener does not replay them).
    pub async fn listen(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        // This process's heartbeats, told apart from other replicas' on the shared channel.
        let beat_payload = format!("{HEARTBEAT_PREFIX}{}", uuid::Uuid::new_v4());
        let mut backoff = Duration::from_millis(100);
        let mut broken = 0;
        loop {
            let connected = async {
                let mut listener = PgListener::connect_with(&self.db).await?;
                listener.ignore_pool_close_event(true);
                listener.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let listener = tokio::select! {
                result = connected => match result {
                    Ok(listener) => listener,
                    // A broken idle connection from the pool (the server restarted): the next one
                    // may be sound, or new. Asked at once, at most as many times as the pool holds.
                    Err(e) if db::connection_lost(&e) && broken <= self.db.size() => {
                        broken += 1;
                        tracing::debug!(error = %e, "a pooled connection was broken; asking another");
                        continue;
                    }
                    Err(e) => {
                        broken = 0;
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                            "cannot listen for changes; the cache is bypassed");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            // Whatever changed while nobody listened is forgotten before the cache is trusted again.
            self.forget_all();
            self.listening.store(true, Ordering::SeqCst);
            backoff = Duration::from_millis(100);
            broken = 0;
            tracing::info!(channel = CHANNEL, "listening for changes");
            let started = std::time::Instant::now();
            // Milliseconds after `started` when our last heartbeat arrived.
            let heard = Arc::new(AtomicU64::new(0));
            // Receiving runs on its own, never cancelled mid-message; it ends when the connection does.
            let mut receiving = tokio::spawn(Arc::clone(&self).receive(
                listener,
                beat_payload.clone(),
                started,
                Arc::clone(&heard),
            ));
            let mut ticks = tokio::time::interval(self.heartbeat.every);
            let why = loop {
                tokio::select! {
                    _ = &mut receiving => break "the connection ended",
                    _ = ticks.tick() => {
                        let age = started.elapsed()
                            .saturating_sub(Duration::from_millis(heard.load(Ordering::SeqCst)));
                        self.metrics.notify_heartbeat_age.set(age.as_secs_f64());
                        if age > self.heartbeat.timeout {
                            receiving.abort();
                            break "no heartbeat within the timeout";
                        }
                        self.send_heartbeat(&beat_payload);
                    }
                    _ = shutdown.changed() => {
                        receiving.abort();
                        return;
                    }
                }
            };
            self.listening.store(false, Ordering::SeqCst);
            self.forget_all();
            tracing::warn!(
                reason = why,
                "lost the change listener; the cache is bypassed until it is back"
            );
        }
    }

    /// Applies notifications until the listening connection is lost; our own heartbeats update
    /// `heard` (milliseconds after `started`), other replicas' are ignored.
    async fn receive(
        self: Arc<Self>,
        mut listener: PgListener,
        beat_payload: String,
        started: std::time::Instant,
        heard: Arc<AtomicU64>,
    ) {
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let payload = notification.payload();
                    if payload == beat_payload {
                        let at = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                        heard.store(at, Ordering::SeqCst);
                    } else if !payload.starts_with(HEARTBEAT_PREFIX) {
                        self.invalidate(payload).await;
                    }
                }
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Sends one heartbeat through the pool (another connection than the listener's), without
    /// waiting for it: a database that does not answer must not stall the watch.
    fn send_heartbeat(&self, payload: &str) {
        let (pool, payload, limit) = (self.db.clone(), payload.to_owned(), self.heartbeat.every);
        tokio::spawn(async move {
            let sent = db::notify(&pool, CHANNEL, &payload);
            if let Ok(Err(e)) = tokio::time::timeout(limit, sent).await {
                tracing::debug!(error = %e, "heartbeat notification failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn health(collected: OffsetDateTime, received: OffsetDateTime) -> HealthRecord {
        HealthRecord {
            received_at: received,
            collected_at: collected,
            cpu_usage: None,
            memory_usage: None,
            disk_usage: None,
            disk_encrypted: None,
            os_patches_current: None,
            antivirus_enabled: None,
            firewall_enabled: None,
            status: "healthy".into(),
        }
    }

    #[test]
    fn health_age_counts_from_the_earlier_of_collection_and_arrival() {
        let now = datetime!(2026-11-22 12:00:00 UTC);
        let old = health(
            datetime!(2026-11-22 11:50:00 UTC),
            datetime!(2026-11-22 11:59:00 UTC),
        );
        assert_eq!(old.age_seconds(now), 600);
        // A device clock five minutes ahead does not make its report younger than its arrival.
        let ahead = health(
            datetime!(2026-11-22 12:04:00 UTC),
            datetime!(2026-11-22 11:59:00 UTC),
        );
        assert_eq!(ahead.age_seconds(now), 60);
        // A clock override in the past gives age 0, not a negative age.
        assert_eq!(ahead.age_seconds(datetime!(2026-11-01 00:00:00 UTC)), 0);
    }
}
