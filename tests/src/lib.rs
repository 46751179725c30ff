//! Shared helpers of the oomguard integration tests.
//!
//! This crate owns the plumbing every test file needs to run a C probe (compiled by `build.rs`
//! from `probes/*.c`) plainly or under `LD_PRELOAD` of the guard: where the workspace, the
//! release-built `liboomguard.so` and the probes are, and the guard's environment. It also owns
//! what the tests of the `oomguard` binary share: where the release-built binary is and how to run
//! it ([`oomguard_command`], [`run_output`]), finding `promtool`, and a real exporter on a free
//! loopback port ([`Exporter`]) scraped with a raw HTTP GET ([`http_get`]), and real memory
//! cgroups: the policy of the tests that meet the kernel's OOM killer ([`cgroup`]), injection
//! campaigns against a real server ([`campaign`], also run by hand through `oomguard-inject`),
//! and what the tests against a real guarded server share: starting one and requiring a
//! statement to end in `ERROR: out of memory` ([`sessions`]), and a background-worker job of
//! our own, built against the server's headers ([`extension`]).
//! It contains no tests itself (beyond unit tests of its parsers); they live in `tests/*.rs`.

use std::env;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use oomguard_cli::exporter::LISTEN_ENV;

pub mod campaign;
pub mod cgroup;
pub mod containers;
pub mod extension;
pub mod sessions;

/// Overrides [`library_path`] when set (absolute path of a `liboomguard.so`).
pub const LIBRARY_ENV: &str = "OOMGUARD_LIBRARY";

/// The workspace root (the parent of this package's directory), as an absolute path.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().unwrap_or(manifest);
    root.canonicalize().unwrap_or_else(|_| root.to_path_buf())
}

/// Absolute path of the guard library: `$OOMGUARD_LIBRARY` if set, else
/// `<workspace>/target/release/liboomguard.so`.
///
/// # Panics
/// When the file does not exist, with a message saying how to build it.
pub fn library_path() -> PathBuf {
    let path = match env::var_os(LIBRARY_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/release/liboomguard.so"),
    };
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --release` first (or `cargo build --release -p oomguard`; \
         or point {LIBRARY_ENV} at a liboomguard.so)",
        path.display()
    );
    if env::var_os(LIBRARY_ENV).is_none_or(|p| p.is_empty()) {
        static FRESH: OnceLock<()> = OnceLock::new();
        FRESH.get_or_init(|| {
            assert_built_from_current_sources(&path, &["oomguard", "oomguard-core"])
        });
    }
    path.canonicalize().unwrap_or(path)
}

/// Fails when a source of `crates` (their `src/`, `build.rs` and `Cargo.toml`) changed after
/// `artifact` was built: the tests would check an old build (cargo builds test targets, not
/// the cdylib or the binary they run). The same test cargo makes, on modification times.
fn assert_built_from_current_sources(artifact: &Path, crates: &[&str]) {
    assert_built_from_sources_in(&workspace_root(), artifact, crates);
}

/// [`assert_built_from_current_sources`] for the crates under `root`.
fn assert_built_from_sources_in(root: &Path, artifact: &Path, crates: &[&str]) {
    fn newest_in(path: &Path, newest: &mut Option<(SystemTime, PathBuf)>) {
        let Ok(metadata) = fs::metadata(path) else {
            return;
        };
        if metadata.is_dir() {
            for entry in fs::read_dir(path).into_iter().flatten().flatten() {
                newest_in(&entry.path(), newest);
            }
        } else if let Ok(modified) = metadata.modified() {
            if newest.as_ref().is_none_or(|(time, _)| modified > *time) {
                *newest = Some((modified, path.to_owned()));
            }
        }
    }
    let built = fs::metadata(artifact)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", artifact.display()));
    let mut newest = None;
    for krate in crates {
        let dir = root.join(krate);
        for part in ["src", "build.rs", "Cargo.toml"] {
            newest_in(&dir.join(part), &mut newest);
        }
    }
    if let Some((changed, source)) = newest {
        assert!(
            changed <= built,
            "{} is older than {} (changed since the last build): run `cargo build --release \
             --workspace` (the README's test command does) so that the tests check what the \
             sources say",
            artifact.display(),
            source.display()
        );
    }
}

/// `tools/validate-manifests ARGS` (offline validation of the Kubernetes manifests; `--pods FILE`
/// writes the pods the operators would build) with the virtualenv's python, run to completion
/// in the workspace: (success, stdout, stderr).
///
/// # Panics
/// When the virtualenv `tools/install-deps test` makes is missing.
pub fn validate_manifests(args: &[&str]) -> (bool, String, String) {
    let python = workspace_root().join("target/manifest-venv/bin/python");
    assert!(
        python.is_file(),
        "{} not found: the manifest validator is missing; install it with `tools/install-deps \
         test` (a virtualenv under target/ with kubernetes-validate and jsonpatch from PyPI)",
        python.display()
    );
    let mut command = Command::new(python);
    command
        .arg(workspace_root().join("tools/validate-manifests"))
        .args(args)
        .current_dir(workspace_root());
    let (out, stdout, stderr) = run_output(&mut command);
    (out.status.success(), stdout, stderr)
}

/// Absolute path of the release-built `oomguard` binary (`<workspace>/target/release/oomguard`).
///
/// # Panics
/// When the file does not exist, with a message saying how to build it.
pub fn oomguard_binary() -> PathBuf {
    let path = workspace_root().join("target/release/oomguard");
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --release` first",
        path.display()
    );
    static FRESH: OnceLock<()> = OnceLock::new();
    FRESH.get_or_init(|| {
        assert_built_from_current_sources(
            &path,
            &[
                "oomguard-cli",
                "oomguard-cluster",
                "oomguard-segment",
                "oomguard-core",
            ],
        )
    });
    path
}

