-- Cheaper upkeep of the audit partitions, which take a row for every proxied request.
--
-- Autovacuum analyses a table each time a tenth of it has changed; for an append-only audit partition
-- that is every tenth of growth, and each ANALYZE sorted a 30,000-row sample of all 17 columns: at 3,500
-- decisions/s into an 800,000-row partition, about 0.55 s of PostgreSQL CPU every 23 s, 40 % of
-- PostgreSQL's work per audited decision (BENCHMARKS.md). Now:
--   - statistics only for the columns audit queries filter on (time, event type, device, user, service,
--     decision); the planner has no use for the distribution of paths, reasons or addresses;
--   - a partition is analysed after growing by half, not a tenth (time ranges past the newest
--     statistics are still estimated from the index's actual end, so the newest rows are not invisible
--     to the planner).
-- edgemesh_audit_partition_settings applies both to a partition; the partition function calls it for
-- every partition it creates (CREATE TABLE ... LIKE copies neither).

ALTER TABLE audit_log
    ALTER COLUMN id SET STATISTICS 0,
    ALTER COLUMN action SET STATISTICS 0,
    ALTER COLUMN role SET STATISTICS 0,
    ALTER COLUMN method SET STATISTICS 0,
    ALTER COLUMN path SET STATISTICS 0,
    ALTER COLUMN reasons SET STATISTICS 0,
    ALTER COLUMN policy_version SET STATISTICS 0,
    ALTER COLUMN certificate_serial SET STATISTICS 0,
    ALTER COLUMN latency_us SET STATISTICS 0,
    ALTER COLUMN peer_address SET STATISTICS 0,
    ALTER COLUMN details SET STATISTICS 0;

-- Gives `partition` the parent's per-column statistics targets and the audit's analyse threshold.
CREATE FUNCTION edgemesh_audit_partition_settings(partition regclass) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT attname, attstattarget FROM pg_attribute
        WHERE attrelid = 'audit_log'::regclass AND attnum > 0 AND NOT attisdropped AND attstattarget >= 0
    LOOP
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET STATISTICS %s', partition, col.attname,
                       col.attstattarget);
    END LOOP;
    EXECUTE format('ALTER TABLE %s SET (autovacuum_analyze_scale_factor = 0.5)', partition);
END
$$;

SELECT edgemesh_audit_partition_settings(inhrelid::regclass)
FROM pg_inherits WHERE inhparent = 'audit_log'::regclass;

CREATE OR REPLACE FUNCTION edgemesh_audit_partition(month date) RETURNS boolean LANGUAGE plpgsql AS $$
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
    PERFORM edgemesh_audit_partition_settings(name::regclass);
    EXECUTE format(
        'WITH moved AS (DELETE FROM audit_log_default WHERE occurred_at >= %L AND occurred_at < %L RETURNING *)
         INSERT INTO %I SELECT * FROM moved', lo, hi, name);
    EXECUTE format('ALTER TABLE audit_log ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    RETURN true;
END
$$;
