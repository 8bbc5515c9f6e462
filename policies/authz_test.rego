# Unit tests of edgemesh.authz: `edgemeshctl policy test` runs every `test_` rule (as `opa test` would).
package edgemesh.authz_test

import rego.v1

import data.edgemesh.authz

# Wednesday 2026-11-18 10:30 UTC.
wednesday_morning := 1794997800000000000

# Saturday 2026-11-21 10:30 UTC.
saturday_morning := 1795257000000000000

healthy := {
	"age_seconds": 30,
	"cpu_usage": 20,
	"memory_usage": 40,
	"disk_usage": 50,
	"os_patches_current": true,
	"antivirus_enabled": true,
	"disk_encrypted": true,
}

base := {
	"device": {"id": "pi-1", "status": "active", "os": "debian", "os_version": "12"},
	"certificate": {"serial": "41", "revoked": false},
	"health": healthy,
	"user": {"id": "alice", "role": "developer"},
	"service": "api",
	"request": {"method": "GET", "path": "/api/x"},
	"time": {"now_ns": wednesday_morning, "timezone": "UTC"},
	"config": {"max_health_age_seconds": 300},
}

with_health(field, value) := object.union(base, {"health": object.union(healthy, {field: value})})

test_healthy_developer_in_business_hours_is_allowed if {
	authz.allow with input as base
	count(authz.reasons) == 0 with input as base
}

test_unhealthy_device_is_denied_with_each_reason if {
	cases := [
		["antivirus_enabled", false, "antivirus", "antivirus is not enabled"],
		["os_patches_current", false, "os_patches", "OS security patches are not current"],
		["disk_encrypted", false, "disk_encryption", "disk encryption is not enabled"],
		["cpu_usage", 95, "cpu_usage", "CPU usage is 90% or more"],
		["memory_usage", 90, "memory_usage", "memory usage is 90% or more"],
		["antivirus_enabled", null, "antivirus", "antivirus is not enabled"],
	]
	every case in cases {
		inp := with_health(case[0], case[1])
		not authz.allow with input as inp
		{"code": case[2], "message": case[3]} in authz.reasons with input as inp
	}
}

test_never_reported_is_denied_once if {
	inp := object.remove(base, ["health"])
	not authz.allow with input as inp
	authz.reasons == {{"code": "never_reported", "message": "the device has never reported its health"}} with input as inp
}

test_stale_health_is_denied if {
	inp := with_health("age_seconds", 301)
	not authz.allow with input as inp
	{"code": "stale_health", "message": "the device's health is stale: last report 301 s ago, maximum 300 s"} in authz.reasons with input as inp
}

test_roles_and_services if {
	cases := [
		["admin", "database", true],
		["developer", "database", true],
		["analyst", "database", false],
		["analyst", "analytics", true],
		["developer", "analytics", false],
		["analyst", "storage", true],
	]
	every case in cases {
		inp := object.union(base, {"user": {"id": "u", "role": case[0]}, "service": case[1]})
		(authz.allow == case[2]) with input as inp
	}
	analyst := object.union(base, {"user": {"id": "u", "role": "analyst"}, "service": "database"})
	{"code": "role", "message": "role analyst may not use service database"} in authz.reasons with input as analyst
}

test_unknown_service_is_denied if {
	inp := object.union(base, {"service": "payroll"})
	not authz.allow with input as inp
	{"code": "unknown_service", "message": "unknown service payroll"} in authz.reasons with input as inp
}

test_an_owner_without_a_role_is_denied if {
	inp := object.union(object.remove(base, ["user"]), {"user": {"id": "u"}})
	not authz.allow with input as inp
	{"code": "no_role", "message": "the device's owner has no known role"} in authz.reasons with input as inp
}

test_a_route_without_a_service_is_denied if {
	inp := object.remove(base, ["service"])
	not authz.allow with input as inp
	authz.reasons == {{"code": "no_service", "message": "the route names no service (the context extension `service`)"}} with input as inp
}

test_business_hours_bind_non_admins_only if {
	weekend := object.union(base, {"time": {"now_ns": saturday_morning, "timezone": "UTC"}})
	not authz.allow with input as weekend
	{"code": "business_hours", "message": "outside business hours (Mon-Fri 09:00-17:00 UTC) for role developer"} in authz.reasons with input as weekend
	admin := object.union(weekend, {"user": {"id": "root", "role": "admin"}})
	authz.allow with input as admin
}

test_business_hours_follow_the_time_zone if {
	# 10:30 UTC is 19:30 in Tokyo.
	tokyo := object.union(base, {"time": {"now_ns": wednesday_morning, "timezone": "Asia/Tokyo"}})
	not authz.allow with input as tokyo
}

test_revoked_certificate_and_device_are_denied if {
	cert := object.union(base, {"certificate": {"serial": "41", "revoked": true}})
	not authz.allow with input as cert
	{"code": "revoked", "message": "the client certificate is revoked"} in authz.reasons with input as cert
	device := object.union(base, {"device": object.union(base.device, {"status": "revoked"})})
	not authz.allow with input as device
	{"code": "device_inactive", "message": "device pi-1 is not active"} in authz.reasons with input as device
}

