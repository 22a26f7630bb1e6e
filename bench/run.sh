#!/usr/bin/env bash
# Ingestion benchmark (`make bench`): installs wrk (apt) and py-spy (pip, for the CPU
# breakdown) if missing, makes sure PostgreSQL answers, then runs bench/run.py with the
# project's virtualenv. Arguments are passed
# on (see `bench/run.sh --help`). Results: stdout and docs/performance.md "Ingestion".
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk" >&2
  apt_install wrk
fi

if [ ! -x "$VENV/bin/py-spy" ] && ! command -v py-spy >/dev/null 2>&1; then
  echo "installing py-spy" >&2
  "$VENV/bin/pip" install -q py-spy || echo "py-spy could not be installed: no CPU breakdown" >&2
fi

pg_up() { "$VENV/bin/python" - <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(2)
try:
    s.connect(("127.0.0.1", 5432))
except OSError:
    sys.exit(1)
PY
}

# The same local PostgreSQL the tests use (.ci/run): start it if it is not running.
if [ -z "${BENCH_DATABASE_URL:-}${TEST_DATABASE_URL:-}" ] && ! pg_up; then
  echo "PostgreSQL is not running; starting it" >&2
  command -v pg_ctlcluster >/dev/null 2>&1 || apt_install postgresql
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  su postgres -c "psql -Atc \"select 1 from pg_roles where rolname='$(id -un)'\"" | grep -q 1 \
    || su postgres -c "createuser -s $(id -un)" || true
  su postgres -c "psql -Atc \"select 1 from pg_database where datname='test'\"" | grep -q 1 \
    || su postgres -c "createdb -O $(id -un) test" || true
fi

exec "$VENV/bin/python" -m bench.run "$@"
