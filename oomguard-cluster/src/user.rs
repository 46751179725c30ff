//! The OS user a cluster belongs to and its server runs as ([`ServerUser`]).
//!
//! PostgreSQL refuses to run as root, so when we are root the cluster is owned by and run as an
//! unprivileged user (`nobody` unless `OOM_GUARD_PG_USER` or
//! [`ClusterOptions::user`](crate::ClusterOptions::user) says otherwise); otherwise it is
//! ourselves. This module also checks that the user can reach a cluster's directory and gives
//! files and commands to it.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use nix::unistd::{Uid, User};

/// Environment variable naming the OS user the server runs as when we are root.
pub const USER_ENV: &str = "OOM_GUARD_PG_USER";
/// The OS user the server runs as when we are root and nothing else was asked for.
pub const DEFAULT_UNPRIVILEGED_USER: &str = "nobody";

/// The OS user that owns the cluster and runs `initdb` and `postgres`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// True when the programs must be started with `setuid`/`setgid` (we are root).
    pub switch: bool,
}

impl ServerUser {
    /// When we are root: the user named by `requested`, else `$OOM_GUARD_PG_USER`, else
    /// `nobody` (an error if that user is root itself). Otherwise: ourselves (an error if a
    /// different user was requested, since only root can switch).
    pub fn choose(requested: Option<&str>) -> Result<Self> {
        let env_user = std::env::var(USER_ENV).ok().filter(|v| !v.is_empty());
        let requested = requested.map(str::to_string).or(env_user);
        if euid() == 0 {
            let name = requested.unwrap_or_else(|| DEFAULT_UNPRIVILEGED_USER.to_string());
            let user = Self::lookup(&name)?;
            if user.uid == 0 {
                bail!(
                    "the PostgreSQL server cannot run as `{name}` (uid 0): PostgreSQL refuses to \
                     run as root; set {USER_ENV} to an unprivileged user"
                );
            }
            Ok(user)
        } else {
            let me = Self::current()?;
            if let Some(name) = requested {
                if name != me.name {
                    bail!(
                        "running the PostgreSQL server as `{name}` needs root, but we run as \
                         `{}` (uid {}); unset {USER_ENV} or run as root",
                        me.name,
                        me.uid
                    );
                }
            }
            Ok(me)
        }
    }

    /// Looks up `name` in the user database; the result switches to that user.
    pub fn lookup(name: &str) -> Result<Self> {
        // A name with a NUL byte cannot be in the user database (`User::from_name` would say
        // "no such user"): say what is wrong with it instead.
        CString::new(name).with_context(|| format!("bad user name {name:?}"))?;
        match User::from_name(name)
            .map_err(io::Error::from)
            .with_context(|| format!("could not look up user `{name}`"))?
        {
            Some(user) => Ok(ServerUser {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                switch: true,
            }),
            None => bail!(
                "user `{name}` does not exist; create it (`useradd --system {name}`) or set \
                 {USER_ENV} to an existing unprivileged user"
            ),
        }
    }

    /// The user we run as; no switching.
    pub fn current() -> Result<Self> {
        let uid = euid();
        // SAFETY: getegid has no preconditions and cannot fail.
        let gid = unsafe { libc::getegid() };
        let name = match User::from_uid(Uid::from_raw(uid)) {
            Ok(Some(user)) => user.name,
            _ => std::env::var("USER").unwrap_or_else(|_| uid.to_string()),
        };
        Ok(ServerUser {
            name,
            uid,
            gid,
            switch: false,
        })
    }

    /// The (uid, gid) a command must switch to, when it must.
    pub(crate) fn switch_to(&self) -> Option<(u32, u32)> {
        self.switch.then_some((self.uid, self.gid))
    }

    /// Gives `cmd`, which runs as this user, `HOME` set to `home` (the unprivileged user's own
    /// home is usually `/nonexistent`) and `USER`/`LOGNAME` set to the user's name.
    pub(crate) fn apply(&self, cmd: &mut Command, home: &Path) {
        if self.switch {
            cmd.env("HOME", home)
                .env("USER", &self.name)
                .env("LOGNAME", &self.name);
        }
    }

    /// Gives `path` to this user (no-op unless switching).
    pub(crate) fn chown(&self, path: &Path) -> Result<()> {
        if self.switch {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
                .with_context(|| format!("could not chown {} to {}", path.display(), self.name))?;
        }
        Ok(())
    }

    /// Checks that this user can reach `dir` (search permission on every ancestor), so a base
    /// directory under e.g. `/root` fails here with a clear message instead of inside initdb.
    pub(crate) fn check_can_reach(&self, dir: &Path) -> Result<()> {
        if !self.switch {
            return Ok(());
        }
        for ancestor in dir.ancestors().skip(1) {
            let meta = fs::metadata(ancestor)
                .with_context(|| format!("could not stat {}", ancestor.display()))?;
            let mode = meta.mode();
            let bit = if meta.uid() == self.uid {
                0o100
            } else if meta.gid() == self.gid {
                0o010
            } else {
                0o001
            };
            if mode & bit == 0 {
                bail!(
                    "the PostgreSQL server user `{}` cannot reach {}: {} is mode {:o} owned by uid \
                     {}; put the cluster under a world-searchable directory such as /tmp",
                    self.name,
                    dir.display(),
                    ancestor.display(),
                    mode & 0o7777,
                    meta.uid()
                );
            }
        }
        Ok(())
    }
}

pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_user_is_found() {
        let me = ServerUser::current().unwrap();
        assert_eq!(me.uid, euid());
        assert!(!me.switch);
        assert!(!me.name.is_empty());
    }

    #[test]
    fn unknown_user_error_names_the_fix() {
        let err = ServerUser::lookup("no-such-user-oomguard")
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(err.contains(USER_ENV), "{err}");
    }

    #[test]
    fn a_user_is_found_by_name_with_its_uid_and_primary_group() {
        let root = ServerUser::lookup("root").unwrap();
        assert_eq!(
            root,
            ServerUser {
                name: "root".to_owned(),
                uid: 0,
                gid: 0,
                switch: true,
            }
        );
    }

    #[test]
    fn a_name_with_a_nul_byte_is_a_bad_user_name_not_a_missing_user() {
        let err = format!("{:#}", ServerUser::lookup("ro\0ot").unwrap_err());
        assert!(err.starts_with("bad user name"), "{err}");
    }
}