/// A copy of the release-built `oomguard` binary, mode 0755, in `dir` (created, mode 0755): where
/// a server's unprivileged user can execute it, as `file_fdw`'s `program` does for the SQL views.
pub fn stage_oomguard_binary(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let staged = dir.join("oomguard");
    fs::copy(oomguard_binary(), &staged).expect("copy the oomguard binary");
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o755)).unwrap();
    staged
}

/// A command running [`oomguard_binary`] in a [`plain`] environment.
pub fn oomguard_command() -> Command {
    let mut command = Command::new(oomguard_binary());
    plain(&mut command);
    command
}

/// Runs `cmd` to completion, whatever its exit status, and returns its output with stdout and
/// stderr as (lossy) UTF-8.
///
/// # Panics
/// When it cannot be started.
pub fn run_output(cmd: &mut Command) -> (Output, String, String) {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

/// `promtool` from `PATH`.
///
/// # Panics
/// When there is none, with a message saying how to install it.
pub fn promtool() -> PathBuf {
    let found = env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "promtool not found in PATH: install it (Debian/Ubuntu: \
             `apt-get install --no-install-recommends prometheus`, which provides \
             /usr/bin/promtool; or run .ci/run)"
        )
    })
}

/// A running `oomguard exporter` (the real binary) on a free loopback port; killed (by its pid)
/// when dropped, e.g. when a test fails before stopping it.
pub struct Exporter {
    child: Option<Child>,
    /// Where it listens (`127.0.0.1:PORT`), from its `listening on http://…` line.
    pub addr: String,
    stderr: mpsc::Receiver<String>,
}

impl Exporter {
    /// Starts `oomguard exporter --listen 127.0.0.1:0 --dir DIR` ([`oomguard_command`], without
    /// the listen variable) and waits (at most 20 s) for the address it prints on stderr.
    ///
    /// # Panics
    /// When it cannot be started or does not say where it listens in time.
    pub fn start(dir: &Path) -> Exporter {
        let mut command = oomguard_command();
        command
            .env_remove(LISTEN_ENV)
            .args(["exporter", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start oomguard exporter");
        let stderr = child.stderr.take().unwrap();
        let (lines, stderr_rx) = mpsc::channel();
        // Drains stderr for the exporter's whole life so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match stderr_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        break rest.split('/').next().unwrap().to_owned();
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the exporter did not say where it listens; stderr: {seen:#?}");
                }
            }
        };
        Exporter {
            child: Some(child),
            addr,
            stderr: stderr_rx,
        }
    }

