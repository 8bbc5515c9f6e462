-- Device health: the reports devices send, the compliance verdict kept on the device, and the change
-- notifications ext-authz listens to (channel `edgemesh_changes`, payload `device:<id>` or `user:<id>`).

ALTER TABLE devices
    ADD COLUMN health_status   text NOT NULL DEFAULT 'unknown'
        CHECK (health_status IN ('unknown', 'healthy', 'unhealthy')),
    ADD COLUMN health_reasons  text[] NOT NULL DEFAULT '{}',
    ADD COLUMN last_health_at  timestamptz;

CREATE TABLE health_reports (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    reasons             text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX health_reports_device_idx ON health_reports (device_id, id DESC);

-- One trigger function for every table whose change alters a decision: TG_ARGV[0] is the kind of key
-- (`device` or `user`), TG_ARGV[1] the column holding it. Notifications are delivered on commit, so
-- ext-authz never reloads a half-done change.
CREATE FUNCTION edgemesh_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed := to_jsonb(OLD);
    ELSE
        changed := to_jsonb(NEW);
    END IF;
    PERFORM pg_notify('edgemesh_changes', TG_ARGV[0] || ':' || (changed ->> TG_ARGV[1]));
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_notify AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION edgemesh_notify_change('device', 'id');
CREATE TRIGGER certificates_notify AFTER INSERT OR UPDATE OR DELETE ON certificates
    FOR EACH ROW EXECUTE FUNCTION edgemesh_notify_change('device', 'device_id');
CREATE TRIGGER health_reports_notify AFTER INSERT ON health_reports
    FOR EACH ROW EXECUTE FUNCTION edgemesh_notify_change('device', 'device_id');
CREATE TRIGGER users_notify AFTER UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION edgemesh_notify_change('user', 'id');
