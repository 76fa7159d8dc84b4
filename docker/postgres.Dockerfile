# PostgreSQL from Debian bookworm (15) for the compose smoke run, where postgres:16 cannot be
# pulled. Speaks the official image's environment: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB;
# the cluster is created on first start in PGDATA (the pgdata volume). The smoke run builds the
# app image with the same PG_MAJOR, as docker-compose.yml pairs postgres:16 with PG_MAJOR 16.
ARG DEBIAN_IMAGE=radtriage-smoke/debian:bookworm
FROM ${DEBIAN_IMAGE}
ARG PG_MAJOR=15
ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive
# No "main" cluster from the package: the entrypoint creates the one in PGDATA.
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/no-main.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends "postgresql-$PG_MAJOR" \
 && rm -rf /var/lib/apt/lists/* "/var/lib/postgresql/$PG_MAJOR" "/etc/postgresql/$PG_MAJOR" \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
 && chmod 700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/$PG_MAJOR/bin:$PATH PGDATA=/var/lib/postgresql/data
# A new named volume takes this directory's owner, so the server never needs root.
USER postgres
VOLUME /var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["postgres-entrypoint"]
CMD ["postgres"]
