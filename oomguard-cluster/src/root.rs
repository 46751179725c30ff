//! Running server programs inside another Debian release's root directory ([`PgRoot`],
//! `OOM_GUARD_PG_ROOT`): a private mount namespace with the host's `/dev`, `/proc`, `/sys` and
//! `/tmp` bind-mounted, `chroot`, then the server user. This is how the tests run PostgreSQL
//! majors whose packages need a newer C library than this machine's.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::binaries::ROOT_ENV;

/// A Debian root directory (made by `mmdebstrap`, e.g. of a newer release whose PostgreSQL
/// needs a newer C library than this machine's) whose server programs run chrooted into it.
///
/// Each program starts in a private mount namespace (nothing it mounts reaches the host) where
/// the host's `/dev` (with `/dev/shm`), `/proc`, `/sys` (the cgroup files the guard reads) and
/// `/tmp` are bind-mounted at the same paths inside the root, then chroots into it and drops to
/// the server user. A cluster under `/tmp` therefore has the same paths inside and outside: its
/// data directory, socket, log and the staged guard library need no translation, and clients on
/// the host connect to the socket as usual. Needs root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgRoot {
    /// The root directory on the host.
    pub dir: PathBuf,
}

/// Host directories every program in a [`PgRoot`] sees at the same path.
const ROOT_SHARED_DIRS: [&str; 4] = ["/dev", "/proc", "/sys", "/tmp"];

impl PgRoot {
    /// A path of the host view (`ROOT/usr/lib/...`) as programs inside the root see it.
    pub(crate) fn inside(&self, host_path: &Path) -> PathBuf {
        match host_path.strip_prefix(&self.dir) {
            Ok(relative) => Path::new("/").join(relative),
            Err(_) => host_path.to_path_buf(),
        }
    }

    /// Makes `cmd` enter the root before it execs: the mounts above, `chroot`, `chdir(cwd)`
    /// (the same path inside), and then, when `user` is given, its gid and uid with no
    /// supplementary groups. `cmd`'s program must be a path inside the root.
    pub(crate) fn enter(
        &self,
        cmd: &mut Command,
        cwd: &Path,
        user: Option<(u32, u32)>,
    ) -> Result<()> {
        let c_path = |path: &Path| {
            CString::new(path.as_os_str().as_bytes())
                .with_context(|| format!("{} contains a NUL byte", path.display()))
        };
        let root = c_path(&self.dir)?;
        let cwd = c_path(cwd)?;
        let mut binds = Vec::new();
        for dir in ROOT_SHARED_DIRS {
            let target = self.dir.join(dir.trim_start_matches('/'));
            if !target.is_dir() {
                bail!(
                    "{} is not a Debian root: it has no {} directory ({ROOT_ENV})",
                    self.dir.display(),
                    target.display()
                );
            }
            binds.push((c_path(Path::new(dir))?, c_path(&target)?));
        }
        // SAFETY: the closure runs in the forked child before exec. It only makes system calls
        // (unshare, mount, chroot, chdir, setgroups, setgid, setuid), all async-signal-safe, on
        // C strings built above; it neither allocates nor takes locks.
        unsafe {
            cmd.pre_exec(move || {
                let check = |rc: libc::c_int| {
                    if rc == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                };
                check(libc::unshare(libc::CLONE_NEWNS))?;
                // Private from here on: none of the mounts below propagates to the host.
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for (source, target) in &binds {
                    check(libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                }
                check(libc::chroot(root.as_ptr()))?;
                check(libc::chdir(cwd.as_ptr()))?;
                if let Some((uid, gid)) = user {
                    check(libc::setgroups(0, std::ptr::null()))?;
                    check(libc::setgid(gid))?;
                    check(libc::setuid(uid))?;
                }
                Ok(())
            });
        }
        Ok(())
    }
}
