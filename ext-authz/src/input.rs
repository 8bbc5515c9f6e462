//! The policy input document (described in `policies/README.md`), built directly in the policy
//! engine's value type from a decision's [`Facts`], around the device and health objects core's
//! `policy::input` builds (control-api builds its compliance document from the same). Its objects
//! have fixed keys, so each object's layout is built once and a decision only fills in the values.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use edgemesh_core::policy::Value;
use edgemesh_core::policy::input::{self, Context, Shape, optional, rfc3339};
use time::OffsetDateTime;

use crate::config::Settings;
use crate::directory::DeviceRecord;
use crate::identity::Peer;
use crate::request::{CheckRequest, HttpRequest};

/// Request headers handed to the policy (the rest are not its business). Per-request identifiers such
/// as `x-request-id` stay out: they decide nothing and would make every decision's facts unique.
pub const POLICY_HEADERS: [&str; 2] = ["user-agent", "content-type"];

/// The shapes of the document's objects.
struct Shapes {
    document: Shape<8>,
    certificate: Shape<4>,
    user: Shape<2>,
    request: Shape<4>,
    time: Shape<3>,
    config: Shape<1>,
}

static SHAPES: LazyLock<Shapes> = LazyLock::new(|| Shapes {
    document: Shape::new([
        "device",
        "certificate",
        "health",
        "user",
        "service",
        "request",
        "time",
        "config",
    ]),
    certificate: Shape::new(["serial", "fingerprint", "not_after", "revoked"]),
    user: Shape::new(["id", "role"]),
    request: Shape::new(["method", "path", "host", "headers"]),
    time: Shape::new(["now_ns", "rfc3339", "timezone"]),
    config: Shape::new(["max_health_age_seconds"]),
});

/// Everything an input document is made of, besides the server's settings (fixed for its life): the
/// document is a function of these alone, so equal facts make equal documents and equal decisions,
/// which is what lets the authorizer remember decisions by their facts. The device's record and the
/// parsed certificate are compared by identity: the directory replaces a record (a new `Arc`) when
/// anything about the device changes, and never changes one in place.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Facts {
    pub record: Same<DeviceRecord>,
    pub peer: Same<Peer>,
    pub revoked: bool,
    pub service: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    /// The values of [`POLICY_HEADERS`], in that order.
    pub headers: [Option<String>; POLICY_HEADERS.len()],
    /// The time of the decision in whole seconds since the Unix epoch: finer would tell a policy of
    /// hours and days nothing, and would make every decision's facts unique.
    pub now: i64,
}

impl Facts {
    pub fn new(
        request: &CheckRequest,
        peer: &Arc<Peer>,
        record: &Arc<DeviceRecord>,
        revoked: bool,
        now: OffsetDateTime,
    ) -> Self {
        let http = request.http();
        let text = |field: fn(&HttpRequest) -> &str| http.map(|h| field(h).to_owned());
        Self {
            record: Same(Arc::clone(record)),
            peer: Same(Arc::clone(peer)),
            revoked,
            service: request.service().map(str::to_owned),
            method: text(|h| &h.method),
            path: text(|h| &h.path),
            host: text(|h| &h.host),
            headers: POLICY_HEADERS
                .map(|name| http.and_then(|h| h.header(name)).map(str::to_owned)),
            now: now.unix_timestamp(),
        }
    }
}

/// An `Arc` compared and hashed by identity (the pointer), not by value.
pub struct Same<T>(pub Arc<T>);

impl<T> Clone for Same<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> PartialEq for Same<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T> Eq for Same<T> {}

impl<T> Hash for Same<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

