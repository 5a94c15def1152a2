# PostgreSQL 15 from Debian's own package, for deploy/compose.yaml on machines that cannot pull postgres:15.
# A stand-in for the official image with the same contract: POSTGRES_PASSWORD / POSTGRES_USER / POSTGRES_DB
# (and POSTGRES_HOST_AUTH_METHOD, POSTGRES_INITDB_ARGS), data in PGDATA=/var/lib/postgresql/data owned by
# uid 999, scripts in /docker-entrypoint-initdb.d, `postgres` as the command. With a registry, set
# FLEET_POSTGRES_IMAGE=postgres:15 instead (same paths and owner; this one initializes with locale C.UTF-8).
#
# Build (context: the repository root):  deploy/build-images.sh  (as aistudio-fleet-postgres:15)
#   docker build -f deploy/postgres.Dockerfile -t aistudio-fleet-postgres:15 .
# The build-time extras in deploy/.build/ (the host's apt settings) are used in the `system` stage and left
# behind with it: the image starts from scratch with that stage's files (see Dockerfile.instance).
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS system

SHELL ["/bin/sh", "-eu", "-c"]

COPY .dockerignore deploy/.build* /tmp/build/

# The postgres user first, with the official image's ids, so that a data volume works with either image.
# Debian's packaging must not create a cluster of its own; JIT (LLVM, about 120 MB) is left out, so
# PostgreSQL runs without it (jit = off below), as it does for the short queries of the gateway.
RUN groupadd --system --gid 999 postgres; \
    useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql --shell /bin/bash postgres; \
    mkdir -p /var/lib/postgresql /etc/postgresql-common/createcluster.d; \
    chown postgres:postgres /var/lib/postgresql; \
    echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/aistudio.conf; \
    printf '%s\n' \
        'path-exclude /usr/lib/postgresql/*/lib/llvmjit*' \
        'path-exclude /usr/lib/postgresql/*/lib/bitcode/*' \
        'path-exclude /usr/lib/*/libLLVM*' \
        'path-exclude /usr/lib/*/libz3.so*' \
        > /etc/dpkg/dpkg.cfg.d/aistudio-postgres; \
    if [ -f /tmp/build/apt.conf ]; then cp /tmp/build/apt.conf /etc/apt/apt.conf.d/00aistudio-build; fi; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends postgresql-15; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log /var/log/alternatives.log \
           /etc/apt/apt.conf.d/00aistudio-build /tmp/build; \
    mkdir -p /var/run/postgresql /docker-entrypoint-initdb.d; \
    chown postgres:postgres /var/run/postgresql; chmod 2775 /var/run/postgresql; \
    /usr/lib/postgresql/15/bin/postgres --version

FROM scratch
COPY --from=system / /
SHELL ["/bin/sh", "-eu", "-c"]

COPY deploy/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 755 /usr/local/bin/docker-entrypoint.sh

ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
VOLUME /var/lib/postgresql/data

HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=5 \
    CMD ["sh", "-c", "pg_isready -q -h 127.0.0.1 -U \"${POSTGRES_USER:-postgres}\""]

# Fast shutdown (aborts open transactions, then a clean checkpoint), as the official image does.
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
