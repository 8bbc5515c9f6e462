-- Shadow (dry-run) decisions: on a route whose `context_extensions` ask for it (`shadow: "true"`),
-- ext-authz evaluates the candidate policy set (EDGEMESH_SHADOW_POLICY_DIR) beside the enforced one and
-- records what it would have decided. The enforced decision is the answer; these columns only say how
-- the candidate differs. NULL: no shadow evaluation (a route without it, no candidate configured, or a
-- deny made before the policies ran, such as an unknown certificate).

ALTER TABLE audit_log
    ADD COLUMN shadow_decision text CHECK (shadow_decision IN ('allow', 'deny')),
    ADD COLUMN shadow_reasons text[],
    ADD COLUMN shadow_policy_version text;

-- No query filters on them: no statistics (see 20261122000004_audit_statistics.sql).
ALTER TABLE audit_log
    ALTER COLUMN shadow_decision SET STATISTICS 0,
    ALTER COLUMN shadow_reasons SET STATISTICS 0,
    ALTER COLUMN shadow_policy_version SET STATISTICS 0;

SELECT edgemesh_audit_partition_settings(inhrelid::regclass)
FROM pg_inherits WHERE inhparent = 'audit_log'::regclass;