/// The input document for `facts`.
pub fn document(settings: &Settings, facts: &Facts) -> Value {
    let shapes = &*SHAPES;
    let now = OffsetDateTime::from_unix_timestamp(facts.now).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let (record, peer) = (&*facts.record.0, &*facts.peer.0);
    let mut headers = Value::new_object();
    if let Ok(object) = headers.as_object_mut() {
        for (name, value) in POLICY_HEADERS.iter().zip(&facts.headers) {
            if let Some(value) = value {
                object.insert(Value::from(*name), Value::from(value.as_str()));
            }
        }
    }
    let health = record.health.as_ref().map_or(Value::Null, |h| {
        input::health(input::Health {
            age_seconds: h.age_seconds(now),
            cpu_usage: h.cpu_usage,
            memory_usage: h.memory_usage,
            disk_usage: h.disk_usage,
            os_patches_current: h.os_patches_current,
            antivirus_enabled: h.antivirus_enabled,
            disk_encrypted: h.disk_encrypted,
            firewall_enabled: h.firewall_enabled,
            collected_at: h.collected_at,
            status: shared(&h.status),
        })
    });
    shapes.document.with([
        input::device(input::Device {
            id: Value::from(record.id.as_str()),
            device_type: shared(&record.device_type),
            status: shared(&record.status),
            os: shared(&record.os),
            os_version: shared(&record.os_version),
        }),
        shapes.certificate.with([
            Value::from(peer.serial.as_str()),
            hex_value(peer.fingerprint.as_bytes()),
            Value::from(rfc3339(peer.not_after)),
            Value::from(facts.revoked),
        ]),
        health,
        shapes
            .user
            .with([shared(&record.owner_id), shared(&record.role)]),
        optional(facts.service.as_deref()),
        shapes.request.with([
            optional(facts.method.as_deref()),
            optional(facts.path.as_deref()),
            optional(facts.host.as_deref()),
            headers,
        ]),
        shapes.time.with([
            Value::from(i64::try_from(now.unix_timestamp_nanos()).unwrap_or(i64::MAX)),
            Value::from(rfc3339(now)),
            Value::from(settings.timezone.as_str()),
        ]),
        shapes
            .config
            .with([Value::from(settings.max_health_age_seconds)]),
    ])
}

impl Facts {
    /// The facts with the decision's own parts (service, method, path, time) left out: equal for the
    /// decisions that share a context ([`context`]).
    pub fn context_key(&self) -> Self {
        Self {
            service: None,
            method: None,
            path: None,
            now: 0,
            ..self.clone()
        }
    }
}

/// The context of the decision on `facts`: what the audit record refers to, for the decision to be
/// replayed (core's `policy::input::replayed` makes the same document again from it).
pub fn context(settings: &Settings, facts: &Facts) -> anyhow::Result<Context> {
    let measured = facts.record.0.health.as_ref().map(|h| h.measured_at());
    Context::of(&document(settings, facts), measured)
}

/// A string the directory shares between devices, shared with the policy input too (no copy).
fn shared(text: &Arc<str>) -> Value {
    Value::String(Arc::clone(text))
}

