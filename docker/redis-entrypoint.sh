#!/bin/sh
# Like the official image: with no config file, listen on every interface of the container's
# network (reached only by the compose network) rather than loopback only.
set -eu
if [ "${1:-}" = redis-server ]; then
  shift
  exec redis-server --bind '* -::*' --protected-mode no --dir /data "$@"
fi
exec "$@"
