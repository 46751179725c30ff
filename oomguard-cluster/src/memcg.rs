//! Real child memory cgroups, for `oomguard demo` (to show the kernel's OOM killer at work
//! next to the guard) and the end-to-end tests that must meet that killer.
//!
//! This module owns creating, reading and removing such a cgroup. [`MemoryCgroup::create`]
//! makes a child memory cgroup under the one this process runs in (found from
//! `/proc/self/cgroup` and `/proc/self/mountinfo`): on cgroup v1 it sets `memory.limit_in_bytes`
//! (and `memory.memsw.limit_in_bytes` to the same value, so nothing can swap, when swap accounting
//! exists), on cgroup v2 `memory.max` and `memory.swap.max = 0`. A process joins it by writing to
//! its `cgroup.procs` (see [`crate::ClusterOptions::cgroup`], which does that for a
//! postmaster before it execs). The OOM-kill counter (v1 `memory.oom_control`, v2
//! `memory.events`) and the usage can be read at any time. Dropping it — also on an error or
//! interrupt path, and while a failed test unwinds — SIGKILLs whatever is still inside and
//! removes the directory.
//!
//! Where no memory cgroup can be created (not root, no delegation, no memory controller)
//! [`MemoryCgroup::create`] fails with the reason; what to do then is the caller's policy (the
//! demo shows the guarded side only, the tests fail unless explicitly opted out).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Prefix of the cgroups this module creates (`oomguard-<pid>-<n>-<name>`); the pid lets a later
/// run recognise (and remove) the empty leftovers of a run that was SIGKILLed.
const PREFIX: &str = "oomguard-";

/// The cgroup version of the memory controller in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// A v1 hierarchy with the `memory` controller.
    V1,
    /// The unified (v2) hierarchy with `memory` enabled.
    V2,
}

/// A child memory cgroup of this process's own, removed on drop.
#[derive(Debug)]
pub struct MemoryCgroup {
    path: PathBuf,
    version: Version,
}

impl MemoryCgroup {
    /// Creates `<own memory cgroup>/oomguard-<pid>-<n>-<name>` with a memory limit of
    /// `limit_bytes` and no swap. Empty leftovers of earlier runs that died (their pid is gone)
    /// are removed first.
    ///
    /// Fails with the reason when it cannot (not root and no delegated cgroup, no memory
    /// controller, swap on without a way to forbid it); nothing is left behind then.
    pub fn create(name: &str, limit_bytes: u64) -> Result<MemoryCgroup> {
        let (own, version) = own_memory_cgroup()?;
        remove_stale_siblings(&own);
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = own.join(format!("{PREFIX}{}-{n}-{name}", std::process::id()));
        if let Err(e) = fs::create_dir(&path) {
            let hint = if e.kind() == io::ErrorKind::PermissionDenied {
                " (not root, and the cgroup is not delegated to this user)"
            } else {
                ""
            };
            bail!("mkdir {}: {e}{hint}", path.display());
        }
        // From here on, Drop removes the directory whatever fails next.
        let cgroup = MemoryCgroup { path, version };
        match version {
            Version::V1 => cgroup.limit_v1(limit_bytes)?,
            Version::V2 => cgroup.limit_v2(limit_bytes)?,
        }
        let set = cgroup.limit_bytes()?;
        if set != limit_bytes {
            bail!(
                "{} reads {set} after writing {limit_bytes}",
                cgroup.path.display()
            );
        }
        Ok(cgroup)
    }

    fn limit_v1(&self, limit_bytes: u64) -> Result<()> {
        self.write("memory.limit_in_bytes", &limit_bytes.to_string())?;
        if self.path.join("memory.memsw.limit_in_bytes").exists() {
            // memory+swap = memory: nothing may be swapped out, so the limit is met by the OOM
            // killer and not softened by swapping.
            self.write("memory.memsw.limit_in_bytes", &limit_bytes.to_string())?;
        } else if swap_is_on()? {
            bail!(
                "swap is on and {} has no memory.memsw.limit_in_bytes to forbid it (boot with \
                 swapaccount=1 or turn swap off)",
                self.path.display()
            );
        }
        Ok(())
    }

    fn limit_v2(&self, limit_bytes: u64) -> Result<()> {
        self.write("memory.max", &limit_bytes.to_string())?;
        if self.path.join("memory.swap.max").exists() {
            self.write("memory.swap.max", "0")?;
        } else if swap_is_on()? {
            bail!(
                "swap is on and {} has no memory.swap.max to forbid it",
                self.path.display()
            );
        }
        Ok(())
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.path.join(file);
        fs::write(&path, value).with_context(|| format!("write {value:?} to {}", path.display()))
    }

