#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on 127.0.0.1 for the tests; prints its URL.
# Installs Debian's postgresql when the machine has none.
set -euo pipefail
port="${ATELIER_PG_PORT:-55432}"
root="${ATELIER_PG_DIR:-/tmp/atelier-pg}"
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bin" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
run_as=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system postgres
  run_as=(runuser -u postgres --)
fi
if ! "$bin/pg_isready" -h 127.0.0.1 -p "$port" -q; then
  rm -rf "$root" && mkdir -p "$root" && chmod 777 "$root"
  "${run_as[@]}" "$bin/initdb" -D "$root/data" -U atelier --auth=trust -E UTF8 >/dev/null
  "${run_as[@]}" "$bin/pg_ctl" -D "$root/data" -l "$root/log" -w \
    -o "-h 127.0.0.1 -p $port -k $root -c fsync=off -c max_connections=200" start >/dev/null
  "$bin/createdb" -h 127.0.0.1 -p "$port" -U atelier atelier_test
fi
echo "postgresql://atelier@127.0.0.1:$port/atelier_test"
