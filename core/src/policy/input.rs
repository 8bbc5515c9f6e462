//! The parts of the policy input document (described in `policies/README.md`) that both deciders
//! build: the device and its health. ext-authz makes the whole document for a request around them;
//! control-api makes the compliance document of a health report from them alone, so the two cannot
//! disagree on a field. Built directly in the engine's value type: each object's keys are laid out
//! once (see [`Shape`]) and a document only fills in the values.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Value;

/// An object with fixed keys, laid out once: [`Shape::with`] copies the layout and fills in the values
/// in the order the keys were given.
pub struct Shape<const N: usize> {
    keys: [Value; N],
    /// The object with every value `null`, in the engine's compact sorted form.
    layout: Value,
}

impl<const N: usize> Shape<N> {
    pub fn new(names: [&str; N]) -> Self {
        let keys = names.map(Value::from);
        // The conversion stores the object in the engine's compact form, which keeps its layout when
        // only values change.
        let layout = Value::from(
            keys.iter()
                .map(|key| (key.clone(), Value::Null))
                .collect::<BTreeMap<_, _>>(),
        );
        Self { keys, layout }
    }

    pub fn with(&self, values: [Value; N]) -> Value {
        let mut object = self.layout.clone();
        if let Ok(fields) = object.as_object_mut() {
            for (key, value) in self.keys.iter().zip(values) {
                if let Some(slot) = fields.get_mut(key) {
                    *slot = value;
                }
            }
        }
        object
    }
}

static DEVICE: LazyLock<Shape<5>> =
    LazyLock::new(|| Shape::new(["id", "type", "status", "os", "os_version"]));

static HEALTH: LazyLock<Shape<10>> = LazyLock::new(|| {
    Shape::new([
        "age_seconds",
        "cpu_usage",
        "memory_usage",
        "disk_usage",
        "os_patches_current",
        "antivirus_enabled",
        "disk_encrypted",
        "firewall_enabled",
        "collected_at",
        "status",
    ])
});

static COMPLIANCE: LazyLock<Shape<2>> = LazyLock::new(|| Shape::new(["device", "health"]));

/// `input.device`.
pub struct Device {
    pub id: Value,
    pub device_type: Value,
    pub status: Value,
    pub os: Value,
    pub os_version: Value,
}

pub fn device(d: Device) -> Value {
    DEVICE.with([d.id, d.device_type, d.status, d.os, d.os_version])
}

/// `input.health`: a report's values (`None` for what the agent could not determine), how old its
/// measurement is, and the verdict it got (`null` while it is being judged).
pub struct Health {
    pub age_seconds: i64,
    pub cpu_usage: Option<f64>,
    pub memory_usage: Option<f64>,
    pub disk_usage: Option<f64>,
    pub os_patches_current: Option<bool>,
    pub antivirus_enabled: Option<bool>,
    pub disk_encrypted: Option<bool>,
    pub firewall_enabled: Option<bool>,
    pub collected_at: OffsetDateTime,
    pub status: Value,
}

pub fn health(h: Health) -> Value {
    HEALTH.with([
        Value::from(h.age_seconds),
        optional(h.cpu_usage),
        optional(h.memory_usage),
        optional(h.disk_usage),
        optional(h.os_patches_current),
        optional(h.antivirus_enabled),
        optional(h.disk_encrypted),
        optional(h.firewall_enabled),
        Value::from(rfc3339(h.collected_at)),
        h.status,
    ])
}

/// The compliance rules' document: a device and its health report.
pub fn compliance(device: Value, health: Value) -> Value {
    COMPLIANCE.with([device, health])
}

pub fn optional<T: Into<Value>>(value: Option<T>) -> Value {
    value.map_or(Value::Null, Into::into)
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// A decision's context: its input document without what is the decision's own (the service, the
/// method and path, the time, and the health report's age, which follows from the time), with when
/// the health values were measured instead. Many decisions share one: it is stored once, under
/// [`Context::id`], and a replay puts the decision's own parts back ([`replayed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The first 16 bytes of the SHA-256 of `body`.
    pub id: [u8; 16],
    /// The context as JSON text, keys sorted.
    pub body: String,
}

