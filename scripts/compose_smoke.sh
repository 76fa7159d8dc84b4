#!/usr/bin/env bash
# The docker compose deployment, built and run end to end on this machine, with no image
# registry: a Debian bookworm base from debootstrap (`docker import`), Python, PostgreSQL and
# Redis images on it, the app image on that (Dockerfile's BASE_IMAGE), then the CPU profile up,
# every health check green, a login, one real chest X-ray through the web container to its result
# and heat map, a batch with the worker container restarted in the middle (nothing may be lost),
# and everything torn down. Prints the build time, start-up time and time to first result.
#
#   scripts/compose_smoke.sh                 # CPU images, the whole run
#   TF_BUILD=gpu scripts/compose_smoke.sh    # builds the GPU worker image and checks TensorFlow
#                                            # imports in it (no GPU run here)
#
# Needs root (or the docker group + sudo for debootstrap), a running dockerd, docker-compose
# (1.29) or the compose plugin, debootstrap (first run only), curl and python3. Packages come
# from Debian's mirror (plain HTTP) and PyPI; pip trusts only the CA bundle handed to the build as
# a BuildKit secret (RADTRIAGE_SMOKE_CA_BUNDLE, the host's system bundle by default). The secret
# is mounted for the pip steps only: it is never in an image layer.
#
# Settings (environment): RADTRIAGE_SMOKE_CACHE (debootstrap tarball; /var/cache/radtriage-compose),
# RADTRIAGE_SMOKE_PORT (web on 127.0.0.1:<port>; 18765), RADTRIAGE_DATA (../shared/data),
# RADTRIAGE_SMOKE_BATCH (images in the restart batch; 10), CPU_WORKERS (1), DEBIAN_MIRROR,
# RADTRIAGE_SMOKE_KEEP=1 (leave the stack running; `down -v` it yourself).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

