//! The Check handler: Envoy asks, EdgeMesh decides. The identity comes from the peer certificate Envoy
//! verified, the facts about the device from the directory, the decision from the policies. Every path,
//! including internal errors, ends in an answer: an allow with identity headers or a 403 with reasons.

use std::sync::Arc;
use std::time::Instant;

use edgemesh_core::policy::{AUTHZ, Decision, PolicySet, PolicyStore, Reason};
use envoy_types::ext_authz::v3::pb::{CheckResponse, HeaderAppendAction, HttpStatusCode};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tonic::Status;

use crate::audit::{AuditLog, ContextRef, Record, Shadow};
use crate::config::Settings;
use crate::directory::{CertificateRecord, DeviceRecord, Directory};
use crate::identity::{NOT_ISSUED, Peer, issued_by_ca};
use crate::input::{Facts, context, document};
use crate::memo::Bounded;
use crate::metrics::{Metrics, reason_label};
use crate::request::CheckRequest;

/// The code of a deny for a request without a usable device identity (the policies' too).
const NO_IDENTITY: &str = "no_identity";

/// The headers EdgeMesh sets for the upstream; a client-sent copy is overwritten, never appended to.
pub const DEVICE_HEADER: &str = "x-edgemesh-device-id";
pub const USER_HEADER: &str = "x-edgemesh-user-id";
pub const ROLE_HEADER: &str = "x-edgemesh-role";
pub const DECISION_HEADER: &str = "x-edgemesh-decision-id";

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
    /// What the shadow policies would have decided, on a route that asks for it.
    pub shadow: Option<Decision>,
    /// What the policies decided on (none for a deny made before they ran).
    pub replay: Option<Replay>,
}

/// What a decision needs kept to be evaluated again: its context's id, the context itself if this
/// decision is the first to refer to it (as far as this process remembers: its record then carries
/// it), and the policy clock's second.
#[derive(Debug, Clone)]
pub struct Replay {
    pub context: ContextRef,
    pub now: i64,
}

