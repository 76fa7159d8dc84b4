# The optional TLS proxy of docker-compose.yml (profile `proxy`): nginx from Debian bookworm,
# which terminates HTTPS, redirects HTTP to it and passes requests and websockets to `web`.
# DEBIAN_IMAGE: any Debian bookworm image (scripts/compose_smoke.sh builds one from debootstrap).
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive
# openssl: the self-signed certificate made at first start when none is provided. curl: the
# health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx openssl curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
 && mkdir -p /etc/radtriage/tls
COPY proxy-nginx.conf /etc/nginx/radtriage.conf.template
COPY proxy-entrypoint.sh /usr/local/bin/proxy-entrypoint
VOLUME /etc/radtriage/tls
EXPOSE 80 443
ENTRYPOINT ["proxy-entrypoint"]
CMD ["nginx", "-g", "daemon off;"]
