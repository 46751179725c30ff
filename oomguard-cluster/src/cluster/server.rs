//! Starting, watching and stopping a [`Cluster`]'s postmaster.
//!
//! The postmaster runs as our child (never daemonised through `pg_ctl`), in its own process
//! group, as the server user, with the caller's extra environment: this is how
//! `LD_PRELOAD=…/liboomguard.so` and `OOM_GUARD_*` reach the server. Before it execs, it may ask
//! the kernel for SIGQUIT when the starting thread exits (`PR_SET_PDEATHSIG`), and it may join a
//! cgroup ([`ClusterOptions::cgroup`](crate::ClusterOptions::cgroup)). [`Cluster::start`] waits
//! until a connection really succeeds; [`Cluster::stop`] asks for a fast shutdown and escalates
//! to SIGQUIT, then SIGKILL, reporting what happened in a [`StopOutcome`].

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{tail_of_file_from, Cluster, LOG_TAIL_LINES};
use crate::settings::{default_settings, merge_settings};

const POLL_INTERVAL: Duration = Duration::from_millis(50);

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

impl Cluster {
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

/// Describes an exit status like the postmaster log does ("exit code 1", "signal 9").
pub fn describe_status(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}
