# EdgeMesh device compliance: is this device's reported health acceptable?
#
# control-api evaluates it on every health report to store the device's verdict (`healthy` when
# `compliant`, else `unhealthy` with `reasons`, `{"code", "message"}` objects as in authz.rego); authz.rego uses the same rules for every request, so the
# stored verdict and the enforced one cannot disagree. Input: `device` ({os, os_version}) and `health`
# (the report's values, `null` for what the agent could not determine). Checks are positive, so an
# unknown value fails them.
package edgemesh.compliance

import rego.v1

default compliant := false

# The checks spelled out in one body, as in authz.rego's `allow` (the same reason: each rule called
# costs a call, and this runs for every proxied request); the named rules below are the same checks
# again, for the reasons, and `make test` holds the two together.
compliant if {
	is_object(input.health)
	input.health.os_patches_current == true
	input.health.antivirus_enabled == true
	input.health.disk_encrypted == true
	is_number(input.health.cpu_usage)
	input.health.cpu_usage < 90
	is_number(input.health.memory_usage)
	input.health.memory_usage < 90
	os_supported
}

patches_ok if input.health.os_patches_current == true

antivirus_ok if input.health.antivirus_enabled == true

disk_encryption_ok if input.health.disk_encrypted == true

# `null < 90` holds in Rego (values of different types are ordered), so the type is checked first.
cpu_ok if {
	is_number(input.health.cpu_usage)
	input.health.cpu_usage < 90
}

memory_ok if {
	is_number(input.health.memory_usage)
	input.health.memory_usage < 90
}

# Health-value reasons only for a device that reported: "never reported" is the caller's single reason.
health_reasons contains {"code": "os_patches", "message": "OS security patches are not current"} if not patches_ok

health_reasons contains {"code": "antivirus", "message": "antivirus is not enabled"} if not antivirus_ok

health_reasons contains {"code": "disk_encryption", "message": "disk encryption is not enabled"} if not disk_encryption_ok

health_reasons contains {"code": "cpu_usage", "message": "CPU usage is 90% or more"} if not cpu_ok

health_reasons contains {"code": "memory_usage", "message": "memory usage is 90% or more"} if not memory_ok

reasons contains reason if {
	is_object(input.health)
	some reason in health_reasons
}

# ---- operating system

supported_os_versions := {
	"ubuntu": {"22.04", "24.04"},
	"debian": {"12", "13"},
	"raspbian": {"12", "13"},
	"windows": {"10", "11"},
}

os_supported if {
	some version in supported_os_versions[lower(input.device.os)]
	input.device.os_version == version
}

os_supported if {
	lower(input.device.os) == "macos"
	to_number(split(input.device.os_version, ".")[0]) >= 13
}

reasons contains {"code": "unsupported_os", "message": sprintf("operating system %v %v is not supported", [
	object.get(input, ["device", "os"], null),
	object.get(input, ["device", "os_version"], null),
])} if not os_supported
