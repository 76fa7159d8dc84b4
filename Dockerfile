# RadTriage image. One Dockerfile, two TensorFlow builds:
#   docker build -t radtriage:cpu .                           (web, beat, CPU workers)
#   docker build -t radtriage:gpu --build-arg TF_BUILD=gpu .  (GPU workers; needs the NVIDIA
#                                                              container toolkit on the host)
# PG_MAJOR: the PostgreSQL client's major version, that of the database server (16 by default).
# BASE_IMAGE: any Debian bookworm image whose `python`/`pip` are Python 3.11 (the official image
# by default; scripts/compose_smoke.sh builds one from debootstrap where no registry is reachable).
# Behind a TLS-inspecting proxy, hand pip the host's CA bundle as a BuildKit secret; it is
# mounted for the pip steps only and never stored in the image:
#   DOCKER_BUILDKIT=1 docker build --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt .
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TF_BUILD=cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2 DEBUG=0 MEDIA_ROOT=/data/media \
    RADTRIAGE_REGISTRY=/app/registry.json

# Pango: WeasyPrint (PDF reports). libgl/glib: OpenCV's runtime. curl: health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 \
      libharfbuzz-subset0 libglib2.0-0 curl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependencies first, in their own layer, from pyproject.toml alone: a code or README change does
# not reinstall TensorFlow. The GPU build swaps tensorflow-cpu for the CUDA build of the same
# version (never both).
COPY pyproject.toml ./
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(d['dependencies'] if '$TF_BUILD' != 'gpu' else \
[r for r in d['dependencies'] if not r.startswith('tensorflow-cpu')] + d['optional-dependencies']['gpu']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt "setuptools>=69" wheel && rm /tmp/requirements.txt
# The PostgreSQL client of the server's major version, for `manage.py backup` / `restore`
# (pg_dump refuses a server newer than itself). PG_MAJOR is docker-compose.yml's postgres image
# version: Debian's own package where bookworm ships it (15), otherwise the PostgreSQL project's
# apt repository (set up by Debian's postgresql-common, which carries its signing key). Declared
# after the pip step, so another PostgreSQL version does not reinstall TensorFlow.
ARG PG_MAJOR=16
RUN apt-get update \
 && if ! apt-cache show "postgresql-client-$PG_MAJOR" >/dev/null 2>&1; then \
      apt-get install -y --no-install-recommends postgresql-common ca-certificates \
      && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y; \
    fi \
 && apt-get install -y --no-install-recommends "postgresql-client-$PG_MAJOR" \
 && rm -rf /var/lib/apt/lists/* \
 && pg_dump --version | grep -q " $PG_MAJOR\."
COPY README.md ./
COPY core ./core
COPY web ./web
COPY worker ./worker
# Editable: the code runs from /app, next to its templates and static files.
RUN pip install --no-deps --no-build-isolation -e .
COPY manage.py registry.json ./
COPY models ./models

RUN useradd --system --uid 1000 --home /app radtriage \
 && mkdir -p /data/media /app/var/registry /backups \
 && chown -R radtriage /data /app/models /app/var /backups
USER radtriage
# Matplotlib (heat map colours) wants a writable config dir; /app is not the user's to write.
ENV MPLCONFIGDIR=/tmp/matplotlib
EXPOSE 8000
# --no-proxy-headers: forwarded headers are believed only from RADTRIAGE_TRUSTED_PROXIES (web.asgi).
CMD ["python", "-m", "uvicorn", "--host", "0.0.0.0", "--port", "8000", "--no-proxy-headers", "web.asgi:application"]
