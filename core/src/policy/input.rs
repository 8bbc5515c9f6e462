//! The parts of the policy input document (described in `policies/README.md`) that both deciders
//! build: the device and its health. ext-authz makes the whole document for a request around them;
//! control-api makes the compliance document of a health report from them alone, so the two cannot
//! disagree on a field. Built directly in the engine's value type: each object's keys are laid out
//! once (see [`Shape`]) and a document only fills in the values.

use std::collections::BTreeMap;
use std::sync::LazyLock;

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
