# EdgeMesh authorization: may this device, in its current health, owned by this user, use this service now?
#
# The decision is `allow` (default false) and, for a deny, `reasons`: one human-readable sentence per
# failed check. Every check is written positively ("this is known to be fine"), so a missing or unknown
# value fails it: the policy fails closed. The input document is described in README.md.
package edgemesh.authz

import rego.v1

default allow := false

allow if {
	identity_ok
	certificate_ok
	device_active
	health_reported
	health_fresh
	compliant
	role_permitted
	time_permitted
}

# ---- identity and certificate

identity_ok if {
	is_string(input.device.id)
	input.device.id != ""
}

certificate_ok if input.certificate.revoked == false

device_active if input.device.status == "active"

reasons contains "no usable device identity in the client certificate" if not identity_ok

reasons contains "the client certificate is revoked" if {
	identity_ok
	not certificate_ok
}

reasons contains sprintf("device %s is not active", [input.device.id]) if {
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

# The health values and the operating system are judged by the compliance rules (compliance.rego),
# the same rules control-api uses for the verdict it stores.
compliant if data.edgemesh.compliance.compliant

reasons contains "the device has never reported its health" if not health_reported

reasons contains sprintf("the device's health is stale: last report %d s ago, maximum %d s", [
	input.health.age_seconds,
	max_health_age_seconds,
]) if {
	health_reported
	not health_fresh
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

reasons contains "the device's owner has no known role" if not is_string(input.user.role)

reasons contains sprintf("role %s may not use service %s", [input.user.role, input.service]) if {
	is_string(input.user.role)
	input.service in object.keys(service_roles)
	not role_permitted
}

reasons contains sprintf("unknown service %v", [input.service]) if {
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

reasons contains sprintf("outside business hours (Mon-Fri 09:00-17:00 %s) for role %s", [timezone, input.user.role]) if {
	is_string(input.user.role)
	not time_permitted
}