    fn read(&self, file: &str) -> Result<String> {
        let path = self.path.join(file);
        fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// v1 or v2.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The memory limit as the kernel reads it back.
    pub fn limit_bytes(&self) -> Result<u64> {
        self.read_number(match self.version {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        })
    }

    /// How many processes the kernel's OOM killer has killed in this cgroup (v1
    /// `memory.oom_control` `oom_kill`, v2 `memory.events` `oom_kill`).
    pub fn oom_kills(&self) -> Result<u64> {
        oom_kills_in(&self.path, self.version)
    }

    /// The memory the kernel charges to this cgroup now (v1 `memory.usage_in_bytes`, v2
    /// `memory.current`).
    pub fn usage_bytes(&self) -> Result<u64> {
        self.read_number(match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        })
    }

    /// A file of this cgroup that holds one number.
    fn read_number(&self, file: &str) -> Result<u64> {
        let text = self.read(file)?;
        text.trim()
            .parse()
            .with_context(|| format!("{file} = {text:?}"))
    }

    /// The pids in the cgroup.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let text = self.read("cgroup.procs")?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// SIGKILLs everything in the cgroup until it is empty (at most `timeout`); true if it is.
    fn kill_all(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let Ok(pids) = self.pids() else {
                return false;
            };
            if pids.is_empty() {
                return true;
            }
            for pid in pids {
                // SAFETY: kill(2) has no memory-safety preconditions. The pid was read from a
                // cgroup this process created, which only holds the processes it started there
                // (a server and its children).
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            if Instant::now() >= deadline {
                return false;
            }
            // Polling: the kernel offers no wait for "cgroup empty" on v1.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let emptied = self.kill_all(Duration::from_secs(10));
        // rmdir fails with EBUSY until the last killed task has left the cgroup.
        let deadline = Instant::now() + Duration::from_secs(10);
        let result = loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => break Ok(()),
                Err(e) if Instant::now() >= deadline => break Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        if let Err(e) = result {
            let _ = writeln!(
                io::stderr(),
                "warning: could not remove the cgroup {} (emptied: {emptied}): {e}",
                self.path.display()
            );
        }
    }
}

/// `value` of the line `key value` in a keyed file.
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn swap_is_on() -> Result<bool> {
    let swaps = fs::read_to_string("/proc/swaps").context("read /proc/swaps")?;
    Ok(swaps.lines().skip(1).any(|l| !l.trim().is_empty()))
}

/// How many processes the kernel's OOM killer has killed in the memory cgroup of process `pid`
/// (e.g. a container's first process, seen from the host).
pub fn oom_kills_of_process(pid: u32) -> Result<u64> {
    let (dir, version) = memory_cgroup_of(&pid.to_string())?;
    oom_kills_in(&dir, version)
}

/// The OOM-kill counter of the memory cgroup `dir` (v1 `memory.oom_control`, v2
/// `memory.events`).
fn oom_kills_in(dir: &Path, version: Version) -> Result<u64> {
    let file = dir.join(match version {
        Version::V1 => "memory.oom_control",
        Version::V2 => "memory.events",
    });
    let text = fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
    keyed_value(&text, "oom_kill")
        .ok_or_else(|| anyhow!("no oom_kill line in {}: {text:?}", file.display()))
}

/// The directory of this process's memory cgroup: the v1 `memory` hierarchy if there is one,
/// else the unified hierarchy when it offers `memory` (enabled for children, so that one can be
/// created under it).
fn own_memory_cgroup() -> Result<(PathBuf, Version)> {
    let (own, version) = memory_cgroup_of("self")?;
    if version == Version::V1 {
        return Ok((own, version));
    }
    let controllers = fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "memory") {
        bail!(
            "the memory controller is not available in {} (cgroup.controllers: {:?})",
            own.display(),
            controllers.trim()
        );
    }
    // A child only gets memory.* files when the parent distributes the controller; a v2 cgroup
    // that holds processes itself cannot ("no internal processes"), which is then the reason.
    let subtree = own.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&subtree).unwrap_or_default();
    if !enabled.split_whitespace().any(|c| c == "memory") {
        fs::write(&subtree, "+memory").map_err(|e| {
            anyhow!(
                "cannot enable the memory controller for children of {} (write +memory to {}: \
                 {e}; a v2 cgroup that holds processes cannot delegate memory)",
                own.display(),
                subtree.display()
            )
        })?;
    }
    Ok((own, Version::V2))
}

