#!/bin/sh
# Runs a command inside a Debian root (a directory made by mmdebstrap) as an unprivileged user, in a
# private mount namespace: the root gets its own /proc, the host's /dev, a fresh tmpfs /dev/shm
# (PostgreSQL's dynamic shared memory) and the directory holding liboomguard.so at /opt/oomguard.
# The mounts vanish with the last process of the namespace; nothing is left mounted on the host.
# The command replaces this shell (exec all the way down), so its pid is the one the caller spawned.
#
#   in-root.sh ROOT LIBRARY_DIR USER:GROUP COMMAND [ARG...]
set -eu
if [ "$#" -lt 4 ]; then
    echo "usage: $0 ROOT LIBRARY_DIR USER:GROUP COMMAND [ARG...]" >&2
    exit 2
fi
root=$1 library_dir=$2 user=$3
shift 3
[ -x "$root/usr/bin/env" ] || { echo "error: $root is not a Debian root (no usr/bin/env)" >&2; exit 2; }
[ -d "$library_dir" ] || { echo "error: $library_dir is not a directory" >&2; exit 2; }
exec unshare --mount --propagation private -- /bin/sh -eu -c '
    root=$1 library_dir=$2 user=$3
    shift 3
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=1777,size=256m tmpfs "$root/dev/shm"
    mkdir -p "$root/opt/oomguard"
    mount --bind -o ro "$library_dir" "$root/opt/oomguard"
    exec chroot --userspec="$user" "$root" "$@"
' in-root "$root" "$library_dir" "$user" "$@"