/// 32 bytes as 64 lower-case hex digits, formatted on the stack.
fn hex_value(bytes: &[u8; 32]) -> Value {
    let mut text = [0u8; 64];
    // Cannot fail: the buffer is exactly twice the input.
    let _ = hex::encode_to_slice(bytes, &mut text);
    Value::from(std::str::from_utf8(&text).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::hash::BuildHasher;

    use bytes::Bytes;
    use envoy_types::pb::envoy::service::auth::v3 as envoy;
    use prost::Message;
    use time::macros::datetime;

    use edgemesh_core::cert::Fingerprint;
    use edgemesh_core::id::DeviceId;

    use super::*;
    use crate::config::Clock;
    use crate::directory::HealthRecord;

    /// The CheckRequest Envoy sends for a GET of `path` on route `api` with `headers`.
    fn check_request(path: &str, headers: &[(&str, &str)]) -> CheckRequest {
        let request = envoy::CheckRequest {
            attributes: Some(envoy::AttributeContext {
                request: Some(envoy::attribute_context::Request {
                    http: Some(envoy::attribute_context::HttpRequest {
                        method: "GET".to_owned(),
                        path: path.to_owned(),
                        host: "edgemesh.local".to_owned(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                            .collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: HashMap::from([("service".to_owned(), "api".to_owned())]),
                ..Default::default()
            }),
        };
        CheckRequest::decode(Bytes::from(request.encode_to_vec())).expect("decodes")
    }

    /// Alice's (a developer's) Raspberry Pi `pi-1`, with `health`.
    fn device(health: Option<HealthRecord>) -> DeviceRecord {
        DeviceRecord {
            id: "pi-1".to_owned(),
            device_type: "raspberrypi".into(),
            status: "active".into(),
            os: "debian".into(),
            os_version: "12".into(),
            owner_id: "alice".into(),
            role: "developer".into(),
            certificates: Vec::new(),
            health,
        }
    }

    /// Every value lands under its own key: the shapes are filled by position, so a value given out of
    /// order would swap two facts (CPU for memory, say) without failing to build. The time is whole
    /// seconds and per-request identifiers stay out.
    #[test]
    fn the_document_holds_each_fact_under_its_key() {
        let request = check_request(
            "/api/orders",
            &[
                ("user-agent", "curl/8.5.0"),
                ("x-request-id", "r-1"),
                ("content-type", "application/json"),
                ("cookie", "not the policy's business"),
            ],
        );
        let record = device(Some(HealthRecord {
            received_at: datetime!(2026-11-18 10:29:31 UTC),
            collected_at: datetime!(2026-11-18 10:29:30 UTC),
            cpu_usage: Some(22.5),
            memory_usage: Some(41.5),
            disk_usage: Some(57.25),
            disk_encrypted: Some(true),
            os_patches_current: Some(false),
            antivirus_enabled: Some(true),
            firewall_enabled: None,
            status: "unhealthy".into(),
        }));
        let peer = Peer {
            device: DeviceId::parse("pi-1").expect("valid id"),
            serial: "4132f0bb".to_owned(),
            fingerprint: Fingerprint::from_hex(&"ab".repeat(32)).expect("hex"),
            not_after: datetime!(2026-12-22 09:45:05 UTC),
        };
        let now = datetime!(2026-11-18 10:30:00.987654321 UTC);
        let settings = Settings {
            trust_domain: "edgemesh.local".parse().expect("valid trust domain"),
            ca_der: Arc::from(Vec::new()),
            max_health_age_seconds: 300,
            timezone: "Europe/Berlin".to_owned(),
            clock: Clock::Fixed(now),
        };
        let facts = Facts::new(
            &request,
            &Arc::new(peer),
            &Arc::new(record),
            false,
            settings.clock.now(),
        );
        let document = serde_json::to_value(document(&settings, &facts)).expect("serialises");
        assert_eq!(
            document,
            serde_json::json!({
                "device": {"id": "pi-1", "type": "raspberrypi", "status": "active", "os": "debian", "os_version": "12"},
                "certificate": {
                    "serial": "4132f0bb",
                    "fingerprint": "ab".repeat(32),
                    "not_after": "2026-12-22T09:45:05Z",
                    "revoked": false,
                },
                "health": {
                    "age_seconds": 30,
                    "cpu_usage": 22.5,
                    "memory_usage": 41.5,
                    "disk_usage": 57.25,
                    "os_patches_current": false,
                    "antivirus_enabled": true,
                    "disk_encrypted": true,
                    "firewall_enabled": null,
                    "collected_at": "2026-11-18T10:29:30Z",
                    "status": "unhealthy",
                },
                "user": {"id": "alice", "role": "developer"},
                "service": "api",
                "request": {
                    "method": "GET",
                    "path": "/api/orders",
                    "host": "edgemesh.local",
                    "headers": {"user-agent": "curl/8.5.0", "content-type": "application/json"},
                },
                "time": {"now_ns": 1_794_997_800_000_000_000_i64, "rfc3339": "2026-11-18T10:30:00Z", "timezone": "Europe/Berlin"},
                "config": {"max_health_age_seconds": 300},
            })
        );
    }

    /// Facts are equal exactly when every part is: the same record and certificate (the same
    /// objects, not equal copies), revocation, route, request, policy headers and second.
    #[test]
    fn facts_differ_when_any_part_does() {
        let record = Arc::new(device(None));
        let certificate = || {
            Arc::new(Peer {
                device: DeviceId::parse("pi-1").expect("valid id"),
                serial: "01".to_owned(),
                fingerprint: Fingerprint::from_hex(&"01".repeat(32)).expect("hex"),
                not_after: datetime!(2026-12-22 09:45:05 UTC),
            })
        };
        let peer = certificate();
        let at = datetime!(2026-11-18 10:30:00.25 UTC);
        let plain = check_request("/api/orders", &[("user-agent", "agent/1")]);
        let base = Facts::new(&plain, &peer, &record, false, at);
        let hasher = std::hash::RandomState::new();
        let same = |a: &Facts, b: &Facts| a == b && hasher.hash_one(a) == hasher.hash_one(b);
        // Another request id, another connection, the same second: the same facts.
        let again = check_request(
            "/api/orders",
            &[("user-agent", "agent/1"), ("x-request-id", "r-2")],
        );
        assert!(same(
            &base,
            &Facts::new(
                &again,
                &peer,
                &record,
                false,
                at + time::Duration::milliseconds(700)
            ),
        ));
        let copy = Arc::new((*record).clone());
        let differing = [
            Facts::new(&plain, &peer, &copy, false, at),
            Facts::new(&plain, &certificate(), &record, false, at),
            Facts::new(&plain, &peer, &record, true, at),
            Facts::new(
                &plain,
                &peer,
                &record,
                false,
                at + time::Duration::seconds(1),
            ),
            Facts::new(
                &check_request("/api/other", &[("user-agent", "agent/1")]),
                &peer,
                &record,
                false,
                at,
            ),
            Facts::new(
                &check_request("/api/orders", &[("user-agent", "agent/2")]),
                &peer,
                &record,
                false,
                at,
            ),
            Facts::new(
                &check_request(
                    "/api/orders",
                    &[("user-agent", "agent/1"), ("content-type", "text/plain")],
                ),
                &peer,
                &record,
                false,
                at,
            ),
            Facts::new(
                &check_request("/api/orders", &[]),
                &peer,
                &record,
                false,
                at,
            ),
        ];
        for (i, facts) in differing.iter().enumerate() {
            assert!(base != *facts, "variant {i} equals the base");
        }
    }

    /// A replayed decision is evaluated on the document it was made on: the context the audit keeps
    /// and the decision's own parts make it again, key for key and value for value, with and without
    /// health, headers and a route, at any second (the health's age follows).
    #[test]
    fn a_context_and_the_decisions_own_parts_make_the_same_document_again() {
        let settings = Settings {
            trust_domain: "edgemesh.local".parse().expect("valid trust domain"),
            ca_der: Arc::from(Vec::new()),
            max_health_age_seconds: 300,
            timezone: "Europe/Berlin".to_owned(),
            clock: Clock::System,
        };
        let peer = Arc::new(Peer {
            device: DeviceId::parse("pi-1").expect("valid id"),
            serial: "4132f0bb".to_owned(),
            fingerprint: Fingerprint::from_hex(&"cd".repeat(32)).expect("hex"),
            not_after: datetime!(2026-12-22 09:45:05 UTC),
        });
        let health = HealthRecord {
            received_at: datetime!(2026-11-18 10:29:31.5 UTC),
            collected_at: datetime!(2026-11-18 10:29:30.123456 UTC),
            cpu_usage: Some(0.1 + 0.2),
            memory_usage: Some(41.5),
            disk_usage: None,
            disk_encrypted: Some(true),
            os_patches_current: Some(false),
            antivirus_enabled: Some(true),
            firewall_enabled: None,
            status: "healthy".into(),
        };
        let ahead = HealthRecord {
            collected_at: datetime!(2026-11-18 10:40:00 UTC),
            ..health.clone()
        };
        let requests = [
            check_request("/api/orders?id=7", &[("user-agent", "curl/8.5.0")]),
            check_request("/", &[("content-type", "text/plain"), ("cookie", "c")]),
            CheckRequest::decode(Bytes::new()).expect("an empty request decodes"),
        ];
        let mut contexts = std::collections::HashSet::new();
        for record in [None, Some(health), Some(ahead)] {
            let record = Arc::new(device(record));
            for request in &requests {
                for now in [
                    datetime!(2026-11-18 10:29:00 UTC),
                    datetime!(2026-11-18 10:30:00.999 UTC),
                    datetime!(2026-11-18 10:35:01 UTC),
                ] {
                    for revoked in [false, true] {
                        let facts = Facts::new(request, &peer, &record, revoked, now);
                        let live = serde_json::to_value(document(&settings, &facts)).expect("json");
                        let made = context(&settings, &facts).expect("a context");
                        assert_eq!(made.id, Context::id_of(&made.body));
                        let own = edgemesh_core::policy::input::Own {
                            service: facts.service.as_deref(),
                            method: facts.method.as_deref(),
                            path: facts.path.as_deref(),
                            now: facts.now,
                        };
                        let replayed = edgemesh_core::policy::input::replayed(&made.body, own)
                            .expect("replays");
                        assert_eq!(replayed, live, "{}", made.body);
                        // The decision's own parts are not in the context: it is shared.
                        let shared = context(&settings, &facts.context_key()).expect("a context");
                        assert_eq!(shared, made);
                        contexts.insert(made.id);
                    }
                }
            }
        }
        // One per record, request headers and revocation; not one per second or path.
        assert_eq!(contexts.len(), 3 * 3 * 2);
    }

    #[test]
    fn a_shape_fills_its_keys_with_the_values_in_order() {
        let shape = Shape::new(["zeta", "alpha", "mid"]);
        let filled = shape.with([Value::from(1), Value::from("two"), Value::Null]);
        let expected: serde_json::Value =
            serde_json::json!({"zeta": 1, "alpha": "two", "mid": null});
        assert_eq!(serde_json::to_value(&filled).expect("serialises"), expected);
        // The layout is shared, never written through: a second object starts from nulls again.
        let second = shape.with([Value::Null, Value::Null, Value::from(true)]);
        assert_eq!(
            serde_json::to_value(&second).expect("serialises"),
            serde_json::json!({"zeta": null, "alpha": null, "mid": true})
        );
    }
}