test_unsupported_os_is_denied if {
	old := object.union(base, {"device": object.union(base.device, {"os": "ubuntu", "os_version": "18.04"})})
	not authz.allow with input as old
	{"code": "unsupported_os", "message": "operating system ubuntu 18.04 is not supported"} in authz.reasons with input as old
	mac := object.union(base, {"device": object.union(base.device, {"os": "macOS", "os_version": "14.2"})})
	authz.allow with input as mac
}

test_missing_identity_is_denied if {
	inp := object.remove(base, ["device", "user", "certificate"])
	not authz.allow with input as inp
	{"code": "no_identity", "message": "no usable device identity in the client certificate"} in authz.reasons with input as inp
}

test_unknown_health_age_is_denied_with_its_reason if {
	inp := with_health("age_seconds", null)
	not authz.allow with input as inp
	authz.reasons == {{"code": "no_health_age", "message": "the device's health report has no age (health.age_seconds)"}} with input as inp
}

# ---- the boundaries, pinned: any change of an operator or a constant in the policies fails a test
# (scripts/mutate-policies.py applies every such change and checks that one does).

# Allowed exactly when there is no reason, and as `allowed` says.
# (A comparison is bound to a variable before it is compared again: regorus 0.14 leaves
# `(count(x) == 0) == allowed` undefined.)
decides(inp, allowed) if {
	allow_is(inp, allowed)
	reasonless_is(inp, allowed)
}

allow_is(inp, allowed) if {
	decision := authz.allow with input as inp
	decision == allowed
}

reasonless_is(inp, allowed) if {
	found := authz.reasons with input as inp
	none := count(found) == 0
	none == allowed
}

at(now_ns) := object.union(base, {"time": {"now_ns": now_ns, "timezone": "UTC"}})

test_business_hours_start_at_nine_and_end_at_five_on_weekdays if {
	cases := [
		[1794992399000000000, false], # Wednesday 08:59:59
		[1794992400000000000, true], # Wednesday 09:00:00
		[1795021199000000000, true], # Wednesday 16:59:59
		[1795021200000000000, false], # Wednesday 17:00:00
		[1795193999000000000, true], # Friday 16:59:59
		[saturday_morning, false], # Saturday 10:30
		[1795343400000000000, false], # Sunday 10:30
		[1795424400000000000, true], # Monday 09:00:00
	]
	every case in cases {
		decides(at(case[0]), case[1])
	}
}

test_admins_are_not_bound_by_business_hours if {
	every now_ns in [1794992399000000000, 1795021200000000000, saturday_morning, 1795343400000000000] {
		decides(object.union(at(now_ns), {"user": {"id": "root", "role": "admin"}}), true)
	}
}

test_every_role_and_service_pair if {
	cases := [
		["admin", "database", true], ["admin", "api", true], ["admin", "storage", true], ["admin", "analytics", true],
		["developer", "database", true], ["developer", "api", true], ["developer", "storage", true], ["developer", "analytics", false],
		["analyst", "database", false], ["analyst", "api", true], ["analyst", "storage", true], ["analyst", "analytics", true],
	]
	every case in cases {
		decides(object.union(base, {"user": {"id": "u", "role": case[0]}, "service": case[1]}), case[2])
	}
}

test_a_report_exactly_at_the_maximum_age_is_fresh if {
	decides(with_health("age_seconds", 300), true)
	decides(with_health("age_seconds", 301), false)
	# Without a configured maximum, the default is 300 s too.
	unconfigured := object.remove(base, ["config"])
	decides(object.union(unconfigured, {"health": object.union(healthy, {"age_seconds": 300})}), true)
	decides(object.union(unconfigured, {"health": object.union(healthy, {"age_seconds": 301})}), false)
	{"code": "stale_health", "message": "the device's health is stale: last report 301 s ago, maximum 300 s"} in authz.reasons with input as object.union(unconfigured, {"health": object.union(healthy, {"age_seconds": 301})})
}

test_the_configured_maximum_age_and_time_zone_are_used if {
	short := object.union(base, {"config": {"max_health_age_seconds": 60}})
	decides(object.union(short, {"health": object.union(healthy, {"age_seconds": 60})}), true)
	decides(object.union(short, {"health": object.union(healthy, {"age_seconds": 61})}), false)
	# Without a time zone, UTC: Wednesday 10:30 UTC is within business hours.
	decides(object.union(object.remove(base, ["time"]), {"time": {"now_ns": wednesday_morning}}), true)
}

test_identity_certificate_and_status_must_be_exactly_right if {
	decides(object.union(base, {"device": object.union(base.device, {"id": ""})}), false)
	# No revocation status is not "not revoked" (object.union merges, so the field is removed).
	decides(object.union(object.remove(base, ["certificate"]), {"certificate": {"serial": "41"}}), false)
	decides(object.union(base, {"device": object.union(base.device, {"status": "suspended"})}), false)
}

test_cpu_and_memory_just_under_ninety_percent_pass if {
	decides(with_health("cpu_usage", 89.9), true)
	decides(with_health("cpu_usage", 90), false)
	decides(with_health("memory_usage", 89.9), true)
	decides(with_health("memory_usage", 90), false)
}

test_each_health_flag_must_be_true if {
	every field in ["os_patches_current", "antivirus_enabled", "disk_encrypted"] {
		decides(with_health(field, false), false)
		decides(with_health(field, null), false)
	}
}
