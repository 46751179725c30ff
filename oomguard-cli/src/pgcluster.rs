//! Throwaway PostgreSQL clusters for `oomguard demo` and the end-to-end tests.
//!
//! This module owns everything between "there are PostgreSQL binaries somewhere" and "here is a
//! connected client to a server that runs with our environment":
//!
//! - [`PgBinaries`]: finding `initdb`, `postgres` and `pg_ctl` (`OOM_GUARD_PG_ROOT`, then
//!   `OOM_GUARD_PG_BINDIR`, then `pg_config --bindir`, then `PATH`, then the highest
//!   `/usr/lib/postgresql/*/bin`), and running them: plainly, or inside another Debian release's
//!   root directory ([`PgRoot`]) when their C library is newer than this machine's.
//! - [`ServerUser`]: which OS user the server runs as. PostgreSQL refuses to run as root, so when
//!   we are root the cluster is owned by and run as an unprivileged user (`nobody` unless
//!   `OOM_GUARD_PG_USER` or [`ClusterOptions::user`] says otherwise).
//! - [`Cluster`]: `initdb` into `BASE/data`, a private unix-socket directory `BASE/sock` (no TCP),
//!   the server log `BASE/postgres.log`; starting `postgres` directly as our child with extra
//!   environment (this is how `LD_PRELOAD=…/liboomguard.so` and `OOM_GUARD_*` reach the server),
//!   optionally inside a given cgroup ([`ClusterOptions::cgroup`]), waiting for readiness by
//!   really connecting, fast shutdown, and stopping on drop.
//! - Small helpers the tests use to prove what happened: [`backend_pids_by_type`],
//!   [`pid_maps_library`], and [`stage_library`] (copy the preload library somewhere the
//!   unprivileged server user can read it).
//!
//! Nothing here knows about the guard itself; the guard only reaches the server through the
//! environment passed to [`Cluster::start`].

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::unistd::{Uid, User};

/// Environment variable naming the directory that holds `initdb`, `postgres` and `pg_ctl`.
pub const BINDIR_ENV: &str = "OOM_GUARD_PG_BINDIR";
/// Environment variable naming a Debian root directory (made by `mmdebstrap`) whose PostgreSQL
/// the clusters run; see [`PgRoot`].
pub const ROOT_ENV: &str = "OOM_GUARD_PG_ROOT";
/// Environment variable naming the OS user the server runs as when we are root.
pub const USER_ENV: &str = "OOM_GUARD_PG_USER";
/// The OS user the server runs as when we are root and nothing else was asked for.
pub const DEFAULT_UNPRIVILEGED_USER: &str = "nobody";
/// The database superuser created by `initdb -U` and used by [`Cluster::connect`].
pub const SUPERUSER: &str = "postgres";
/// Where Debian/Ubuntu install versioned server binaries (`/usr/lib/postgresql/<version>/bin`).
pub const VERSIONED_ROOT: &str = "/usr/lib/postgresql";
/// How long [`Cluster::start`] waits for the server to accept a connection by default.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Cluster::stop`] waits after a fast shutdown request by default.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

