//! The Check handler: Envoy asks, EdgeMesh decides. The identity comes from the peer certificate Envoy
//! verified, the facts about the device from the directory, the decision from the policies. Every path,
//! including internal errors, ends in an answer: an allow with identity headers or a 403 with reasons.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use edgemesh_core::cert::CertInfo;
use edgemesh_core::policy::{AUTHZ, Decision, PolicyStore};
use envoy_types::ext_authz::v3::pb::{CheckResponse, HeaderAppendAction, HttpStatusCode};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tonic::Status;

use crate::audit::{AuditLog, Record};
use crate::directory::{Directory, fingerprint_bytes};
use crate::input::{Facts, document};
use crate::metrics::{Metrics, reason_label};
use crate::request::CheckRequest;

/// The headers EdgeMesh sets for the upstream; a client-sent copy is overwritten, never appended to.
pub const DEVICE_HEADER: &str = "x-edgemesh-device-id";
pub const USER_HEADER: &str = "x-edgemesh-user-id";
pub const ROLE_HEADER: &str = "x-edgemesh-role";
pub const DECISION_HEADER: &str = "x-edgemesh-decision-id";

/// What "now" is for decisions.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    /// A fixed instant, for deterministic tests of time-of-day rules and what-if questions.
    Fixed(OffsetDateTime),
}

impl Clock {
    pub fn now(&self) -> OffsetDateTime {
        match self {
            Clock::System => OffsetDateTime::now_utc(),
            Clock::Fixed(at) => *at,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub trust_domain: String,
    /// The DER of the EdgeMesh CA certificate. Envoy verifies the client's chain; ext-authz checks the
    /// signature again, so a caller that reaches the gRPC port directly cannot present a certificate
    /// of its own making and have it decided (and audited) as a device's.
    pub ca_der: Arc<[u8]>,
    pub max_health_age_seconds: u64,
    pub timezone: String,
    pub clock: Clock,
}

/// One decision, as logged (and, later, audited).
#[derive(Debug, Clone)]
pub struct Verdict {
    pub decision_id: uuid::Uuid,
    pub decision: Decision,
    pub device: Option<String>,
    pub user: Option<String>,
    pub role: Option<String>,
    pub service: Option<String>,
    /// Serial of the client certificate, when it parsed.
    pub serial: Option<String>,
}

pub struct Authorizer {
    pub policies: Arc<PolicyStore>,
    pub directory: Arc<Directory>,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub audit: AuditLog,
    /// Parsed peer certificates: a device sends the same certificate with every request, so it is
    /// parsed once.
    pub peers: Bounded<[u8; 32], Arc<Peer>>,
    /// Decisions by their facts, each with the policy version it was made under.
    pub decisions: Bounded<Facts, Decision>,
}

/// The identity a peer certificate proves, and what the policy and the audit need of it.
#[derive(Debug)]
pub struct Peer {
    pub device: String,
    pub serial: String,
    pub fingerprint: [u8; 32],
    pub not_after: OffsetDateTime,
}

/// A map that stays within a bound, for what is never stale, only costly to work out again: parsed peer
/// certificates (by the SHA-256 of their encoded form, 32 bytes per key rather than the kilobyte of PEM;
/// whom a certificate names never changes, and revocation is checked against the directory on every
/// request, not here) and decisions (by their facts, see [`Facts`]). Each shard keeps two generations:
/// entries go into the current one, and when it is full it becomes the previous one, dropping the
/// one before. An entry found in the previous generation moves to the current one, so what is in use
/// stays and the rest ages out (forgetting an arbitrary entry instead would, in a full map, often
/// forget the one just added).
pub struct Bounded<K, V> {
    shards: Vec<Mutex<Generations<K, V>>>,
    per_generation: usize,
    hasher: RandomState,
}

struct Generations<K, V> {
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
}

impl<K: Hash + Eq, V: Clone> Generations<K, V> {
    fn insert(&mut self, key: K, value: V, per_generation: usize) {
        if self.current.len() >= per_generation && !self.current.contains_key(&key) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, value);
    }
}

impl<K: Hash + Eq, V: Clone> Bounded<K, V> {
    const SHARDS: usize = 16;

    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..Self::SHARDS)
                .map(|_| {
                    Mutex::new(Generations {
                        current: HashMap::new(),
                        previous: HashMap::new(),
                    })
                })
                .collect(),
            per_generation: capacity.div_ceil(Self::SHARDS * 2).max(1),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> std::sync::MutexGuard<'_, Generations<K, V>> {
        let index = self.hasher.hash_one(key) as usize % Self::SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let mut shard = self.shard(key);
        if let Some(value) = shard.current.get(key) {
            return Some(value.clone());
        }
        let (key, value) = shard.previous.remove_entry(key)?;
        shard.insert(key, value.clone(), self.per_generation);
        Some(value)
    }

    pub fn insert(&self, key: K, value: V) {
        self.shard(&key).insert(key, value, self.per_generation);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let shard = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                shard.current.len() + shard.previous.len()
            })
            .sum()
    }
}

