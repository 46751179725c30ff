#!/bin/sh
# Installs oomguard into an image's root filesystem: the one place where the Dockerfiles of this
# directory put files, run by them (RUN) and, in a scratch root, by tests/tests/images.rs.
#
#   install-into-image.sh postgres SRC   the guard for a PostgreSQL image (official postgres:15):
#       $DESTDIR/usr/bin/oomguard                                (0755)
#       $DESTDIR/usr/lib/<multiarch>/oomguard/liboomguard.so     (0644)
#       $DESTDIR/etc/oomguard/oomguard.conf                      (0644, kept if already there)
#       $DESTDIR/etc/ld.so.preload  gains the library's line (other lines kept; once only),
#       so every process of the image loads the guard whatever its user and environment (the
#       official entrypoint replaces LD_PRELOAD with nss_wrapper for an unknown --user).
#   install-into-image.sh artifact SRC   the init-container image's whole tree (FROM scratch):
#       $DESTDIR/oomguard, $DESTDIR/liboomguard.so, and the dynamic loader and shared libraries
#       the oomguard binary needs (from ldd), at their own paths, so `/oomguard install --to DIR`
#       runs with nothing else in the image.
#
# SRC holds oomguard, liboomguard.so and oomguard.conf (the example configuration). DESTDIR
# defaults to / (the image being built); OOMGUARD_MULTIARCH overrides the Debian multiarch tuple
# (default: from `uname -m`). POSIX sh: the postgres image has no bash guarantee.
set -eu

usage() {
    echo "usage: [DESTDIR=ROOT] $0 postgres|artifact SRC_DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
what=$1
src=$2
case "$what" in postgres | artifact) ;; *) usage ;; esac
dest=${DESTDIR:-}
dest=${dest%/}

die() {
    echo "install-into-image.sh: error: $*" >&2
    exit 1
}

for file in oomguard liboomguard.so oomguard.conf; do
    [ -f "$src/$file" ] || die "$src/$file is missing (SRC_DIR must hold oomguard, liboomguard.so, oomguard.conf)"
done

# Copies $1 to $2 with mode $3 through a temporary file in the destination's directory.
put() {
    mkdir -p "$(dirname "$2")"
    tmp="$(dirname "$2")/.$(basename "$2").$$.tmp"
    cp "$1" "$tmp" || die "could not copy $1 to $tmp"
    chmod "$3" "$tmp"
    mv -f "$tmp" "$2" || die "could not rename $tmp to $2"
    echo "installed $2"
}

multiarch() {
    if [ -n "${OOMGUARD_MULTIARCH:-}" ]; then
        echo "$OOMGUARD_MULTIARCH"
        return
    fi
    case "$(uname -m)" in
        x86_64) echo x86_64-linux-gnu ;;
        aarch64) echo aarch64-linux-gnu ;;
        ppc64le) echo powerpc64le-linux-gnu ;;
        s390x) echo s390x-linux-gnu ;;
        *) die "unknown machine $(uname -m): set OOMGUARD_MULTIARCH" ;;
    esac
}

case "$what" in
postgres)
    library=/usr/lib/$(multiarch)/oomguard/liboomguard.so
    put "$src/oomguard" "$dest/usr/bin/oomguard" 0755
    put "$src/liboomguard.so" "$dest$library" 0644
    if [ -e "$dest/etc/oomguard/oomguard.conf" ]; then
        echo "kept $dest/etc/oomguard/oomguard.conf"
    else
        put "$src/oomguard.conf" "$dest/etc/oomguard/oomguard.conf" 0644
    fi
    # Last, so that nothing above already ran under the guard. ld.so reads this file in every
    # process: a path it cannot load is only a warning, hence the check below.
    preload="$dest/etc/ld.so.preload"
    if [ -f "$preload" ] && grep -qxF "$library" "$preload"; then
        echo "$preload already lists $library"
    else
        mkdir -p "$dest/etc"
        if [ -f "$preload" ]; then cp "$preload" "$preload.$$.tmp"; else : >"$preload.$$.tmp"; fi
        echo "$library" >>"$preload.$$.tmp"
        chmod 0644 "$preload.$$.tmp"
        mv -f "$preload.$$.tmp" "$preload"
        echo "added $library to $preload"
    fi
    if [ -z "$dest" ]; then
        # In the image itself: this shell's children load the guard now. Prove it.
        grep -q "$library" /proc/self/maps ||
            die "$library is listed in /etc/ld.so.preload but a new process does not map it"
        /usr/bin/oomguard --version
    fi
    ;;
artifact)
    put "$src/oomguard" "$dest/oomguard" 0755
    put "$src/liboomguard.so" "$dest/liboomguard.so" 0644
    command -v ldd >/dev/null 2>&1 || die "ldd is needed to find the libraries of $src/oomguard"
    # Lines like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
    # "/lib64/ld-linux-x86-64.so.2 (0x...)": every absolute path is a file to copy.
    libs=$(ldd "$src/oomguard" | tr ' \t' '\n\n' | grep '^/' | sort -u)
    [ -n "$libs" ] || die "ldd found no shared library of $src/oomguard (is it static? then none is needed)"
    for lib in $libs; do
        # The loader path (/lib64/ld-linux-x86-64.so.2) is a symlink: copy the file it names.
        put "$lib" "$dest$lib" 0755
    done
    ;;
esac