TF_BUILD="${TF_BUILD:-cpu}"
CACHE="${RADTRIAGE_SMOKE_CACHE:-/var/cache/radtriage-compose}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE="${RADTRIAGE_SMOKE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
PORT="${RADTRIAGE_SMOKE_PORT:-18765}"
DATA="${RADTRIAGE_DATA:-$REPO/../shared/data}"
BATCH="${RADTRIAGE_SMOKE_BATCH:-10}"
KEEP="${RADTRIAGE_SMOKE_KEEP:-0}"
PROJECT=radtriage-smoke
DEBIAN_IMAGE=radtriage-smoke/debian:bookworm
PYTHON_IMAGE=radtriage-smoke/python:3.11-bookworm
APP_IMAGE=radtriage-smoke/app
BASE_URL="http://127.0.0.1:$PORT"

T0=$(date +%s)
say() { printf '\033[1m[compose-smoke %4ss]\033[0m %s\n' "$(($(date +%s) - T0))" "$*"; }
fail() { printf '\033[1;31m[compose-smoke] FAILED at step "%s": %s\033[0m\n' "$STEP" "$*" >&2; exit 1; }
step() { STEP="$1"; say "== $1"; }
STEP=prerequisites
trap 'fail "unexpected failure at line $LINENO: $BASH_COMMAND"' ERR

# ---------------------------------------------------------------- prerequisites
step "prerequisites"
for tool in docker curl python3; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install docker.io curl python3)"
done
docker info >/dev/null 2>&1 || fail "no Docker daemon answers: start it (systemctl start docker, or dockerd &)"
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then COMPOSE=(docker-compose)
else fail "neither the docker compose plugin nor docker-compose is installed (apt-get install docker-compose)"
fi
[ -s "$CA_BUNDLE" ] || fail "no CA bundle at $CA_BUNDLE (set RADTRIAGE_SMOKE_CA_BUNDLE)"
[ -d "$DATA" ] || fail "no data folder at $DATA (set RADTRIAGE_DATA)"
# BuildKit is needed for the CA-bundle secret. Docker's own client needs the buildx plugin for it;
# Debian's docker.io client (20.10) still has the built-in one: use whichever builds.
BUILD=()
if docker buildx version >/dev/null 2>&1; then BUILD=(docker buildx build --load)
else
  probe=$(mktemp -d); printf 'FROM scratch\nCOPY p /p\n' > "$probe/Dockerfile"; : > "$probe/p"
  for client in docker /usr/bin/docker; do
    if command -v "$client" >/dev/null && DOCKER_BUILDKIT=1 "$client" build -q -t radtriage-smoke/probe "$probe" >/dev/null 2>&1; then
      BUILD=(env DOCKER_BUILDKIT=1 "$client" build); break
    fi
  done
  rm -rf "$probe"; docker rmi radtriage-smoke/probe >/dev/null 2>&1 || true
  [ ${#BUILD[@]} -gt 0 ] || fail "no docker client here can build with BuildKit: install docker-buildx (or Debian's docker.io)"
fi
say "compose: ${COMPOSE[*]}; builder: ${BUILD[*]}"

# ---------------------------------------------------------------- images
step "Debian bookworm base image (debootstrap + docker import)"
BUILD_START=$(date +%s)
if docker image inspect "$DEBIAN_IMAGE" >/dev/null 2>&1; then
  say "reusing $DEBIAN_IMAGE"
else
  TARBALL="$CACHE/debian-bookworm-minbase.tar"
  if [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null || fail "debootstrap is not installed (apt-get install debootstrap)"
    mkdir -p "$CACHE"; ROOTFS="$CACHE/rootfs.tmp"; rm -rf "$ROOTFS"
    say "debootstrap --variant=minbase bookworm from $MIRROR (a few minutes, once)"
    debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 \
      || fail "debootstrap failed, see $CACHE/debootstrap.log: $(tail -n 3 "$CACHE/debootstrap.log")"
    cat > "$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    # Small images, as in Debian's official ones: no recommends, no apt cache, no docs.
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' > "$ROOTFS/etc/apt/apt.conf.d/90smoke"
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    tar -C "$ROOTFS" --numeric-owner -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$ROOTFS"
  fi
  docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' "$TARBALL" "$DEBIAN_IMAGE" >/dev/null \
    || fail "docker import of $TARBALL failed"
  say "imported $DEBIAN_IMAGE from $TARBALL"
fi

build() {  # build <what> <args...>
  local what=$1; shift
  say "building $what"
  local log; log=$(mktemp)
  if ! "${BUILD[@]}" "$@" > "$log" 2>&1; then
    tail -n 30 "$log" >&2; rm -f "$log"; fail "building $what failed (last lines above)"
  fi
  rm -f "$log"
}
step "images: python, postgres, redis, app ($TF_BUILD)"
build "$PYTHON_IMAGE" -t "$PYTHON_IMAGE" --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
  -f docker/python-base.Dockerfile docker
if [ "$TF_BUILD" != gpu ]; then
  build radtriage-smoke/postgres:15 -t radtriage-smoke/postgres:15 --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
    -f docker/postgres.Dockerfile docker
  build radtriage-smoke/redis:7 -t radtriage-smoke/redis:7 --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
    -f docker/redis.Dockerfile docker
fi
build "$APP_IMAGE:$TF_BUILD (TensorFlow and the app; long the first time, cached after)" \
  -t "$APP_IMAGE:$TF_BUILD" --build-arg BASE_IMAGE="$PYTHON_IMAGE" --build-arg TF_BUILD="$TF_BUILD" \
  --secret id=ca_bundle,src="$CA_BUNDLE" .
# The bundle was a secret: make sure it did not end up in the image anyway.
if docker run --rm --entrypoint sh "$APP_IMAGE:$TF_BUILD" -c 'test -e /run/secrets/ca_bundle'; then
  fail "the CA bundle is present in $APP_IMAGE:$TF_BUILD"
fi
BUILD_S=$(($(date +%s) - BUILD_START))
say "images built in ${BUILD_S}s: $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' 'radtriage-smoke/*' | tr '\n' ';' | sed 's/;/; /g')"

if [ "$TF_BUILD" = gpu ]; then
  step "GPU image: TensorFlow imports (no GPU here, so no compose run)"
  docker run --rm "$APP_IMAGE:gpu" python -c \
    'import tensorflow as tf; print("tensorflow", tf.__version__, "built with CUDA:", tf.test.is_built_with_cuda(), "GPUs visible:", len(tf.config.list_physical_devices("GPU")))' \
    2>/dev/null || fail "TensorFlow does not import in $APP_IMAGE:gpu"
  printf '\nRESULT  TF_BUILD=gpu  build time %ss  (image %s)\n' "$BUILD_S" \
    "$(docker image ls --format '{{.Size}}' "$APP_IMAGE:gpu")"
  exit 0
fi

# ---------------------------------------------------------------- compose up
export SECRET_KEY POSTGRES_PASSWORD RADTRIAGE_PORT="127.0.0.1:$PORT" CPU_WORKERS="${CPU_WORKERS:-1}"
SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))')
POSTGRES_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(16))')
export ALLOWED_HOSTS=localhost,127.0.0.1
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml -f docker/compose.smoke.yml --profile cpu "$@"; }
SERVICES=(postgres redis web worker-cpu beat)
teardown() {
  local rc=$?
  if [ "$KEEP" = 1 ]; then say "left running (RADTRIAGE_SMOKE_KEEP=1): ${COMPOSE[*]} -p $PROJECT ... down -v"; return; fi
  if [ "$rc" != 0 ] && [ -n "${UP:-}" ]; then
    say "logs of the last 40 lines per service:"; compose logs --no-color --tail 40 2>&1 | sed 's/^/    /' >&2 || true
  fi
  say "tearing down (containers, network, volumes)"
  compose down -v --remove-orphans >/dev/null 2>&1 || say "compose down failed: remove the $PROJECT containers by hand"
}
trap teardown EXIT
ss -ltn 2>/dev/null | grep -q "127.0.0.1:$PORT " && fail "port $PORT is taken on this machine (set RADTRIAGE_SMOKE_PORT)"
compose down -v --remove-orphans >/dev/null 2>&1 || true  # a previous run's leftovers

