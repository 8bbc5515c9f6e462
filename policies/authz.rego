# EdgeMesh authorization: may this device, in its current health, owned by this user, use this service now?
#
# The decision is `allow` (default false) and, for a deny, `reasons`: one `{"code", "message"}` object
# per failed check, a short code that metrics and clients match on and a sentence for people. Every check is written positively ("this is known to be fine"), so a missing or unknown
# value fails it: the policy fails closed. The input document is described in README.md.
package edgemesh.authz

import rego.v1

default allow := false

# Every check, spelled out in one body: the policy runs for every proxied request, and each rule a
# decision calls costs the engine a call (an allowed request took 1.4 to 1.6 times as long to decide
# when `allow` listed the named rules below). The named rules state the same checks once more, for
# the reasons; `make test` holds the two together (every input it builds is allowed exactly when it
# has no reason).
allow if {
	is_string(input.device.id)
	input.device.id != ""
	input.certificate.revoked == false
	input.device.status == "active"
	is_number(input.health.age_seconds)
	input.health.age_seconds <= max_health_age_seconds
	# The health values and the operating system, judged by the compliance rules (compliance.rego),
	# the same rules control-api uses for the verdict it stores.
	data.edgemesh.compliance.compliant
	input.user.role in service_roles[input.service]
	time_permitted
}

# ---- identity and certificate

identity_ok if {
	is_string(input.device.id)
	input.device.id != ""
}

certificate_ok if input.certificate.revoked == false

device_active if input.device.status == "active"

reasons contains {"code": "no_identity", "message": "no usable device identity in the client certificate"} if not identity_ok

reasons contains {"code": "revoked", "message": "the client certificate is revoked"} if {
	identity_ok
	not certificate_ok
}

reasons contains {"code": "device_inactive", "message": sprintf("device %s is not active", [input.device.id])} if {
	identity_ok
	not device_active
}

# ---- device health

max_health_age_seconds := object.get(input, ["config", "max_health_age_seconds"], 300)

health_reported if is_object(input.health)

health_fresh if {
	health_reported
	is_number(input.health.age_seconds)
	input.health.age_seconds <= max_health_age_seconds
}

reasons contains {"code": "never_reported", "message": "the device has never reported its health"} if not health_reported

reasons contains {"code": "stale_health", "message": sprintf("the device's health is stale: last report %d s ago, maximum %d s", [
	input.health.age_seconds,
	max_health_age_seconds,
])} if {
	health_reported
	is_number(input.health.age_seconds)
	not health_fresh
}

reasons contains {"code": "no_health_age", "message": "the device's health report has no age (health.age_seconds)"} if {
	health_reported
	not is_number(input.health.age_seconds)
}

reasons contains reason if {
	identity_ok
	some reason in data.edgemesh.compliance.reasons
}

# ---- role and service

service_roles := {
	"database": {"admin", "developer"},
	"api": {"admin", "developer", "analyst"},
	"storage": {"admin", "developer", "analyst"},
	"analytics": {"admin", "analyst"},
}

role_permitted if input.user.role in service_roles[input.service]

reasons contains {"code": "no_role", "message": "the device's owner has no known role"} if not is_string(input.user.role)

reasons contains {"code": "role", "message": sprintf("role %s may not use service %s", [input.user.role, input.service])} if {
	is_string(input.user.role)
	input.service in object.keys(service_roles)
	not role_permitted
}

reasons contains {"code": "no_service", "message": "the route names no service (the context extension `service`)"} if not is_string(input.service)

reasons contains {"code": "unknown_service", "message": sprintf("unknown service %v", [input.service])} if {
	is_string(input.service)
	not input.service in object.keys(service_roles)
}

# ---- business hours: Monday to Friday, 09:00 to 17:00 in the configured time zone, except for admins

timezone := object.get(input, ["time", "timezone"], "UTC")

business_hours if {
	clock := time.clock([input.time.now_ns, timezone])
	clock[0] >= 9
	clock[0] < 17
	not time.weekday([input.time.now_ns, timezone]) in {"Saturday", "Sunday"}
}

time_permitted if input.user.role == "admin"

time_permitted if business_hours

reasons contains {"code": "business_hours", "message": sprintf("outside business hours (Mon-Fri 09:00-17:00 %s) for role %s", [timezone, input.user.role])} if {
	is_string(input.user.role)
	not time_permitted
}
