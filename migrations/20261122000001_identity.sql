-- Identity: users, devices, their certificates and the enrollment tokens that admit them.

CREATE TABLE users (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._-]{1,64}$'),
    email       text NOT NULL UNIQUE CHECK (length(email) BETWEEN 3 AND 254),
    role        text NOT NULL CHECK (role IN ('admin', 'developer', 'analyst')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    id            text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._-]{1,64}$'),
    owner_id      text NOT NULL REFERENCES users (id),
    device_type   text NOT NULL,
    os            text NOT NULL,
    os_version    text NOT NULL,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    enrolled_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz,
    revoked_at    timestamptz,
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE INDEX devices_owner_idx ON devices (owner_id);
CREATE INDEX devices_status_idx ON devices (status, id);

CREATE TABLE certificates (
    serial             text PRIMARY KEY,
    device_id          text NOT NULL REFERENCES devices (id),
    fingerprint        text NOT NULL UNIQUE,
    not_before         timestamptz NOT NULL,
    not_after          timestamptz NOT NULL,
    certificate_pem    text NOT NULL,
    issued_at          timestamptz NOT NULL DEFAULT now(),
    revoked_at         timestamptz,
    revocation_reason  text,
    CHECK (not_before < not_after)
);
CREATE INDEX certificates_device_idx ON certificates (device_id, issued_at DESC);

CREATE TABLE enrollment_tokens (
    id          uuid PRIMARY KEY,
    -- SHA-256 of the token; the token itself is shown once and never stored.
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    owner_id    text NOT NULL REFERENCES users (id),
    expires_at  timestamptz NOT NULL,
    max_uses    integer NOT NULL CHECK (max_uses > 0),
    uses        integer NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
