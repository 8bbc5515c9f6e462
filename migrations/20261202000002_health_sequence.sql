-- Health reports carry a sequence number the agent keeps on disk: the control API accepts a report only
-- if its sequence is above the last one accepted for the device's enrolment, so a report recorded on
-- the way (by a TLS-terminating load balancer, say) cannot be replayed to mask a device's health.
ALTER TABLE devices ADD COLUMN health_sequence bigint;
ALTER TABLE health_reports ADD COLUMN sequence bigint;
