//! Real containers for the tests: podman with runc, images built from this repository's
//! Dockerfiles on local base images, PostgreSQL started by an entrypoint inside.
//!
//! This module owns the podman plumbing the container tests share: the configuration podman
//! runs with here ([`podman`]), the images ([`images`]: per PostgreSQL major a stand-in for the
//! official image built from `tests/containers/` on the base `tools/install-deps test` imported,
//! then `packaging/docker/postgres.Dockerfile` built on it; and the init-container image from
//! `packaging/docker/artifact.Dockerfile`), and a running container ([`Container`]): its memory
//! cgroup's OOM-kill counter, `podman exec`, and client sessions through the socket directory,
//! which the container shares with the test (no network: `--network none`).
//!
//! Nothing here skips: a missing podman, runc or base image fails the test with what to install.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{oomguard_binary, run_output, workspace_root};

/// The memory limit of the test containers: room for a server with default settings, not for a
/// hog (the tests' usual 768 MiB).
pub const MEMORY_LIMIT: &str = "768m";

/// How long a container's server may take to accept connections (initdb included).
const START_DEADLINE: Duration = Duration::from_secs(180);

/// How long a line the test waits for may take to reach the container's log.
const LOG_DEADLINE: Duration = Duration::from_secs(60);

/// The majors whose base images `tools/install-deps test` makes (a Debian 12 root with
/// postgresql-15, a Debian 13 root with postgresql-17).
pub const MAJORS: [u32; 2] = [15, 17];

/// The image `tools/install-deps test` imported for `major`.
pub fn base_image(major: u32) -> String {
    format!("localhost/oomguard-test-base:{major}")
}

/// The podman configuration of this machine's kind: runc (crun rejects a hybrid cgroup layout),
/// cgroupfs (no systemd to ask), no default rlimits (raising them is not permitted in every
/// sandbox), events to a file. Written under `target/`, passed through `CONTAINERS_CONF`.
fn containers_conf() -> &'static Path {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        let path = workspace_root().join("target/containers/containers.conf");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let text = "[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\n\
                    cgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n";
        fs::write(&path, text).unwrap();
        path
    })
}

/// The configuration `podman kube play` needs on top of [`containers_conf`]: a pod's containers
/// (its infra container too) get RLIMIT_NOFILE and RLIMIT_NPROC of 1048576 unless the
/// configuration names values, and where the sandbox's hard limits are lower runc cannot set
/// them. The values named are the ones a plain container gets here.
fn kube_conf() -> &'static Path {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        let limits = podman_ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            &base_image(15),
            "cat",
            "/proc/self/limits",
        ]);
        let hard = |name: &str| -> u64 {
            let line = limits
                .lines()
                .find(|line| line.starts_with(name))
                .unwrap_or_else(|| panic!("no {name:?} in a container's /proc/self/limits"));
            // "Max open files  20000  20000  files": the hard limit is the second number.
            line[name.len()..]
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("hard limit of {line:?}"))
        };
        let (nofile, nproc) = (hard("Max open files"), hard("Max processes"));
        let text = fs::read_to_string(containers_conf()).unwrap().replace(
            "default_ulimits = []",
            &format!("default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]"),
        );
        let path = workspace_root().join("target/containers/kube.conf");
        fs::write(&path, text).unwrap();
        path
    })
}

/// `podman kube play` of the pod(s) in `yaml`, with the configuration pods need here.
pub fn kube_play(yaml: &Path) {
    let (output, stdout, stderr) = run_output(
        podman()
            .env("CONTAINERS_CONF", kube_conf())
            .args(["kube", "play", "--quiet"])
            .arg(yaml),
    );
    assert!(
        output.status.success(),
        "podman kube play {}: {}\n{stdout}{stderr}",
        yaml.display(),
        output.status
    );
}

/// `podman kube down` of what `yaml` started (ignoring whether it was running).
pub fn kube_down(yaml: &Path) {
    let _ = podman()
        .env("CONTAINERS_CONF", kube_conf())
        .args(["kube", "down"])
        .arg(yaml)
        .output();
}

