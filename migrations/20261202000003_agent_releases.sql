-- Agent releases and their rollout. An operator signs a release offline (the manifest names the
-- binary's SHA-256 and size; the signature covers the manifest); the control API stores both verbatim
-- with the binary and holds no signing key. Each channel has one target version rolled out to a
-- percentage of its devices, chosen by a stable hash of the device id. Agents report the version they
-- run with every health report, and each step of an update (taken, refused, rolled back) as an
-- `agent_update` audit event.

CREATE TABLE agent_releases (
    version      text NOT NULL,
    target       text NOT NULL,
    -- Byte for byte as signed.
    manifest     text NOT NULL,
    signature    text NOT NULL,
    key_id       text NOT NULL,
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size         bigint NOT NULL CHECK (size > 0),
    min_version  text NOT NULL,
    expires_at   timestamptz NOT NULL,
    content      bytea NOT NULL CHECK (octet_length(content) = size),
    published_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (version, target)
);

CREATE TABLE agent_rollouts (
    channel    text PRIMARY KEY CHECK (channel ~ '^[a-z0-9][a-z0-9-]{0,31}$'),
    version    text NOT NULL,
    percent    smallint NOT NULL CHECK (percent BETWEEN 0 AND 100),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- What the device last said it runs, the channel it follows, and the last step of an update it reported
-- (`{version, running_version, step, reason, detail, at}`; every step is also in the audit log).
ALTER TABLE devices
    ADD COLUMN agent_version text,
    ADD COLUMN agent_target text,
    ADD COLUMN update_channel text NOT NULL DEFAULT 'stable'
        CHECK (update_channel ~ '^[a-z0-9][a-z0-9-]{0,31}$'),
    ADD COLUMN last_update jsonb;

GRANT SELECT, INSERT, UPDATE ON agent_releases, agent_rollouts TO edgemesh_control_api;

DO $$
DECLARE
    part regclass;
BEGIN
    ALTER TABLE audit_log DROP CONSTRAINT IF EXISTS audit_log_event_type_check;
    FOR part IN
        SELECT c.conrelid::regclass FROM pg_constraint c JOIN pg_inherits i ON i.inhrelid = c.conrelid
        WHERE i.inhparent = 'audit_log'::regclass AND c.conname = 'audit_log_event_type_check'
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT audit_log_event_type_check', part);
    END LOOP;
    ALTER TABLE audit_log ADD CONSTRAINT audit_log_event_type_check CHECK (event_type IN
        ('authorization', 'enrollment', 'renewal', 'revocation', 'token', 'user', 'health', 'console',
         'release', 'agent_update'));
END
$$;
