-- Least-privilege roles for the services. The migrations run as the database's owner (`edgemesh-control-api
-- migrate`, or the control API at start where it runs as the owner); the services then connect as a
-- login role that is a member of one of these (the local stack and compose make one per service):
--
--   edgemesh_ext_authz    reads what decisions need, inserts decision records, nothing else;
--   edgemesh_control_api  reads and writes the identity tables and health, inserts and reads the audit,
--                         and keeps the audit's partitions through two functions that run as the owner.
--
-- Neither may update or delete an audit record, or drop or alter a table. Roles are per cluster: they
-- are created once, whichever database migrates first; the grants are per database.

DO $$
BEGIN
    BEGIN
        CREATE ROLE edgemesh_ext_authz NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    BEGIN
        CREATE ROLE edgemesh_control_api NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
END
$$;

GRANT USAGE ON SCHEMA public TO edgemesh_ext_authz, edgemesh_control_api;

GRANT SELECT ON users, devices, certificates, health_reports TO edgemesh_ext_authz;
GRANT INSERT ON audit_log TO edgemesh_ext_authz;

GRANT SELECT, INSERT, UPDATE ON users, devices, certificates, enrollment_tokens TO edgemesh_control_api;
GRANT SELECT, INSERT ON health_reports, audit_log TO edgemesh_control_api;
GRANT USAGE ON SEQUENCE health_reports_id_seq TO edgemesh_control_api;

-- Creating a month's partition takes the parent's ownership: it runs as the owner.
ALTER FUNCTION edgemesh_audit_partition(date) SECURITY DEFINER SET search_path = public;
REVOKE EXECUTE ON FUNCTION edgemesh_audit_partition(date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgemesh_audit_partition(date) TO edgemesh_control_api;
REVOKE EXECUTE ON FUNCTION edgemesh_audit_partition_settings(regclass) FROM PUBLIC;

-- Retention: drops the monthly partitions wholly before `cutoff` and the default partition's rows
-- before it; answers the partitions dropped. The only way audit records leave, and it runs as the owner.
CREATE FUNCTION edgemesh_audit_retain(cutoff timestamptz) RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    part record;
    first date;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('edgemesh_audit_partition'));
    FOR part IN
        SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_log'::regclass AND c.relname ~ '^audit_log_p[0-9]{6}$'
        ORDER BY 1
    LOOP
        first := to_date(substr(part.name, 12), 'YYYYMM');
        IF ((first + interval '1 month')::timestamp AT TIME ZONE 'UTC') <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.name);
            RETURN NEXT part.name;
        END IF;
    END LOOP;
    DELETE FROM audit_log_default WHERE occurred_at < cutoff;
END
$$;
REVOKE EXECUTE ON FUNCTION edgemesh_audit_retain(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgemesh_audit_retain(timestamptz) TO edgemesh_control_api;
