#!/usr/bin/env bash
# Make sure what the test suite talks to is there: PostgreSQL, Redis, Debian's Chromium.
# Idempotent: starts only what is not already answering. Used by `make test` (and so .ci/run).
set -euo pipefail

say() { printf '[test-prereqs] %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# PostgreSQL on 127.0.0.1:5432 (trust auth, database "test")
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    say "installing PostgreSQL"; apt_install postgresql postgresql-client
  fi
  say "starting PostgreSQL"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432 >/dev/null || { say "PostgreSQL is not answering on 127.0.0.1:5432"; exit 1; }

# Redis on 127.0.0.1:6379
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  command -v redis-server >/dev/null || { say "installing Redis"; apt_install redis-server; }
  say "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/radtriage-redis.log
  for _ in $(seq 20); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.5; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { say "Redis is not answering on 127.0.0.1:6379"; exit 1; }
# The fault tests start throwaway redis-server processes of their own (never touching 6379).
command -v redis-server >/dev/null || { say "installing redis-server (fault tests)"; apt_install redis-server; }

# pdftotext / pdftoppm (poppler-utils): the report tests read the PDFs back as a person would.
if ! command -v pdftotext >/dev/null || ! command -v pdftoppm >/dev/null; then
  say "installing poppler-utils (report PDF checks)"; apt_install poppler-utils
fi

# docker-compose.yml is validated with `docker compose config` or Debian's docker-compose.
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  apt_install docker-compose || say "could not install docker-compose: the compose check will skip"
fi

# Debian's Chromium for the browser tests (Playwright drives it; it never downloads a browser)
if [ ! -x /usr/bin/chromium ]; then
  say "installing Debian chromium for the browser tests"
  apt_install chromium fonts-dejavu-core || say "could not install chromium: browser tests will skip"
fi

# dcmtk (storescu, echoscu, dsrdump, dcmcjpeg): real DICOM peers for the listener tests
if ! command -v storescu >/dev/null; then
  say "installing dcmtk for the DICOM tests"
  apt_install dcmtk || say "could not install dcmtk: the DICOM network tests will fail"
fi

# dciodvfy (dicom3tools): the validator the SR and secondary capture RadTriage sends must pass
if ! command -v dciodvfy >/dev/null; then
  say "installing dicom3tools (DICOM conformance checks)"
  apt_install dicom3tools || say "could not install dicom3tools: the conformance tests will skip"
fi

# WeasyPrint's system libraries (Pango) for PDF reports
if ! ldconfig -p 2>/dev/null | grep -q libpango-1.0; then
  say "installing Pango for WeasyPrint"
  apt_install libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 || say "could not install Pango"
fi
say "PostgreSQL, Redis and Chromium ready"
