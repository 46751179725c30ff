//! Finding the PostgreSQL server programs a cluster runs, and running them.
//!
//! [`PgBinaries`] are `initdb`, `postgres` and `pg_ctl` from one directory, found in this order:
//! `OOM_GUARD_PG_ROOT` (the highest `/usr/lib/postgresql/*/bin` inside another Debian release's
//! root, whose programs then run inside it, see [`PgRoot`]), `OOM_GUARD_PG_BINDIR`,
//! `pg_config --bindir`, the first `PATH` directory that holds all three, the highest
//! `/usr/lib/postgresql/*/bin`. An explicit choice that is wrong is an error, never a silent
//! fallback. [`PgBinaries::command`] runs one of them (or another program of the installation
//! such as `pgbench`) plainly or inside the root.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::root::PgRoot;

/// Environment variable naming the directory that holds `initdb`, `postgres` and `pg_ctl`.
pub const BINDIR_ENV: &str = "OOM_GUARD_PG_BINDIR";
/// Environment variable naming a Debian root directory (made by `mmdebstrap`) whose PostgreSQL
/// the clusters run; see [`PgRoot`].
pub const ROOT_ENV: &str = "OOM_GUARD_PG_ROOT";
/// Where Debian/Ubuntu install versioned server binaries (`/usr/lib/postgresql/<version>/bin`).
pub const VERSIONED_ROOT: &str = "/usr/lib/postgresql";

const SERVER_PROGRAMS: [&str; 3] = ["initdb", "postgres", "pg_ctl"];

/// Where [`PgBinaries`] were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinSource {
    /// `OOM_GUARD_PG_BINDIR`.
    Env,
    /// `pg_config --bindir`.
    PgConfig,
    /// A directory on `PATH` holding all three programs.
    Path,
    /// The highest-versioned `/usr/lib/postgresql/*/bin`.
    VersionedDir,
    /// Given by the caller ([`PgBinaries::from_bindir`]).
    Explicit,
    /// The highest `/usr/lib/postgresql/*/bin` inside `OOM_GUARD_PG_ROOT`.
    Root,
}

/// The PostgreSQL server programs a [`Cluster`](crate::Cluster) needs, all from one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    pub bindir: PathBuf,
    pub initdb: PathBuf,
    pub postgres: PathBuf,
    pub pg_ctl: PathBuf,
    pub found_via: BinSource,
    /// The Debian root the programs run in; the paths above are then the host's view of them.
    pub root: Option<PgRoot>,
}

/// The inputs of binary discovery, separated from the real environment so the order can be
/// tested with fake directories.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryInputs {
    /// Value of `OOM_GUARD_PG_ROOT` (empty counts as unset).
    pub env_root: Option<OsString>,
    /// Value of `OOM_GUARD_PG_BINDIR` (empty counts as unset).
    pub env_bindir: Option<OsString>,
    /// Output of `pg_config --bindir`, if `pg_config` ran successfully.
    pub pg_config_bindir: Option<PathBuf>,
    /// Value of `PATH`.
    pub path: Option<OsString>,
    /// Directory holding `<version>/bin` subdirectories (normally `/usr/lib/postgresql`).
    pub versioned_root: PathBuf,
}

impl DiscoveryInputs {
    /// Reads the real environment: the env var, `pg_config --bindir` (only when the env var is
    /// unset), `PATH`, and [`VERSIONED_ROOT`].
    pub fn from_environment() -> Self {
        let env_bindir = std::env::var_os(BINDIR_ENV).filter(|v| !v.is_empty());
        let pg_config_bindir = if env_bindir.is_none() {
            pg_config_bindir()
        } else {
            None
        };
        DiscoveryInputs {
            env_root: std::env::var_os(ROOT_ENV).filter(|v| !v.is_empty()),
            env_bindir,
            pg_config_bindir,
            path: std::env::var_os("PATH"),
            versioned_root: PathBuf::from(VERSIONED_ROOT),
        }
    }
}