impl Authorizer {
    /// Answers one Check call: decides, counts, logs and audits the decision.
    pub async fn answer(&self, request: &CheckRequest) -> CheckResponse {
        let started = Instant::now();
        let at = OffsetDateTime::now_utc();
        let verdict = self.decide(request).await;
        let answer = response(request, &verdict);
        let elapsed = started.elapsed();
        self.metrics.latency.observe(elapsed.as_secs_f64());
        self.metrics
            .decisions
            .with_label_values(&[
                if verdict.decision.allow {
                    "allow"
                } else {
                    "deny"
                },
                service_label(verdict.service.as_deref()),
                reason_label(verdict.decision.allow, &verdict.decision.reasons),
            ])
            .inc();
        let http = request.http();
        tracing::info!(
            decision_id = %verdict.decision_id,
            allow = verdict.decision.allow,
            device = verdict.device.as_deref().unwrap_or("-"),
            user = verdict.user.as_deref().unwrap_or("-"),
            role = verdict.role.as_deref().unwrap_or("-"),
            service = verdict.service.as_deref().unwrap_or("-"),
            method = http.map_or("-", |h| h.method.as_str()),
            path = http.map_or("-", |h| h.path.as_str()),
            reasons = ?verdict.decision.reasons,
            policy_version = %verdict.decision.policy_version,
            latency_us = elapsed.as_micros() as u64,
            "decision"
        );
        let (method, path) = http.map_or((None, None), |h| {
            (Some(h.method.clone()), Some(Record::bounded_path(&h.path)))
        });
        self.audit.record(Record {
            id: verdict.decision_id,
            at_us: Record::at(at),
            device: verdict.device,
            user: verdict.user,
            role: verdict.role,
            service: verdict.service,
            method,
            path,
            allow: verdict.decision.allow,
            reasons: verdict.decision.reasons,
            policy_version: verdict.decision.policy_version,
            serial: verdict.serial,
            latency_us: i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX),
            peer: request.peer_address(),
        });
        answer
    }

    /// Decides one request. Never fails: anything unexpected is a deny with a reason.
    pub async fn decide(&self, request: &CheckRequest) -> Verdict {
        let decision_id = uuid::Uuid::new_v4();
        let policies = self.policies.current();
        let service = request.service().map(str::to_owned);
        let deny = |reason: String, peer: Option<&Peer>| Verdict {
            decision_id,
            decision: Decision {
                allow: false,
                reasons: vec![reason],
                policy_version: policies.version().to_owned(),
            },
            device: peer.map(|p| p.device.clone()),
            user: None,
            role: None,
            service: service.clone(),
            serial: peer.map(|p| p.serial.clone()),
        };
        let peer = match self.peer(request).await {
            Ok(peer) => peer,
            Err(reason) => return deny(reason, None),
        };
        let record = match self.directory.lookup(&peer.device).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                return deny(
                    format!("device {} is not enrolled", peer.device),
                    Some(&peer),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, device = %peer.device, "device directory unavailable");
                return deny(
                    "the device directory is unavailable".to_owned(),
                    Some(&peer),
                );
            }
        };
        let Some(certificate) = record
            .certificates
            .iter()
            .find(|c| c.serial == peer.serial && c.fingerprint == peer.fingerprint)
        else {
            return deny(
                format!(
                    "the client certificate (serial {}) is not on record for device {}",
                    peer.serial, peer.device
                ),
                Some(&peer),
            );
        };
        // The handshake checked the validity period once; a kept-alive connection outlives it. (The
        // real clock, like revocation: validity is not a what-if.)
        let now = OffsetDateTime::now_utc();
        if peer.not_after <= now {
            return deny("the client certificate has expired".to_owned(), Some(&peer));
        }
        let facts = Facts::new(
            request,
            &peer,
            &record,
            certificate.revoked(now),
            self.settings.clock.now(),
        );
        // The same facts make the same input document, so a decision made under the policies in force
        // holds for them (a device repeating a request within the second, typically).
        let decision = match self
            .decisions
            .get(&facts)
            .filter(|d| d.policy_version == policies.version())
        {
            Some(decision) => decision,
            None => match policies.evaluate_value(AUTHZ, document(&self.settings, &facts)) {
                Ok(decision) => {
                    self.decisions.insert(facts, decision.clone());
                    decision
                }
                Err(failed) => {
                    tracing::warn!(%decision_id, error = %failed.error, "policy evaluation failed; denying");
                    failed.deny
                }
            },
        };
        Verdict {
            decision_id,
            decision,
            device: Some(record.id.clone()),
            user: Some(record.owner_id.to_string()),
            role: Some(record.role.to_string()),
            service,
            serial: Some(peer.serial.clone()),
        }
    }

    async fn peer(&self, request: &CheckRequest) -> Result<Arc<Peer>, String> {
        let encoded = request.certificate();
        if encoded.is_empty() {
            return Err("no client certificate was presented".to_owned());
        }
        let key: [u8; 32] = Sha256::digest(encoded).into();
        if let Some(peer) = self.peers.get(&key) {
            return Ok(peer);
        }
        let peer = Arc::new(self.parse_peer(encoded)?);
        self.peers.insert(key, Arc::clone(&peer));
        Ok(peer)
    }

    fn parse_peer(&self, encoded: &[u8]) -> Result<Peer, String> {
        // Envoy sends the peer certificate as URL-encoded PEM.
        let pem = percent_encoding::percent_decode(encoded)
            .decode_utf8()
            .map_err(|_| "the client certificate is not valid PEM".to_owned())?;
        let der = edgemesh_core::cert::first_pem_der(&pem)
            .map_err(|_| "the client certificate is not valid PEM".to_owned())?;
        let cert = CertInfo::from_der(&der)
            .map_err(|e| format!("the client certificate does not parse: {e}"))?;
        if !edgemesh_core::cert::signed_by(&der, &self.settings.ca_der).unwrap_or(false) {
            return Err("the client certificate is not issued by the EdgeMesh CA".to_owned());
        }
        let device = cert.device_id(&self.settings.trust_domain).ok_or_else(|| {
            format!(
                "the client certificate names no device of trust domain {}",
                self.settings.trust_domain
            )
        })?;
        Ok(Peer {
            device: device.to_string(),
            serial: cert.serial,
            fingerprint: fingerprint_bytes(&cert.fingerprint)
                .ok_or_else(|| "the client certificate's fingerprint is malformed".to_owned())?,
            not_after: cert.not_after,
        })
    }
}

