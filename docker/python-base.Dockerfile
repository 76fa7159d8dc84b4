# A stand-in for python:3.11-slim-bookworm, built from a local Debian bookworm image (debootstrap +
# `docker import`, see scripts/compose_smoke.sh) where no image registry can be reached. Debian's
# own Python 3.11 in a virtual environment that is first on PATH, so `python` and `pip` behave as
# in the official image (Debian's system Python refuses `pip install`, PEP 668).
ARG DEBIAN_IMAGE=radtriage-smoke/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /usr/local/python
ENV PATH=/usr/local/python/bin:$PATH
CMD ["python3"]