/// A `podman` command with this module's configuration.
///
/// # Panics
/// When podman or runc is missing, naming what installs them.
pub fn podman() -> Command {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        for tool in ["podman", "runc"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                found,
                "{tool} not found: the container tests need podman and runc \
                 (tools/install-deps test installs them: apt-get install podman runc)"
            );
        }
    });
    let mut command = Command::new("podman");
    command.env("CONTAINERS_CONF", containers_conf());
    command
}

/// Runs podman with `args`; its stdout, trimmed.
///
/// # Panics
/// When it fails, with its stderr.
pub fn podman_ok(args: &[&str]) -> String {
    let (output, stdout, stderr) = run_output(podman().args(args));
    assert!(
        output.status.success(),
        "podman {args:?} failed ({}):\n{stderr}",
        output.status
    );
    stdout.trim().to_owned()
}

/// The images of one PostgreSQL major.
#[derive(Debug, Clone)]
pub struct Images {
    /// The stand-in for the official `postgres:NN` image (no guard).
    pub official: String,
    /// `packaging/docker/postgres.Dockerfile` built on [`Images::official`].
    pub guarded: String,
}

/// A directory holding what the Dockerfiles' `oomguard-files` stage would compile: the
/// release-built binaries, the example configuration and the install script (also what the
/// init container's `oomguard install` puts into a volume, and more).
pub fn guard_directory() -> &'static Path {
    static FILES: OnceLock<PathBuf> = OnceLock::new();
    FILES.get_or_init(|| {
        let root = workspace_root();
        let dir = root.join(format!("target/containers/files-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for (from, name) in [
            (oomguard_binary(), "oomguard"),
            (crate::library_path(), "liboomguard.so"),
            (root.join("packaging/config/oomguard.conf"), "oomguard.conf"),
            (
                root.join("packaging/docker/install-into-image.sh"),
                "install-into-image.sh",
            ),
        ] {
            fs::copy(&from, dir.join(name))
                .unwrap_or_else(|e| panic!("copy {} into {}: {e}", from.display(), dir.display()));
        }
        dir
    })
}

/// Builds `dockerfile` (relative to the workspace) as `tag` with the built binaries as its
/// `oomguard-files` stage and the workspace as context.
fn build(dockerfile: &str, tag: &str, build_args: &[(&str, &str)], context: &Path) {
    let files = format!("oomguard-files={}", guard_directory().display());
    let file = workspace_root().join(dockerfile);
    let mut args = vec![
        "build".to_owned(),
        "--quiet".to_owned(),
        "--network".to_owned(),
        "none".to_owned(),
        "--build-context".to_owned(),
        files,
        "-f".to_owned(),
        file.display().to_string(),
        "-t".to_owned(),
        tag.to_owned(),
    ];
    for (key, value) in build_args {
        args.push("--build-arg".to_owned());
        args.push(format!("{key}={value}"));
    }
    args.push(context.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    podman_ok(&args);
}

/// Fails unless `tools/install-deps test` imported the base image of `major`.
fn require_base(major: u32) -> String {
    let base = base_image(major);
    let exists = podman()
        .args(["image", "exists", &base])
        .status()
        .expect("run podman");
    assert!(
        exists.success(),
        "podman has no image {base}: run tools/install-deps test (it makes the base images of \
         the container tests with mmdebstrap and podman import)"
    );
    base
}

/// The images of `major`, built once per test process (podman's layer cache makes a rebuild
/// with unchanged inputs cheap).
pub fn images(major: u32) -> Images {
    static BUILT: Mutex<Option<HashMap<u32, Images>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(images) = built.get(&major) {
        return images.clone();
    }
    let base = require_base(major);
    let official = format!("localhost/oomguard-test-postgres:{major}");
    let major_text = major.to_string();
    build(
        "tests/containers/official-like.Containerfile",
        &official,
        &[("BASE", &base), ("PG_MAJOR", &major_text)],
        &workspace_root().join("tests/containers"),
    );
    let guarded = format!("localhost/oomguard-test-guarded:{major}");
    build(
        "packaging/docker/postgres.Dockerfile",
        &guarded,
        &[("POSTGRES_IMAGE", &official), ("RUST_IMAGE", &base)],
        &workspace_root(),
    );
    let images = Images { official, guarded };
    built.insert(major, images.clone());
    images
}

/// The init-container image (`packaging/docker/artifact.Dockerfile`), built once per process.
pub fn artifact_image() -> String {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let tag = "localhost/oomguard-test-artifact:latest".to_owned();
            // The binaries were built on this Debian 12 machine: the tree is assembled on the
            // Debian 12 base.
            let base = require_base(15);
            build(
                "packaging/docker/artifact.Dockerfile",
                &tag,
                &[("RUST_IMAGE", &base)],
                &workspace_root(),
            );
            tag
        })
        .clone()
}

