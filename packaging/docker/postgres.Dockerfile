# The official postgres image with the guard loaded into every process through
# /etc/ld.so.preload and configured by /etc/oomguard/oomguard.conf (environment variables
# OOM_GUARD_* still override it per process). Works with the entrypoint's first initdb and with
# an arbitrary --user: the entrypoint replaces LD_PRELOAD with nss_wrapper for a uid missing from
# /etc/passwd, but /etc/ld.so.preload is read by the loader regardless.
#
#   docker build -f packaging/docker/postgres.Dockerfile -t oomguard-postgres:17 \
#       --build-arg POSTGRES_IMAGE=postgres:17-bookworm .
#   docker run -m 1g -e POSTGRES_PASSWORD=… oomguard-postgres:17
#   docker exec CONTAINER oomguard status
#
# Build arguments: POSTGRES_IMAGE (default postgres:15), the image to add the guard to;
# RUST_IMAGE (default rust:1-bookworm), where the guard is compiled: use the same Debian release
# as POSTGRES_IMAGE or an older one, so that the library needs no newer glibc than the image has.
# With already built binaries, skip the compilation: `--build-context oomguard-files=DIR`, DIR
# holding oomguard, liboomguard.so, oomguard.conf and install-into-image.sh (the container tests,
# tests/tests/containers.rs, build this file that way on local base images).
#
# Build context: the workspace root.
ARG POSTGRES_IMAGE=postgres:15
ARG RUST_IMAGE=rust:1-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p oomguard -p oomguard-cli \
    && mkdir /out \
    && cp target/release/oomguard target/release/liboomguard.so packaging/config/oomguard.conf \
          packaging/docker/install-into-image.sh /out/

# What the image receives; a build context of this name replaces it.
FROM scratch AS oomguard-files
COPY --from=build /out/ /

FROM ${POSTGRES_IMAGE}
COPY --from=oomguard-files / /tmp/oomguard/
RUN sh /tmp/oomguard/install-into-image.sh postgres /tmp/oomguard && rm -rf /tmp/oomguard