const POLL_INTERVAL: Duration = Duration::from_millis(50);
const SERVER_PROGRAMS: [&str; 3] = ["initdb", "postgres", "pg_ctl"];
const LOG_TAIL_LINES: usize = 40;
/// `sizeof(sockaddr_un.sun_path)` on Linux, including the terminating NUL.
const SUN_PATH_MAX: usize = 108;

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

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
    fn inside(&self, host_path: &Path) -> PathBuf {
        match host_path.strip_prefix(&self.dir) {
            Ok(relative) => Path::new("/").join(relative),
            Err(_) => host_path.to_path_buf(),
        }
    }

    /// Makes `cmd` enter the root before it execs: the mounts above, `chroot`, `chdir(cwd)`
    /// (the same path inside), and then, when `user` is given, its gid and uid with no
    /// supplementary groups. `cmd`'s program must be a path inside the root.
    fn enter(&self, cmd: &mut Command, cwd: &Path, user: Option<(u32, u32)>) -> Result<()> {
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

/// The PostgreSQL server programs a [`Cluster`] needs, all from one directory.
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

// ---------------------------------------------------------------------------------------------
// The OS user the server runs as
// ---------------------------------------------------------------------------------------------

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
    fn switch_to(&self) -> Option<(u32, u32)> {
        self.switch.then_some((self.uid, self.gid))
    }

    /// Gives `cmd`, which runs as this user, `HOME` set to `home` (the unprivileged user's own
    /// home is usually `/nonexistent`) and `USER`/`LOGNAME` set to the user's name.
    fn apply(&self, cmd: &mut Command, home: &Path) {
        if self.switch {
            cmd.env("HOME", home)
                .env("USER", &self.name)
                .env("LOGNAME", &self.name);
        }
    }

    /// Gives `path` to this user (no-op unless switching).
    fn chown(&self, path: &Path) -> Result<()> {
        if self.switch {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
                .with_context(|| format!("could not chown {} to {}", path.display(), self.name))?;
        }
        Ok(())
    }

    /// Checks that this user can reach `dir` (search permission on every ancestor), so a base
    /// directory under e.g. `/root` fails here with a clear message instead of inside initdb.
    fn check_can_reach(&self, dir: &Path) -> Result<()> {
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

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

/// How a [`Cluster`] is created and run.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Server binaries; `None` means [`PgBinaries::discover`].
    pub binaries: Option<PgBinaries>,
    /// OS user when we are root; `None` means `$OOM_GUARD_PG_USER`, else `nobody`.
    pub user: Option<String>,
    /// Port number. Only the socket file name depends on it (no TCP: `listen_addresses=''`), and
    /// each cluster has its own socket directory, so the default rarely needs changing.
    pub port: u16,
    /// How long [`Cluster::start`] waits for a successful connection.
    pub start_timeout: Duration,
    /// How long [`Cluster::stop`] waits after the fast-shutdown signal before escalating.
    pub stop_timeout: Duration,
    /// Ask the kernel to send the postmaster SIGQUIT (immediate shutdown) when the *thread* that
    /// started it exits (`PR_SET_PDEATHSIG`), so a killed test run leaves no server behind.
    /// Turn it off if the cluster is started on a thread that ends before the cluster should.
    pub die_with_parent: bool,
    /// A cgroup directory (v1 or v2) the postmaster joins before it execs, so that the server
    /// and every process it forks run inside it from the start. Its `cgroup.procs` is opened by
    /// us (we may be root while the server user could not open it) and the child writes `0`
    /// (itself) into it.
    pub cgroup: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            binaries: None,
            user: None,
            port: 5432,
            start_timeout: DEFAULT_START_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            die_with_parent: true,
            cgroup: None,
        }
    }
}

/// Environment variable that turns PostgreSQL's JIT on (`on`) in every cluster that does not
/// set `jit` itself: the server tests then run their queries as a JIT-enabled server would.
pub const JIT_ENV: &str = "OOM_GUARD_PG_JIT";

