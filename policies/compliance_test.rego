# Unit tests of edgemesh.compliance: `edgemeshctl policy test` runs every `test_` rule.
package edgemesh.compliance_test

import rego.v1

import data.edgemesh.compliance

healthy := {
	"device": {"os": "debian", "os_version": "12"},
	"health": {
		"cpu_usage": 20,
		"memory_usage": 40,
		"disk_usage": 50,
		"os_patches_current": true,
		"antivirus_enabled": true,
		"disk_encrypted": true,
		"firewall_enabled": null,
	},
}

with_health(field, value) := object.union(healthy, {"health": object.union(healthy.health, {field: value})})

test_a_healthy_report_is_compliant if {
	compliance.compliant with input as healthy
	count(compliance.reasons) == 0 with input as healthy
}

test_each_failed_check_has_its_reason if {
	cases := [
		["antivirus_enabled", false, "antivirus", "antivirus is not enabled"],
		["os_patches_current", null, "os_patches", "OS security patches are not current"],
		["disk_encrypted", false, "disk_encryption", "disk encryption is not enabled"],
		["cpu_usage", 90, "cpu_usage", "CPU usage is 90% or more"],
		["memory_usage", null, "memory_usage", "memory usage is 90% or more"],
	]
	every case in cases {
		inp := with_health(case[0], case[1])
		not compliance.compliant with input as inp
		compliance.reasons == {{"code": case[2], "message": case[3]}} with input as inp
	}
}

test_an_unknown_firewall_does_not_fail_compliance if {
	compliance.compliant with input as with_health("firewall_enabled", false)
}

test_an_unsupported_os_is_not_compliant if {
	inp := object.union(healthy, {"device": {"os": "ubuntu", "os_version": "18.04"}})
	not compliance.compliant with input as inp
	compliance.reasons == {{"code": "unsupported_os", "message": "operating system ubuntu 18.04 is not supported"}} with input as inp
}

test_no_health_is_not_compliant_and_gives_no_health_reasons if {
	inp := object.remove(healthy, ["health"])
	not compliance.compliant with input as inp
	count(compliance.reasons) == 0 with input as inp
}

# ---- the boundaries, pinned (scripts/mutate-policies.py): every supported version and one just outside

on(os, version) := object.union(healthy, {"device": {"os": os, "os_version": version}})

test_every_supported_os_version_and_its_neighbours if {
	supported := [
		["ubuntu", "22.04"], ["ubuntu", "24.04"],
		["debian", "12"], ["debian", "13"],
		["raspbian", "12"], ["raspbian", "13"],
		["windows", "10"], ["windows", "11"],
		["macos", "13"], ["macos", "13.6"], ["macos", "13.0.1"], ["macos", "15.1"], ["macOS", "14"], ["Debian", "12"],
	]
	every case in supported {
		compliance.compliant with input as on(case[0], case[1])
		count(compliance.reasons) == 0 with input as on(case[0], case[1])
	}
	unsupported := [
		["ubuntu", "20.04"], ["ubuntu", "23.04"], ["ubuntu", "24.10"],
		["debian", "11"], ["debian", "14"],
		["raspbian", "11"], ["raspbian", "14"],
		["windows", "8"], ["windows", "12"],
		["macos", "12"], ["macos", "12.7"],
		["freebsd", "14"],
	]
	every case in unsupported {
		not compliance.compliant with input as on(case[0], case[1])
		compliance.reasons == {{"code": "unsupported_os", "message": sprintf("operating system %v %v is not supported", case)}} with input as on(case[0], case[1])
	}
}

test_cpu_and_memory_thresholds_are_ninety_percent if {
	compliance.compliant with input as with_health("cpu_usage", 89.9)
	not compliance.compliant with input as with_health("cpu_usage", 90)
	compliance.compliant with input as with_health("memory_usage", 89.9)
	not compliance.compliant with input as with_health("memory_usage", 90)
	compliance.reasons == {{"code": "memory_usage", "message": "memory usage is 90% or more"}} with input as with_health("memory_usage", 90)
}
