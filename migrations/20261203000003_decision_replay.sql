-- Decision replay: each authorization record keeps what is needed to evaluate it again exactly.
--
-- A decision's input document is its request (service, method, path: already columns) and its time,
-- around a part that many decisions share: the device, its certificate, owner and health, the request's
-- host and the headers the policy reads, the server's settings. That shared part, the decision's
-- context, is stored once, content-addressed (`decision_contexts`, keyed by the first 16 bytes of the
-- SHA-256 of its text), and each record refers to it: 17 bytes per decision. The time is the record's
-- `occurred_at` in whole seconds, unless the policy clock said otherwise (a configured clock, or a
-- decision that straddled a second): then `decided_at` holds it (NULL costs nothing). Denies made
-- before the policies ran (no usable certificate, an unknown device) have no context: there is nothing
-- to replay.
--
-- `policy_versions` keeps the policy files of every version ext-authz has loaded, so that a decision
-- can be explained under the version that made it.

ALTER TABLE audit_log
    ADD COLUMN context bytea CHECK (length(context) = 16),
    ADD COLUMN decided_at bigint;

ALTER TABLE audit_log
    ALTER COLUMN context SET STATISTICS 0,
    ALTER COLUMN decided_at SET STATISTICS 0;

SELECT edgemesh_audit_partition_settings(inhrelid::regclass)
FROM pg_inherits WHERE inhparent = 'audit_log'::regclass;

CREATE TABLE decision_contexts (
    id         bytea PRIMARY KEY CHECK (length(id) = 16),
    -- The context's JSON text verbatim: its hash is the id.
    body       text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE policy_versions (
    version    text PRIMARY KEY,
    -- [[file name, source], …] in load order.
    files      jsonb NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now()
);

GRANT INSERT, SELECT ON decision_contexts, policy_versions TO edgemesh_ext_authz;
GRANT SELECT ON decision_contexts, policy_versions TO edgemesh_control_api;
