#!/usr/bin/env bash
# `make run`: RadTriage on this machine. Migrates, prints a demo admin's credentials, starts
# Redis if none answers on REDIS_URL, then uvicorn (HTTP + websockets), a Celery worker and
# Celery beat under honcho (Procfile). Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

export PYTHON="${PYTHON:-$PWD/.venv/bin/python}"
export DEBUG="${DEBUG:-1}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export RADTRIAGE_HOST="${RADTRIAGE_HOST:-127.0.0.1}"
export RADTRIAGE_PORT="${RADTRIAGE_PORT:-8000}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# Proxies whose X-Forwarded-For is believed (web/settings.py): none unless named, so a request's
# client address (the login lockout's, the audit log's) is the address that connected.
export RADTRIAGE_TRUSTED_PROXIES="${RADTRIAGE_TRUSTED_PROXIES:-}"
# One worker pool process per core, up to two (each runs TensorFlow on one thread): a batch is
# prepared and stored by one while the other runs the model. ~0.6 GB of memory each.
CORES="$(nproc 2>/dev/null || echo 1)"
export RADTRIAGE_WORKER_CONCURRENCY="${RADTRIAGE_WORKER_CONCURRENCY:-$(( CORES >= 2 ? 2 : 1 ))}"
say() { printf '\033[1m[radtriage]\033[0m %s\n' "$*"; }

[ -x "$PYTHON" ] || { say "No Python at $PYTHON: run 'make run' (it creates .venv) or set PYTHON."; exit 1; }
mkdir -p var

# --- Redis: use the one on REDIS_URL, or start one from PATH, or say exactly how to get one.
read -r REDIS_HOST REDIS_PORT < <("$PYTHON" -c 'import os, urllib.parse as u; p = u.urlparse(os.environ["REDIS_URL"]); print(p.hostname or "127.0.0.1", p.port or 6379)')
redis_up() { "$PYTHON" -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('$REDIS_HOST', $REDIS_PORT)))"; }
PROCFILE=Procfile
if redis_up; then
  say "Using Redis at $REDIS_URL"
else
  case "$REDIS_HOST" in
    127.0.0.1|localhost|::1) ;;
    *) say "Redis at $REDIS_URL is not answering. Start it, or point REDIS_URL at a running Redis."; exit 1 ;;
  esac
  if ! command -v redis-server >/dev/null; then
    say "No Redis is listening on $REDIS_HOST:$REDIS_PORT and redis-server is not on PATH."
    say "Install one:  sudo apt-get install redis-server   (Debian/Ubuntu)"
    say "              brew install redis                  (macOS)"
    say "          or: docker run -d -p $REDIS_PORT:6379 redis:7"
    say "then run 'make run' again (or set REDIS_URL to an existing Redis)."
    exit 1
  fi
  say "Starting redis-server on $REDIS_HOST:$REDIS_PORT (stops with RadTriage)"
  PROCFILE=var/Procfile.with-redis
  { echo "redis: redis-server --bind $REDIS_HOST --port $REDIS_PORT --save '' --appendonly no"; cat Procfile; } > "$PROCFILE"
fi

# --- Database and the demo account.
"$PYTHON" manage.py migrate --noinput
CREDENTIALS=$("$PYTHON" manage.py demo_admin)

URL="http://$RADTRIAGE_HOST:$RADTRIAGE_PORT/"
[ "$RADTRIAGE_HOST" = 0.0.0.0 ] && URL="http://127.0.0.1:$RADTRIAGE_PORT/"
cat <<BANNER

  RadTriage is starting at  $URL
  $CREDENTIALS
  API schema: ${URL}api/schema/   API docs: ${URL}api/docs/
  It says "RadTriage is ready" once the workers' models are warm; uploads before that wait.
  Stop with Ctrl-C.

BANNER
exec "$PYTHON" -m honcho -f "$PROCFILE" -d . start
