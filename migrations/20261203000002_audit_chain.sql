-- A tamper-evident audit trail. Writers stay parallel and insert plain rows, as before; one sequencer
-- (a control API holding the advisory lock `edgemesh_audit_sequencer`) then gives every record, in
-- order, a gap-free sequence number and a hash chained to its predecessor's:
--
--     hash(n) = SHA-256(hash(n-1) || the record's fields, length-prefixed)      hash(0) = 32 zero bytes
--
-- and about once a second signs a checkpoint (the last sequence number and its hash) with an ed25519
-- key that is not in the database, stored in `audit_checkpoints` and appended to files outside it.
-- `edgemesh-control-api audit verify` recomputes the chain against them.
--
-- Which rows are new: each row carries the id of the transaction that wrote it (`tx`). A transaction
-- older than the oldest one still running (the snapshot's xmin) has committed or aborted, so no row
-- with a lower `tx` can appear any more: the sequencer takes the rows after its cursor in
-- (tx, occurred_at, id) order, up to that xmin, and never misses one that commits late. A long-running
-- transaction elsewhere in the cluster delays sequencing; it does not break it. Rows stored before this
-- migration carry tx 0 and are sequenced first.

ALTER TABLE audit_log ADD COLUMN tx xid8 NOT NULL DEFAULT '0';
ALTER TABLE audit_log ALTER COLUMN tx SET DEFAULT pg_current_xact_id();
-- Appended in increasing order (one transaction's id per writer's batch): cheap to maintain.
CREATE INDEX audit_log_tx_idx ON audit_log (tx, occurred_at, id);

-- The chain: one row per sequenced record, partitioned by month like the records, so that retention
-- drops a month of both together.
CREATE TABLE audit_chain (
    seq          bigint NOT NULL CHECK (seq > 0),
    occurred_at  timestamptz NOT NULL,
    id           uuid NOT NULL,
    -- The predecessor's hash, kept so that the record after a month dropped by retention can still be
    -- checked (its predecessor is gone).
    prev         bytea NOT NULL CHECK (length(prev) = 32),
    hash         bytea NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (occurred_at, id)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE audit_chain_default PARTITION OF audit_chain DEFAULT;
CREATE INDEX audit_chain_seq_idx ON audit_chain (seq);

-- The sequencer's position: the last sequence number and hash, and the (tx, occurred_at, id) of the
-- last record sequenced. One row, updated in the transaction that extends the chain.
CREATE TABLE audit_sequencer (
    only_row     boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq          bigint NOT NULL,
    hash         bytea NOT NULL,
    after_tx     xid8 NOT NULL,
    after_at     timestamptz NOT NULL,
    after_id     uuid NOT NULL,
    -- The last retention drop already named in a signed checkpoint.
    drops_signed bigint NOT NULL DEFAULT 0
);
INSERT INTO audit_sequencer (seq, hash, after_tx, after_at, after_id)
VALUES (0, '\x0000000000000000000000000000000000000000000000000000000000000000', '0', '-infinity',
        '00000000-0000-0000-0000-000000000000');

-- Signed checkpoints: `body` is the signed JSON text verbatim, `signature` its signature file's text.
CREATE TABLE audit_checkpoints (
    seq        bigint NOT NULL,
    signed_at  timestamptz NOT NULL,
    body       text NOT NULL,
    signature  text NOT NULL,
    PRIMARY KEY (seq, signed_at)
);

-- What retention dropped, for the next checkpoint to sign (verification then knows those records
-- were dropped, not removed).
CREATE TABLE audit_retention (
    id          bigserial PRIMARY KEY,
    dropped_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    partition   text NOT NULL,
    from_time   timestamptz NOT NULL,
    until_time  timestamptz NOT NULL,
    -- The sequenced records dropped: how many, and the least and greatest sequence number among them
    -- (months interleave at their boundary, so the range may hold records of a month kept).
    records     bigint NOT NULL,
    min_seq     bigint,
    max_seq     bigint
);

-- Sequenced records cannot be changed or deleted, by anyone, except by the two maintenance functions
-- below (moving a month out of the default partition, retention), which say so for their own
-- transaction. The services' roles have no UPDATE or DELETE privilege on the audit at all; this holds
-- the tables' owner too. (An owner can still disable the trigger: that is what `audit verify` is for.)
CREATE FUNCTION edgemesh_audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('edgemesh.audit_maintenance', true) = 'on' THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    -- (Nested: a checkpoint has no occurred_at, and plpgsql does not promise to stop at the first
    -- operand of an OR.)
    IF TG_ARGV[0] = 'chain' THEN
        RAISE EXCEPTION '% is sequenced: it cannot be changed or deleted', TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF EXISTS (SELECT 1 FROM audit_chain c WHERE c.occurred_at = OLD.occurred_at AND c.id = OLD.id) THEN
        RAISE EXCEPTION 'audit record % is sequenced: it cannot be changed or deleted', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;
CREATE TRIGGER audit_log_sequenced BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION edgemesh_audit_refuse_change('record');
CREATE TRIGGER audit_chain_immutable BEFORE UPDATE OR DELETE ON audit_chain
    FOR EACH ROW EXECUTE FUNCTION edgemesh_audit_refuse_change('chain');
CREATE TRIGGER audit_checkpoints_immutable BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION edgemesh_audit_refuse_change('chain');

-- The month's partitions of both tables.
CREATE OR REPLACE FUNCTION edgemesh_audit_partition(month date) RETURNS boolean LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public AS $$
DECLARE
    first date := date_trunc('month', month)::date;
    lo    timestamptz := first::timestamp AT TIME ZONE 'UTC';
    hi    timestamptz := (first + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    suffix text := to_char(first, 'YYYYMM');
    created boolean := false;
    tab text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('edgemesh_audit_partition'));
    PERFORM set_config('edgemesh.audit_maintenance', 'on', true);
    FOREACH tab IN ARRAY ARRAY['audit_log', 'audit_chain'] LOOP
        IF to_regclass(format('%s_p%s', tab, suffix)) IS NOT NULL THEN
            CONTINUE;
        END IF;
        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       tab || '_p' || suffix, tab);
        IF tab = 'audit_log' THEN
            PERFORM edgemesh_audit_partition_settings((tab || '_p' || suffix)::regclass);
        END IF;
        EXECUTE format(
            'WITH moved AS (DELETE FROM %I WHERE occurred_at >= %L AND occurred_at < %L RETURNING *)
             INSERT INTO %I SELECT * FROM moved', tab || '_default', lo, hi, tab || '_p' || suffix);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', tab,
                       tab || '_p' || suffix, lo, hi);
        created := created OR tab = 'audit_log';
    END LOOP;
    PERFORM set_config('edgemesh.audit_maintenance', 'off', true);
    RETURN created;
END
$$;

-- Retention: drops the months wholly before `cutoff` (records and chain) and the default partitions'
-- rows before it, and records each drop for the next signed checkpoint; answers the partitions dropped.
CREATE OR REPLACE FUNCTION edgemesh_audit_retain(cutoff timestamptz) RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    part record;
    first date;
    chain text;
    dropped bigint;
    lo_seq bigint;
    hi_seq bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('edgemesh_audit_partition'));
    PERFORM set_config('edgemesh.audit_maintenance', 'on', true);
    FOR part IN
        SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_log'::regclass AND c.relname ~ '^audit_log_p[0-9]{6}$'
        ORDER BY 1
    LOOP
        first := to_date(substr(part.name, 12), 'YYYYMM');
        IF ((first + interval '1 month')::timestamp AT TIME ZONE 'UTC') <= cutoff THEN
            chain := 'audit_chain_p' || substr(part.name, 12);
            IF to_regclass(chain) IS NOT NULL THEN
                EXECUTE format('SELECT count(*), min(seq), max(seq) FROM %I', chain)
                    INTO dropped, lo_seq, hi_seq;
                EXECUTE format('DROP TABLE %I', chain);
            ELSE
                dropped := 0; lo_seq := NULL; hi_seq := NULL;
            END IF;
            EXECUTE format('DROP TABLE %I', part.name);
            INSERT INTO audit_retention (partition, from_time, until_time, records, min_seq, max_seq)
            VALUES (part.name, first::timestamp AT TIME ZONE 'UTC',
                    (first + interval '1 month')::timestamp AT TIME ZONE 'UTC', dropped, lo_seq, hi_seq);
            RETURN NEXT part.name;
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM audit_log_default WHERE occurred_at < cutoff) THEN
        SELECT count(*), min(seq), max(seq) INTO dropped, lo_seq, hi_seq
        FROM audit_chain_default WHERE occurred_at < cutoff;
        DELETE FROM audit_log_default WHERE occurred_at < cutoff;
        DELETE FROM audit_chain_default WHERE occurred_at < cutoff;
        INSERT INTO audit_retention (partition, from_time, until_time, records, min_seq, max_seq)
        VALUES ('audit_log_default', '-infinity', cutoff, dropped, lo_seq, hi_seq);
    END IF;
    PERFORM set_config('edgemesh.audit_maintenance', 'off', true);
END
$$;
REVOKE EXECUTE ON FUNCTION edgemesh_audit_refuse_change() FROM PUBLIC;

-- The chain of every month that already has records.
DO $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT substr(c.relname::text, 12) AS suffix FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_log'::regclass AND c.relname ~ '^audit_log_p[0-9]{6}$'
    LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF audit_chain FOR VALUES FROM (%L) TO (%L)',
            'audit_chain_p' || part.suffix,
            to_date(part.suffix, 'YYYYMM')::timestamp AT TIME ZONE 'UTC',
            (to_date(part.suffix, 'YYYYMM') + interval '1 month')::timestamp AT TIME ZONE 'UTC');
    END LOOP;
END
$$;

-- The control API sequences, signs and reads; ext-authz only inserts records, as before.
GRANT SELECT, INSERT ON audit_chain, audit_checkpoints TO edgemesh_control_api;
GRANT SELECT, UPDATE ON audit_sequencer TO edgemesh_control_api;
GRANT SELECT ON audit_retention TO edgemesh_control_api;
GRANT UPDATE (drops_signed) ON audit_sequencer TO edgemesh_control_api;