step "docker compose --profile cpu up (${SERVICES[*]})"
UP_START=$(date +%s); UP=1
compose up -d --no-build "${SERVICES[@]}" 2>&1 | sed 's/^/    /' || fail "compose up failed"
cid() { compose ps -q "$1"; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1" 2>/dev/null || echo missing; }
wait_healthy() {  # wait_healthy <timeout s> <service...>
  local limit=$1; shift; local deadline=$(($(date +%s) + limit)) pending service state
  while :; do
    pending=()
    for service in "$@"; do
      state=$(health "$(cid "$service")")
      case $state in
        healthy) ;;
        exited|dead|missing) fail "$service is $state" ;;
        *) pending+=("$service:$state") ;;  # unhealthy may still turn healthy: keep checking
      esac
    done
    [ ${#pending[@]} -eq 0 ] && return 0
    if [ "$(date +%s)" -ge "$deadline" ]; then
      for service in "$@"; do
        docker inspect -f "$service: {{if .State.Health}}{{range .State.Health.Log}}[{{.ExitCode}}] {{.Output}} {{end}}{{end}}" \
          "$(cid "$service")" 2>/dev/null | tr '\n' ' ' | cut -c1-600 >&2; echo >&2
      done
      fail "not healthy after ${limit}s: ${pending[*]}"
    fi
    sleep 3
  done
}
wait_healthy 600 "${SERVICES[@]}"
STARTUP_S=$(($(date +%s) - UP_START))
say "every health check passes after ${STARTUP_S}s: $(for s in "${SERVICES[@]}"; do printf '%s=%s ' "$s" "$(health "$(cid "$s")")"; done)"

# ---------------------------------------------------------------- log in
step "log in (an account made with manage.py in the web container, then POST /api/auth/token/)"
PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
compose exec -T -e DJANGO_SUPERUSER_PASSWORD="$PASSWORD" web \
  python manage.py createsuperuser --noinput --username smoke --email smoke@example.org >/dev/null \
  || fail "manage.py createsuperuser failed in the web container"
json() { python3 -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1], {"d": d}))' "$1"; }
TOKEN=$(curl -fsS -X POST "$BASE_URL/api/auth/token/" -d username=smoke --data-urlencode "password=$PASSWORD" | json 'd["token"]') \
  || fail "POST /api/auth/token/ gave no token"
AUTH=(-H "Authorization: Token $TOKEN")
curl -fsS "${AUTH[@]}" "$BASE_URL/healthz/" | sed 's/^/    healthz: /'; echo

api() { curl -sS --max-time 120 "${AUTH[@]}" "$@"; }
analysis_state() { api "$BASE_URL/api/analyses/$1/" | json 'd["state"] + " " + str(bool(d.get("heatmap_url")))'; }

# ---------------------------------------------------------------- one image
CHEST=$(find "$DATA/pneumonia/test/positive" -name '*.jpg' | sort | sed -n 1p)
[ -n "$CHEST" ] || fail "no chest image under $DATA/pneumonia/test/positive"
step "upload one chest X-ray ($(basename "$CHEST")) and wait for its result and heat map"
FIRST_START=$(date +%s.%N)
RESPONSE=$(api -X POST "$BASE_URL/api/uploads/" -F "file=@$CHEST" -F conditions=pneumonia -F body_part=CHEST -F patient_id=SMOKE-0001 -F "patient_name=Smoke^Test") \
  || fail "POST /api/uploads/ failed"
UPLOAD_S=$(python3 -c "import time; print(f'{time.time() - $FIRST_START:.1f}')")
ANALYSIS=$(printf '%s' "$RESPONSE" | json '[a["id"] for a in d["image"]["analyses"]][0]') \
  || fail "the upload answered no analysis: $RESPONSE"
deadline=$(($(date +%s) + 300))
while :; do
  read -r state has_heatmap < <(analysis_state "$ANALYSIS" || echo "unreadable False")
  [ "$state" = succeeded ] && [ "$has_heatmap" = True ] && break
  [ "$state" = failed ] && fail "analysis $ANALYSIS failed: $(api "$BASE_URL/api/analyses/$ANALYSIS/")"
  [ "$(date +%s)" -lt "$deadline" ] || fail "analysis $ANALYSIS is still $state after 300 s"
  sleep 0.5