    /// Whether it has not exited yet.
    pub fn is_running(&mut self) -> bool {
        let child = self.child.as_mut().unwrap();
        child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet (so the pid
        // cannot have been reused).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the exporter did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the exporter wrote to stderr so far (after the address line).
    pub fn stderr_so_far(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    /// Waits (at most 10 s) for a stderr line that `wanted` accepts and returns it, or `Err` with
    /// the lines seen meanwhile. The exporter logs before it answers a scrape, but the line passes
    /// through a pipe and a reader thread, so it may arrive after the response: wait for it rather
    /// than look once.
    pub fn wait_for_stderr(&self, wanted: impl Fn(&str) -> bool) -> Result<String, Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if wanted(&line) => return Ok(line),
                Ok(line) => seen.push(line),
                Err(_) => return Err(seen),
            }
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP response: status code, the head as received (status line and headers), headers
/// (names lower-cased) and body.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The status line and headers, unparsed.
    pub head: String,
    /// `(name, value)`, names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// Everything after the head.
    pub body: String,
}

impl Response {
    /// The value of the first header called `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A loopback port nothing listens on now (for a server that must be told its port; another
/// process could take it before that server binds it, which a test then sees as a clear error).
pub fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind a loopback port")
}

/// `GET path` from `addr` over HTTP/1.0 (so the server closes the connection and never chunks),
/// with an `Accept` header when `accept` is given. The status is not checked.
///
/// # Panics
/// When it cannot connect, the response is incomplete (30 s read timeout) or has no status line.
pub fn http_get(addr: &str, path: &str, accept: Option<&str>) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let accept = accept
        .map(|value| format!("Accept: {value}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .expect("a complete HTTP response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Response {
        status,
        head: head.to_owned(),
        headers,
        body: body.to_owned(),
    }
}

/// Path of the probe executable built from `probes/<name>.c`.
///
/// # Panics
/// When no such probe was built.
pub fn probe(name: &str) -> PathBuf {
    let path = Path::new(env!("PROBE_DIR")).join(name);
    assert!(
        path.is_file(),
        "probe {name} not found at {} (is there a tests/probes/{name}.c?)",
        path.display()
    );
    path
}

/// Removes any inherited `LD_PRELOAD` and `OOM_GUARD_*` variables, so that `cmd` runs against
/// plain glibc whatever the environment of the test runner is.
pub fn plain(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("LD_PRELOAD");
    for (key, _) in env::vars_os() {
        if key.to_string_lossy().starts_with("OOM_GUARD_") {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Configures `cmd` to run under the guard: `LD_PRELOAD` of [`library_path`],
/// `OOM_GUARD_MODE=enforce`, `OOM_GUARD_LIMIT=1GiB`, `OOM_GUARD_REFUSE=all` and
/// `OOM_GUARD_DIR=dir` (use a fresh directory per test so runs do not share accounting).
/// `extra_env` is applied last and may override any of these.
///
/// # Panics
/// When the library has not been built (see [`library_path`]).
pub fn guarded<'a>(
    cmd: &'a mut Command,
    dir: &Path,
    extra_env: &[(&str, &str)],
) -> &'a mut Command {
    plain(cmd)
        .env("LD_PRELOAD", library_path())
        .env("OOM_GUARD_MODE", "enforce")
        .env("OOM_GUARD_LIMIT", "1GiB")
        .env("OOM_GUARD_REFUSE", "all")
        .env("OOM_GUARD_DIR", dir);
    for (key, value) in extra_env {
        cmd.env(key, value);
    }
    cmd
}

/// Runs `cmd` to completion and returns its stdout.
///
/// # Panics
/// When it cannot be started or exits unsuccessfully; the message includes stdout and stderr.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Builds a cgroup v2 fixture tree below `dir` for `OOM_GUARD_CGROUP_ROOT` and returns its root
/// (`dir/cgroup-root`): a private cgroup namespace (`proc/self/cgroup` = `0::/`), a cgroup2 mount
/// at `/sys/fs/cgroup` in `proc/self/mountinfo`, `proc/meminfo` with MemTotal 16 GiB, and in
/// `sys/fs/cgroup` the files the guard and `oomguard limit` read: `cgroup.controllers` (with
/// `memory`), `memory.max` = `max` (`"max"`, bytes as in `"536870912"`, or a `Ki`/`Mi`/`Gi`
/// quantity such as `"512Mi"`, written in bytes as the kernel does), the usage files of
/// [`set_cgroup_usage`], `memory.events` (all zero) and `memory.pressure`. Everything is readable
/// by other users (`dir` included), so an unprivileged PostgreSQL server can read it.
///
/// # Panics
/// When the files cannot be written.
pub fn cgroup_v2_fixture(dir: &Path, max: &str, anon: u64, shmem: u64) -> PathBuf {
    let root = dir.join("cgroup-root");
    let files = [
        ("proc/self/cgroup", "0::/\n".to_owned()),
        (
            "proc/self/mountinfo",
            "1284 1163 0:284 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w\n\
             1285 1284 0:287 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n\
             1290 1284 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate,memory_recursiveprot\n\
             1302 1284 0:283 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k\n"
                .to_owned(),
        ),
        (
            "proc/meminfo",
            "MemTotal:       16777216 kB\nMemFree:         1000000 kB\nMemAvailable:    2000000 kB\n"
                .to_owned(),
        ),
        (
            "sys/fs/cgroup/cgroup.controllers",
            "cpuset cpu io memory hugetlb pids rdma misc\n".to_owned(),
        ),
        ("sys/fs/cgroup/memory.max", format!("{}\n", kernel_max(max))),
        (
            "sys/fs/cgroup/memory.events",
            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n".to_owned(),
        ),
        (
            "sys/fs/cgroup/memory.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n\
             full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                .to_owned(),
        ),
    ];
    for (path, text) in files {
        write_fixture_file(&root.join(path), &text);
    }
    set_cgroup_usage(&root, anon, shmem);
    let mut directory = root.join("sys/fs/cgroup");
    while directory.starts_with(dir) {
        set_mode(&directory, 0o755);
        if !directory.pop() {
            break;
        }
    }
    set_mode(&root.join("proc/self"), 0o755);
    set_mode(&root.join("proc"), 0o755);
    root
}

/// Rewrites the fixture cgroup's `memory.max` (an in-place resize), in the forms of
/// [`cgroup_v2_fixture`].
pub fn set_cgroup_max(root: &Path, max: &str) {
    write_fixture_file(
        &root.join("sys/fs/cgroup/memory.max"),
        &format!("{}\n", kernel_max(max)),
    );
}

/// Rewrites what the fixture's kernel says is in use: `memory.stat` with `anon` and `shmem`
/// (`file` = shmem + 4 MiB) and `memory.current` = anon + file. Each file is replaced atomically
/// (a rename), as a kernel file never shows half a write.
pub fn set_cgroup_usage(root: &Path, anon: u64, shmem: u64) {
    let file = shmem + (4 << 20);
    write_fixture_file(
        &root.join("sys/fs/cgroup/memory.stat"),
        &format!(
            "anon {anon}\nfile {file}\nkernel 8388608\nkernel_stack 327680\npagetables 1048576\n\
             sock 0\nshmem {shmem}\nfile_mapped 0\nfile_dirty 0\nfile_writeback 0\n\
             anon_thp 0\ninactive_anon {anon}\nactive_anon 0\ninactive_file {file}\n\
             active_file 0\nunevictable 0\nslab 0\npgfault 0\npgmajfault 0\n"
        ),
    );
    write_fixture_file(
        &root.join("sys/fs/cgroup/memory.current"),
        &format!("{}\n", anon + file),
    );
}

fn write_fixture_file(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    }
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text)
        .unwrap_or_else(|e| panic!("write {}: {e}", temporary.display()));
    set_mode(&temporary, 0o644);
    std::fs::rename(&temporary, path)
        .unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// `max` as the kernel writes `memory.max`: `max`, or bytes (`Ki`/`Mi`/`Gi` quantities
/// converted); anything else is written as given (for garbage-content tests).
fn kernel_max(max: &str) -> String {
    let max = max.trim();
    for (suffix, shift) in [("Ki", 10), ("Mi", 20), ("Gi", 30)] {
        if let Some(number) = max.strip_suffix(suffix) {
            if let Ok(number) = number.parse::<u64>() {
                return (number << shift).to_string();
            }
        }
    }
    max.to_owned()
}

/// Runs the `accounting` probe's `hold 1 MiB x 8` under the guard in segment directory `dir`
/// (`env` as for [`Probe::start`]), calls `inspect(pid)` while it holds, then lets it finish
/// and checks that it succeeded.
pub fn while_holding(dir: &Path, env: &[(&str, &str)], inspect: impl FnOnce(u32)) {
    let mut probe = Probe::start("accounting", dir, &["hold", "1048576", "8"], env);
    assert_eq!(probe.expect("held"), "held");
    inspect(probe.pid() as u32);
    probe.proceed();
    probe.expect("freed");
    probe.proceed();
    probe.finish();
}

/// Prepares `dir` with a stale domain and a live one: `oomguard-old`, whose only process (an
/// earlier run holding 8 MiB) has exited, and `oomguard-live`, whose probe holds 8 MiB and waits
/// (returned; it has said "held"). The live one has another name: a process of the stale
/// domain would reset it.
pub fn stale_and_live_domains(dir: &Path) -> Probe {
    while_holding(dir, &[("OOM_GUARD_DOMAIN", "oomguard-old")], |_| {});
    let mut live = Probe::start(
        "accounting",
        dir,
        &["hold", "1048576", "8"],
        &[("OOM_GUARD_DOMAIN", "oomguard-live")],
    );
    live.expect("held");
    live
}

/// Whether the tests run as root (some need it: cgroups, dpkg, chroot).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The permission bits (with setuid, setgid and sticky) of the file at `path`.
pub fn mode(path: impl AsRef<Path>) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    let path = path.as_ref();
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Names the variable with which a run opts out of the pg_cron scenarios, its value saying why
/// (`tools/test-versions` sets it for a major no package registry here has pg_cron for).
pub const WITHOUT_PG_CRON_ENV: &str = "OOMGUARD_WITHOUT_PG_CRON";

/// Whether this run opted out of pg_cron (see [`WITHOUT_PG_CRON_ENV`]); says so on stderr, with
/// the reason and what is not run, every time it is asked.
pub fn pg_cron_opted_out(what: &str) -> bool {
    match env::var(WITHOUT_PG_CRON_ENV) {
        Ok(reason) if !reason.is_empty() => {
            eprintln!("NOT RUN: {what} ({WITHOUT_PG_CRON_ENV}: {reason})");
            true
        }
        _ => false,
    }
}

/// Fails with the fix when pg_cron is not installed next to the server binaries `binaries`.
pub fn require_pg_cron(binaries: &oomguard_cluster::PgBinaries) {
    let library = binaries.bindir.join("../lib/pg_cron.so");
    assert!(
        library.is_file(),
        "{} not found: this test runs a pg_cron job; install pg_cron for this server \
         (Debian: `apt-get install postgresql-15-cron`; .ci/run does)",
        library.display()
    );
}

/// The `accounting` probe's `until-null 1048576` under the guard in `dir` with `env`, once it
/// was refused (ENOMEM), freed and allocated again; it waits for a line before it exits.
pub fn refused_probe(dir: &Path, env: &[(&str, &str)]) -> Probe {
    refused_probe_with(dir, "1048576", env).1
}

/// [`refused_probe`] with blocks of `block` bytes; also returns its `refused after N errno=12`
/// line.
pub fn refused_probe_with(dir: &Path, block: &str, env: &[(&str, &str)]) -> (String, Probe) {
    let mut probe = Probe::start("accounting", dir, &["until-null", block], env);
    let refused = probe.expect("refused after ");
    assert!(refused.ends_with("errno=12"), "ENOMEM: {refused}");
    probe.expect("freed");
    probe.expect("again ");
    (refused, probe)
}

/// Two domains in `dir` with one refused probe each ([`refused_probe`]): `oomguard-budget`,
/// refused past its own 16 MiB budget far below the domain's 1 GiB limit, and `oomguard-full`,
/// refused past a 16 MiB domain limit without a budget. Returned in that order.
pub fn budget_and_full_domains(dir: &Path) -> (Probe, Probe) {
    let budget = refused_probe(
        dir,
        &[
            ("OOM_GUARD_DOMAIN", "oomguard-budget"),
            ("OOM_GUARD_BACKEND_LIMIT", "16Mi"),
        ],
    );
    let full = refused_probe(
        dir,
        &[
            ("OOM_GUARD_DOMAIN", "oomguard-full"),
            ("OOM_GUARD_LIMIT", "16Mi"),
        ],
    );
    (budget, full)
}

/// How long a probe may take to print its next line or to exit; far more than any probe
/// needs (they allocate and print), so reaching it means the probe is stuck.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(60);

/// Whether `fd` becomes readable (or hits end of file) within `timeout`.
fn readable_within(fd: std::os::fd::RawFd, timeout: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: one valid pollfd, and its count.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        if ready >= 0 {
            return ready > 0;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// A probe process under the guard, driven line by line: it says what it did on stdout and
/// waits for a line on stdin before going on, so a test can look at the shared segment at
/// well-defined moments (no sleeps).
pub struct Probe {
    /// The process.
    pub child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    /// How long [`Probe::line`] and [`Probe::finish`] wait ([`PROBE_DEADLINE`] unless changed).
    pub deadline: Duration,
}

impl Probe {
    /// Starts probe `name` with `args` under the guard ([`guarded`]) in segment directory `dir`.
    pub fn start(name: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Probe {
        Probe::start_without(name, dir, args, env, &[])
    }

    /// [`Probe::start`] with the variables `unset` removed from its environment afterwards
    /// (e.g. the `OOM_GUARD_*` that [`guarded`] sets, to test settings from elsewhere).
    pub fn start_without(
        name: &str,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        unset: &[&str],
    ) -> Probe {
        Probe::start_command(Command::new(probe(name)), dir, args, env, unset)
    }

    /// [`Probe::start`] through a wrapper command (`wrapper` then the probe's path), e.g.
    /// `unshare --pid --fork` to run it in a PID namespace of its own.
    pub fn start_wrapped(
        wrapper: &[&str],
        name: &str,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Probe {
        let mut command = Command::new(wrapper[0]);
        command.args(&wrapper[1..]).arg(probe(name));
        Probe::start_command(command, dir, args, env, &[])
    }

    fn start_command(
        mut command: Command,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        unset: &[&str],
    ) -> Probe {
        use std::process::Stdio;
        guarded(&mut command, dir, env);
        for key in unset {
            command.env_remove(key);
        }
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        Probe {
            child,
            stdin,
            stdout,
            deadline: PROBE_DEADLINE,
        }
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The next line it printed, without the newline ("" at the end of its output). Fails the
    /// test, killing the probe, when no line comes within [`PROBE_DEADLINE`]: a probe stuck in
    /// the guard must not hang the run.
    pub fn line(&mut self) -> String {
        use std::io::BufRead;
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + self.deadline;
        let mut line = Vec::new();
        loop {
            if self.stdout.buffer().is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if !readable_within(self.stdout.get_ref().as_raw_fd(), left) {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let stderr = self.stderr();
                    panic!(
                        "the probe printed no line within {:?} (so far {:?}); stderr:\n{stderr}",
                        self.deadline,
                        String::from_utf8_lossy(&line)
                    );
                }
            }
            let buffer = self.stdout.fill_buf().expect("read the probe");
            if buffer.is_empty() {
                break; // end of its output
            }
            if let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&buffer[..end]);
                self.stdout.consume(end + 1);
                break;
            }
            let taken = buffer.len();
            line.extend_from_slice(buffer);
            self.stdout.consume(taken);
        }
        String::from_utf8_lossy(&line).trim_end().to_owned()
    }

    /// The next line, which must start with `prefix` (else the probe is killed and the test fails
    /// with its stderr).
    pub fn expect(&mut self, prefix: &str) -> String {
        let line = self.line();
        if !line.starts_with(prefix) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let stderr = self.stderr();
            panic!("expected {prefix:?} from the probe, got {line:?}\nprobe stderr:\n{stderr}");
        }
        line
    }

    /// Lets it go on past its next wait.
    pub fn proceed(&mut self) {
        use std::io::Write;
        let stdin = self
            .stdin
            .as_mut()
            .expect("the probe's stdin is open until finish");
        stdin.write_all(b"go\n").expect("write to the probe");
    }

    fn stderr(&mut self) -> String {
        let mut stderr = String::new();
        if let Some(err) = self.child.stderr.as_mut() {
            let _ = std::io::Read::read_to_string(err, &mut stderr);
        }
        stderr
    }

    /// Waits for a successful exit and returns its stderr.
    /// Kills it with SIGKILL (no exit handler runs) and waits for it.
    pub fn kill(mut self) {
        self.child.kill().expect("kill the probe");
        self.child.wait().expect("wait for the probe");
    }

    pub fn finish(mut self) -> String {
        drop(self.stdin.take()); // end of input: a probe waiting for a line exits
        let deadline = Instant::now() + self.deadline;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the probe") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.stderr();
                panic!(
                    "the probe did not exit within {:?}; stderr:\n{stderr}",
                    self.deadline
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stderr = self.stderr();
        assert!(status.success(), "probe failed: {status}\n{stderr}");
        stderr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
        payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn a_build_older_than_a_source_is_refused_with_the_file_named() {
        let root = tempfile::tempdir().unwrap();
        let source = root.path().join("guard/src/lib.rs");
        fs::create_dir_all(source.parent().unwrap()).unwrap();
        fs::write(&source, "").unwrap();
        let artifact = root.path().join("libguard.so");
        fs::write(&artifact, "").unwrap();
        let set = |path: &Path, seconds: u64| {
            let time = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
            fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(time)
                .unwrap();
        };
        set(&source, 1_000);
        set(&artifact, 2_000);
        assert_built_from_sources_in(root.path(), &artifact, &["guard"]);
        set(&source, 3_000);
        let failure = catch_unwind(AssertUnwindSafe(|| {
            assert_built_from_sources_in(root.path(), &artifact, &["guard"])
        }))
        .expect_err("a source newer than the build");
        let message = panic_text(failure);
        assert!(
            message.contains("guard/src/lib.rs") && message.contains("cargo build --release"),
            "{message}"
        );
    }

    #[test]
    fn a_silent_probe_fails_the_test_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let mut probe = Probe::start("accounting", dir.path(), &["hold", "4096", "1"], &[]);
        assert_eq!(probe.expect("held"), "held");
        // It now waits for a line from us and prints nothing.
        probe.deadline = Duration::from_millis(300);
        let started = Instant::now();
        let failure = catch_unwind(AssertUnwindSafe(|| probe.line())).expect_err("no line");
        assert!(started.elapsed() < Duration::from_secs(10));
        let message = panic_text(failure);
        assert!(
            message.contains("printed no line within 300ms"),
            "{message}"
        );
        // The probe was killed.
        assert!(probe.child.try_wait().unwrap().is_some());
    }
}
