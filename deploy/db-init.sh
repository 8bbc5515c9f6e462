#!/bin/sh
# docker-compose's database bootstrap, in two steps (two one-shot services, both on the postgres image):
#
#   db-init.sh secrets   before PostgreSQL starts, without a network: a random password for the superuser
#                        and for each service's login role, once, each in the volume only its user
#                        mounts: postgres/password (the raw superuser password, for POSTGRES_PASSWORD_FILE,
#                        owned by the image's postgres uid) and <name>/pgpass (a libpq password file, mode
#                        0600, owned by uid 10001, which every EdgeMesh image runs as).
#   db-init.sh roles     once PostgreSQL is up, as its superuser: the login roles edgemesh_control_api and
#                        edgemesh_ext_authz, with their passwords. The migrations (run next, as the
#                        superuser) grant them what each service needs and nothing more.
#
# Passwords never appear on a command line: psql reads the statements from its standard input.
# `make test` runs the secrets step outside Docker (other paths) and checks what it wrote.
set -eu
secrets=${DB_INIT_SECRETS:-/secrets}
service_uid=${DB_INIT_SERVICE_UID:-10001}

new_password() { head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32; }

case "${1:-}" in
  secrets)
    umask 077
    for name in postgres control-api ext-authz; do
      dir="$secrets/$name"
      mkdir -p "$dir"
      role=postgres
      [ "$name" = postgres ] || role="edgemesh_$(echo "$name" | tr - _)"
      if [ ! -s "$dir/pgpass" ]; then
        pw=$(new_password)
        [ ${#pw} -eq 32 ] || { echo "db-init: could not generate a password" >&2; exit 1; }
        printf '*:*:*:%s:%s\n' "$role" "$pw" >"$dir/pgpass.tmp"
        mv "$dir/pgpass.tmp" "$dir/pgpass"
        echo "db-init: generated the password of $role"
      fi
      chmod 600 "$dir/pgpass"
      chown "$service_uid:$service_uid" "$dir/pgpass" 2>/dev/null || true
      if [ "$name" = postgres ]; then
        cut -d: -f5- "$dir/pgpass" >"$dir/password"
        chmod 400 "$dir/password"
        chown "$(id -u postgres 2>/dev/null || id -u):$(id -g postgres 2>/dev/null || id -g)" "$dir/password" 2>/dev/null || true
      fi
    done
    ;;
  roles)
    for name in control-api ext-authz; do
      role="edgemesh_$(echo "$name" | tr - _)"
      pw=$(cut -d: -f5- "$secrets/$name/pgpass")
      # CREATE ROLE has no IF NOT EXISTS; the migrations tolerate a role that exists, as this does.
      psql -v ON_ERROR_STOP=1 -qtA -f - <<SQL
DO \$\$
BEGIN
    CREATE ROLE $role;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
\$\$;
ALTER ROLE $role LOGIN PASSWORD '$pw';
SQL
      echo "db-init: $role can log in"
    done
    ;;
  *)
    echo "usage: db-init.sh secrets|roles" >&2
    exit 2
    ;;
esac
