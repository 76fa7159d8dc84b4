# RadTriage image. One Dockerfile, two TensorFlow builds:
#   docker build -t radtriage:cpu .                           (web, beat, CPU workers)
#   docker build -t radtriage:gpu --build-arg TF_BUILD=gpu .  (GPU workers; needs the NVIDIA
#                                                              container toolkit on the host)
FROM python:3.11-slim-bookworm

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
COPY pyproject.toml README.md ./
COPY core ./core
COPY web ./web
COPY worker ./worker
# Editable: the code runs from /app, next to its templates and static files.
RUN pip install -e . \
 && if [ "$TF_BUILD" = "gpu" ]; then \
      pip uninstall -y tensorflow-cpu && pip install "tensorflow[and-cuda]~=2.21.0"; \
    fi
COPY manage.py registry.json ./
COPY models ./models

RUN useradd --system --uid 1000 --home /app radtriage \
 && mkdir -p /data/media /app/var/registry && chown -R radtriage /data /app/models /app/var
USER radtriage
EXPOSE 8000
CMD ["python", "-m", "uvicorn", "--host", "0.0.0.0", "--port", "8000", "web.asgi:application"]