/// The key of a context under which the health measurement's time (nanoseconds since the Unix
/// epoch) is kept, for the age to be worked out again.
const MEASURED_NS: &str = "health_measured_ns";

/// What a decision has of its own beside its context.
#[derive(Debug, Clone, Copy)]
pub struct Own<'a> {
    pub service: Option<&'a str>,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    /// The policy clock's time in whole seconds since the Unix epoch.
    pub now: i64,
}

impl Context {
    /// The context of `document`, an input document whose health (if any) was measured at
    /// `health_measured` (what its age is counted from).
    pub fn of(document: &Value, health_measured: Option<OffsetDateTime>) -> anyhow::Result<Self> {
        let mut json = serde_json::to_value(document)?;
        let object = json
            .as_object_mut()
            .ok_or_else(|| anyhow::anyhow!("an input document is an object"))?;
        object.remove("service");
        if let Some(request) = object.get_mut("request").and_then(|r| r.as_object_mut()) {
            request.remove("method");
            request.remove("path");
        }
        if let Some(time) = object.get_mut("time").and_then(|t| t.as_object_mut()) {
            time.remove("now_ns");
            time.remove("rfc3339");
        }
        if let Some(health) = object.get_mut("health").and_then(|h| h.as_object_mut()) {
            health.remove("age_seconds");
            let measured = health_measured
                .ok_or_else(|| anyhow::anyhow!("a health report needs its measurement's time"))?;
            let ns = i64::try_from(measured.unix_timestamp_nanos())?;
            object.insert(MEASURED_NS.to_owned(), ns.into());
        }
        let body = serde_json::to_string(&json)?;
        Ok(Self {
            id: Self::id_of(&body),
            body,
        })
    }

    pub fn id_of(body: &str) -> [u8; 16] {
        let digest = Sha256::digest(body.as_bytes());
        let mut id = [0; 16];
        id.copy_from_slice(&digest[..16]);
        id
    }
}

/// The input document of a decision, from its context's text and its own parts: the document the
/// decision was made on (ext-authz's tests hold the two together).
pub fn replayed(context: &str, own: Own<'_>) -> anyhow::Result<serde_json::Value> {
    replayed_from(serde_json::from_str(context)?, own)
}

/// [`replayed`] from a context already parsed (a replay parses each context once).
pub fn replayed_from(
    mut json: serde_json::Value,
    own: Own<'_>,
) -> anyhow::Result<serde_json::Value> {
    let object = json
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("a decision context is a JSON object"))?;
    let now = OffsetDateTime::from_unix_timestamp(own.now)?;
    let text = |value: Option<&str>| value.map_or(serde_json::Value::Null, Into::into);
    object.insert("service".to_owned(), text(own.service));
    let request = object
        .get_mut("request")
        .and_then(|r| r.as_object_mut())
        .ok_or_else(|| anyhow::anyhow!("a decision context has a request object"))?;
    request.insert("method".to_owned(), text(own.method));
    request.insert("path".to_owned(), text(own.path));
    let time = object
        .get_mut("time")
        .and_then(|t| t.as_object_mut())
        .ok_or_else(|| anyhow::anyhow!("a decision context has a time object"))?;
    let now_ns = i64::try_from(now.unix_timestamp_nanos())?;
    time.insert("now_ns".to_owned(), now_ns.into());
    time.insert("rfc3339".to_owned(), rfc3339(now).into());
    let measured = object.remove(MEASURED_NS).and_then(|m| m.as_i64());
    if let Some(health) = object.get_mut("health").and_then(|h| h.as_object_mut()) {
        let measured =
            measured.ok_or_else(|| anyhow::anyhow!("a decision context's health has no time"))?;
        // As `Duration::whole_seconds`: truncated towards zero, and never below zero.
        let age = ((i128::from(now_ns) - i128::from(measured)) / 1_000_000_000).max(0);
        health.insert("age_seconds".to_owned(), i64::try_from(age)?.into());
    }
    Ok(json)
}
