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
		["antivirus_enabled", false, "antivirus is not enabled"],
		["os_patches_current", false, "OS security patches are not current"],
		["disk_encrypted", false, "disk encryption is not enabled"],
		["cpu_usage", 95, "CPU usage is 90% or more"],
		["memory_usage", 90, "memory usage is 90% or more"],
		["antivirus_enabled", null, "antivirus is not enabled"],
	]
	every case in cases {
		inp := with_health(case[0], case[1])
		not authz.allow with input as inp
		case[2] in authz.reasons with input as inp
	}
}

test_never_reported_is_denied_once if {
	inp := object.remove(base, ["health"])
	not authz.allow with input as inp
	authz.reasons == {"the device has never reported its health"} with input as inp
}

test_stale_health_is_denied if {
	inp := with_health("age_seconds", 301)
	not authz.allow with input as inp
	"the device's health is stale: last report 301 s ago, maximum 300 s" in authz.reasons with input as inp
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
	"role analyst may not use service database" in authz.reasons with input as analyst
}

test_unknown_service_is_denied if {
	inp := object.union(base, {"service": "payroll"})
	not authz.allow with input as inp
	"unknown service payroll" in authz.reasons with input as inp
}

test_a_route_without_a_service_is_denied if {
	inp := object.remove(base, ["service"])
	not authz.allow with input as inp
	authz.reasons == {"the route names no service (the context extension `service`)"} with input as inp
}

test_business_hours_bind_non_admins_only if {
	weekend := object.union(base, {"time": {"now_ns": saturday_morning, "timezone": "UTC"}})
	not authz.allow with input as weekend
	"outside business hours (Mon-Fri 09:00-17:00 UTC) for role developer" in authz.reasons with input as weekend
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
	"the client certificate is revoked" in authz.reasons with input as cert
	device := object.union(base, {"device": object.union(base.device, {"status": "revoked"})})
	not authz.allow with input as device
	"device pi-1 is not active" in authz.reasons with input as device
}

test_unsupported_os_is_denied if {
	old := object.union(base, {"device": object.union(base.device, {"os": "ubuntu", "os_version": "18.04"})})
	not authz.allow with input as old
	"operating system ubuntu 18.04 is not supported" in authz.reasons with input as old
	mac := object.union(base, {"device": object.union(base.device, {"os": "macOS", "os_version": "14.2"})})
	authz.allow with input as mac
}

test_missing_identity_is_denied if {
	inp := object.remove(base, ["device", "user", "certificate"])
	not authz.allow with input as inp
	"no usable device identity in the client certificate" in authz.reasons with input as inp
}

test_unknown_health_age_is_denied_with_its_reason if {
	inp := with_health("age_seconds", null)
	not authz.allow with input as inp
	authz.reasons == {"the device's health report has no age (health.age_seconds)"} with input as inp
}