/// Why no usable PostgreSQL server binaries were found.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// The env var was set but does not name a directory with the programs: never fall back
    /// silently from an explicit choice.
    #[error(
        "{var}={} does not contain an executable `{missing}`: point {var} at the directory that \
         holds initdb, postgres and pg_ctl (for example /usr/lib/postgresql/15/bin), or unset it",
        dir.display(),
        var = BINDIR_ENV
    )]
    BadEnvDir { dir: PathBuf, missing: &'static str },
    /// `OOM_GUARD_PG_ROOT` was set but holds no server binaries.
    #[error(
        "{var}={} holds no /usr/lib/postgresql/<version>/bin with initdb, postgres and pg_ctl: \
         point {var} at a Debian root with PostgreSQL installed (`mmdebstrap --variant=apt \
         --include=postgresql-17 trixie DIR`), or unset it",
        dir.display(),
        var = ROOT_ENV
    )]
    BadRoot { dir: PathBuf },
    /// Nothing found anywhere.
    #[error(
        "PostgreSQL server binaries (initdb, postgres, pg_ctl) not found; looked in: {tried}. \
         Install them with `apt-get install postgresql` (Debian/Ubuntu; the programs land in \
         /usr/lib/postgresql/<version>/bin), or set {var} to the directory that holds them",
        var = BINDIR_ENV
    )]
    NotFound { tried: String },
}

impl PgBinaries {
    /// Finds the server binaries in the real environment; see [`PgBinaries::discover_from`].
    pub fn discover() -> Result<Self, DiscoverError> {
        Self::discover_from(&DiscoveryInputs::from_environment())
    }

    /// Finds the server binaries: `OOM_GUARD_PG_BINDIR` if set (an error if it is wrong), else
    /// `pg_config --bindir`, else the first `PATH` directory holding all three programs, else the
    /// highest `VERSIONED_ROOT/<version>/bin`.
    pub fn discover_from(inputs: &DiscoveryInputs) -> Result<Self, DiscoverError> {
        if let Some(dir) = &inputs.env_root {
            let dir = PathBuf::from(dir);
            let versioned = dir.join(VERSIONED_ROOT.trim_start_matches('/'));
            return match highest_versioned_bindir(&versioned) {
                Some(bindir) => {
                    let mut binaries = Self::in_dir(bindir, BinSource::Root);
                    binaries.root = Some(PgRoot { dir });
                    Ok(binaries)
                }
                None => Err(DiscoverError::BadRoot { dir }),
            };
        }
        if let Some(dir) = inputs.env_bindir.as_ref().filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(dir);
            return match missing_program(&dir) {
                None => Ok(Self::in_dir(dir, BinSource::Env)),
                Some(missing) => Err(DiscoverError::BadEnvDir { dir, missing }),
            };
        }
        let mut tried = vec![format!("${BINDIR_ENV} (unset)")];

        match &inputs.pg_config_bindir {
            Some(dir) if missing_program(dir).is_none() => {
                return Ok(Self::in_dir(dir.clone(), BinSource::PgConfig))
            }
            Some(dir) => tried.push(format!("`pg_config --bindir` ({})", dir.display())),
            None => tried.push("`pg_config --bindir` (no pg_config)".to_string()),
        }

        if let Some(path) = &inputs.path {
            for dir in std::env::split_paths(path) {
                if dir.as_os_str().is_empty() {
                    continue;
                }
                if missing_program(&dir).is_none() {
                    return Ok(Self::in_dir(dir, BinSource::Path));
                }
            }
        }
        tried.push("$PATH".to_string());

        if let Some(dir) = highest_versioned_bindir(&inputs.versioned_root) {
            return Ok(Self::in_dir(dir, BinSource::VersionedDir));
        }
        tried.push(format!("{}/*/bin", inputs.versioned_root.display()));

