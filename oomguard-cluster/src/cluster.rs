//! The [`Cluster`] type: a throwaway cluster in a base directory, and how it is made.
//!
//! This module owns the directory layout (`BASE/data`; a private unix-socket directory
//! `BASE/sock`, no TCP; the server log `BASE/postgres.log`; `BASE/initdb.log`), running `initdb`
//! into it as the [server user](crate::ServerUser), commands for the installation's programs run
//! as that user, reading the server log, and stopping the server when the cluster is dropped.
//! Starting, watching and stopping the postmaster are in `cluster/server.rs`; connecting to it is
//! in [`crate::session`].

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::binaries::PgBinaries;
use crate::user::ServerUser;

mod server;

pub use server::{describe_status, StopOutcome};

/// The database superuser created by `initdb -U` and used by [`Cluster::connect`].
pub const SUPERUSER: &str = "postgres";
/// How long [`Cluster::start`] waits for the server to accept a connection by default.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Cluster::stop`] waits after a fast shutdown request by default.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TAIL_LINES: usize = 40;
/// `sizeof(sockaddr_un.sun_path)` on Linux, including the terminating NUL.
const SUN_PATH_MAX: usize = 108;

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

    /// The whole server log (lossily decoded).
    pub fn log_text(&self) -> io::Result<String> {
        Ok(String::from_utf8_lossy(&fs::read(&self.log_path)?).into_owned())
    }

    /// The last `lines` lines of the server log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of_file(&self.log_path, lines)
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::binaries::tests::{fake_bindir, ALL};
    use crate::user::euid;

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
}