/// The directory of the memory cgroup of process `pid` (`self` for this one), as this process's
/// mounts show it: the v1 `memory` hierarchy if there is one, else the unified hierarchy.
fn memory_cgroup_of(pid: &str) -> Result<(PathBuf, Version)> {
    let cgroup_file = format!("/proc/{pid}/cgroup");
    let cgroups =
        fs::read_to_string(&cgroup_file).with_context(|| format!("read {cgroup_file}"))?;
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    let v1_path = cgroups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.to_owned())
    });
    if let Some(path) = v1_path {
        let (root, mount) = find_mount(&mountinfo, |fstype, options| {
            fstype == "cgroup" && options.split(',').any(|o| o == "memory")
        })
        .context("no cgroup v1 memory mount in /proc/self/mountinfo")?;
        return Ok((join_cgroup(&mount, &root, &path), Version::V1));
    }

    let v2_path = cgroups
        .lines()
        .find_map(|line| line.strip_prefix("0::").map(str::to_owned))
        .with_context(|| {
            format!("no memory controller in {cgroup_file} (neither v1 memory nor v2)")
        })?;
    let (root, mount) = find_mount(&mountinfo, |fstype, _| fstype == "cgroup2")
        .context("no cgroup2 mount in /proc/self/mountinfo")?;
    Ok((join_cgroup(&mount, &root, &v2_path), Version::V2))
}

/// (mount root, mount point) of the first mount whose file-system type and super options match.
fn find_mount(mountinfo: &str, wanted: impl Fn(&str, &str) -> bool) -> Option<(String, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let mut right = right.split(' ');
        let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
        if !wanted(fstype, options) {
            return None;
        }
        Some((
            unescape(fields.get(3)?),
            PathBuf::from(unescape(fields.get(4)?)),
        ))
    })
}

/// Mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(code) = u8::from_str_radix(digits, 8) {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of cgroup `path` in a hierarchy mounted at `mount` whose mount shows `root`.
fn join_cgroup(mount: &Path, root: &str, path: &str) -> PathBuf {
    let relative = match path.strip_prefix(root) {
        Some(rest) if root != "/" => rest,
        _ => path,
    };
    mount.join(relative.trim_start_matches('/'))
}

/// Removes `oomguard-<pid>-*` children of `parent` left by runs that died without cleaning up
/// (their pid is gone and nothing is inside: a SIGKILLed run's server dies with it, by
/// `PR_SET_PDEATHSIG`).
fn remove_stale_siblings(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let empty = fs::read_to_string(entry.path().join("cgroup.procs"))
            .is_ok_and(|procs| procs.trim().is_empty());
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() && empty {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_and_paths() {
        let mountinfo = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                         41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                         50 31 0:40 /docker/abc /sys/fs/cgroup/cpu\\040x rw - cgroup cgroup rw,cpu\n";
        let (root, mount) = find_mount(mountinfo, |t, o| {
            t == "cgroup" && o.split(',').any(|c| c == "memory")
        })
        .unwrap();
        assert_eq!(
            (root.as_str(), mount.as_path()),
            ("/", Path::new("/sys/fs/cgroup/memory"))
        );
        let (_, mount) = find_mount(mountinfo, |t, _| t == "cgroup2").unwrap();
        assert_eq!(mount, Path::new("/sys/fs/cgroup/unified"));
        let (root, mount) = find_mount(mountinfo, |_, o| o.ends_with("cpu")).unwrap();
        assert_eq!(
            (root.as_str(), mount.as_path()),
            ("/docker/abc", Path::new("/sys/fs/cgroup/cpu x"))
        );
        assert_eq!(
            join_cgroup(Path::new("/m"), "/docker/abc", "/docker/abc/x"),
            Path::new("/m/x")
        );
        assert_eq!(
            join_cgroup(Path::new("/m"), "/", "/a/b"),
            Path::new("/m/a/b")
        );
        assert_eq!(join_cgroup(Path::new("/m"), "/", "/"), Path::new("/m"));
        assert_eq!(
            keyed_value("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
        assert_eq!(keyed_value("oom 1\n", "oom_kill"), None);
    }
}