done
FIRST_S=$(python3 -c "import time; print(f'{time.time() - $FIRST_START:.1f}')")
api "$BASE_URL/api/analyses/$ANALYSIS/heatmap/" -o /tmp/radtriage-smoke-heatmap.png -w '%{http_code} %{content_type} %{size_download}\n' \
  | { read -r code type size; [ "$code" = 200 ] && [ "$type" = image/png ] || fail "heat map download: $code $type";
      say "heat map: $size bytes of PNG"; }
timings() { python3 -c '
import json, sys
from datetime import datetime
d = json.load(sys.stdin)
queued, started, finished = (datetime.fromisoformat(d[k]) for k in ("enqueued_at", "started_at", "finished_at"))
print("queued %.1fs, ran %.1fs" % ((started - queued).total_seconds(), (finished - started).total_seconds()))'; }
say "first result in ${FIRST_S}s: upload request ${UPLOAD_S}s, then $(api "$BASE_URL/api/analyses/$ANALYSIS/" | timings)"
say "first result: $(api "$BASE_URL/api/analyses/$ANALYSIS/" | json '", ".join(f"{k}={d.get(k)}" for k in ("condition", "state", "label", "probability", "model_id") if k in d)')"
rm -f /tmp/radtriage-smoke-heatmap.png

# ---------------------------------------------------------------- batch + worker restart
step "batch of $BATCH images, worker container restarted in the middle"
FILES=()
while IFS= read -r f; do FILES+=(-F "files=@$f"); done < <(
  find "$DATA/pneumonia/test/negative" "$DATA/pneumonia/test/positive" -name '*.jpg' | sort | sed -n "2,$((BATCH + 1))p")
WORKER=$(cid worker-cpu)  # looked up first: compose itself is slow to start
RESPONSE=$(api -X POST "$BASE_URL/api/uploads/batch/" "${FILES[@]}" -F conditions=pneumonia -F body_part=CHEST -F patient_id=SMOKE-0001 -F "patient_name=Smoke^Test") \
  || fail "POST /api/uploads/batch/ failed"
mapfile -t IDS < <(printf '%s' "$RESPONSE" | json '"\n".join(str(a["id"]) for r in d["results"] for a in r["analyses"])')
[ "${#IDS[@]}" -eq "$BATCH" ] || fail "expected $BATCH analyses from the batch upload, got ${#IDS[@]}: $RESPONSE"
count_states() { for id in "${IDS[@]}"; do analysis_state "$id" | cut -d' ' -f1; done | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}'; }
# Restart the worker right away: the upload answers once its jobs are on the broker, and the
# worker has at most begun on them (the smoke override makes each job one analysis, so the worker's
# warm shutdown finishes at most one and leaves the rest queued). Every one must still succeed.
say "batch enqueued -> docker restart ${WORKER:0:12} (SIGTERM, 10 s grace, then SIGKILL)"
docker restart "$WORKER" >/dev/null || fail "docker restart of the worker failed"
states=$(count_states)
say "just after the restart: $states"
case $states in
  "succeeded=$BATCH ") fail "the batch finished before the worker went down: nothing was interrupted (raise RADTRIAGE_SMOKE_BATCH)" ;;
esac
INTERRUPTED=$states
RESTART_AT=$(date +%s)
deadline=$((RESTART_AT + ${RADTRIAGE_SMOKE_BATCH_TIMEOUT:-900}))
while :; do
  states=$(count_states)
  case $states in *queued=*|*running=*|*pending=*) ;; *) break ;; esac
  [ "$(date +%s)" -lt "$deadline" ] || fail "after the restart the batch is still unfinished: $states"
  sleep 2
done
[ "$states" = "succeeded=$BATCH " ] || fail "after the worker restart not every analysis succeeded: $states"
BATCH_S=$(($(date +%s) - RESTART_AT))
DUPLICATES=$(compose exec -T web python manage.py shell -c \
  "from web.clinical.models import Analysis; from django.db.models import Count; print(Analysis.objects.values('image_id', 'condition').annotate(n=Count('id')).filter(n__gt=1).count())" 2>/dev/null | tail -n 1)
[ "$DUPLICATES" = 0 ] || fail "the restart left duplicate analyses ($DUPLICATES image/condition pairs)"
wait_healthy 300 worker-cpu
say "worker restart: all $BATCH analyses succeeded ${BATCH_S}s after the restart, none duplicated; worker healthy again"

printf '\nRESULT  build time %ss | start-up time %ss (up -> every health check) | time to first result %ss (upload -> result + heat map) | worker restart mid-batch (%sleft at the restart): %s/%s succeeded, none duplicated, %ss to finish after the restart\n' \
  "$BUILD_S" "$STARTUP_S" "$FIRST_S" "$INTERRUPTED" "$BATCH" "$BATCH" "$BATCH_S"