/// A container running PostgreSQL from one of the images, removed (with its volumes) on drop.
pub struct Container {
    /// Its name.
    pub name: String,
    /// The host directory mounted at `/var/run/postgresql`: the server's socket.
    socket_dir: PathBuf,
    /// The directory's owner when this module made it.
    _socket_tempdir: Option<tempfile::TempDir>,
}

/// Options of [`Container::start`] beyond the defaults.
#[derive(Debug, Default)]
pub struct RunOptions<'a> {
    /// `--user` (e.g. `"4321:4321"`, a uid the image does not know).
    pub user: Option<&'a str>,
    /// `-e KEY=VALUE` pairs.
    pub env: Vec<(&'a str, String)>,
    /// `-v HOST:CONTAINER[:OPTIONS]` mounts.
    pub volumes: Vec<String>,
    /// Extra arguments of the server (after `postgres`).
    pub server_args: Vec<&'a str>,
}

impl Container {
    /// Starts `image` detached as `<test>-<pid>` with the memory limit [`MEMORY_LIMIT`] (no swap)
    /// and no network, trust authentication, and waits until its server accepts a session.
    pub fn start(test: &str, image: &str, options: RunOptions) -> Container {
        let name = format!("oomguard-test-{test}-{}", std::process::id());
        let _ = podman().args(["rm", "-f", "-t", "0", &name]).output();
        let socket_dir = tempfile::Builder::new()
            .prefix("oomguard-container-socket")
            .tempdir()
            .unwrap();
        // Any uid in the container creates its socket here.
        fs::set_permissions(socket_dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        let mut args: Vec<String> = [
            "run",
            "--detach",
            "--name",
            &name,
            "--network",
            "none",
            "--memory",
            MEMORY_LIMIT,
            "--memory-swap",
            MEMORY_LIMIT,
            "-e",
            "POSTGRES_HOST_AUTH_METHOD=trust",
            "-v",
            &format!("{}:/var/run/postgresql", socket_dir.path().display()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(user) = options.user {
            args.extend(["--user".to_owned(), user.to_owned()]);
        }
        for (key, value) in &options.env {
            args.extend(["-e".to_owned(), format!("{key}={value}")]);
        }
        for volume in &options.volumes {
            args.extend(["-v".to_owned(), volume.clone()]);
        }
        args.push(image.to_owned());
        args.push("postgres".to_owned());
        args.extend(options.server_args.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        podman_ok(&args);
        let container = Container {
            name,
            socket_dir: socket_dir.path().to_owned(),
            _socket_tempdir: Some(socket_dir),
        };
        container.wait_ready();
        container
    }

    /// A container started otherwise (e.g. by `podman kube play`) whose `/var/run/postgresql`
    /// is the host's `socket_dir`; removed on drop too.
    pub fn adopt(name: &str, socket_dir: PathBuf) -> Container {
        Container {
            name: name.to_owned(),
            socket_dir,
            _socket_tempdir: None,
        }
    }

    /// Waits until a session can be opened, failing with the container's log when it exits or
    /// the deadline passes.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            // The entrypoint's temporary server (first start) listens on the same socket: the
            // server is the real one once the entrypoint has exec'd it as the first process.
            if self.first_process_is_postgres() && self.try_connect().is_ok() {
                return;
            }
            let state = podman_ok(&["inspect", "--format", "{{.State.Status}}", &self.name]);
            assert!(
                state == "running",
                "container {} is {state} before its server accepted a session; log:\n{}",
                self.name,
                self.logs()
            );
            assert!(
                Instant::now() < deadline,
                "container {}: no session within {START_DEADLINE:?}; log:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn first_process_is_postgres(&self) -> bool {
        self.try_pid().is_some_and(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "postgres")
        })
    }

    /// The host pid of the container's first process, if it has one now.
    fn try_pid(&self) -> Option<u32> {
        let (output, pid, _) =
            run_output(podman().args(["inspect", "--format", "{{.State.Pid}}", &self.name]));
        output
            .status
            .success()
            .then(|| pid.trim().parse().ok())
            .flatten()
    }

    fn try_connect(&self) -> Result<postgres::Client, postgres::Error> {
        postgres::Config::new()
            .host_path(&self.socket_dir)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(10))
            .connect(postgres::NoTls)
    }

    /// A new session as `postgres` through the shared socket directory.
    pub fn connect(&self) -> postgres::Client {
        self.try_connect()
            .unwrap_or_else(|e| panic!("connect to {}: {e}; log:\n{}", self.name, self.logs()))
    }

    /// Everything the container printed.
    pub fn logs(&self) -> String {
        let (_, stdout, stderr) = run_output(podman().args(["logs", &self.name]));
        format!("{stdout}{stderr}")
    }

    /// Waits until the container's log has a line containing `text`, failing with the log when
    /// the deadline passes.
    pub fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + LOG_DEADLINE;
        loop {
            let logs = self.logs();
            if logs.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "container {}: no {text:?} in its log within {LOG_DEADLINE:?}; log:\n{logs}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The host pid of the container's first process (the postmaster once the entrypoint
    /// exec'd it).
    pub fn pid(&self) -> u32 {
        self.try_pid()
            .unwrap_or_else(|| panic!("no pid for container {}", self.name))
    }

    /// How many processes the kernel's OOM killer has killed in the container's memory cgroup.
    pub fn oom_kills(&self) -> u64 {
        oom_kills_of(self.pid())
    }

    /// Whether process `pid` (host pid) maps the guard library.
    pub fn maps_guard(pid: u32) -> bool {
        fs::read_to_string(format!("/proc/{pid}/maps"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/maps: {e}"))
            .contains("liboomguard.so")
    }

    /// `podman exec` of `args` in the container as `user`.
    pub fn exec(&self, user: &str, args: &[&str]) -> Output {
        let mut all = vec!["exec", "--user", user, self.name.as_str()];
        all.extend_from_slice(args);
        run_output(podman().args(&all)).0
    }

    /// Stops the container (SIGINT: a fast shutdown of the server) and waits for it.
    pub fn stop(&self) {
        podman_ok(&["stop", "-t", "60", &self.name]);
    }

    /// Starts the stopped container again and waits for its server.
    pub fn restart_stopped(&self) {
        podman_ok(&["start", &self.name]);
        self.wait_ready();
    }

    /// SIGKILLs every process of the container (the container stops).
    pub fn kill(&self) {
        podman_ok(&["kill", "--signal", "KILL", &self.name]);
        podman_ok(&["wait", &self.name]);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "--force", "--volumes", "-t", "0", &self.name])
            .output();
    }
}

/// The OOM-kill counter of the memory cgroup host process `pid` is in
/// ([`oomguard_cluster::memcg::oom_kills_of_process`]).
pub fn oom_kills_of(pid: u32) -> u64 {
    oomguard_cluster::memcg::oom_kills_of_process(pid)
        .unwrap_or_else(|e| panic!("the OOM-kill counter of process {pid}'s cgroup: {e:#}"))
}
