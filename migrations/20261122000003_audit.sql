-- The audit trail: every authorization decision (written by ext-authz, asynchronously, in batches) and
-- every change control-api makes (written in the same transaction as the change).
--
-- Partitioned by month on `occurred_at`. Partitions are named `audit_log_pYYYYMM`; control-api creates
-- them ahead (edgemesh_audit_partition) and drops whole old ones for retention. The default partition
-- catches anything outside the created months; creating a month moves its rows out of it.
--
-- The primary key (occurred_at, id) makes a record's write idempotent: a batch written twice (a timeout
-- after the commit, a replayed spool) is stored once.

CREATE TABLE audit_log (
    id                  uuid NOT NULL,
    occurred_at         timestamptz NOT NULL,
    event_type          text NOT NULL CHECK (event_type IN
                            ('authorization', 'enrollment', 'renewal', 'revocation', 'token', 'user', 'health')),
    -- What happened within the type: `created`, `revoked`, `refused`, `reported`, or for authorizations
    -- `check`.
    action              text NOT NULL,
    device_id           text,
    user_id             text,
    role                text,
    service             text,
    method              text,
    path                text,
    decision            text CHECK (decision IN ('allow', 'deny')),
    reasons             text[] NOT NULL DEFAULT '{}',
    policy_version      text,
    certificate_serial  text,
    latency_us          bigint CHECK (latency_us >= 0),
    peer_address        text,
    details             jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (occurred_at, id)
) PARTITION BY RANGE (occurred_at);

CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;

-- Queries are newest first, by device or user within a time window (the primary key serves the
-- unfiltered case).
CREATE INDEX audit_log_device_idx ON audit_log (device_id, occurred_at DESC, id DESC);
CREATE INDEX audit_log_user_idx ON audit_log (user_id, occurred_at DESC, id DESC);

-- Creates the partition of the (UTC) month containing `month` if it does not exist, moving any rows of that
-- month out of the default partition first (a default partition holding them would refuse the attach).
-- Returns whether it created one. Serialised by an advisory lock so concurrent control-api instances
-- do not race.
CREATE FUNCTION edgemesh_audit_partition(month date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    first date := date_trunc('month', month)::date;
    lo    timestamptz := first::timestamp AT TIME ZONE 'UTC';
    hi    timestamptz := (first + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    name  text := format('audit_log_p%s', to_char(first, 'YYYYMM'));
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('edgemesh_audit_partition'));
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE audit_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    EXECUTE format(
        'WITH moved AS (DELETE FROM audit_log_default WHERE occurred_at >= %L AND occurred_at < %L RETURNING *)
         INSERT INTO %I SELECT * FROM moved', lo, hi, name);
    EXECUTE format('ALTER TABLE audit_log ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    RETURN true;
END
$$;

SELECT edgemesh_audit_partition(((now() AT TIME ZONE 'UTC') + make_interval(months => m))::date)
FROM generate_series(0, 2) AS m;
