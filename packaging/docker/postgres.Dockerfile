# The official postgres:15 image with the guard loaded into every process through
# /etc/ld.so.preload and configured by /etc/oomguard/oomguard.conf (environment variables
# OOM_GUARD_* still override it per process). Works with the entrypoint's first initdb and with
# an arbitrary --user: the entrypoint replaces LD_PRELOAD with nss_wrapper for a uid missing from
# /etc/passwd, but /etc/ld.so.preload is read by the loader regardless.
#
#   docker build -f packaging/docker/postgres.Dockerfile -t oomguard-postgres:15 .
#   docker run -m 1g -e POSTGRES_PASSWORD=… oomguard-postgres:15
#   docker exec CONTAINER oomguard status
#
# Build context: the workspace root. Not built in this repository's CI (no registry there); the
# install step itself (install-into-image.sh) is tested by tests/tests/images.rs.
ARG POSTGRES_IMAGE=postgres:15

# Same Debian release as postgres:15 (bookworm), so the library needs no newer glibc than the
# image has.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p oomguard -p oomguard-cli \
    && mkdir /out \
    && cp target/release/oomguard target/release/liboomguard.so packaging/config/oomguard.conf \
          packaging/docker/install-into-image.sh /out/

FROM ${POSTGRES_IMAGE}
COPY --from=build /out/ /tmp/oomguard/
RUN sh /tmp/oomguard/install-into-image.sh postgres /tmp/oomguard && rm -rf /tmp/oomguard