/// The candidate policies evaluated beside the enforced ones on routes that ask for it, with their own
/// memory of decisions.
pub struct ShadowPolicies {
    pub policies: Arc<PolicyStore>,
    pub decisions: Bounded<Facts, Decision>,
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
    /// The shadow policies, when configured (EDGEMESH_SHADOW_POLICY_DIR).
    pub shadow: Option<ShadowPolicies>,
    /// The ids of decision contexts by the facts they are made of ([`Facts::context_key`]).
    pub contexts: Bounded<Facts, [u8; 16]>,
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
                reason_label(&verdict.decision),
            ])
            .inc();
        if let Some(shadow) = &verdict.shadow {
            let label = |allow| if allow { "allow" } else { "deny" };
            self.metrics
                .shadow_decisions
                .with_label_values(&[
                    service_label(verdict.service.as_deref()),
                    label(verdict.decision.allow),
                    label(shadow.allow),
                ])
                .inc();
        }
        let http = request.http();
        // At debug: every decision is audited, and startup.rs logs a summary at info.
        tracing::debug!(
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
            shadow = verdict.shadow.as_ref().map(|s| if s.allow { "allow" } else { "deny" }),
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
            reasons: verdict
                .decision
                .reasons
                .into_iter()
                .map(|r| r.message)
                .collect(),
            policy_version: verdict.decision.policy_version,
            serial: verdict.serial,
            latency_us: i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX),
            peer: request.peer_address(),
            shadow: verdict.shadow.map(|shadow| Shadow {
                allow: shadow.allow,
                reasons: shadow.reasons.into_iter().map(|r| r.message).collect(),
                policy_version: shadow.policy_version,
            }),
            // Only when the record's second is not the policy's (a fixed clock, or a decision that
            // straddled a second).
            decided_at: verdict
                .replay
                .as_ref()
                .map(|replay| replay.now)
                .filter(|now| *now != at.unix_timestamp()),
            context: verdict.replay.map(|replay| replay.context),
        });
        answer
    }

    /// Decides one request. Never fails: anything unexpected is a deny with a reason.
    pub async fn decide(&self, request: &CheckRequest) -> Verdict {
        let decision_id = uuid::Uuid::new_v4();
        let policies = self.policies.current();
        let service = request.service().map(str::to_owned);
        let deny = |reason: Reason, peer: Option<&Peer>| Verdict {
            decision_id,
            decision: Decision {
                allow: false,
                reasons: vec![reason],
                policy_version: policies.version().to_owned(),
            },
            device: peer.map(|p| p.device.to_string()),
            user: None,
            role: None,
            service: service.clone(),
            serial: peer.map(|p| p.serial.clone()),
            shadow: None,
            replay: None,
        };
        let peer = match self.peer(request) {
            Ok(peer) => peer,
            Err(reason) => return deny(reason, None),
        };
        // Until the directory vouches for the certificate, a deny names the device only if the CA
        // signed it (crate::identity).
        let looked = self.directory.lookup(peer.device.as_str()).await;
        if !matches!(&looked, Ok(Some(record)) if on_record(record, &peer).is_some())
            && !issued_by_ca(request.certificate(), &self.settings.ca_der)
        {
            return deny(Reason::new(NO_IDENTITY, NOT_ISSUED), None);
        }
        let record = match looked {
            Ok(Some(record)) => record,
            Ok(None) => {
                return deny(
                    Reason::new(
                        "not_enrolled",
                        format!("device {} is not enrolled", peer.device),
                    ),
                    Some(&peer),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, device = %peer.device, "device directory unavailable");
                return deny(
                    Reason::new(
                        "directory_unavailable",
                        "the device directory is unavailable",
                    ),
                    Some(&peer),
                );
            }
        };
        let Some(certificate) = on_record(&record, &peer) else {
            return deny(
                Reason::new(
                    "unknown_certificate",
                    format!(
                        "the client certificate (serial {}) is not on record for device {}",
                        peer.serial, peer.device
                    ),
                ),
                Some(&peer),
            );
        };
        // The handshake checked the validity period once; a kept-alive connection outlives it. (The
        // real clock, like revocation: validity is not a what-if.)
        let now = OffsetDateTime::now_utc();
        if peer.not_after <= now {
            return deny(
                Reason::new("expired", "the client certificate has expired"),
                Some(&peer),
            );
        }
        let facts = Facts::new(
            request,
            &peer,
            &record,
            certificate.revoked(now),
            self.settings.clock.now(),
        );
        // The enforced decision first: the shadow one never changes it, and an error of the shadow
        // policies is only the shadow's deny.
        let shadow = match &self.shadow {
            Some(shadow) if request.shadow() => Some((shadow, facts.clone())),
            _ => None,
        };
        let replay = self.context(&facts).map(|context| Replay {
            context,
            now: facts.now,
        });
        let decision = self.evaluate(&policies, &self.decisions, facts, decision_id);
        let shadow = shadow.map(|(shadow, facts)| {
            self.evaluate(
                &shadow.policies.current(),
                &shadow.decisions,
                facts,
                decision_id,
            )
        });
        Verdict {
            decision_id,
            decision,
            device: Some(record.id.clone()),
            user: Some(record.owner_id.to_string()),
            role: Some(record.role.to_string()),
            service,
            serial: Some(peer.serial.clone()),
            shadow,
            replay,
        }
    }

    /// The reference to the context of a decision on `facts`, with the context itself if it was just
    /// made. `None` only if it cannot be made (logged): the decision stands, it just cannot be
    /// replayed.
    fn context(&self, facts: &Facts) -> Option<ContextRef> {
        let key = facts.context_key();
        if let Some(id) = self.contexts.get(&key) {
            return Some(ContextRef { id, body: None });
        }
        match context(&self.settings, facts) {
            Ok(made) => {
                self.contexts.insert(key, made.id);
                Some(ContextRef {
                    id: made.id,
                    body: Some(made.body),
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "the decision's context could not be made; it cannot be replayed");
                None
            }
        }
    }

    /// The decision of `policies` for `facts`. The same facts make the same input document, so a
    /// decision remembered under the same policies holds for them (a device repeating a request
    /// within the second, typically).
    fn evaluate(
        &self,
        policies: &PolicySet,
        memo: &Bounded<Facts, Decision>,
        facts: Facts,
        decision_id: uuid::Uuid,
    ) -> Decision {
        if let Some(decision) = memo
            .get(&facts)
            .filter(|d| d.policy_version == policies.version())
        {
            return decision;
        }
        match policies.evaluate_value(AUTHZ, document(&self.settings, &facts)) {
            Ok(decision) => {
                memo.insert(facts, decision.clone());
                decision
            }
            Err(failed) => {
                tracing::warn!(%decision_id, policy_version = %policies.version(),
                    error = %failed.error, "policy evaluation failed; denying");
                failed.deny
            }
        }
    }

    /// The peer of `request`, parsed once per certificate.
    fn peer(&self, request: &CheckRequest) -> Result<Arc<Peer>, Reason> {
        let encoded = request.certificate();
        if encoded.is_empty() {
            return Err(Reason::new(
                NO_IDENTITY,
                "no client certificate was presented",
            ));
        }
        let key: [u8; 32] = Sha256::digest(encoded).into();
        if let Some(peer) = self.peers.get(&key) {
            return Ok(peer);
        }
        let peer = Peer::from_envoy(encoded, &self.settings.trust_domain)
            .map_err(|message| Reason::new(NO_IDENTITY, message))?;
        let peer = Arc::new(peer);
        self.peers.insert(key, Arc::clone(&peer));
        Ok(peer)
    }
}

/// The certificate of `record` that `peer` presented: the same serial and the same fingerprint.
fn on_record<'a>(record: &'a DeviceRecord, peer: &Peer) -> Option<&'a CertificateRecord> {
    record
        .certificates
        .iter()
        .find(|c| c.serial == peer.serial && c.fingerprint == peer.fingerprint)
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
            json!({"decision_id": decision_id, "reasons": verdict.decision.messages()}).to_string(),
        );
        response.set_status(Status::permission_denied("denied"));
        response.set_http_response(denied);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