/// The service label: the known services, or `other` (route configuration is not metric cardinality).
fn service_label(service: Option<&str>) -> &'static str {
    match service {
        Some("api") => "api",
        Some("database") => "database",
        Some("storage") => "storage",
        Some("analytics") => "analytics",
        _ => "other",
    }
}

/// Whether a client-sent header `name` could pass for one EdgeMesh sets, other than ours themselves
/// (those are overwritten): any `x-edgemesh-*` in any case, and spellings with underscores, which
/// CGI-style upstreams (WSGI, Rack, PHP) read as the same `HTTP_X_EDGEMESH_*` variable as ours.
fn passes_for_ours(name: &str) -> bool {
    // Compared byte by byte, without making a normalised copy of every header name of every request.
    const PREFIX: &[u8] = b"x-edgemesh-";
    let bytes = name.as_bytes();
    bytes.len() >= PREFIX.len()
        && bytes.iter().zip(PREFIX).all(|(b, p)| {
            let b = b.to_ascii_lowercase();
            b == *p || (b == b'_' && *p == b'-')
        })
        && ![DEVICE_HEADER, USER_HEADER, ROLE_HEADER, DECISION_HEADER].contains(&name)
}

/// The answer Envoy acts on.
pub fn response(request: &CheckRequest, verdict: &Verdict) -> CheckResponse {
    let decision_id = verdict.decision_id.to_string();
    let mut response = CheckResponse::new();
    if verdict.decision.allow {
        let mut ok = OkHttpResponseBuilder::new();
        let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
        for (name, value) in [
            (DEVICE_HEADER, verdict.device.as_deref()),
            (USER_HEADER, verdict.user.as_deref()),
            (ROLE_HEADER, verdict.role.as_deref()),
            (DECISION_HEADER, Some(decision_id.as_str())),
        ] {
            ok.add_header(name, value.unwrap_or_default(), overwrite, true);
        }
        // Any other client-sent header that could pass for ours upstream is removed.
        if let Some(http) = request.http() {
            for name in http.header_names().filter(|k| passes_for_ours(k)) {
                ok.remove_header(name.to_owned());
            }
        }
        response.set_status(Status::ok("allowed"));
        response.set_http_response(ok);
    } else {
        let mut denied = DeniedHttpResponseBuilder::new();
        denied.set_http_status(HttpStatusCode::Forbidden);
        denied.add_header("content-type", "application/json", None, false);
        denied.add_header(DECISION_HEADER, decision_id.clone(), None, false);
        denied.set_body(
            json!({"decision_id": decision_id, "reasons": verdict.decision.reasons}).to_string(),
        );
        response.set_status(Status::permission_denied("denied"));
        response.set_http_response(denied);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(device: &str) -> Arc<Peer> {
        Arc::new(Peer {
            device: device.to_owned(),
            serial: "01".to_owned(),
            fingerprint: [0xab; 32],
            not_after: OffsetDateTime::UNIX_EPOCH,
        })
    }

    #[test]
    fn headers_that_could_pass_for_ours_are_the_ones_removed() {
        for (name, removed) in [
            ("x-edgemesh-role", false),
            ("x-edgemesh-device-id", false),
            ("x-edgemesh-extra", true),
            ("x_edgemesh_role", true),
            ("x-edgemesh_role", true),
            ("X-EdgeMesh-Role", true),
            ("x_EDGEMESH-user-id", true),
            ("x-edgemeshy", false),
            ("x-forwarded-for", false),
            ("accept", false),
        ] {
            assert_eq!(passes_for_ours(name), removed, "{name}");
        }
    }

    /// A full map still keeps what is in use: sixteen devices, each repeating its request ten times
    /// a second (new facts every second), after a burst of entries never used again.
    #[test]
    fn a_full_bounded_map_keeps_the_entries_in_use() {
        let memo: Bounded<(u64, u64), u64> = Bounded::new(4096);
        for stale in 0..10_000u64 {
            memo.insert((1_000_000 + stale, 0), 0);
        }
        let mut misses = 0;
        for second in 0..200u64 {
            for _ in 0..10 {
                for device in 0..16u64 {
                    if memo.get(&(second, device)).is_none() {
                        misses += 1;
                        memo.insert((second, device), 1);
                    }
                }
            }
        }
        // One miss per device and second: the first request of each second.
        assert_eq!(misses, 200 * 16);
        assert!(memo.len() <= 4096, "{} entries", memo.len());
    }

    #[test]
    fn a_bounded_map_stays_within_its_bound() {
        let cache = Bounded::new(64);
        for i in 0..1000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            key[0] = (i % 256) as u8;
            cache.insert(key, peer(&format!("pi-{i}")));
            assert_eq!(
                cache.get(&key).map(|p| p.device.clone()),
                Some(format!("pi-{i}"))
            );
        }
        assert!(cache.len() <= 64, "{} entries", cache.len());
        let mut same = [7u8; 32];
        cache.insert(same, peer("a"));
        cache.insert(same, peer("b"));
        assert_eq!(
            cache.get(&same).map(|p| p.device.clone()),
            Some("b".to_owned())
        );
        same[31] = 8;
        assert!(cache.get(&same).is_none());
    }
}
