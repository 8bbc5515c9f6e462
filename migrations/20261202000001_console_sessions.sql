-- The operator console's sessions. Signing in with the admin token makes one; the browser holds only a
-- random id in an HttpOnly cookie, and this table holds its SHA-256 (a copy of the table cannot be
-- replayed as cookies). A session is bound to the admin token it was opened with (its SHA-256): once the
-- control API runs with another token, every session opened with the old one stops working. Each
-- carries the per-session token every state-changing form posts back (cross-site request forgery).

CREATE TABLE console_sessions (
    id_sha256          bytea PRIMARY KEY CHECK (length(id_sha256) = 32),
    admin_token_sha256 bytea NOT NULL CHECK (length(admin_token_sha256) = 32),
    csrf_token         text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    peer               inet
);
CREATE INDEX console_sessions_expires_idx ON console_sessions (expires_at);

GRANT SELECT, INSERT, DELETE ON console_sessions TO edgemesh_control_api;

-- Sign-ins to the console (and refused ones) are audited as their own event type. A partition made by
-- `CREATE TABLE … LIKE audit_log INCLUDING CONSTRAINTS` holds its own copy of the check, which
-- dropping the parent's leaves in place: each is dropped, then the new check is added once, to the parent
-- and through it to every partition.
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
        ('authorization', 'enrollment', 'renewal', 'revocation', 'token', 'user', 'health', 'console'));
END
$$;

-- The certificate expiry scan (and the fleet page) look for certificates in force that expire soon:
-- the ones never revoked or retired, by expiry.
CREATE INDEX certificates_in_force_expiry_idx ON certificates (not_after) WHERE revoked_at IS NULL;
