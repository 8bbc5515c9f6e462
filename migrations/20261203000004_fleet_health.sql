-- Health at fleet scale: 100,000 devices reporting every 30 s make 288 million reports a day.
--
-- 1. The latest report's facts live on the device row, next to its verdict: a decision (ext-authz) and
--    a fleet page read one row per device and never scan the history.
-- 2. `health_reports` (the history) is partitioned by day on `received_at`, `health_reports_pYYYYMMDD`;
--    the control API creates days ahead and drops the days wholly older than its retention (14 days by
--    default) through two functions that run as the owner. A default partition catches anything
--    outside the created days; creating a day moves its rows out of it.
-- 3. A device notifies `device:<id>` only when something a decision reads changes: its identity and
--    status, its owner, the verdict and its reasons, and the reported facts. A report that changes none
--    of these (the same facts, measured again) sends no notification: freshness is not notified, every
--    ext-authz replica knows when the measurement it holds turns stale and reads the device again.

ALTER TABLE devices
    ADD COLUMN health_received_at  timestamptz,
    ADD COLUMN cpu_usage           double precision,
    ADD COLUMN memory_usage        double precision,
    ADD COLUMN disk_usage          double precision,
    ADD COLUMN disk_encrypted      boolean,
    ADD COLUMN os_patches_current  boolean,
    ADD COLUMN antivirus_enabled   boolean,
    ADD COLUMN firewall_enabled    boolean;

-- The latest report of each device's current enrolment.
UPDATE devices d SET
    health_received_at = r.received_at, cpu_usage = r.cpu_usage, memory_usage = r.memory_usage,
    disk_usage = r.disk_usage, disk_encrypted = r.disk_encrypted,
    os_patches_current = r.os_patches_current, antivirus_enabled = r.antivirus_enabled,
    firewall_enabled = r.firewall_enabled
FROM (
    SELECT DISTINCT ON (h.device_id) h.*
    FROM health_reports h JOIN devices e ON e.id = h.device_id AND h.received_at >= e.enrolled_at
    ORDER BY h.device_id, h.id DESC
) r
WHERE r.device_id = d.id;

-- The history, by day.
DROP TRIGGER health_reports_notify ON health_reports;
ALTER TABLE health_reports RENAME TO health_reports_unpartitioned;
ALTER INDEX health_reports_device_idx RENAME TO health_reports_unpartitioned_device_idx;

CREATE SEQUENCE health_reports_report_seq AS bigint;
CREATE TABLE health_reports (
    id                  bigint NOT NULL DEFAULT nextval('health_reports_report_seq'),
    device_id           text NOT NULL REFERENCES devices (id),
    certificate_serial  text NOT NULL,
    received_at         timestamptz NOT NULL DEFAULT now(),
    collected_at        timestamptz NOT NULL,
    cpu_usage           double precision CHECK (cpu_usage BETWEEN 0 AND 100),
    memory_usage        double precision CHECK (memory_usage BETWEEN 0 AND 100),
    disk_usage          double precision CHECK (disk_usage BETWEEN 0 AND 100),
    os                  text,
    os_version          text,
    kernel              text,
    uptime_seconds      bigint CHECK (uptime_seconds >= 0),
    disk_encrypted      boolean,
    os_patches_current  boolean,
    antivirus_enabled   boolean,
    firewall_enabled    boolean,
    agent_version       text NOT NULL,
    status              text NOT NULL CHECK (status IN ('healthy', 'unhealthy')),
    reasons             text[] NOT NULL DEFAULT '{}',
    sequence            bigint
) PARTITION BY RANGE (received_at);
ALTER SEQUENCE health_reports_report_seq OWNED BY health_reports.id;
CREATE TABLE health_reports_default PARTITION OF health_reports DEFAULT;
-- A device's history, newest first: the partitions are scanned newest day first and the scan stops
-- at the limit.
CREATE INDEX health_reports_device_idx ON health_reports (device_id, received_at DESC, id DESC);

