# The guard alone, for an init container that copies it into a volume shared with PostgreSQL
# (e.g. CloudNativePG's podPatch init container + emptyDir):
#
#   docker build -f packaging/docker/artifact.Dockerfile -t oomguard-artifact .
#   initContainers: [{name: oomguard, image: oomguard-artifact, args: ["/guard"],
#                     volumeMounts: [{name: guard, mountPath: /guard}]}]
#   then in the PostgreSQL container: LD_PRELOAD=/guard/liboomguard.so (the line it prints)
#
# The image holds /oomguard, /liboomguard.so and the loader and libraries /oomguard needs, and
# nothing else (no shell). Its entrypoint is `oomguard install --to DIR`; the same binary runs
# the exporter sidecar (`/oomguard exporter`).
#
# Build argument RUST_IMAGE (default rust:1-bookworm): where the guard is compiled and the
# image's tree assembled (a Debian root with sh and ldd). With already built binaries, skip the
# compilation: `--build-context oomguard-files=DIR`, DIR holding oomguard, liboomguard.so,
# oomguard.conf and install-into-image.sh; RUST_IMAGE then only needs to be a Debian root of the
# release they were built on (the container tests, tests/tests/containers.rs, build it so).
#
# Build context: the workspace root.
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

FROM ${RUST_IMAGE} AS tree
COPY --from=oomguard-files / /in/
RUN DESTDIR=/root-fs sh /in/install-into-image.sh artifact /in

FROM scratch
COPY --from=tree /root-fs/ /
ENTRYPOINT ["/oomguard", "install", "--to"]
CMD ["/oomguard-shared"]
