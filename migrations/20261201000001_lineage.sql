-- Certificate lineage and enrolment incarnations.
--
-- A renewal records the certificate it came from. A certificate renews at most once (a second renewal
-- of it means a copy of its key is in use elsewhere), its predecessor is retired (revoked_at set, at
-- most a short overlap ahead), and revoking a certificate revokes every certificate renewed from it.
ALTER TABLE certificates ADD COLUMN renewed_from text REFERENCES certificates (serial);
CREATE UNIQUE INDEX certificates_renewed_from_key ON certificates (renewed_from);

-- SPIFFE forbids the path segments '.' and '..' (checked for new rows; ids were never allowed to hold
-- a '/', so no older row can be one).
ALTER TABLE devices ADD CONSTRAINT devices_id_not_dot_segment CHECK (id NOT IN ('.', '..')) NOT VALID;
ALTER TABLE users ADD CONSTRAINT users_id_not_dot_segment CHECK (id NOT IN ('.', '..')) NOT VALID;