-- Creates the (UTC) day's partition if it does not exist, moving that day's rows out of the default
-- partition; answers whether it created one.
CREATE FUNCTION edgemesh_health_partition(day date) RETURNS boolean LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public AS $$
DECLARE
    lo   timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi   timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
    name text := 'health_reports_p' || to_char(day, 'YYYYMMDD');
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('edgemesh_health_partition'));
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE health_reports INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    EXECUTE format(
        'WITH moved AS (DELETE FROM health_reports_default WHERE received_at >= %L AND received_at < %L RETURNING *)
         INSERT INTO %I SELECT * FROM moved', lo, hi, name);
    EXECUTE format('ALTER TABLE health_reports ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    RETURN true;
END
$$;

-- Drops the days wholly before `cutoff` and the default partition's rows before it; answers the
-- partitions dropped.
CREATE FUNCTION edgemesh_health_retain(cutoff timestamptz) RETURNS SETOF text LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public AS $$
DECLARE
    part record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('edgemesh_health_partition'));
    FOR part IN
        SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'health_reports'::regclass AND c.relname ~ '^health_reports_p[0-9]{8}$'
        ORDER BY 1
    LOOP
        IF ((to_date(substr(part.name, 17), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC') <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.name);
            RETURN NEXT part.name;
        END IF;
    END LOOP;
    DELETE FROM health_reports_default WHERE received_at < cutoff;
END
$$;
REVOKE EXECUTE ON FUNCTION edgemesh_health_partition(date) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION edgemesh_health_retain(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgemesh_health_partition(date), edgemesh_health_retain(timestamptz)
    TO edgemesh_control_api;

-- The days the history already has, today and the next two; then the history moves over.
SELECT edgemesh_health_partition(day::date)
FROM (SELECT DISTINCT (received_at AT TIME ZONE 'UTC')::date AS day FROM health_reports_unpartitioned
      UNION SELECT ((now() AT TIME ZONE 'UTC') + make_interval(days => d))::date FROM generate_series(0, 2) AS d) days;
INSERT INTO health_reports SELECT id, device_id, certificate_serial, received_at, collected_at,
    cpu_usage, memory_usage, disk_usage, os, os_version, kernel, uptime_seconds, disk_encrypted,
    os_patches_current, antivirus_enabled, firewall_enabled, agent_version, status, reasons, sequence
FROM health_reports_unpartitioned;
SELECT setval('health_reports_report_seq', coalesce((SELECT max(id) FROM health_reports_unpartitioned), 0) + 1, false);
DROP TABLE health_reports_unpartitioned;

-- ext-authz reads health from the device row only.
GRANT SELECT, INSERT ON health_reports TO edgemesh_control_api;
GRANT USAGE ON SEQUENCE health_reports_report_seq TO edgemesh_control_api;

-- Notifications: what a decision reads. `last_health_at`, `health_received_at`, `last_seen_at` and
-- `health_sequence` change with every report and are left out.
DROP TRIGGER devices_notify ON devices;
CREATE TRIGGER devices_notify AFTER INSERT OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION edgemesh_notify_change('device', 'id');
CREATE TRIGGER devices_notify_decision_change AFTER UPDATE ON devices
    FOR EACH ROW WHEN (
        (OLD.owner_id, OLD.device_type, OLD.status, OLD.os, OLD.os_version, OLD.enrolled_at,
         OLD.health_status, OLD.health_reasons, OLD.cpu_usage, OLD.memory_usage, OLD.disk_usage,
         OLD.disk_encrypted, OLD.os_patches_current, OLD.antivirus_enabled, OLD.firewall_enabled,
         OLD.health_received_at IS NULL)
        IS DISTINCT FROM
        (NEW.owner_id, NEW.device_type, NEW.status, NEW.os, NEW.os_version, NEW.enrolled_at,
         NEW.health_status, NEW.health_reasons, NEW.cpu_usage, NEW.memory_usage, NEW.disk_usage,
         NEW.disk_encrypted, NEW.os_patches_current, NEW.antivirus_enabled, NEW.firewall_enabled,
         NEW.health_received_at IS NULL))
    EXECUTE FUNCTION edgemesh_notify_change('device', 'id');

-- The control API's periodic jobs (partition upkeep, the certificate expiry scan): whichever replica
-- holds the job's advisory lock runs it when it is due, and records here when it ran, who ran it and
-- what it found, so every replica reports the same figures.
CREATE TABLE control_jobs (
    job      text PRIMARY KEY,
    ran_at   timestamptz NOT NULL,
    ran_by   text NOT NULL,
    result   jsonb NOT NULL DEFAULT '{}'
);
GRANT SELECT, INSERT, UPDATE ON control_jobs TO edgemesh_control_api;