        Err(DiscoverError::NotFound {
            tried: tried.join(", "),
        })
    }

    /// Uses the programs in `dir`, which must hold all three.
    pub fn from_bindir(dir: &Path) -> Result<Self> {
        match missing_program(dir) {
            None => Ok(Self::in_dir(dir.to_path_buf(), BinSource::Explicit)),
            Some(missing) => bail!("{} has no executable `{missing}`", dir.display()),
        }
    }

    fn in_dir(bindir: PathBuf, found_via: BinSource) -> Self {
        PgBinaries {
            initdb: bindir.join("initdb"),
            postgres: bindir.join("postgres"),
            pg_ctl: bindir.join("pg_ctl"),
            bindir,
            found_via,
            root: None,
        }
    }

    /// A command running `program` (one of these binaries, or another program of their
    /// installation such as `pgbench`, as a host path) in `cwd`: plainly, or inside the root.
    /// `user`: the (uid, gid) to switch to, when we are root.
    pub fn command(&self, program: &Path, cwd: &Path, user: Option<(u32, u32)>) -> Result<Command> {
        match &self.root {
            None => {
                let mut cmd = Command::new(program);
                cmd.current_dir(cwd);
                if let Some((uid, gid)) = user {
                    // std drops supplementary groups (setgroups(0)) when root sets a uid.
                    cmd.uid(uid).gid(gid);
                }
                Ok(cmd)
            }
            Some(root) => {
                let mut cmd = Command::new(root.inside(program));
                root.enter(&mut cmd, cwd, user)?;
                Ok(cmd)
            }
        }
    }

    /// `postgres --version`, e.g. `postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)`.
    pub fn version(&self) -> Result<String> {
        let out = self
            .command(&self.postgres, Path::new("/"), None)?
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("could not run {} --version", self.postgres.display()))?;
        if !out.status.success() {
            bail!(
                "{} --version failed ({}): {}",
                self.postgres.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then(|| PathBuf::from(text))
}

/// The first of initdb/postgres/pg_ctl that `dir` lacks (as an executable file), if any.
fn missing_program(dir: &Path) -> Option<&'static str> {
    SERVER_PROGRAMS
        .into_iter()
        .find(|name| !is_executable_file(&dir.join(name)))
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `root/<version>/bin` with the numerically highest version (`16` > `15` > `9.6`) that holds all
/// three programs.
fn highest_versioned_bindir(root: &Path) -> Option<PathBuf> {
    let mut versions: Vec<(Vec<u64>, PathBuf)> = fs::read_dir(root)
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name();
            let version: Option<Vec<u64>> = name
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect();
            Some((version?, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|(_, dir)| dir)
        .find(|dir| missing_program(dir).is_none())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A directory `root/rel` holding `programs` as executable shell scripts that exit 0.
    pub(crate) fn fake_bindir(root: &Path, rel: &str, programs: &[&str]) -> PathBuf {
        let dir = root.join(rel);
        fs::create_dir_all(&dir).unwrap();
        for name in programs {
            let path = dir.join(name);
            fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    pub(crate) const ALL: [&str; 3] = SERVER_PROGRAMS;

    #[test]
    fn discovery_order_env_then_pg_config_then_path_then_versioned() {
        let root = tempfile::tempdir().unwrap();
        let env_dir = fake_bindir(root.path(), "env", &ALL);
        let cfg_dir = fake_bindir(root.path(), "cfg", &ALL);
        let path_dir = fake_bindir(root.path(), "path", &ALL);
        let versioned = root.path().join("versioned");
        fake_bindir(&versioned, "15/bin", &ALL);
        let path = std::env::join_paths([root.path().join("nothing"), path_dir.clone()]).unwrap();

        let mut inputs = DiscoveryInputs {
            env_root: None,
            env_bindir: Some(env_dir.clone().into()),
            pg_config_bindir: Some(cfg_dir.clone()),
            path: Some(path),
            versioned_root: versioned.clone(),
        };
        let found = PgBinaries::discover_from(&inputs).unwrap();
        assert_eq!(
            (found.bindir.clone(), found.found_via),
            (env_dir, BinSource::Env)
        );

        inputs.env_bindir = Some(OsString::new()); // empty counts as unset
        let found = PgBinaries::discover_from(&inputs).unwrap();
        assert_eq!(
            (found.bindir.clone(), found.found_via),
            (cfg_dir, BinSource::PgConfig)
        );
        assert_eq!(found.postgres, found.bindir.join("postgres"));

        inputs.pg_config_bindir = None;
        let found = PgBinaries::discover_from(&inputs).unwrap();
        assert_eq!(
            (found.bindir.clone(), found.found_via),
            (path_dir, BinSource::Path)
        );

        inputs.path = None;
        let found = PgBinaries::discover_from(&inputs).unwrap();
        assert_eq!(found.bindir, versioned.join("15/bin"));
        assert_eq!(found.found_via, BinSource::VersionedDir);
    }

    #[test]
    fn a_debian_root_comes_first_and_its_programs_run_inside_it() {
        let root = tempfile::tempdir().unwrap();
        let bindir = fake_bindir(root.path(), "usr/lib/postgresql/17/bin", &ALL);
        fake_bindir(root.path(), "usr/lib/postgresql/16/bin", &ALL);
        let other = fake_bindir(root.path(), "elsewhere", &ALL);
        let inputs = DiscoveryInputs {
            env_root: Some(root.path().into()),
            env_bindir: Some(other.into()),
            pg_config_bindir: None,
            path: None,
            versioned_root: PathBuf::from("/nonexistent"),
        };
        let found = PgBinaries::discover_from(&inputs).unwrap();
        assert_eq!(found.found_via, BinSource::Root);
        assert_eq!(found.bindir, bindir);
        let pg_root = found.root.clone().expect("the root is kept");
        assert_eq!(
            pg_root.inside(&found.postgres),
            Path::new("/usr/lib/postgresql/17/bin/postgres")
        );

        let empty = tempfile::tempdir().unwrap();
        let inputs = DiscoveryInputs {
            env_root: Some(empty.path().into()),
            ..inputs
        };
        let error = PgBinaries::discover_from(&inputs).unwrap_err().to_string();
        assert!(
            error.contains(ROOT_ENV) && error.contains("mmdebstrap"),
            "{error}"
        );
    }

    #[test]
    fn incomplete_dirs_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        // pg_config points at a client-only bindir (libpq-dev without the server).
        let cfg_dir = fake_bindir(root.path(), "cfg", &["pg_ctl"]);
        let partial = fake_bindir(root.path(), "partial", &["postgres", "initdb"]);
        let full = fake_bindir(root.path(), "full", &ALL);
        // Not executable.
        let noexec = fake_bindir(root.path(), "noexec", &ALL);
        fs::set_permissions(noexec.join("initdb"), fs::Permissions::from_mode(0o644)).unwrap();
        let inputs = DiscoveryInputs {
            env_root: None,
            env_bindir: None,
            pg_config_bindir: Some(cfg_dir),
            path: Some(std::env::join_paths([partial, noexec, full.clone()]).unwrap()),
            versioned_root: root.path().join("none"),
        };
        let found = PgBinaries::discover_from(&inputs).unwrap();
        assert_eq!(
            (found.bindir.clone(), found.found_via),
            (full, BinSource::Path)
        );
    }

    #[test]
    fn highest_version_wins_numerically() {
        let root = tempfile::tempdir().unwrap();
        fake_bindir(root.path(), "9.6/bin", &ALL);
        fake_bindir(root.path(), "15/bin", &ALL);
        fake_bindir(root.path(), "16/bin", &["pg_ctl"]); // client-only: skipped
        fake_bindir(root.path(), "notaversion/bin", &ALL);
        let inputs = DiscoveryInputs {
            versioned_root: root.path().to_path_buf(),
            ..Default::default()
        };
        let found = PgBinaries::discover_from(&inputs).unwrap();
        assert_eq!(found.bindir, root.path().join("15/bin"));

        fake_bindir(root.path(), "16/bin", &ALL);
        let found = PgBinaries::discover_from(&inputs).unwrap();
        assert_eq!(found.bindir, root.path().join("16/bin"));
    }

    #[test]
    fn bad_env_dir_is_an_error_not_a_fallback() {
        let root = tempfile::tempdir().unwrap();
        let full = fake_bindir(root.path(), "full", &ALL);
        let inputs = DiscoveryInputs {
            env_bindir: Some(root.path().join("missing").into()),
            pg_config_bindir: Some(full),
            ..Default::default()
        };
        let err = PgBinaries::discover_from(&inputs).unwrap_err();
        assert!(matches!(err, DiscoverError::BadEnvDir { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(BINDIR_ENV), "{text}");
        assert!(text.contains("initdb"), "{text}");
    }

    #[test]
    fn not_found_says_how_to_install() {
        let root = tempfile::tempdir().unwrap();
        let inputs = DiscoveryInputs {
            path: Some(root.path().as_os_str().to_owned()),
            versioned_root: root.path().join("none"),
            ..Default::default()
        };
        let text = PgBinaries::discover_from(&inputs).unwrap_err().to_string();
        assert!(text.contains("apt-get install postgresql"), "{text}");
        assert!(text.contains(BINDIR_ENV), "{text}");
        assert!(text.contains("$PATH"), "{text}");
    }
}