/// Settings every cluster starts with; [`Cluster::start`]'s `settings` override them by name.
/// JIT is off (deterministic plans and timings) unless `OOM_GUARD_PG_JIT=on`.
pub fn default_settings() -> Vec<(String, String)> {
    let jit = if std::env::var(JIT_ENV).is_ok_and(|value| value == "on") {
        "on"
    } else {
        "off"
    };
    [
        ("listen_addresses", ""),
        ("jit", jit),
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("full_page_writes", "off"),
        ("shared_buffers", "32MB"),
        ("max_connections", "30"),
        ("huge_pages", "off"),
        ("logging_collector", "off"),
        ("log_line_prefix", "%m [%p] %b "),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// What [`Cluster::stop`] observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopOutcome {
    /// A postmaster had been started and not yet stopped.
    pub was_started: bool,
    /// It had already exited before we asked it to (e.g. it crashed or was killed).
    pub exited_on_its_own: bool,
    /// The fast shutdown did not finish in time and we escalated (SIGQUIT, then SIGKILL).
    pub forced: bool,
    /// The postmaster's exit status, if it was running.
    pub status: Option<ExitStatus>,
    /// It exited with status 0 in response to our fast-shutdown request.
    pub clean: bool,
}

/// A throwaway cluster in a base directory: `data/`, `sock/`, `postgres.log`, `initdb.log`.
///
/// Dropping it stops the server if it is running (and removes the directory if it was made by
/// [`Cluster::create_temp`]).
#[derive(Debug)]
pub struct Cluster {
    base_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    binaries: PgBinaries,
    user: ServerUser,
    port: u16,
    start_timeout: Duration,
    stop_timeout: Duration,
    die_with_parent: bool,
    cgroup: Option<PathBuf>,
    child: Option<Child>,
    // Last, so the directory outlives the server (Drop stops the server first anyway).
    temp: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Runs `initdb` (`-A trust -U postgres -E UTF8 --locale=C --no-sync`) into
    /// `base_dir/data` as the server user. `base_dir` must not exist yet or be empty; it is
    /// created, set to mode 0755 and (when we are root) given to the server user.
    pub fn create(base_dir: &Path, opts: &ClusterOptions) -> Result<Cluster> {
        let binaries = match &opts.binaries {
            Some(b) => b.clone(),
            None => PgBinaries::discover()?,
        };
        let user = ServerUser::choose(opts.user.as_deref())?;

        // The base directory is chmod'ed and given to the server user: never do that to a
        // directory that already holds something (think `/tmp`).
        if fs::read_dir(base_dir).is_ok_and(|mut d| d.next().is_some()) {
            bail!(
                "{} is not empty; a cluster needs a new or empty base directory",
                base_dir.display()
            );
        }
        fs::create_dir_all(base_dir)
            .with_context(|| format!("could not create {}", base_dir.display()))?;
        let base_dir = fs::canonicalize(base_dir)
            .with_context(|| format!("could not resolve {}", base_dir.display()))?;
        user.check_can_reach(&base_dir)?;
        fs::set_permissions(&base_dir, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("could not chmod {}", base_dir.display()))?;
        user.chown(&base_dir)?;

        let data_dir = base_dir.join("data");

        let socket_dir = base_dir.join("sock");
        fs::create_dir_all(&socket_dir)
            .with_context(|| format!("could not create {}", socket_dir.display()))?;
        user.chown(&socket_dir)?;
        let socket_file = socket_dir.join(format!(".s.PGSQL.{}", opts.port));
        if socket_file.as_os_str().len() >= SUN_PATH_MAX {
            bail!(
                "the socket path {} is longer than the {} bytes a unix socket allows; use a \
                 shorter base directory",
                socket_file.display(),
                SUN_PATH_MAX - 1
            );
        }

        let log_path = base_dir.join("postgres.log");
        File::create(&log_path)
            .with_context(|| format!("could not create {}", log_path.display()))?;
        user.chown(&log_path)?;

        let cluster = Cluster {
            base_dir,
            data_dir,
            socket_dir,
            log_path,
            binaries,
            user,
            port: opts.port,
            start_timeout: opts.start_timeout,
            stop_timeout: opts.stop_timeout,
            die_with_parent: opts.die_with_parent,
            cgroup: opts.cgroup.clone(),
            child: None,
            temp: None,
        };
        cluster.initdb()?;
        Ok(cluster)
    }

    /// [`Cluster::create`] in a fresh directory under `/tmp` that is removed on drop. (`/tmp`
    /// rather than `$TMPDIR`, because the unprivileged server user must be able to reach it and
    /// the socket path must stay short.)
    pub fn create_temp(opts: &ClusterOptions) -> Result<Cluster> {
        let temp = tempfile::Builder::new()
            .prefix("oomguard-pg-")
            .tempdir_in("/tmp")
            .context("could not create a temporary directory under /tmp")?;
        let mut cluster = Self::create(temp.path(), opts)?;
        cluster.temp = Some(temp);
        Ok(cluster)
    }

    fn initdb(&self) -> Result<()> {
        let initdb_log = self.base_dir.join("initdb.log");
        let log = File::create(&initdb_log)
            .with_context(|| format!("could not create {}", initdb_log.display()))?;
        let mut cmd = self.command(&self.binaries.initdb)?;
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args([
                "-A",
                "trust",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(log.try_clone()?)
            .stderr(log);
        let status = cmd
            .status()
            .with_context(|| format!("could not run {}", self.binaries.initdb.display()))?;
        if !status.success() {
            bail!(
                "{} failed ({status}) as user `{}`; last lines of {}:\n{}",
                self.binaries.initdb.display(),
                self.user.name,
                initdb_log.display(),
                tail_of_file(&initdb_log, LOG_TAIL_LINES)
            );
        }
        Ok(())
    }

    /// A command for a server program: runs as the server user, in the base directory (the
    /// server user may not be able to read our working directory), with `LC_ALL=C` so messages
    /// are in English.
    fn command(&self, program: &Path) -> Result<Command> {
        let mut cmd = self
            .binaries
            .command(program, &self.base_dir, self.user.switch_to())?;
        cmd.stdin(Stdio::null()).env("LC_ALL", "C");
        self.user.apply(&mut cmd, &self.base_dir);
        Ok(cmd)
    }

    /// A command running another program of the server's installation (`pgbench`, `psql`) as
    /// the server user, in the root the server runs in if any.
    pub fn program(&self, name: &str) -> Result<Command> {
        self.command(&self.binaries.bindir.join(name))
    }

    /// Starts `postgres -D data -k sock -p PORT -c …` as our child, with stdout/stderr appended
    /// to `postgres.log`, with `env` added to the inherited environment (e.g. `LD_PRELOAD`,
    /// `OOM_GUARD_*`), and `settings` overriding [`default_settings`] by name. Returns once a
    /// connection succeeds and `SELECT 1` runs; fails with the log tail if the postmaster exits
    /// first or the start timeout passes (the postmaster is then stopped).
    pub fn start(&mut self, env: &[(String, String)], settings: &[(String, String)]) -> Result<()> {
        if self.is_running() {
            let pid = self.postmaster_pid().unwrap_or(0);
            bail!(
                "the cluster in {} is already running (postmaster pid {pid})",
                self.base_dir.display()
            );
        }
        let log = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&self.log_path)
            .with_context(|| format!("could not open {}", self.log_path.display()))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);

        let mut cmd = self.command(&self.binaries.postgres)?;
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-k")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string());
        for (name, value) in merge_settings(&default_settings(), settings) {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        cmd.stdout(log.try_clone()?).stderr(log);
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // Own process group: a terminal's Ctrl-C reaches us, and we decide how the server stops.
        cmd.process_group(0);
        if self.die_with_parent {
            let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
            // SAFETY: the closure runs in the forked child before exec; it only calls prctl and
            // getppid, which are async-signal-safe, and does not allocate or take locks.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT as libc::c_ulong) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // The parent may have died between fork and prctl.
                    if libc::getppid() != parent {
                        return Err(io::Error::other("parent exited during start"));
                    }
                    Ok(())
                });
            }
        }
        // Opened here and kept open until the spawn returned; O_CLOEXEC closes it in the server.
        let cgroup_procs = match &self.cgroup {
            Some(dir) => {
                let path = dir.join("cgroup.procs");
                let file = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&path)
                    .with_context(|| format!("could not open {}", path.display()))?;
                Some(file)
            }
            None => None,
        };
        if let Some(file) = &cgroup_procs {
            let fd = file.as_raw_fd();
            // SAFETY: the closure runs in the forked child before exec; it only calls write on an
            // fd that the parent keeps open until spawn returns, which is async-signal-safe, and
            // does not allocate or take locks.
            unsafe {
                cmd.pre_exec(move || {
                    // "0" moves the writing process itself (both cgroup v1 and v2).
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    if written != 1 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let spawned = cmd.spawn();
        drop(cgroup_procs);
        let child = spawned.with_context(|| {
            format!(
                "could not start {} as user `{}`",
                self.binaries.postgres.display(),
                self.user.name
            )
        })?;
        self.child = Some(child);

        match self.wait_ready() {
            Ok(()) => Ok(()),
            Err(err) => {
                let _ = self.stop_with(Duration::from_secs(5));
                Err(err.context(format!(
                    "PostgreSQL did not start; server log {} since this start:\n{}",
                    self.log_path.display(),
                    tail_of_file_from(&self.log_path, log_start, LOG_TAIL_LINES)
                )))
            }
        }
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.start_timeout;
        loop {
            let child = self.child.as_mut().expect("start sets the child");
            if let Some(status) = child.try_wait().context("could not poll the postmaster")? {
                bail!("the postmaster exited during startup ({status})");
            }
            let attempt = self
                .connection_config(Duration::from_secs(5))
                .connect(postgres::NoTls)
                .and_then(|mut client| client.simple_query("SELECT 1").map(drop));
            let last_error = match attempt {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!(
                    "the server did not accept connections within {:?}; last connection error: \
                     {last_error}",
                    self.start_timeout
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The connection parameters [`Cluster::connect`] uses, for callers that want to tweak them.
    pub fn connection_config(&self, connect_timeout: Duration) -> postgres::Config {
        let mut config = postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(SUPERUSER)
            .dbname("postgres")
            .application_name("oomguard")
            .connect_timeout(connect_timeout);
        config
    }

    /// A client over the unix socket as the `postgres` superuser to database `postgres`.
    pub fn connect(&self) -> Result<postgres::Client> {
        self.connection_config(Duration::from_secs(10))
            .connect(postgres::NoTls)
            .with_context(|| {
                format!(
                    "could not connect to the cluster via {}",
                    self.socket_dir.display()
                )
            })
    }

    /// The pid of the postmaster we started, from [`Cluster::start`] until [`Cluster::stop`]
    /// (even if it has exited meanwhile: see [`Cluster::is_running`]).
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the postmaster we started is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The whole server log (lossily decoded).
    pub fn log_text(&self) -> io::Result<String> {
        Ok(String::from_utf8_lossy(&fs::read(&self.log_path)?).into_owned())
    }

    /// The last `lines` lines of the server log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of_file(&self.log_path, lines)
    }

    /// Fast shutdown: SIGINT to the postmaster and wait up to the stop timeout; if it has not
    /// exited by then, SIGQUIT (immediate shutdown), then SIGKILL. Reports what happened; stopping
    /// a cluster that is not running is not an error.
    pub fn stop(&mut self) -> Result<StopOutcome> {
        self.stop_with(self.stop_timeout)
    }

    fn stop_with(&mut self, timeout: Duration) -> Result<StopOutcome> {
        let Some(mut child) = self.child.take() else {
            return Ok(StopOutcome {
                was_started: false,
                exited_on_its_own: false,
                forced: false,
                status: None,
                clean: false,
            });
        };
        if let Some(status) = child.try_wait().context("could not poll the postmaster")? {
            return Ok(StopOutcome {
                was_started: true,
                exited_on_its_own: true,
                forced: false,
                status: Some(status),
                clean: false,
            });
        }
        let pid = child.id();
        send_signal(pid, libc::SIGINT)?;
        if let Some(status) = wait_until(&mut child, timeout)? {
            return Ok(StopOutcome {
                was_started: true,
                exited_on_its_own: false,
                forced: false,
                status: Some(status),
                clean: status.success(),
            });
        }
        send_signal(pid, libc::SIGQUIT)?;
        let status = match wait_until(&mut child, Duration::from_secs(5))? {
            Some(status) => status,
            None => {
                child.kill().context("could not SIGKILL the postmaster")?;
                child.wait().context("could not reap the postmaster")?
            }
        };
        Ok(StopOutcome {
            was_started: true,
            exited_on_its_own: false,
            forced: true,
            status: Some(status),
            clean: false,
        })
    }

    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn binaries(&self) -> &PgBinaries {
        &self.binaries
    }
    pub fn server_user(&self) -> &ServerUser {
        &self.user
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// `defaults` with `overrides` applied by name (case-insensitive, like GUC names); new names are
/// appended in order.
fn merge_settings(
    defaults: &[(String, String)],
    overrides: &[(String, String)],
) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = defaults.to_vec();
    for (name, value) in overrides {
        match merged
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(slot) => slot.1 = value.clone(),
            None => merged.push((name.clone(), value.clone())),
        }
    }
    merged
}

fn send_signal(pid: u32, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill has no memory-safety preconditions; `pid` is our own unreaped child, so it
    // cannot have been recycled for another process.
    if unsafe { libc::kill(pid, signal) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err).with_context(|| format!("could not signal pid {pid}"));
        }
    }
    Ok(())
}

fn wait_until(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("could not poll the postmaster")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL_INTERVAL.min(Duration::from_millis(20)));
    }
}

fn tail_of_file(path: &Path, lines: usize) -> String {
    tail_of_file_from(path, 0, lines)
}

/// The last `lines` lines of `path` from byte `offset` on (or a note saying why not).
fn tail_of_file_from(path: &Path, offset: u64, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            if all.is_empty() {
                "(empty)".to_string()
            } else {
                all[start..].join("\n")
            }
        }
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

/// Describes an exit status like the postmaster log does ("exit code 1", "signal 9").
pub fn describe_status(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for tests and the demo
// ---------------------------------------------------------------------------------------------

/// `(pid, backend_type)` of every process in `pg_stat_activity` (client backends and auxiliary
/// processes such as `checkpointer`, `background writer`, `walwriter`, `autovacuum launcher`).
pub fn backend_pids_by_type(client: &mut postgres::Client) -> Result<Vec<(u32, String)>> {
    let rows = client
        .query(
            "SELECT pid, coalesce(backend_type, '') FROM pg_stat_activity ORDER BY pid",
            &[],
        )
        .context("could not query pg_stat_activity")?;
    rows.iter()
        .map(|row| {
            let pid: i32 = row.get(0);
            let kind: String = row.get(1);
            Ok((u32::try_from(pid).context("negative pid")?, kind))
        })
        .collect()
}

/// The pid of the session's own backend (`pg_backend_pid()`).
pub fn backend_pid(client: &mut postgres::Client) -> Result<i32> {
    Ok(client
        .query_one("SELECT pg_backend_pid()", &[])
        .context("could not ask for pg_backend_pid()")?
        .get(0))
}

/// The checkpointer's pid, from `pg_stat_activity` (it changes when the server resets after a
/// crash: the tests' crash detector).
pub fn checkpointer_pid(client: &mut postgres::Client) -> Result<u32> {
    backend_pids_by_type(client)?
        .into_iter()
        .find(|(_, kind)| kind == "checkpointer")
        .map(|(pid, _)| pid)
        .context("no checkpointer in pg_stat_activity")
}

/// Whether process `pid` has a file mapped whose path is `name` or whose file name is `name`
/// (e.g. `"liboomguard.so"`), according to `/proc/PID/maps`.
pub fn pid_maps_library(pid: u32, name: &str) -> io::Result<bool> {
    let maps = fs::read(format!("/proc/{pid}/maps"))?;
    Ok(maps_mention_library(&maps, name.as_bytes()))
}

fn maps_mention_library(maps: &[u8], name: &[u8]) -> bool {
    maps.split(|&b| b == b'\n').any(|line| {
        // address perms offset dev inode pathname: the pathname starts at the first '/'.
        let Some(start) = line.iter().position(|&b| b == b'/') else {
            return false;
        };
        let mut path = &line[start..];
        if let Some(stripped) = path.strip_suffix(b" (deleted)") {
            path = stripped;
        }
        let file_name = Path::new(OsStr::from_bytes(path))
            .file_name()
            .map(OsStr::as_bytes);
        path == name || file_name == Some(name)
    })
}

/// Copies the preload library `src` into `dir` (created if needed) with mode 0644, so a server
/// running as an unprivileged user can load it even when `src` lives somewhere only root can
/// read (e.g. under `/root`). Returns the staged path. The copy is written under a temporary
/// name and renamed, so a running server never maps a half-written file.
pub fn stage_library(src: &Path, dir: &Path) -> io::Result<PathBuf> {
    let file_name = src.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", src.display()),
        )
    })?;
    fs::create_dir_all(dir)?;
    let dest = dir.join(file_name);
    let mut tmp_name = OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    fs::copy(src, &tmp).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("could not copy {} to {}: {e}", src.display(), tmp.display()),
        )
    })?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
    fs::rename(&tmp, &dest)?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bindir(root: &Path, rel: &str, programs: &[&str]) -> PathBuf {
        let dir = root.join(rel);
        fs::create_dir_all(&dir).unwrap();
        for name in programs {
            let path = dir.join(name);
            fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    const ALL: [&str; 3] = SERVER_PROGRAMS;

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

    #[test]
    fn settings_override_by_name() {
        let merged = merge_settings(
            &default_settings(),
            &[
                ("Shared_Buffers".into(), "64MB".into()),
                ("work_mem".into(), "1GB".into()),
            ],
        );
        let get = |n: &str| {
            merged
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("shared_buffers"), ["64MB"]);
        assert_eq!(get("work_mem"), ["1GB"]);
        assert_eq!(get("jit"), ["off"]);
        assert_eq!(get("listen_addresses"), [""]);
    }

    #[test]
    fn maps_parsing() {
        let maps = b"55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 123 /usr/lib/postgresql/15/bin/postgres\n\
7f0000000000-7f0000001000 r-xp 00000000 08:01 456 /tmp/oomguard-pg-x/liboomguard.so\n\
7f0000002000-7f0000003000 rw-p 00000000 00:00 0 \n\
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n\
7f0000004000-7f0000005000 r-xp 00000000 08:01 789 /old/libold.so (deleted)\n";
        assert!(maps_mention_library(maps, b"liboomguard.so"));
        assert!(maps_mention_library(
            maps,
            b"/tmp/oomguard-pg-x/liboomguard.so"
        ));
        assert!(maps_mention_library(maps, b"libold.so"));
        assert!(!maps_mention_library(maps, b"oomguard.so"));
        assert!(!maps_mention_library(maps, b"[stack]"));
        assert!(!maps_mention_library(maps, b"libc.so.6"));
    }

    #[test]
    fn own_process_maps_libc() {
        let pid = std::process::id();
        // Rust binaries on glibc link libc.so.6 dynamically.
        assert!(pid_maps_library(pid, "libc.so.6").unwrap());
        assert!(!pid_maps_library(pid, "liboomguard-nonexistent.so").unwrap());
    }

    #[test]
    fn stage_library_copies_with_mode_0644() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("liboomguard.so");
        fs::write(&src, b"\x7fELF fake").unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o600)).unwrap();
        let staged = stage_library(&src, &root.path().join("stage/lib")).unwrap();
        assert_eq!(staged, root.path().join("stage/lib/liboomguard.so"));
        assert_eq!(fs::read(&staged).unwrap(), b"\x7fELF fake");
        assert_eq!(fs::metadata(&staged).unwrap().mode() & 0o777, 0o644);
        // Staging again replaces the file.
        fs::write(&src, b"\x7fELF new").unwrap();
        stage_library(&src, &root.path().join("stage/lib")).unwrap();
        assert_eq!(fs::read(&staged).unwrap(), b"\x7fELF new");
    }

    #[test]
    fn tail_keeps_last_lines() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("log");
        fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail_of_file(&path, 2), "c\nd");
        assert_eq!(tail_of_file_from(&path, 4, 10), "c\nd");
        assert_eq!(tail_of_file(&path, 10), "a\nb\nc\nd");
        assert!(tail_of_file(&root.path().join("nope"), 2).contains("could not read"));
    }

    fn fake_options(root: &Path) -> ClusterOptions {
        let bins = fake_bindir(root, "fakebin", &ALL);
        ClusterOptions {
            binaries: Some(PgBinaries::from_bindir(&bins).unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn create_refuses_a_non_empty_base_dir_and_leaves_it_alone() {
        let root = tempfile::tempdir().unwrap();
        let base = root.path().join("base");
        fs::create_dir(&base).unwrap();
        fs::write(base.join("precious"), "x").unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o700)).unwrap();
        let err = Cluster::create(&base, &fake_options(root.path())).unwrap_err();
        assert!(format!("{err:#}").contains("not empty"), "{err:#}");
        let meta = fs::metadata(&base).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        assert_eq!(meta.uid(), euid());
    }

    #[test]
    fn unreachable_base_dir_is_reported_before_initdb() {
        if euid() != 0 {
            return; // Only root switches users.
        }
        let root = tempfile::tempdir().unwrap();
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let err =
            Cluster::create(&root.path().join("base"), &fake_options(root.path())).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("cannot reach"), "{text}");
        assert!(text.contains("/tmp"), "{text}");
    }

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
