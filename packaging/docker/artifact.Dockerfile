# The guard alone, for an init container that copies it into a volume shared with PostgreSQL
# (e.g. CloudNativePG's podPatch init container + emptyDir):
#
#   docker build -f packaging/docker/artifact.Dockerfile -t oomguard-artifact .
#   initContainers: [{name: oomguard, image: oomguard-artifact, args: ["/guard"],
#                     volumeMounts: [{name: guard, mountPath: /guard}]}]
#   then in the PostgreSQL container: LD_PRELOAD=/guard/liboomguard.so (the line it prints)
#
# The image holds /oomguard, /liboomguard.so and the loader and libraries /oomguard needs, and
# nothing else (no shell). Its entrypoint is `oomguard install --to DIR`.
#
# Build context: the workspace root. Not built in this repository's CI (no registry there); the
# tree it holds is made by install-into-image.sh, which tests/tests/images.rs runs and checks.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p oomguard -p oomguard-cli \
    && mkdir /in \
    && cp target/release/oomguard target/release/liboomguard.so packaging/config/oomguard.conf /in/ \
    && DESTDIR=/root-fs sh packaging/docker/install-into-image.sh artifact /in

FROM scratch
COPY --from=build /root-fs/ /
ENTRYPOINT ["/oomguard", "install", "--to"]
CMD ["/oomguard-shared"]
